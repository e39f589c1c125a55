//! Key authorizations waiting to be checked by the CA: HTTP-01 tokens and TLS-ALPN-01 names.
//!
//! Written by the ACME order task (`insert` before telling the CA to validate, `remove` once the
//! authorization is final); read by the `:80` listener for `/.well-known/acme-challenge/TOKEN`,
//! and, through the [`ChallengeCerts`] it keeps in step, by the `:443` acceptor for handshakes
//! offering `acme-tls/1`. A tls-alpn-01 answer is kept under the key `tls-alpn-01:HOST` (a
//! token is base64url, so never has a colon), which lets it travel through the cluster like a
//! token. In a cluster the CA's request may reach any node, so the store also holds the answers
//! other nodes shared (kept current by the cluster's watch) and asks a [`ChallengeSource`] for
//! a token it has not seen yet.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures_util::future::BoxFuture;
use tracing::warn;

use crate::tls::{ChallengeCerts, MissingAnswers, TlsError};

/// How a tls-alpn-01 answer's key starts.
pub const TLS_ALPN_PREFIX: &str = "tls-alpn-01:";

/// Where answers shared by other nodes can be looked up directly.
pub trait ChallengeSource: Send + Sync + fmt::Debug {
    /// The key authorization another node shared for `token`, if any.
    fn find<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>>;
}

/// Token → key authorization, shared between the ACME tasks and the `:80` listener.
///
/// Tiny maps behind `std` mutexes: held for a lookup only, never across `.await`.
#[derive(Clone, Debug, Default)]
pub struct ChallengeStore(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// This node's orders' answers.
    own: Mutex<HashMap<String, String>>,
    /// Answers other nodes shared, as last seen.
    shared: Mutex<HashMap<String, String>>,
    /// Asked on a miss, in a cluster.
    remote: Mutex<Option<Arc<dyn ChallengeSource>>>,
    /// The tls-alpn-01 answers of `own` and `shared` as certificates, own first.
    certs: ChallengeCerts,
}

/// The key a tls-alpn-01 answer for `host` is kept and shared under.
pub fn tls_alpn_key(host: &str) -> String {
    format!("{TLS_ALPN_PREFIX}{}", host.to_ascii_lowercase())
}

impl ChallengeStore {
    /// The challenge certificates, for the `:443` acceptor.
    pub fn certs(&self) -> &ChallengeCerts {
        &self.0.certs
    }

    /// Serves `key_authorization` for `token` until [`ChallengeStore::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        lock(&self.0.own).insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Serves the TLS-ALPN-01 certificate for `host` made from `key_authorization` until
    /// [`ChallengeStore::remove`] of the returned key (which is also what a cluster shares).
    ///
    /// # Errors
    /// When the certificate cannot be made; nothing is served then.
    pub fn insert_tls_alpn(&self, host: &str, key_authorization: &str) -> Result<String, TlsError> {
        self.0.certs.insert(host, key_authorization)?;
        let key = tls_alpn_key(host);
        lock(&self.0.own).insert(key.clone(), key_authorization.to_owned());
        Ok(key)
    }

    /// Stops serving `key` (a token, or a [`tls_alpn_key`]).
    pub fn remove(&self, key: &str) {
        lock(&self.0.own).remove(key);
        self.sync_cert(key);
    }

    /// Serves an answer another node shared, until [`ChallengeStore::forget_shared`].
    pub fn insert_shared(&self, key: &str, key_authorization: &str) {
        lock(&self.0.shared).insert(key.to_owned(), key_authorization.to_owned());
        self.sync_shared_cert(key);
    }

    /// Stops serving an answer another node shared.
    pub fn forget_shared(&self, key: &str) {
        lock(&self.0.shared).remove(key);
        self.sync_shared_cert(key);
    }

    /// Replaces every answer other nodes shared (after the cluster's watch listed them again).
    pub fn replace_shared(&self, answers: HashMap<String, String>) {
        let before = std::mem::replace(&mut *lock(&self.0.shared), answers);
        let after: Vec<String> = lock(&self.0.shared).keys().cloned().collect();
        for key in before.keys().chain(&after) {
            self.sync_shared_cert(key);
        }
    }

    /// [`Self::sync_cert`] after a shared answer changed: this node's own answer, when it has
    /// one, is what is served, so nothing changes.
    fn sync_shared_cert(&self, key: &str) {
        if !lock(&self.0.own).contains_key(key) {
            self.sync_cert(key);
        }
    }

    /// Makes the certificate for a tls-alpn-01 `key` match the answer now known (own first),
    /// or removes it; other keys have none.
    fn sync_cert(&self, key: &str) {
        let Some(host) = key.strip_prefix(TLS_ALPN_PREFIX) else {
            return;
        };
        let Some(answer) = self.get_any(key) else {
            return self.0.certs.remove(host);
        };
        if let Err(error) = self.0.certs.insert(host, &answer) {
            warn!(host, error = %error, "cannot make the tls-alpn-01 certificate");
        }
    }

    fn get_any(&self, key: &str) -> Option<String> {
        let own = lock(&self.0.own).get(key).cloned();
        own.or_else(|| lock(&self.0.shared).get(key).cloned())
    }

    /// Makes misses ask `source` (the cluster store) before answering "no such token", for
    /// http-01 tokens and tls-alpn-01 handshakes alike.
    pub fn set_remote(&self, source: Arc<dyn ChallengeSource>) {
        *lock(&self.0.remote) = Some(source);
        // Weak: the certificates are part of the store they would otherwise keep alive.
        let fetch = FetchTlsAlpn(Arc::downgrade(&self.0));
        self.0.certs.set_missing(Arc::new(fetch));
    }

    /// The key authorization for the http-01 `token`, if this node knows it now.
    pub fn get(&self, token: &str) -> Option<String> {
        if token.contains(':') {
            return None; // a tls-alpn-01 key, not a token
        }
        self.get_any(token)
    }

    /// The key authorization for `token`: known here, or else from the remote source (a token
    /// shared a moment ago, before the watch brought it).
    pub async fn find(&self, token: &str) -> Option<String> {
        if token.contains(':') {
            return None; // a tls-alpn-01 key, not a token
        }
        if let Some(found) = self.get(token) {
            return Some(found);
        }
        let remote = lock(&self.0.remote).clone()?;
        remote.find(token).await
    }
}

/// Fetches a tls-alpn-01 answer from the remote source into the shared answers, which makes
/// its certificate (the cluster's watch removes it with the others when the order ends).
#[derive(Debug)]
struct FetchTlsAlpn(Weak<Inner>);

impl MissingAnswers for FetchTlsAlpn {
    fn fetch<'a>(&'a self, host: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(inner) = self.0.upgrade() else {
                return;
            };
            let store = ChallengeStore(inner);
            let key = tls_alpn_key(host);
            let Some(remote) = lock(&store.0.remote).clone() else {
                return;
            };
            if let Some(answer) = remote.find(&key).await {
                store.insert_shared(&key, &answer);
            }
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated: recover it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[test]
    fn tokens_are_served_until_removed() {
        let store = ChallengeStore::default();
        assert_eq!(store.get("t"), None);
        store.insert("t", "t.thumb");
        assert_eq!(store.clone().get("t").as_deref(), Some("t.thumb"));
        store.remove("t");
        assert_eq!(store.get("t"), None);
    }

    #[test]
    fn tls_alpn_answers_are_certificates_own_first_and_never_tokens() {
        let store = ChallengeStore::default();
        let key = store.insert_tls_alpn("A.test", "mine").expect("made");
        assert_eq!(key, "tls-alpn-01:a.test");
        assert_eq!(store.get(&key), None, "not served on :80");
        let mine = store.certs().get("a.test").expect("served");
        // Another node's answer for the same name does not replace this node's.
        store.insert_shared(&key, "theirs");
        assert_eq!(store.certs().get("a.test").expect("served").cert, mine.cert);
        store.remove(&key);
        let theirs = store.certs().get("a.test").expect("theirs now");
        assert_ne!(theirs.cert, mine.cert);
        store.replace_shared(HashMap::from([(tls_alpn_key("b.test"), "b".to_owned())]));
        assert!(store.certs().get("a.test").is_none());
        assert!(store.certs().get("b.test").is_some());
        store.forget_shared(&tls_alpn_key("b.test"));
        assert!(store.certs().get("b.test").is_none());
    }

    #[derive(Debug)]
    struct Fixed;

    impl ChallengeSource for Fixed {
        fn find<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>> {
            Box::pin(async move {
                match token {
                    "far" => Some("far.thumb".to_owned()),
                    "tls-alpn-01:far.test" => Some("alpn.thumb".to_owned()),
                    _ => None,
                }
            })
        }
    }

    #[test]
    fn shared_answers_and_misses_go_to_the_remote_source() {
        let store = ChallengeStore::default();
        store.insert_shared("s", "s.thumb");
        assert_eq!(store.get("s").as_deref(), Some("s.thumb"));
        assert_eq!(store.find("far").now_or_never().flatten(), None);
        store.set_remote(Arc::new(Fixed));
        assert_eq!(store.get("far"), None);
        assert_eq!(
            store.find("far").now_or_never().flatten().as_deref(),
            Some("far.thumb")
        );
        store.forget_shared("s");
        assert_eq!(store.get("s"), None);
    }

    #[test]
    fn a_tls_alpn_miss_fetches_the_answer_another_node_shared() {
        let store = ChallengeStore::default();
        let fetched = |sni: &str| store.certs().find(sni).now_or_never().flatten().is_some();
        assert!(!fetched("far.test"));
        store.set_remote(Arc::new(Fixed));
        assert!(store.certs().get("far.test").is_none());
        assert!(fetched("FAR.test"));
        // Kept as a shared answer: served from now on, gone when the cluster forgets it.
        assert!(store.certs().get("far.test").is_some());
        assert!(!fetched("near.test"));
        // Never an http-01 answer, even from the remote source.
        let key = tls_alpn_key("far.test");
        assert_eq!(store.find(&key).now_or_never().flatten(), None);
        store.forget_shared(&key);
        assert!(store.certs().get("far.test").is_none());
    }
}
