//! `rate_limit:` token buckets (GCRA, via `governor`) per site and per route, keyed by client
//! IP, a request header or a verified JWT claim.
//!
//! Built with the route table (one [`RateLimiter`] per site and per route that configures one;
//! a reload keeps the buckets of a site or route whose `rate_limit:` did not change, see
//! `proxy::router`). `proxy::service` calls [`key_for`] and [`RateLimiter::check`] after auth,
//! site first, then route. Memory stays bounded however many keys clients invent: every
//! [`SWEEP_EVERY`] checks one request drops the buckets that are full again (indistinguishable
//! from new ones), and if more than [`MAX_KEYS`] remain it evicts the idlest, those that will be
//! full soonest: forgetting them grants the fewest requests beyond the limit. A client being
//! refused has an empty bucket, so a flood of invented keys, each used a few times, evicts its
//! own buckets before it frees a throttled client. No lock is held across requests: the map is
//! sharded and a sweep runs on one request at a time.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{Map, Value};

use crate::config::{RateKey, RateLimit};
use crate::policy::client_ip;

/// Buckets kept at most (plus up to [`SWEEP_EVERY`] new ones between sweeps): about 100 MB.
pub const MAX_KEYS: usize = 1_000_000;
/// Checks between two sweeps of idle buckets; a sweep visits every bucket once.
pub const SWEEP_EVERY: u64 = 65_536;

/// What a bucket belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// `client_ip`: an IPv4 address, or an IPv6 /64 (its host bits zero).
    Ip(IpAddr),
    /// The value of the configured header or claim.
    Value(Box<[u8]>),
    /// The header or claim is absent: all such requests share one bucket.
    Absent,
}

/// Verified JWT claims of the request, from `policy::auth` (`None` when the route has no auth).
pub type Claims<'a> = Option<&'a Map<String, Value>>;

/// The bucket key of a request under `key`.
pub fn key_for(key: &RateKey, client: IpAddr, headers: &HeaderMap, claims: Claims<'_>) -> Key {
    match key {
        RateKey::ClientIp => Key::Ip(client_ip::prefix(client)),
        RateKey::Header(name) => headers
            .get(name)
            .map_or(Key::Absent, |v| Key::Value(v.as_bytes().into())),
        RateKey::JwtClaim(claim) => match claims.and_then(|c| c.get(claim)) {
            None | Some(Value::Null) => Key::Absent,
            Some(Value::String(text)) => Key::Value(text.as_bytes().into()),
            // Numbers and the rest key by their JSON text: `42` and `"42"` stay distinct.
            Some(other) => Key::Value(other.to_string().into_bytes().into()),
        },
    }
}

/// A request over its limit: what the 429 tells the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    /// When the next request of this key is allowed.
    pub retry_after: Duration,
    /// The bucket size (`q` of the policy).
    pub burst: u32,
    /// How long an empty bucket takes to fill (`w` of the policy).
    pub window: Duration,
}

impl Limited {
    /// `Retry-After` (RFC 9110 §10.2.3) and the IETF RateLimit fields
    /// (draft-ietf-httpapi-ratelimit-headers): one policy named `default` of `q` requests per
    /// `w` seconds, with `r=0` remaining and `t` seconds until the next request is allowed.
    /// Seconds are rounded up, so a client that waits them is never refused for being early.
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        let retry = ceil_secs(self.retry_after).max(1);
        let window = ceil_secs(self.window).max(1);
        [
            (RETRY_AFTER, HeaderValue::from(retry)),
            (
                HeaderName::from_static("ratelimit-policy"),
                header_value(format!("\"default\";q={};w={window}", self.burst)),
            ),
            (
                HeaderName::from_static("ratelimit"),
                header_value(format!("\"default\";r=0;t={retry}")),
            ),
        ]
    }
}

/// Every key's bucket: its GCRA state, the theoretical arrival time (TAT) in nanoseconds since
/// the limiter started, as governor's own keyed stores keep it (0: never used). The later the
/// TAT, the emptier the bucket; governor's stores cannot be read, and eviction must compare.
#[derive(Clone, Default)]
struct Store(Arc<DashMap<Key, AtomicU64>>);

impl StateStore for Store {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        match self.0.get(key) {
            Some(tat) => replace(&tat, f),
            None => replace(&self.0.entry(key.clone()).or_default(), f),
        }
    }
}

/// Decides on `tat`'s value and stores the new one, unless another request changed it first
/// (then decides again).
fn replace<T, E>(
    tat: &AtomicU64,
    f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
) -> Result<T, E> {
    let mut seen = tat.load(Ordering::Acquire);
    loop {
        let (outcome, next) = f((seen != 0).then(|| Nanos::from(seen)))?;
        match tat.compare_exchange_weak(seen, next.into(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(outcome),
            Err(now) => seen = now,
        }
    }
}

impl ShrinkableKeyedStateStore<Key> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = u64::from(drop_below);
        self.0
            .retain(|_, tat| tat.load(Ordering::Relaxed) > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Store {
    /// Drops the idlest buckets (the earliest TATs) until at most `keep` remain; how many went.
    fn evict_idlest(&self, keep: usize) -> usize {
        if self.0.len() <= keep {
            return 0;
        }
        let mut tats: Vec<u64> = self
            .0
            .iter()
            .map(|bucket| bucket.value().load(Ordering::Relaxed))
            .collect();
        let Some(surplus) = tats.len().checked_sub(keep).filter(|&n| n > 0) else {
            return 0;
        };
        // The surplus-th earliest TAT: everything before it goes, and as many equal to it as
        // it takes (a standing fake clock in tests gives every bucket the same one).
        let cut = *tats.select_nth_unstable(surplus - 1).1;
        let mut ties = surplus - tats.iter().filter(|&&tat| tat < cut).count();
        let before = self.0.len();
        self.0.retain(|_, tat| {
            let tat = tat.load(Ordering::Relaxed);
            match tat.cmp(&cut) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal if ties > 0 => {
                    ties -= 1;
                    false
                }
                _ => true,
            }
        });
        before.saturating_sub(self.0.len())
    }
}

type Buckets<C> = governor::RateLimiter<Key, Store, C, StateInformationMiddleware>;

/// One set of token buckets: a site's (shared by its routes) or a route's.
pub struct RateLimiter<C: Clock = DefaultClock> {
    /// What it was built from (a reload keeps it when this is unchanged).
    config: RateLimit,
    buckets: Buckets<C>,
    /// The buckets' map, which `buckets` owns too: a sweep evicts from it.
    store: Store,
    quota: Quota,
    key: RateKey,
    burst: u32,
    window: Duration,
    checks: AtomicU64,
    sweeping: AtomicBool,
    max_keys: usize,
    sweep_every: u64,
}

impl RateLimiter {
    /// The buckets `config` describes; `None` for a rate too fast to represent in nanoseconds
    /// or a zero rate or burst (validation refuses those).
    pub fn new(config: &RateLimit) -> Option<Self> {
        Self::with_clock(config, DefaultClock::default(), MAX_KEYS, SWEEP_EVERY)
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    fn with_clock(config: &RateLimit, clock: C, max_keys: usize, sweep_every: u64) -> Option<Self> {
        let burst = NonZeroU32::new(config.burst)?;
        let period = config.per.checked_div(config.rate)?;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        let store = Store::default();
        let buckets = Buckets::new(quota, store.clone(), clock);
        Some(Self {
            config: config.clone(),
            buckets,
            store,
            quota,
            key: config.key.clone(),
            burst: config.burst,
            window: period.saturating_mul(config.burst),
            checks: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            max_keys,
            sweep_every: sweep_every.max(1),
        })
    }

    /// The `rate_limit:` it was built from.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// What the buckets are keyed by.
    pub fn key(&self) -> &RateKey {
        &self.key
    }

    /// Takes one token from `key`'s bucket.
    ///
    /// # Errors
    /// [`Limited`] when the bucket is empty; nothing is taken then.
    pub fn check(&self, key: &Key) -> Result<u32, Limited> {
        let outcome = self.buckets.check_key(key);
        self.sweep_now_and_then();
        match outcome {
            Ok(state) => Ok(state.remaining_burst_capacity()),
            Err(not_until) => Err(Limited {
                retry_after: not_until.wait_time_from(self.buckets.clock().now()),
                burst: self.burst,
                window: self.window,
            }),
        }
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every `sweep_every` checks: drops full buckets, then the idlest past `max_keys`.
    /// Runs on the request that crosses the mark; concurrent requests never wait for it.
    fn sweep_now_and_then(&self) {
        let checks = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if !checks.is_multiple_of(self.sweep_every) || self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let before = self.buckets.len();
        self.buckets.retain_recent();
        let evicted = self.store.evict_idlest(self.max_keys);
        if evicted > 0 {
            tracing::warn!(
                evicted,
                cap = self.max_keys,
                "rate limit buckets over their cap; the idlest were dropped"
            );
        } else if self.buckets.len() < before / 2 {
            // The map keeps its capacity after a flood unless told otherwise.
            self.buckets.shrink_to_fit();
        }
        self.sweeping.store(false, Ordering::Release);
    }
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("digits, quotes and separators are valid header text")
}

#[cfg(test)]
mod tests;
