//! `rate_limit:` token buckets (GCRA, via `governor`) per site and per route, keyed by client
//! IP, a request header or a verified JWT claim.
//!
//! Built with the route table (one [`RateLimiter`] per site and per route that configures one;
//! a reload keeps the buckets of a site or route whose `rate_limit:` did not change, see
//! `proxy::router`). `proxy::service` calls [`key_for`] and [`RateLimiter::check`] after auth,
//! site first, then route. Memory stays bounded however many
//! keys clients invent: every [`SWEEP_EVERY`] checks one request drops the buckets that are full
//! again (indistinguishable from new ones), and if more than [`MAX_KEYS`] remain the whole map
//! is replaced by an empty one — under such a flood, forgetting counts is better than running
//! out of memory. No lock is held across requests: the map is sharded and a sweep runs on one
//! request at a time.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{Map, Value};

use crate::config::{RateKey, RateLimit};

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
        RateKey::ClientIp => Key::Ip(client_prefix(client)),
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

/// The bucket of a client address: an IPv4 address itself, an IPv6 address its /64. One
/// IPv6 subscriber, host or VM is routinely given a whole /64 and can send from any address
/// in it: keyed by address, it would get 2^64 buckets (and flood the map).
fn client_prefix(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
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

type Buckets<C> = governor::RateLimiter<Key, DashMapStateStore<Key>, C, StateInformationMiddleware>;

/// One set of token buckets: a site's (shared by its routes) or a route's.
pub struct RateLimiter<C: Clock = DefaultClock> {
    /// What it was built from (a reload keeps it when this is unchanged).
    config: RateLimit,
    /// Replaced whole when a key flood passes `max_keys`.
    buckets: ArcSwap<Buckets<C>>,
    quota: Quota,
    clock: C,
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
        Some(Self {
            config: config.clone(),
            buckets: ArcSwap::from_pointee(fresh(quota, &clock)),
            quota,
            clock,
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
        let outcome = self.buckets.load().check_key(key);
        self.sweep_now_and_then();
        match outcome {
            Ok(state) => Ok(state.remaining_burst_capacity()),
            Err(not_until) => Err(Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
                burst: self.burst,
                window: self.window,
            }),
        }
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.load().len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every `sweep_every` checks: drops full buckets, and everything past `max_keys`.
    /// Runs on the request that crosses the mark; concurrent requests never wait for it.
    fn sweep_now_and_then(&self) {
        let checks = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if !checks.is_multiple_of(self.sweep_every) || self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let buckets = self.buckets.load_full();
        let before = buckets.len();
        buckets.retain_recent();
        let after = buckets.len();
        if after > self.max_keys {
            tracing::warn!(
                buckets = after,
                "rate limit buckets over their cap; starting afresh"
            );
            self.buckets.store(Arc::new(fresh(self.quota, &self.clock)));
        } else if after < before / 2 {
            // The map keeps its capacity after a flood unless told otherwise.
            buckets.shrink_to_fit();
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

fn fresh<C: Clock + Clone>(quota: Quota, clock: &C) -> Buckets<C> {
    governor::RateLimiter::dashmap_with_clock(quota, clock.clone())
        .with_middleware::<StateInformationMiddleware>()
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn header_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("digits, quotes and separators are valid header text")
}

#[cfg(test)]
mod tests;
