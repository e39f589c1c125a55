//! Whether each origin of a route may take requests: active checks and the passive circuit
//! breaker.
//!
//! [`PoolHealth`] is created with its `balance::UpstreamPool`. The request path reads it with a
//! few atomic loads per origin ([`PoolHealth::admission`]) and writes each request's outcome
//! ([`PoolHealth::report`]). Active checks run in one background task per pool (`checker`),
//! spawned by the server when the pool is built and cancelled when it is dropped. Every transition is logged
//! once (warn going down, info coming back) and mirrored in `rampart_upstream_healthy`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::PassiveHealth;
use crate::observe::metrics::UpstreamMetrics;

/// The health of every origin of one pool, by index.
#[derive(Debug)]
pub(crate) struct PoolHealth {
    /// Times are milliseconds since this instant, so they fit an atomic.
    epoch: Instant,
    origins: Vec<OriginHealth>,
    passive: PassiveHealth,
    metrics: Vec<UpstreamMetrics>,
    labels: Vec<String>,
}

/// Whether one origin may take a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Healthy: any number of requests.
    Closed,
    /// The cooldown is over: one probe request may go, if it claims the probe.
    HalfOpen,
    /// Ejected by the breaker until this time (ms since the epoch).
    Open(u64),
    /// Failing its active checks.
    Down,
}

/// How one request to an origin ended, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response head (a 5xx counts only with `include_5xx`).
    Success,
    /// Connect error, timeout, broken exchange (or a 5xx with `include_5xx`).
    Failure,
}

/// What a reported outcome changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transition {
    None,
    /// Closed → open.
    Opened,
    /// Half-open probe failed: open again.
    Reopened,
    /// Half-open probe passed (or any success while open): closed.
    Closed,
}

/// Lock-free state of one origin.
#[derive(Debug)]
struct OriginHealth {
    /// Cleared by active checks after `unhealthy_after` failed checks in a row.
    active_up: AtomicBool,
    /// Consecutive request failures while closed.
    failures: AtomicU32,
    /// When the open circuit lets a probe through (ms since the epoch); 0 means closed.
    open_until: AtomicU64,
    /// When the half-open probe was claimed (ms since the epoch, at least 1); 0 means none.
    probe_since: AtomicU64,
}

impl PoolHealth {
    /// All origins healthy, circuits closed; `labels` name them in logs and metrics.
    pub(crate) fn new(labels: Vec<String>, passive: PassiveHealth) -> Self {
        let metrics = labels.iter().map(|l| UpstreamMetrics::new(l)).collect();
        Self {
            epoch: Instant::now(),
            origins: labels.iter().map(|_| OriginHealth::new()).collect(),
            passive,
            metrics,
            labels,
        }
    }

    /// Now, in the unit of the stored times.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether no origin's circuit is open or has a probe out, so [`PoolHealth::admission`]
    /// does not need the time.
    pub(crate) fn all_closed(&self) -> bool {
        self.origins.iter().all(|origin| {
            origin.open_until.load(Ordering::Acquire) == 0
                && origin.probe_since.load(Ordering::Acquire) == 0
        })
    }

    /// Whether origin `index` may take a request at `now_ms`.
    pub(crate) fn admission(&self, index: usize, now_ms: u64) -> Admission {
        self.origins[index].admission(now_ms, self.passive.cooldown)
    }

    /// Claims the single half-open probe of origin `index`; false when another request has it.
    pub(crate) fn claim_probe(&self, index: usize, now_ms: u64) -> bool {
        self.origins[index].claim_probe(now_ms, self.passive.cooldown)
    }

    /// Feeds one request outcome to the breaker of origin `index`.
    pub(crate) fn report(&self, index: usize, outcome: Outcome) {
        let origin = &self.origins[index];
        // The clock only for a failure: a success (every request, usually) needs no time.
        let transition = match outcome {
            Outcome::Success => origin.on_success(),
            Outcome::Failure => origin.on_failure(&self.passive, self.now_ms()),
        };
        let upstream = self.labels[index].as_str();
        match transition {
            Transition::None => return,
            Transition::Opened => warn!(
                upstream,
                failures = self.passive.unhealthy_after,
                cooldown_ms = self.passive.cooldown.as_millis() as u64,
                "upstream ejected: circuit open after consecutive failures"
            ),
            Transition::Reopened => {
                debug!(upstream, "upstream probe failed: circuit open again")
            }
            Transition::Closed => info!(upstream, "upstream back: probe passed, circuit closed"),
        }
        self.publish(index);
    }

    /// How long until some unavailable origin may be tried again (at least 1s): the earliest
    /// end of a cooldown, else the active check interval.
    pub(crate) fn retry_after(&self, now_ms: u64, check_every: Option<Duration>) -> Duration {
        let cooldown = (0..self.origins.len())
            .filter_map(|i| match self.admission(i, now_ms) {
                Admission::Open(until) => Some(Duration::from_millis(until.saturating_sub(now_ms))),
                _ => None,
            })
            .min();
        cooldown
            .or(check_every)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    }

    /// Records an active check verdict for origin `index`, logging a change.
    pub(super) fn set_active(&self, index: usize, up: bool) {
        if self.origins[index].active_up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        let upstream = self.labels[index].as_str();
        if up {
            info!(upstream, "upstream back: health checks pass");
        } else {
            warn!(upstream, "upstream down: health checks fail");
        }
        self.publish(index);
    }

    /// The gauge says healthy when both the checks and the breaker do.
    fn publish(&self, index: usize) {
        let origin = &self.origins[index];
        let healthy = origin.active_up.load(Ordering::Relaxed)
            && origin.open_until.load(Ordering::Relaxed) == 0;
        self.metrics[index].set_healthy(healthy);
    }
}

impl OriginHealth {
    fn new() -> Self {
        Self {
            active_up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probe_since: AtomicU64::new(0),
        }
    }

    fn admission(&self, now_ms: u64, cooldown: Duration) -> Admission {
        if !self.active_up.load(Ordering::Relaxed) {
            return Admission::Down;
        }
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Closed;
        }
        if now_ms < until || self.has_live_probe(now_ms, cooldown) {
            return Admission::Open(until);
        }
        Admission::HalfOpen
    }

    /// A probe whose outcome never came (its client went away) stops counting after a
    /// cooldown, so the origin cannot stay ejected forever.
    fn has_live_probe(&self, now_ms: u64, cooldown: Duration) -> bool {
        let since = self.probe_since.load(Ordering::Acquire);
        since != 0 && now_ms.saturating_sub(since) < millis(cooldown).max(1)
    }

    fn claim_probe(&self, now_ms: u64, cooldown: Duration) -> bool {
        let since = self.probe_since.load(Ordering::Acquire);
        if since != 0 && now_ms.saturating_sub(since) < millis(cooldown).max(1) {
            return false;
        }
        self.probe_since
            .compare_exchange(since, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn on_success(&self) -> Transition {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) == 0 {
            return Transition::None;
        }
        self.probe_since.store(0, Ordering::Release);
        Transition::Closed
    }

    fn on_failure(&self, passive: &PassiveHealth, now_ms: u64) -> Transition {
        if passive.unhealthy_after == 0 {
            return Transition::None;
        }
        // Never 0, which means closed.
        let until = now_ms.saturating_add(millis(passive.cooldown)).max(1);
        if self.open_until.load(Ordering::Acquire) != 0 {
            // Only the probe's failure re-opens; requests that were already in flight when
            // the circuit opened do not extend it.
            if self.probe_since.swap(0, Ordering::AcqRel) != 0 {
                self.open_until.store(until, Ordering::Release);
                return Transition::Reopened;
            }
            return Transition::None;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < passive.unhealthy_after {
            return Transition::None;
        }
        match self
            .open_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.failures.store(0, Ordering::Relaxed);
                Transition::Opened
            }
            Err(_) => Transition::None,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(after: u32) -> PassiveHealth {
        PassiveHealth {
            unhealthy_after: after,
            cooldown: Duration::from_secs(10),
            include_5xx: false,
        }
    }

    #[test]
    fn circuit_opens_after_consecutive_failures_then_lets_one_probe_through() {
        let (origin, passive) = (OriginHealth::new(), passive(3));
        let cooldown = passive.cooldown;
        assert_eq!(origin.on_failure(&passive, 100), Transition::None);
        assert_eq!(origin.on_failure(&passive, 100), Transition::None);
        assert_eq!(origin.on_failure(&passive, 100), Transition::Opened);
        assert_eq!(origin.admission(5_000, cooldown), Admission::Open(10_100));
        assert_eq!(origin.admission(10_100, cooldown), Admission::HalfOpen);
        assert!(origin.claim_probe(10_100, cooldown));
        assert!(!origin.claim_probe(10_101, cooldown), "one probe only");
        assert_eq!(origin.admission(10_101, cooldown), Admission::Open(10_100));
        assert_eq!(origin.on_success(), Transition::Closed);
        assert_eq!(origin.admission(10_102, cooldown), Admission::Closed);
    }

    #[test]
    fn failed_probe_reopens_for_another_cooldown() {
        let (origin, passive) = (OriginHealth::new(), passive(1));
        let cooldown = passive.cooldown;
        assert_eq!(origin.on_failure(&passive, 0), Transition::Opened);
        assert!(origin.claim_probe(10_000, cooldown));
        assert_eq!(origin.on_failure(&passive, 10_000), Transition::Reopened);
        assert_eq!(origin.admission(15_000, cooldown), Admission::Open(20_000));
    }

    #[test]
    fn success_resets_the_failure_count_and_zero_turns_the_breaker_off() {
        let (origin, three) = (OriginHealth::new(), passive(3));
        origin.on_failure(&three, 0);
        origin.on_failure(&three, 0);
        origin.on_success();
        assert_eq!(origin.on_failure(&three, 0), Transition::None);
        let off = passive(0);
        for _ in 0..100 {
            assert_eq!(origin.on_failure(&off, 0), Transition::None);
        }
    }

    #[test]
    fn abandoned_probe_expires_after_a_cooldown() {
        let (origin, passive) = (OriginHealth::new(), passive(1));
        let cooldown = passive.cooldown;
        origin.on_failure(&passive, 0);
        assert!(origin.claim_probe(10_000, cooldown));
        assert_eq!(origin.admission(19_999, cooldown), Admission::Open(10_000));
        assert_eq!(origin.admission(20_000, cooldown), Admission::HalfOpen);
    }

    #[test]
    fn retry_after_is_the_earliest_cooldown_end_and_at_least_a_second() {
        let health = PoolHealth::new(vec!["a".into(), "b".into()], passive(1));
        health.origins[0].on_failure(&health.passive, 0);
        health.origins[1].on_failure(&health.passive, 4_000);
        assert_eq!(health.retry_after(1_000, None), Duration::from_secs(9));
        assert_eq!(health.retry_after(9_900, None), Duration::from_secs(1));
    }
}
