//! HTTP-01 key authorizations waiting to be fetched by the CA.
//!
//! Written by the ACME order task (`insert` before telling the CA to validate, `remove` once the
//! authorization is final); read by the `:80` listener for `/.well-known/acme-challenge/TOKEN`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Token → key authorization, shared between the ACME task and the `:80` listener.
///
/// A tiny map behind a `std` mutex: held for a lookup only, never across `.await`.
#[derive(Clone, Debug, Default)]
pub struct ChallengeStore(Arc<Mutex<HashMap<String, String>>>);

impl ChallengeStore {
    /// Serves `key_authorization` for `token` until [`ChallengeStore::remove`].
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.map()
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops serving `token`.
    pub fn remove(&self, token: &str) {
        self.map().remove(token);
    }

    /// The key authorization for `token`, if one is being served.
    pub fn get(&self, token: &str) -> Option<String> {
        self.map().get(token).cloned()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A panic while holding the lock cannot leave the map half-updated: recover it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
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
}
