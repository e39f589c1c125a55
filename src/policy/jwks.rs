//! Verification keys for JWT auth: the key set one route checks tokens against, where it comes
//! from, and the background task that keeps a `jwks_url` key set fresh.
//!
//! `keys: FILE` is read once, when the route table is built. Its content decides its meaning:
//! - a JWKS document (`{"keys": [...]}`) or a single JWK object (first non-blank byte `{`);
//!   keys marked `"use": "enc"` and keys of unsupported types are skipped;
//! - a PEM public key (`-----BEGIN PUBLIC KEY-----` SPKI for RSA, EC P-256/P-384 or Ed25519,
//!   or `-----BEGIN RSA PUBLIC KEY-----`); it has no `kid`, so it verifies tokens with or without one;
//! - otherwise, and only when `algorithms` lists HS256, the HS256 shared secret: the file's
//!   bytes with trailing CR/LF removed (so `echo secret > file` works).
//!
//! A file that cannot be read or parsed leaves the route with an empty key set: every request
//! is refused (fail closed) and the problem is logged at error level.
//!
//! `jwks_url:` is fetched by a task that building the route table returns and the server spawns
//! on its tracker: at once, then every `jwks_refresh`, and early when a token names a `kid` the
//! set lacks (at most once per [`MIN_REFETCH`]). A failed fetch keeps the previous set. The
//! task holds only the key set and a [`CancellationToken`] whose drop guard lives in the
//! route's [`KeyStore`]: dropping the route table (a reload) stops it, as does shutdown.
//!
//! The request path only loads the [`ArcSwap`] snapshot: no lock, no I/O.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, error, info, warn};

use crate::config::JwtKeys;
use crate::observe::Chain;
use crate::tls::client::{BundleError, HttpsClient, PlainHttp, https_client};

/// An unknown `kid` refetches the JWKS at most this often, so forged `kid`s cannot turn
/// requests into fetches.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// One JWKS fetch, connect to last body byte; a hung endpoint must not stall refreshes.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A JWKS document larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// After a failed fetch, the next try comes this soon (or at `jwks_refresh` if sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The key file could not be read.
    #[error("cannot read JWT key file {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The document looked like JSON but is not a JWKS or JWK.
    #[error("not a JWKS document")]
    Json(#[source] serde_json::Error),
    /// The JWKS holds no key this proxy can verify with.
    #[error("the JWKS holds no usable signing key")]
    NoUsableKey,
    /// The PEM block is not an RSA, EC or Ed25519 public key.
    #[error("not a PEM public key (RSA, EC or Ed25519)")]
    Pem(#[source] jsonwebtoken::errors::Error),
    /// Neither JSON nor PEM, and HS256 is not allowed, so it cannot be a shared secret.
    #[error("neither a JWKS document nor a PEM public key (a shared secret needs HS256)")]
    Unrecognised,
    /// `jwks_url` is plain http to a host other than loopback.
    #[error("JWKS url {url} must use https (plain http only to loopback)")]
    PlainHttp {
        /// The url.
        url: Uri,
    },
    /// `jwks_ca` could not be read or holds no certificate.
    #[error("cannot read JWKS CA bundle {path}")]
    CaBundle {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The endpoint could not be reached.
    #[error("cannot reach JWKS endpoint {url}")]
    Fetch {
        /// The url.
        url: Uri,
        /// Cause.
        #[source]
        source: Box<hyper_util::client::legacy::Error>,
    },
    /// The endpoint answered with a non-2xx status.
    #[error("JWKS endpoint {url} answered {status}")]
    Status {
        /// The url.
        url: Uri,
        /// Its status.
        status: StatusCode,
    },
    /// The body failed, was too large, or did not finish within [`FETCH_TIMEOUT`].
    #[error("JWKS endpoint {url} sent no complete document")]
    Body {
        /// The url.
        url: Uri,
    },
}

/// The keys one route verifies tokens with, replaced as a whole.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// One verification key, with its `kid` if it has one.
#[derive(Debug)]
pub struct Key {
    /// The JWK `kid`, matched against the token header's.
    pub kid: Option<String>,
    /// The key, which knows its algorithm family.
    pub key: DecodingKey,
}

impl KeySet {
    /// A set of the given keys.
    pub fn new(keys: Vec<Key>) -> Self {
        Self { keys }
    }

    /// Parses a key file's content (see the module doc for the formats).
    ///
    /// # Errors
    /// `Json`/`NoUsableKey` for bad JWKS, `Pem` for a bad PEM key, `Unrecognised` otherwise.
    pub fn parse(bytes: &[u8], hmac_allowed: bool) -> Result<Self, JwksError> {
        let text = bytes.trim_ascii_start();
        if text.starts_with(b"{") {
            Self::parse_jwks(text)
        } else if text.starts_with(b"-----BEGIN") {
            let key = DecodingKey::from_rsa_pem(text)
                .or_else(|_| DecodingKey::from_ec_pem(text))
                .or_else(|_| DecodingKey::from_ed_pem(text))
                .map_err(JwksError::Pem)?;
            Ok(Self::new(vec![Key { kid: None, key }]))
        } else if hmac_allowed && trailing_newlines(bytes) < bytes.len() {
            let secret = &bytes[..bytes.len() - trailing_newlines(bytes)];
            Ok(Self::new(vec![Key {
                kid: None,
                key: DecodingKey::from_secret(secret),
            }]))
        } else {
            Err(JwksError::Unrecognised)
        }
    }

    /// Parses a JWKS document (or one JWK), skipping keys it cannot use.
    ///
    /// # Errors
    /// `Json` when it is not JSON of that shape, `NoUsableKey` when no key is left.
    pub fn parse_jwks(bytes: &[u8]) -> Result<Self, JwksError> {
        let document: serde_json::Value = serde_json::from_slice(bytes).map_err(JwksError::Json)?;
        let entries = match document.get("keys") {
            Some(serde_json::Value::Array(keys)) => keys.clone(),
            _ => vec![document],
        };
        // One odd key (an unknown `kty`, an encryption key) must not disable the others.
        let keys: Vec<Key> = entries
            .into_iter()
            .filter_map(|entry| match serde_json::from_value::<Jwk>(entry) {
                Ok(jwk) => usable(&jwk),
                Err(err) => {
                    debug!(error = %err, "skipping a JWK this proxy cannot read");
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(Self::new(keys))
    }

    /// Keys a token with header `kid` may be verified with: those with that `kid`, or every key
    /// when the token names none.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a Key> {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
    }

    /// Whether the set has a key named `kid` (or an unnamed key, which fits any `kid`).
    pub fn knows(&self, kid: &str) -> bool {
        self.candidates(Some(kid)).next().is_some()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A route's live key set, and (for `jwks_url`) the handle that asks for an early refetch.
#[derive(Debug)]
pub struct KeyStore {
    keys: Arc<ArcSwap<KeySet>>,
    refetch: Option<Arc<Notify>>,
    /// Stops the refresh task when the route (and so its table) is dropped.
    _stop: Option<DropGuard>,
}

impl KeyStore {
    /// Loads `keys`: reads the file now, or, for a url, returns with an empty set and the
    /// refresh task that fills it, for the server to spawn.
    pub fn from_config(
        keys: &JwtKeys,
        hmac_allowed: bool,
    ) -> (Self, Option<BoxFuture<'static, ()>>) {
        match keys {
            JwtKeys::File(path) => match read_file(path, hmac_allowed) {
                Ok(set) => {
                    info!(path = %path.display(), keys = set.len(), "loaded JWT keys");
                    (Self::fixed(set), None)
                }
                Err(err) => {
                    error!(error = %Chain(&err), "JWT auth refuses every request of the route");
                    (Self::fixed(KeySet::default()), None)
                }
            },
            JwtKeys::Url { url, refresh, ca } => {
                let store = Self::fixed(KeySet::default());
                let fetcher = match Fetcher::new(url, ca.as_deref()) {
                    Ok(fetcher) => fetcher,
                    Err(err) => {
                        error!(error = %Chain(&err), "JWT auth refuses every request of the route");
                        return (store, None);
                    }
                };
                let (stop, notify) = (CancellationToken::new(), Arc::new(Notify::new()));
                // Tied to the table's lifetime by the drop guard; see the module doc.
                let refresh = keep_fresh(
                    fetcher,
                    store.keys.clone(),
                    *refresh,
                    notify.clone(),
                    stop.clone(),
                );
                let store = Self {
                    refetch: Some(notify),
                    _stop: Some(stop.drop_guard()),
                    ..store
                };
                (store, Some(Box::pin(refresh)))
            }
        }
    }

    /// A store that always serves `set` (key files, tests).
    pub fn fixed(set: KeySet) -> Self {
        Self {
            keys: Arc::new(ArcSwap::from_pointee(set)),
            refetch: None,
            _stop: None,
        }
    }

    /// The current key set. Lock-free; called per request.
    pub fn load(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Asks the refresh task for an early fetch (a token named an unknown `kid`). Never waits;
    /// requests coalesce and the task applies [`MIN_REFETCH`].
    pub fn request_refetch(&self) {
        if let Some(notify) = &self.refetch {
            notify.notify_one();
        }
    }
}

/// The `jwks_url` key stores of a route table, by their config, so that a rebuilt table (a
/// reload) and routes sharing one url share one store and one refresh task: no refetch, and no
/// window with an empty key set. Key files are not shared: a reload re-reads them.
#[derive(Default)]
pub struct KeyStores {
    stores: Vec<(JwtKeys, Arc<KeyStore>)>,
    /// Refresh tasks of the stores started here, until the table's builder takes them.
    started: Vec<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for KeyStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStores")
            .field("stores", &self.stores)
            .field("started", &self.started.len())
            .finish()
    }
}

impl KeyStores {
    /// Offers `store`, loaded from `keys`, for reuse by the table being built.
    pub fn keep(&mut self, keys: &JwtKeys, store: &Arc<KeyStore>) {
        if matches!(keys, JwtKeys::Url { .. }) && self.find(keys).is_none() {
            self.stores.push((keys.clone(), store.clone()));
        }
    }

    /// The store for `keys`: a kept one, or a new one (kept for the next route).
    pub fn load_or_start(&mut self, keys: &JwtKeys, hmac_allowed: bool) -> Arc<KeyStore> {
        if let Some(store) = self.find(keys) {
            return store;
        }
        let (store, refresh) = KeyStore::from_config(keys, hmac_allowed);
        let store = Arc::new(store);
        self.started.extend(refresh);
        self.keep(keys, &store);
        store
    }

    /// The refresh tasks of the stores started since the last call, for the server to spawn.
    pub fn take_started(&mut self) -> Vec<BoxFuture<'static, ()>> {
        std::mem::take(&mut self.started)
    }

    fn find(&self, keys: &JwtKeys) -> Option<Arc<KeyStore>> {
        self.stores
            .iter()
            .find(|(k, _)| k == keys)
            .map(|(_, s)| s.clone())
    }
}

/// Skips encryption keys and keys whose parameters do not make a verification key.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    match DecodingKey::from_jwk(jwk) {
        Ok(key) => Some(Key {
            kid: jwk.common.key_id.clone(),
            key,
        }),
        Err(err) => {
            debug!(error = %err, kid = ?jwk.common.key_id, "skipping an unusable JWK");
            None
        }
    }
}

/// How many bytes of `bytes`' end are CR/LF.
fn trailing_newlines(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rev()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
}

fn read_file(path: &Path, hmac_allowed: bool) -> Result<KeySet, JwksError> {
    let bytes = std::fs::read(path).map_err(|source| JwksError::Read {
        path: path.to_owned(),
        source,
    })?;
    KeySet::parse(&bytes, hmac_allowed)
}

/// Fetches one JWKS url.
struct Fetcher {
    url: Uri,
    client: HttpsClient<Empty<Bytes>>,
}

impl Fetcher {
    fn new(url: &Uri, ca: Option<&Path>) -> Result<Self, JwksError> {
        if url.scheme_str() != Some("https") && !is_loopback(url) {
            return Err(JwksError::PlainHttp { url: url.clone() });
        }
        // Same trust as the ACME client: Mozilla roots plus the configured bundle; http only to
        // loopback, checked above.
        let client =
            https_client(ca, FETCH_TIMEOUT, PlainHttp::Allowed).map_err(|error| match error {
                BundleError::Read { path, source } => JwksError::CaBundle { path, source },
                BundleError::Empty { path } => JwksError::CaBundle {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no PEM certificate in the file",
                    ),
                },
            })?;
        Ok(Self {
            url: url.clone(),
            client,
        })
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let body_error = || JwksError::Body {
            url: self.url.clone(),
        };
        let fetched = timeout(FETCH_TIMEOUT, async {
            let response =
                self.client
                    .get(self.url.clone())
                    .await
                    .map_err(|source| JwksError::Fetch {
                        url: self.url.clone(),
                        source: Box::new(source),
                    })?;
            if !response.status().is_success() {
                return Err(JwksError::Status {
                    url: self.url.clone(),
                    status: response.status(),
                });
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES);
            body.collect().await.map_err(|_| body_error())
        })
        .await
        .map_err(|_| body_error())??;
        KeySet::parse_jwks(&fetched.to_bytes())
    }
}

fn is_loopback(url: &Uri) -> bool {
    match url.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Keeps `keys` fresh until `stop`: at once, every `every`, and on `refetch` no more often than
/// [`MIN_REFETCH`]. A failed fetch keeps the previous set.
async fn keep_fresh(
    fetcher: Fetcher,
    keys: Arc<ArcSwap<KeySet>>,
    every: Duration,
    refetch: Arc<Notify>,
    stop: CancellationToken,
) {
    let url = &fetcher.url;
    let mut next = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = sleep_until(next) => {}
            () = refetch.notified() => {
                if let Some(earliest) = last.map(|l| l + MIN_REFETCH) {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = sleep_until(earliest) => {}
                    }
                }
            }
        }
        let fetched = tokio::select! {
            () = stop.cancelled() => return,
            fetched = fetcher.fetch() => fetched,
        };
        let now = Instant::now();
        last = Some(now);
        match fetched {
            Ok(set) => {
                debug!(%url, keys = set.len(), "fetched JWKS");
                keys.store(Arc::new(set));
                next = now + every;
            }
            Err(err) => {
                warn!(error = %Chain(&err), "JWKS refresh failed; keeping the previous keys");
                next = now + every.min(RETRY_AFTER_FAILURE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_its_bytes_without_the_trailing_newline_and_needs_hs256() {
        let set = KeySet::parse(b"s3cret\r\n", true).expect("secret");
        assert_eq!(set.len(), 1);
        assert_eq!(set.keys[0].key.as_bytes(), b"s3cret");
        assert!(matches!(
            KeySet::parse(b"s3cret\n", false),
            Err(JwksError::Unrecognised)
        ));
    }

    #[test]
    fn jwks_skips_encryption_and_unknown_keys_but_keeps_the_rest() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"enc","use":"enc"},
            {"kty":"XYZ","kid":"odd"},
            {"kty":"oct","k":"c2VjcmV0","kid":"sig"}]}"#;
        let set = KeySet::parse(doc, false).expect("one usable key");
        assert_eq!(set.len(), 1);
        assert!(set.knows("sig"));
        assert!(!set.knows("enc"));
        assert!(matches!(
            KeySet::parse(br#"{"keys":[{"kty":"XYZ"}]}"#, false),
            Err(JwksError::NoUsableKey)
        ));
    }

    #[test]
    fn plain_http_jwks_urls_are_refused_except_to_loopback() {
        let remote: Uri = "http://issuer.test/jwks.json".parse().expect("literal");
        assert!(matches!(
            Fetcher::new(&remote, None),
            Err(JwksError::PlainHttp { .. })
        ));
        for local in [
            "http://127.0.0.1:1/jwks",
            "http://[::1]:1/jwks",
            "http://localhost/",
        ] {
            assert!(
                Fetcher::new(&local.parse().expect("literal"), None).is_ok(),
                "{local}"
            );
        }
    }
}
