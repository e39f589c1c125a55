//! HTTP-01 key authorizations waiting to be fetched by the CA.
//!
//! Written by the ACME order task (`insert` before telling the CA to validate, `remove` once the
//! authorization is final); read by the `:80` listener for `/.well-known/acme-challenge/TOKEN`.
//! In a cluster the CA's request may reach any node, so the store also holds the answers other
//! nodes shared (kept current by the cluster's watch) and asks a [`ChallengeSource`] for a token
//! it has not seen yet.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::future::BoxFuture;

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
}

impl ChallengeStore {
    /// Serves `key_authorization` for `token` until [`ChallengeStore::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        lock(&self.0.own).insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops serving `token`.
    pub fn remove(&self, token: &str) {
        lock(&self.0.own).remove(token);
    }

    /// Serves an answer another node shared, until [`ChallengeStore::forget_shared`].
    pub fn insert_shared(&self, token: &str, key_authorization: &str) {
        lock(&self.0.shared).insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops serving an answer another node shared.
    pub fn forget_shared(&self, token: &str) {
        lock(&self.0.shared).remove(token);
    }

    /// Replaces every answer other nodes shared (after the cluster's watch listed them again).
    pub fn replace_shared(&self, answers: HashMap<String, String>) {
        *lock(&self.0.shared) = answers;
    }

    /// Makes misses ask `source` (the cluster store) before answering "no such token".
    pub fn set_remote(&self, source: Arc<dyn ChallengeSource>) {
        *lock(&self.0.remote) = Some(source);
    }

    /// The key authorization for `token`, if this node knows it now.
    pub fn get(&self, token: &str) -> Option<String> {
        let own = lock(&self.0.own).get(token).cloned();
        own.or_else(|| lock(&self.0.shared).get(token).cloned())
    }

    /// The key authorization for `token`: known here, or else from the remote source (a token
    /// shared a moment ago, before the watch brought it).
    pub async fn find(&self, token: &str) -> Option<String> {
        if let Some(found) = self.get(token) {
            return Some(found);
        }
        let remote = lock(&self.0.remote).clone()?;
        remote.find(token).await
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

    #[derive(Debug)]
    struct Fixed;

    impl ChallengeSource for Fixed {
        fn find<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<String>> {
            Box::pin(async move { (token == "far").then(|| "far.thumb".to_owned()) })
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
}
