//! Tokens a route has already verified, so a client that sends the same token on every request
//! pays for one signature check (tens of microseconds for ES256 or RS256), not one per request.
//!
//! Keyed by the whole token text, signature included: only a byte-identical token hits, so
//! nothing is accepted that was not verified. An entry remembers the key set it was verified
//! with and stops counting once that set is replaced (rotation, refresh) or its time claims
//! lapse; both then fall through to a full verification, which gives the exact refusal reason.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::Claims;
use crate::policy::jwks::KeySet;

/// Entries kept per route; the least useful are evicted past this (S3-FIFO, quick_cache).
const CAPACITY: usize = 4096;

/// A route's verified tokens.
pub(super) struct VerifiedTokens {
    cache: quick_cache::sync::Cache<Box<str>, Entry>,
    /// Seconds of clock skew allowed on `exp`/`nbf`, as the full check allows.
    leeway: u64,
}

/// One verified token.
#[derive(Clone)]
struct Entry {
    claims: Claims,
    /// The set that verified it; holding it keeps the pointer comparison exact.
    keys: Arc<KeySet>,
    /// `exp`, required by the full check.
    expires: u64,
    /// `nbf`, if the token has one.
    not_before: Option<u64>,
}

impl VerifiedTokens {
    pub(super) fn new(leeway: u64) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(CAPACITY),
            leeway,
        }
    }

    /// The claims of `token` if it was verified with `keys` and its time claims still hold.
    pub(super) fn get(&self, token: &str, keys: &Arc<KeySet>) -> Option<Claims> {
        let entry = self.cache.get(token)?;
        let now = now();
        let current = Arc::ptr_eq(&entry.keys, keys)
            && now <= entry.expires.saturating_add(self.leeway)
            && entry
                .not_before
                .is_none_or(|nbf| now.saturating_add(self.leeway) >= nbf);
        current.then_some(entry.claims)
    }

    /// Remembers that `token` verified with `keys` to `claims`.
    pub(super) fn insert(&self, token: &str, keys: &Arc<KeySet>, claims: &Claims) {
        // The full check requires `exp`; a token without a numeric one is not kept.
        let Some(expires) = claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let entry = Entry {
            claims: claims.clone(),
            keys: keys.clone(),
            expires,
            not_before: claims.get("nbf").and_then(Value::as_u64),
        };
        self.cache.insert(token.into(), entry);
    }
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("len", &self.cache.len())
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64, nbf: Option<u64>) -> Claims {
        let mut map = serde_json::Map::new();
        map.insert("sub".into(), "alice".into());
        map.insert("exp".into(), exp.into());
        if let Some(nbf) = nbf {
            map.insert("nbf".into(), nbf.into());
        }
        Arc::new(map)
    }

    #[test]
    fn a_verified_token_is_remembered_for_the_same_keys_only() {
        let verified = VerifiedTokens::new(0);
        let (keys, rotated) = (Arc::new(KeySet::default()), Arc::new(KeySet::default()));
        assert!(verified.get("a.b.c", &keys).is_none());
        verified.insert("a.b.c", &keys, &claims(now() + 60, None));
        let hit = verified.get("a.b.c", &keys).expect("remembered");
        assert_eq!(hit.get("sub").and_then(Value::as_str), Some("alice"));
        // Another token text, even one byte different, is never served from the cache.
        assert!(verified.get("a.b.d", &keys).is_none());
        // A replaced key set means the token must be verified again.
        assert!(verified.get("a.b.c", &rotated).is_none());
    }

    #[test]
    fn time_claims_are_checked_again_on_every_hit() {
        let verified = VerifiedTokens::new(5);
        let keys = Arc::new(KeySet::default());
        let now = now();
        verified.insert("expired", &keys, &claims(now - 10, None));
        verified.insert("within-leeway", &keys, &claims(now - 2, None));
        verified.insert("not-yet", &keys, &claims(now + 60, Some(now + 30)));
        assert!(verified.get("expired", &keys).is_none());
        assert!(verified.get("within-leeway", &keys).is_some());
        assert!(verified.get("not-yet", &keys).is_none());
    }

    #[test]
    fn tokens_without_a_numeric_exp_are_not_kept() {
        let verified = VerifiedTokens::new(0);
        let keys = Arc::new(KeySet::default());
        let mut map = serde_json::Map::new();
        map.insert("exp".into(), "soon".into());
        verified.insert("odd", &keys, &Arc::new(map));
        assert!(verified.get("odd", &keys).is_none());
    }
}
