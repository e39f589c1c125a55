//! The JWT auth step: checks a route's `Authorization: Bearer` token and returns its claims.
//!
//! Built with the route table from [`JwtAuth`] ([`RouteAuth::from_config`]); called by
//! `proxy::service` after routing and before anything reaches the origin. Reads the route's
//! [`KeyStore`] snapshot (no lock, no I/O) and edits the request headers: the `forward_claims`
//! headers are set from the verified token (client copies of them are removed from every
//! request of the site before routing, see `proxy::router`); with `strip_authorization` the
//! Authorization header is removed. A token verified once is
//! remembered by its exact text (`verified.rs`) until its keys change or its `exp` passes.
//!
//! Signatures and `exp`/`nbf`/`iss`/`aud` are checked by the `jsonwebtoken` crate. `exp` is
//! required. The token's `alg` must be listed in `algorithms` and match the key's family, so an
//! HS256 token cannot be verified with an RSA/EC public key as its secret (alg confusion); `none`
//! is never accepted. A token names its key with `kid`; one without is tried against a single
//! key, the first of its algorithm's family in the set, so a forged token costs one signature
//! check whatever the size of the set.
//!
//! Refusals carry an [`AuthFailure`], whose [`AuthFailure::reason`] is logged (`reason=...`).
//! Challenges follow RFC 6750 §3: a request without a bearer token gets `WWW-Authenticate:
//! Bearer` with no error code (§3.1: it "SHOULD NOT" have one); any bad token gets
//! `Bearer error="invalid_token"`. The reason is never sent to the client.

use std::sync::Arc;

use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use tracing::debug;

use crate::config::{JwtAlgorithm, JwtAuth, JwtKeys};
use crate::policy::jwks::{KeySet, KeyStore, KeyStores};

mod verified;

use verified::VerifiedTokens;

/// A verified token's claims, shared with later steps (the rate limiter's `jwt:CLAIM` key).
pub type Claims = Arc<serde_json::Map<String, Value>>;

/// Why a request was refused by JWT auth; each has its own log reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` token.
    Missing,
    /// Not a JWT: wrong shape, bad base64 or JSON, or a claim of the wrong type.
    Malformed,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    NotYetValid,
    /// `aud` names none of the accepted audiences.
    WrongAudience,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// A required claim (`exp`, or `iss`/`aud` when configured) is absent.
    MissingClaim,
    /// No key of the set verifies the signature.
    BadSignature,
    /// The token's `kid` is not in the key set (a refetch is requested for `jwks_url`).
    UnknownKid,
    /// The token's `alg` is not in `algorithms`, is `none`, or does not fit its key's type.
    AlgorithmNotAllowed,
}

/// A route's JWT settings with their live keys, ready to check requests.
#[derive(Debug)]
pub struct RouteAuth {
    keys: Arc<KeyStore>,
    /// Where `keys` came from, to hand them on to the next table.
    source: JwtKeys,
    /// The accepted algorithms (`algorithms:`).
    allowed: Vec<Algorithm>,
    /// `iss`/`aud`/leeway checks; `algorithms` is set per token to the token's own `alg`.
    validation: Validation,
    forward_claims: Vec<(String, HeaderName)>,
    strip_authorization: bool,
    /// Tokens already verified with the current keys.
    verified: VerifiedTokens,
}

impl AuthFailure {
    /// The `reason` log value: stable, for grepping and dashboards.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::MissingClaim => "missing_claim",
            Self::BadSignature => "bad_signature",
            Self::UnknownKid => "unknown_kid",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
        }
    }

    /// The `WWW-Authenticate` value of the 401 (RFC 6750 §3).
    pub fn challenge(self) -> HeaderValue {
        match self {
            Self::Missing => HeaderValue::from_static("Bearer"),
            _ => HeaderValue::from_static("Bearer error=\"invalid_token\""),
        }
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl RouteAuth {
    /// Builds the step, loading its keys (see `policy::jwks` for formats and refresh) or taking
    /// a `jwks_url` store from `stores` (the previous table's, or another route's).
    pub fn from_config(auth: &JwtAuth, stores: &mut KeyStores) -> Self {
        let hmac_allowed = auth.algorithms.contains(&JwtAlgorithm::HS256);
        Self::with_keys(auth, stores.load_or_start(&auth.keys, hmac_allowed))
    }

    /// Builds the step around a key store.
    pub fn with_keys(auth: &JwtAuth, keys: Arc<KeyStore>) -> Self {
        let allowed: Vec<Algorithm> = auth.algorithms.iter().copied().map(algorithm).collect();
        let mut validation = Validation::new(Algorithm::RS256);
        // jsonwebtoken's leeway is whole seconds; round up so a configured 500ms is not zero.
        validation.leeway = auth.leeway.as_secs() + u64::from(auth.leeway.subsec_nanos() > 0);
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &auth.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if auth.audience.is_empty() {
            // Without configured audiences a token's `aud` is not ours to judge.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&auth.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let verified = VerifiedTokens::new(validation.leeway);
        Self {
            keys,
            source: auth.keys.clone(),
            allowed,
            validation,
            forward_claims: auth.forward_claims.clone(),
            strip_authorization: auth.strip_authorization,
            verified,
        }
    }

    /// Offers this route's key store for reuse by the next table (see [`KeyStores`]).
    pub fn keep_keys(&self, stores: &mut KeyStores) {
        stores.keep(&self.source, &self.keys);
    }

    /// Checks the request's bearer token and rewrites its headers for the origin; returns the
    /// verified claims for later steps.
    ///
    /// # Errors
    /// The [`AuthFailure`]; the caller answers 401 with [`AuthFailure::challenge`].
    pub fn check(&self, headers: &mut HeaderMap) -> Result<Claims, AuthFailure> {
        let claims = bearer_token(headers)
            .ok_or(AuthFailure::Missing)
            .and_then(|token| self.verify(token))
            .inspect_err(|failure| debug!(reason = failure.reason(), "bearer token refused"))?;
        for (claim, name) in &self.forward_claims {
            if let Some(value) = claims.get(claim).and_then(header_value) {
                headers.insert(name.clone(), value);
            }
        }
        if self.strip_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        Ok(claims)
    }

    /// Verifies `token` against the current key set.
    fn verify(&self, token: &str) -> Result<Claims, AuthFailure> {
        let keys = self.keys.load();
        if let Some(claims) = self.verified.get(token, &keys) {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| unparsable_header(token))?;
        if !self.allowed.contains(&header.alg) {
            return Err(AuthFailure::AlgorithmNotAllowed);
        }
        let outcome = verify_with(&keys, &header, token, &self.validation);
        match &outcome {
            Ok(claims) => self.verified.insert(token, &keys, claims),
            Err(AuthFailure::UnknownKid) => self.keys.request_refetch(),
            Err(_) => {}
        }
        outcome
    }
}

/// Tries the candidate keys (one, for a token without `kid`); the first that verifies the
/// signature decides the outcome.
fn verify_with(
    keys: &KeySet,
    header: &jsonwebtoken::Header,
    token: &str,
    validation: &Validation,
) -> Result<Claims, AuthFailure> {
    let kid = header.kid.as_deref();
    if kid.is_some_and(|kid| !keys.knows(kid)) || keys.is_empty() {
        return Err(AuthFailure::UnknownKid);
    }
    let mut validation = validation.clone();
    validation.algorithms = vec![header.alg];
    let mut fitting = keys
        .candidates(kid)
        .filter(|k| k.key.family().algorithms().contains(&header.alg))
        .peekable();
    // Keys exist but none of this algorithm's type: e.g. HS256 against an RSA public key.
    if fitting.peek().is_none() {
        return Err(AuthFailure::AlgorithmNotAllowed);
    }
    // Without a `kid`, one key: trying each would let one forged token cost a signature check
    // per key of the set.
    let tries = if kid.is_some() { usize::MAX } else { 1 };
    let mut outcome = Err(AuthFailure::BadSignature);
    for key in fitting.take(tries) {
        outcome =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map(|data| Arc::new(data.claims))
                .map_err(|err| failure(err.kind()));
        if outcome != Err(AuthFailure::BadSignature) {
            break;
        }
    }
    outcome
}

/// The bearer token of `Authorization`, if it has one (RFC 6750 §2.1; the scheme is
/// case-insensitive per RFC 9110 §11.1).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Tells a header naming an algorithm jsonwebtoken does not know (`none`, `HS1`) from garbage.
fn unparsable_header(token: &str) -> AuthFailure {
    let alg = token.split('.').next().and_then(|part| {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .ok()?;
        let header: serde_json::Map<String, Value> = serde_json::from_slice(&json).ok()?;
        header.get("alg").and_then(Value::as_str).map(str::to_owned)
    });
    match alg {
        Some(_) => AuthFailure::AlgorithmNotAllowed,
        None => AuthFailure::Malformed,
    }
}

fn failure(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
        ErrorKind::MissingRequiredClaim(_) => AuthFailure::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthFailure::AlgorithmNotAllowed
        }
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => AuthFailure::Malformed,
        // InvalidSignature, and key errors surfacing at verification: the key did not verify it.
        _ => AuthFailure::BadSignature,
    }
}

/// A claim as a header value: strings as-is, other JSON as its text; `None` when absent-like or
/// not a valid header value (control characters).
fn header_value(claim: &Value) -> Option<HeaderValue> {
    match claim {
        Value::Null => None,
        Value::String(text) => HeaderValue::from_str(text).ok(),
        other => HeaderValue::from_str(&other.to_string()).ok(),
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::HS256 => Algorithm::HS256,
    }
}

#[cfg(test)]
mod tests;
