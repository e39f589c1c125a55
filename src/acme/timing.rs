//! When to renew, when to retry and when to wake: the scheduler's decisions as pure functions.
//!
//! No clock and no randomness of their own: `now` is passed in and randomness comes as a
//! `unit` in `[0, 1)`, so every rule is covered by plain `#[test]`s. Used by `scheduler.rs`.

use std::time::{Duration, SystemTime};

use crate::acme::storage::RenewalReason;

/// Lifetimes up to this long renew at half-life: a 6-day certificate gets 3 days of retries.
const SHORT_LIFETIME: Duration = Duration::from_secs(10 * 24 * 3600);

/// Backoff parameters for failed orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Pause after the first failure (about a minute in production).
    pub first: Duration,
    /// Longest pause (6 h in production: still four tries a day).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(60),
            max: Duration::from_secs(6 * 3600),
        }
    }
}

/// Renewal time from the certificate's own lifetime: when 1/3 remains, or 1/2 for lifetimes of
/// 10 days or less.
pub fn lifetime_renewal_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let elapsed = if lifetime <= SHORT_LIFETIME {
        lifetime / 2
    } else {
        lifetime / 3 * 2
    };
    not_before + elapsed
}

/// RFC 9773 §4.2: a uniformly random time inside the suggested window; `unit` in `[0, 1)`.
/// A window already over (or inverted) means now.
pub fn ari_renewal_at(
    start: SystemTime,
    end: SystemTime,
    now: SystemTime,
    unit: f64,
) -> SystemTime {
    let Ok(width) = end.duration_since(start) else {
        return now;
    };
    if now >= end {
        return now;
    }
    // unit < 1 keeps the choice before `end`; a choice already past means now.
    (start + width.mul_f64(unit.clamp(0.0, 1.0))).max(now)
}

/// Pause after `failures` consecutive failures: `first` doubling per failure, capped at `max`,
/// scaled by a jitter factor in `[0.5, 1.0)` so that many sites failing together spread out.
pub fn failure_backoff(failures: u32, backoff: Backoff, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    let base = backoff
        .first
        .saturating_mul(1u32 << doublings)
        .min(backoff.max);
    base.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// Earliest next order after a failure: the backoff, or the CA's rate-limit time if later.
pub fn next_attempt_after_failure(
    now: SystemTime,
    failures: u32,
    rate_limited_until: Option<SystemTime>,
    backoff: Backoff,
    unit: f64,
) -> SystemTime {
    let backed_off = now + failure_backoff(failures, backoff, unit);
    rate_limited_until.map_or(backed_off, |until| until.max(backed_off))
}

/// What the scheduler knows about one site's current certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// Leaf notBefore.
    pub not_before: SystemTime,
    /// Leaf notAfter.
    pub not_after: SystemTime,
    /// Whether it names every configured host (a host added to the site means a new order).
    pub covers_hosts: bool,
}

/// When the next order for a site is due, and why.
///
/// `ari` is the time chosen inside the CA's window, if any. `floor` is the persisted earliest
/// next attempt (backoff), which always wins: not even a missing certificate orders sooner.
pub fn order_due(
    served: Option<Served>,
    ari: Option<SystemTime>,
    floor: Option<SystemTime>,
    now: SystemTime,
) -> (SystemTime, Option<RenewalReason>) {
    let (due, reason) = match served {
        Some(cert) if cert.covers_hosts && now < cert.not_after => match ari {
            Some(at) => (at, Some(RenewalReason::Ari)),
            None => (
                lifetime_renewal_at(cert.not_before, cert.not_after),
                Some(RenewalReason::Lifetime),
            ),
        },
        _ => (now, None), // nothing usable served: order now
    };
    (floor.map_or(due, |floor| floor.max(due)), reason)
}

/// How long the scheduler sleeps: until the next due time, but at most a tenth of the shortest
/// lifetime served (so a 6-day certificate is looked at every ~14 h and a 60 s one every 6 s)
/// and at most `max`; at least a second, so a due time in the past cannot spin.
pub fn wake_after(
    now: SystemTime,
    next_due: Option<SystemTime>,
    shortest_lifetime: Option<Duration>,
    max: Duration,
) -> Duration {
    let until_due = next_due.map_or(max, |due| due.duration_since(now).unwrap_or(Duration::ZERO));
    let tenth = shortest_lifetime.map_or(max, |lifetime| lifetime / 10);
    until_due.min(tenth).min(max).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 24 * 3600)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn renews_at_two_thirds_of_long_lifetimes_and_half_of_short_ones() {
        assert_eq!(
            lifetime_renewal_at(UNIX_EPOCH, UNIX_EPOCH + days(90)),
            UNIX_EPOCH + days(60)
        );
        assert_eq!(
            lifetime_renewal_at(UNIX_EPOCH, UNIX_EPOCH + days(45)),
            UNIX_EPOCH + days(30)
        );
        assert_eq!(
            lifetime_renewal_at(UNIX_EPOCH, UNIX_EPOCH + days(6)),
            UNIX_EPOCH + days(3)
        );
        assert_eq!(
            lifetime_renewal_at(UNIX_EPOCH, UNIX_EPOCH + days(10)),
            UNIX_EPOCH + days(5)
        );
        assert_eq!(
            lifetime_renewal_at(UNIX_EPOCH, UNIX_EPOCH + secs(60)),
            UNIX_EPOCH + secs(30)
        );
        // An inverted certificate is due at once rather than never.
        assert_eq!(
            lifetime_renewal_at(UNIX_EPOCH + secs(9), UNIX_EPOCH),
            UNIX_EPOCH + secs(9)
        );
    }

    #[test]
    fn ari_picks_inside_the_window_and_never_in_the_past() {
        let (start, end) = (UNIX_EPOCH + days(10), UNIX_EPOCH + days(12));
        let now = UNIX_EPOCH;
        assert_eq!(ari_renewal_at(start, end, now, 0.0), start);
        assert_eq!(ari_renewal_at(start, end, now, 0.5), UNIX_EPOCH + days(11));
        assert!(ari_renewal_at(start, end, now, 0.999_999) < end);
        // Window partly past: a chosen time already gone means now.
        assert_eq!(
            ari_renewal_at(start, end, UNIX_EPOCH + days(11), 0.25),
            UNIX_EPOCH + days(11)
        );
        // Window over: now.
        assert_eq!(
            ari_renewal_at(start, end, UNIX_EPOCH + days(20), 0.3),
            UNIX_EPOCH + days(20)
        );
        // Inverted window from a confused CA: now.
        assert_eq!(ari_renewal_at(end, start, now, 0.3), now);
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_six_hours_with_jitter() {
        let backoff = Backoff::default();
        // unit just below 1 gives (almost) the full step; 0 gives half of it.
        let full = |n| failure_backoff(n, backoff, 0.999_999);
        assert!(full(1) > secs(59) && full(1) <= secs(60));
        assert!(full(2) > secs(119) && full(2) <= secs(120));
        assert!(full(4) > secs(479) && full(4) <= secs(480));
        assert!(full(20) <= secs(6 * 3600) && full(20) > secs(6 * 3600 - 1));
        assert_eq!(failure_backoff(u32::MAX, backoff, 0.999_999), full(20));
        assert_eq!(failure_backoff(3, backoff, 0.0), secs(120));
    }

    #[test]
    fn rate_limit_waits_for_the_ca_named_time_when_later() {
        let backoff = Backoff::default();
        let now = UNIX_EPOCH + days(1);
        let later = now + secs(3600);
        assert_eq!(
            next_attempt_after_failure(now, 1, Some(later), backoff, 0.0),
            later
        );
        assert_eq!(
            next_attempt_after_failure(now, 1, Some(now), backoff, 0.0),
            now + secs(30)
        );
        assert_eq!(
            next_attempt_after_failure(now, 1, None, backoff, 0.0),
            now + secs(30)
        );
    }

    #[test]
    fn order_is_due_at_once_without_a_usable_certificate_but_never_before_the_floor() {
        let now = UNIX_EPOCH + days(100);
        let cert = Served {
            not_before: now - days(10),
            not_after: now + days(80),
            covers_hosts: true,
        };
        assert_eq!(
            order_due(Some(cert), None, None, now),
            (now + days(50), Some(RenewalReason::Lifetime))
        );
        let ari = now + days(2);
        assert_eq!(
            order_due(Some(cert), Some(ari), None, now),
            (ari, Some(RenewalReason::Ari))
        );
        assert_eq!(order_due(None, None, None, now), (now, None));
        let missing_host = Served {
            covers_hosts: false,
            ..cert
        };
        assert_eq!(order_due(Some(missing_host), None, None, now).0, now);
        let expired = Served {
            not_after: now - secs(1),
            ..cert
        };
        assert_eq!(order_due(Some(expired), None, None, now).0, now);
        // The persisted backoff holds even without a certificate (restart loops cannot hammer).
        let floor = now + secs(600);
        assert_eq!(order_due(None, None, Some(floor), now).0, floor);
        assert_eq!(
            order_due(Some(cert), None, Some(floor), now).0,
            now + days(50)
        );
    }

    #[test]
    fn wakes_often_enough_for_short_certificates() {
        let now = UNIX_EPOCH + days(1);
        let hour = secs(3600);
        assert_eq!(
            wake_after(now, Some(now + days(30)), Some(days(90)), hour),
            hour
        );
        assert_eq!(
            wake_after(now, Some(now + days(30)), Some(secs(60)), hour),
            secs(6)
        );
        assert_eq!(
            wake_after(now, Some(now + secs(3)), Some(days(6)), hour),
            secs(3)
        );
        assert_eq!(wake_after(now, Some(now - secs(3)), None, hour), secs(1));
        assert_eq!(wake_after(now, None, None, hour), hour);
    }
}
