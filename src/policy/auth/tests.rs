//! Claim validation outcomes with tokens minted here, signed by keys generated per test run.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header, encode};
use rcgen::KeyPair;
use serde_json::json;

use super::*;
use crate::config::JwtKeys;
use crate::policy::jwks::Key;

/// A P-256 signing key and the same key's public half as a JWK.
struct EcKey {
    private: EncodingKey,
    pair: KeyPair,
}

impl EcKey {
    fn new() -> Self {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pkcs8");
        Self { private, pair }
    }

    fn jwk(&self, kid: &str) -> Value {
        // Uncompressed point: 0x04 || x || y.
        let raw = self.pair.public_key_raw();
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
               "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..])})
    }

    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &self.private).expect("sign")
    }
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).expect("fits")
}

fn config(algorithms: &[JwtAlgorithm]) -> JwtAuth {
    JwtAuth {
        keys: JwtKeys::File(PathBuf::new()),
        issuer: Some("https://issuer.test".into()),
        audience: vec!["api".into(), "web".into()],
        algorithms: algorithms.to_vec(),
        leeway: Duration::from_secs(30),
        forward_claims: vec![
            ("sub".into(), HeaderName::from_static("x-user-id")),
            ("admin".into(), HeaderName::from_static("x-admin")),
            ("team".into(), HeaderName::from_static("x-team")),
        ],
        strip_authorization: true,
    }
}

fn good_claims() -> Value {
    json!({"sub": "alice", "admin": true, "iss": "https://issuer.test", "aud": ["web"],
           "exp": now() + 300, "nbf": now() - 5})
}

fn jwks_auth(key: &EcKey) -> RouteAuth {
    let jwks = json!({"keys": [key.jwk("a")]}).to_string();
    let set = KeySet::parse(jwks.as_bytes(), false).expect("jwks");
    RouteAuth::with_keys(
        &config(&[JwtAlgorithm::ES256]),
        Arc::new(KeyStore::fixed(set)),
    )
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii"),
    );
    headers.insert("x-user-id", HeaderValue::from_static("mallory"));
    headers
}

fn outcome(auth: &RouteAuth, token: &str) -> Result<Claims, AuthFailure> {
    auth.check(&mut bearer(token))
}

#[test]
fn a_valid_token_forwards_its_claims_and_replaces_client_identity_headers() {
    let key = EcKey::new();
    let auth = jwks_auth(&key);
    let mut headers = bearer(&key.sign(Some("a"), &good_claims()));
    let claims = auth.check(&mut headers).expect("valid");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(headers["x-user-id"], "alice");
    assert_eq!(headers["x-admin"], "true", "non-strings go as JSON text");
    assert!(!headers.contains_key("x-team"), "absent claim, no header");
    assert!(
        !headers.contains_key(header::AUTHORIZATION),
        "strip_authorization"
    );
}

#[test]
fn a_token_without_kid_is_tried_against_one_key_of_its_family() {
    let (first, second) = (EcKey::new(), EcKey::new());
    let jwks = json!({"keys": [first.jwk("a"), second.jwk("b")]}).to_string();
    let set = KeySet::parse(jwks.as_bytes(), false).expect("jwks");
    let auth = RouteAuth::with_keys(
        &config(&[JwtAlgorithm::ES256]),
        Arc::new(KeyStore::fixed(set)),
    );
    assert!(outcome(&auth, &first.sign(None, &good_claims())).is_ok());
    assert_eq!(
        outcome(&auth, &second.sign(None, &good_claims())).err(),
        Some(AuthFailure::BadSignature),
        "the second key is not tried"
    );
    assert!(outcome(&auth, &second.sign(Some("b"), &good_claims())).is_ok());
}

#[test]
fn time_claims_honour_the_leeway() {
    let key = EcKey::new();
    let auth = jwks_auth(&key);
    let mut claims = good_claims();
    claims["exp"] = json!(now() - 10);
    claims["nbf"] = json!(now() + 10);
    assert!(
        outcome(&auth, &key.sign(Some("a"), &claims)).is_ok(),
        "within 30s leeway"
    );
    claims["exp"] = json!(now() - 120);
    assert_eq!(
        outcome(&auth, &key.sign(Some("a"), &claims)).err(),
        Some(AuthFailure::Expired)
    );
    claims["exp"] = json!(now() + 300);
    claims["nbf"] = json!(now() + 120);
    assert_eq!(
        outcome(&auth, &key.sign(Some("a"), &claims)).err(),
        Some(AuthFailure::NotYetValid)
    );
}

#[test]
fn each_refusal_has_its_own_reason() {
    let (key, other) = (EcKey::new(), EcKey::new());
    let auth = jwks_auth(&key);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good_claims();
        change(&mut claims);
        outcome(&auth, &key.sign(Some("a"), &claims)).err()
    };
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &good_claims(),
        &EncodingKey::from_secret(b"guess"),
    )
    .expect("sign");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good_claims().to_string())
    );
    let cases = [
        (
            auth.check(&mut HeaderMap::new()).err(),
            AuthFailure::Missing,
        ),
        (outcome(&auth, "a.b").err(), AuthFailure::Malformed),
        (
            with(&|c| c["exp"] = json!(now() - 3600)),
            AuthFailure::Expired,
        ),
        (
            with(&|c| c["nbf"] = json!(now() + 3600)),
            AuthFailure::NotYetValid,
        ),
        (
            with(&|c| c["aud"] = json!("other")),
            AuthFailure::WrongAudience,
        ),
        (
            with(&|c| c["iss"] = json!("https://evil.test")),
            AuthFailure::WrongIssuer,
        ),
        (
            with(&|c| drop(c.as_object_mut().map(|o| o.remove("exp")))),
            AuthFailure::MissingClaim,
        ),
        (
            outcome(&auth, &other.sign(Some("a"), &good_claims())).err(),
            AuthFailure::BadSignature,
        ),
        (
            outcome(&auth, &key.sign(Some("b"), &good_claims())).err(),
            AuthFailure::UnknownKid,
        ),
        (
            outcome(&auth, &hs256).err(),
            AuthFailure::AlgorithmNotAllowed,
        ),
        (
            outcome(&auth, &unsigned).err(),
            AuthFailure::AlgorithmNotAllowed,
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, Some(want));
    }
    let reasons: HashSet<&str> = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::WrongAudience,
        AuthFailure::WrongIssuer,
        AuthFailure::MissingClaim,
        AuthFailure::BadSignature,
        AuthFailure::UnknownKid,
        AuthFailure::AlgorithmNotAllowed,
    ]
    .into_iter()
    .map(AuthFailure::reason)
    .collect();
    assert_eq!(reasons.len(), 10);
}

#[test]
fn hs256_signed_with_the_public_key_is_refused_even_when_hs256_is_allowed() {
    // Alg confusion: a PEM public key must never become an HMAC secret.
    let key = EcKey::new();
    let public_pem = key.pair.public_key_pem();
    let set = KeySet::parse(public_pem.as_bytes(), true).expect("pem");
    let auth = RouteAuth::with_keys(
        &config(&[JwtAlgorithm::ES256, JwtAlgorithm::HS256]),
        Arc::new(KeyStore::fixed(set)),
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &good_claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .expect("sign");
    assert_eq!(
        outcome(&auth, &forged).err(),
        Some(AuthFailure::AlgorithmNotAllowed)
    );
    assert!(
        outcome(&auth, &key.sign(None, &good_claims())).is_ok(),
        "the PEM key verifies ES256"
    );
}

#[test]
fn a_shared_secret_file_verifies_hs256() {
    let set = KeySet::parse(b"top secret\n", true).expect("secret");
    let auth = RouteAuth::with_keys(
        &config(&[JwtAlgorithm::HS256]),
        Arc::new(KeyStore::fixed(set)),
    );
    let sign = |secret: &[u8]| {
        encode(
            &Header::new(Algorithm::HS256),
            &good_claims(),
            &EncodingKey::from_secret(secret),
        )
        .expect("sign")
    };
    assert!(outcome(&auth, &sign(b"top secret")).is_ok());
    assert_eq!(
        outcome(&auth, &sign(b"top secret\n")).err(),
        Some(AuthFailure::BadSignature)
    );
}

#[test]
fn an_empty_key_set_refuses_every_token() {
    let key = EcKey::new();
    let auth = RouteAuth::with_keys(
        &config(&[JwtAlgorithm::ES256]),
        Arc::new(KeyStore::fixed(KeySet::new(Vec::<Key>::new()))),
    );
    assert_eq!(
        outcome(&auth, &key.sign(None, &good_claims())).err(),
        Some(AuthFailure::UnknownKid)
    );
}

#[test]
fn missing_gets_a_bare_challenge_and_bad_tokens_get_invalid_token() {
    assert_eq!(AuthFailure::Missing.challenge(), "Bearer");
    assert_eq!(
        AuthFailure::Expired.challenge(),
        "Bearer error=\"invalid_token\""
    );
    let mut basic = HeaderMap::new();
    basic.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic YTpi"),
    );
    assert_eq!(bearer_token(&basic), None);
    basic.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer abc"),
    );
    assert_eq!(bearer_token(&basic), Some("abc"));
}

#[test]
fn refusals_are_logged_with_their_reason() {
    use std::sync::Mutex;
    let logged = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = logged.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || WriteTo(sink.clone()))
        .finish();
    let key = EcKey::new();
    let auth = jwks_auth(&key);
    let mut expired = good_claims();
    expired["exp"] = json!(now() - 3600);
    tracing::subscriber::with_default(subscriber, || {
        // Another test's thread may have registered these call sites while no subscriber
        // wanted them, racing this one's registration, and cached "never" (seen once in a full
        // run): ask every call site again now that this subscriber is in place.
        tracing::callsite::rebuild_interest_cache();
        let _ = auth.check(&mut HeaderMap::new());
        let _ = outcome(&auth, &key.sign(Some("a"), &expired));
        let _ = outcome(&auth, &key.sign(Some("z"), &good_claims()));
    });
    let logged = String::from_utf8(logged.lock().expect("not poisoned").clone()).expect("utf-8");
    for reason in [
        "reason=\"missing\"",
        "reason=\"expired\"",
        "reason=\"unknown_kid\"",
    ] {
        assert!(logged.contains(reason), "{reason} in {logged}");
    }
}

/// A log writer appending to a shared buffer.
struct WriteTo(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for WriteTo {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
