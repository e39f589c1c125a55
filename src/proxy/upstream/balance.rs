//! The origins of one route and how the next one is chosen.
//!
//! Built with the route table (and carried over a reload when the route's upstream settings
//! did not change); read per request. The choice itself is the pure [`choose`]; the pool
//! feeds it what it knows of each origin (health, requests in flight, `max_conns`). A new pool
//! comes with its background work (its origins' maintenance, and its checker with `health:`)
//! for the server to spawn; that work ends when the pool is dropped.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, join_all};
use http::HeaderMap;
use rand::Rng;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Balance, UpstreamDefaults, UpstreamUrl, Upstreams};
use crate::proxy::ProxyError;
use crate::proxy::upstream::checker;
use crate::proxy::upstream::health::{Admission, Outcome, PoolHealth};
use crate::proxy::upstream::origin::Upstream;
use crate::proxy::upstream::origins::Origins;

/// Longest smooth weighted round-robin schedule; larger weight sums are scaled down to it.
const MAX_SCHEDULE: u64 = 4096;

/// The origins of one route.
#[derive(Debug)]
pub struct UpstreamPool {
    origins: Arc<Origins>,
    strategy: Strategy,
    turn: AtomicUsize,
    settings: Upstreams,
    /// Cancels the health checker when the pool goes.
    _checker: Option<DropGuard>,
}

/// A `Balance` made ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// In turn.
    RoundRobin,
    /// In turn along a smooth weighted round-robin schedule of origin indexes.
    Weighted(Vec<usize>),
    /// Fewest in flight, ties in turn.
    LeastConn,
    /// The less loaded of two random ones.
    RandomTwo,
    /// Rendezvous hashing of the request's key; in turn when it has none.
    Hash,
}

/// What [`choose`] knows of one origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Healthy (or holding the half-open probe), under `max_conns`, not tried yet.
    pub(crate) eligible: bool,
    /// Requests in flight to it now.
    pub(crate) in_flight: usize,
    /// Its stable identity for rendezvous hashing.
    pub(crate) id: u64,
}

impl UpstreamPool {
    /// One pooled client per origin of `settings`, configured from `defaults`; and the pool's
    /// background work for the server to spawn: each origin's maintenance and, when
    /// `settings.health` is set, the health checker. It ends when the pool is dropped.
    pub fn new(
        settings: &Upstreams,
        defaults: &UpstreamDefaults,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let mut background: Vec<BoxFuture<'static, ()>> = Vec::new();
        let mut upstreams = Vec::with_capacity(settings.targets.len());
        for target in &settings.targets {
            let (upstream, maintenance) = Upstream::new(target, settings, defaults);
            upstreams.push(upstream);
            background.push(Box::pin(maintenance));
        }
        let labels: Vec<String> = upstreams.iter().map(|u| u.label().to_owned()).collect();
        let ids = labels.iter().map(|l| stable_hash(l.as_bytes())).collect();
        let origins = Arc::new(Origins {
            health: PoolHealth::new(labels, settings.passive.clone()),
            upstreams,
            ids,
        });
        let checker = settings.health.clone().map(|check| {
            let stop = CancellationToken::new();
            // Ends at its next await once the pool (and so the guard) is dropped.
            background.push(Box::pin(checker::run(
                origins.clone(),
                check,
                settings.timeouts.clone(),
                stop.clone(),
            )));
            stop.drop_guard()
        });
        let weights: Vec<u32> = settings.targets.iter().map(|t| t.weight).collect();
        let pool = Self {
            strategy: Strategy::from_config(&settings.balance, &weights),
            origins,
            turn: AtomicUsize::new(0),
            settings: settings.clone(),
            _checker: checker,
        };
        (pool, join_all(background).map(drop))
    }

    /// The settings the pool was built from.
    pub fn settings(&self) -> &Upstreams {
        &self.settings
    }

    /// The origins, in configured order.
    pub fn urls(&self) -> Vec<UpstreamUrl> {
        self.origins
            .upstreams
            .iter()
            .map(|u| u.url.clone())
            .collect()
    }

    /// How many origins there are.
    pub fn len(&self) -> usize {
        self.origins.upstreams.len()
    }

    /// Whether the pool has no origins (validation never builds one).
    pub fn is_empty(&self) -> bool {
        self.origins.upstreams.is_empty()
    }

    /// The origin at `index` (as returned by [`UpstreamPool::pick`]).
    pub fn upstream(&self, index: usize) -> &Upstream {
        &self.origins.upstreams[index]
    }

    /// Chooses the origin for a request from `client_ip` with `headers`, skipping the ones
    /// marked in `tried`, unhealthy, ejected (except for one half-open probe) or full.
    ///
    /// # Errors
    /// [`ProxyError::UpstreamsBusy`] when every available origin is at `max_conns`, else
    /// [`ProxyError::NoHealthyUpstream`] with the time until one may be back.
    #[allow(clippy::result_large_err)] // once per try, and the error becomes the response
    pub(crate) fn pick(
        &self,
        client_ip: IpAddr,
        headers: &HeaderMap,
        tried: &[bool],
    ) -> Result<usize, ProxyError> {
        let health = &self.origins.health;
        // Closed circuits need no time: the clock is read only when one is open or probing.
        // A circuit opening meanwhile reads as open until the moment 0, which it is.
        let now = if health.all_closed() {
            0
        } else {
            health.now_ms()
        };
        let untried = |i: usize| !tried.get(i).copied().unwrap_or(false);
        // The usual route has one origin: when it can take the request there is nothing to
        // choose, and no candidate list to build.
        if self.len() == 1
            && untried(0)
            && health.admission(0, now) == Admission::Closed
            && self.upstream(0).has_capacity()
        {
            return Ok(0);
        }
        let key = match &self.settings.balance {
            Balance::IpHash => Some(stable_hash(&ip_bytes(client_ip))),
            Balance::HeaderHash(name) => headers.get(name).map(|v| stable_hash(v.as_bytes())),
            _ => None,
        };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        // One allocation per pick: the candidates, rebuilt never; an origin whose half-open probe
        // someone else took is only marked ineligible.
        let mut candidates: Vec<Candidate> = (0..self.len())
            .map(|i| Candidate {
                eligible: untried(i)
                    && matches!(
                        health.admission(i, now),
                        Admission::Closed | Admission::HalfOpen
                    )
                    && self.upstream(i).has_capacity(),
                in_flight: self.upstream(i).in_flight(),
                id: self.origins.ids[i],
            })
            .collect();
        let mut rng = rand::rng();
        // Each pass either returns or rules out one origin whose probe someone else took.
        for _ in 0..=self.len() {
            let Some(index) = choose(&self.strategy, &candidates, turn, key, |n| {
                rng.random_range(0..n)
            }) else {
                break;
            };
            if health.admission(index, now) != Admission::HalfOpen || health.claim_probe(index, now)
            {
                return Ok(index);
            }
            candidates[index].eligible = false;
        }
        let full = (0..self.len()).any(|i| {
            untried(i)
                && health.admission(i, now) == Admission::Closed
                && !self.upstream(i).has_capacity()
        });
        if full {
            return Err(ProxyError::UpstreamsBusy);
        }
        let every = self.settings.health.as_ref().map(|h| h.every);
        Err(ProxyError::NoHealthyUpstream {
            retry_after: health.retry_after(health.now_ms(), every),
        })
    }

    /// Feeds one request's outcome to the passive circuit breaker of origin `index`.
    pub(crate) fn report(&self, index: usize, outcome: Outcome) {
        self.origins.health.report(index, outcome);
    }

    /// How long an origin may take to send its response head.
    pub fn response_header_timeout(&self) -> Duration {
        self.settings.timeouts.response_header
    }
}

impl Strategy {
    /// The runnable form of `balance` for origins of these `weights`.
    pub(crate) fn from_config(balance: &Balance, weights: &[u32]) -> Self {
        match balance {
            Balance::RoundRobin => Self::RoundRobin,
            Balance::Weighted => Self::Weighted(smooth_weighted_schedule(weights)),
            Balance::LeastConn => Self::LeastConn,
            Balance::RandomTwo => Self::RandomTwo,
            Balance::IpHash | Balance::HeaderHash(_) => Self::Hash,
        }
    }
}

/// The index of the origin to use among `candidates`, or `None` when none is eligible.
///
/// `turn` counts requests (it drives round robin and breaks ties), `key` is the request's hash
/// key for [`Strategy::Hash`], `random(n)` returns a number below `n`.
pub(crate) fn choose(
    strategy: &Strategy,
    candidates: &[Candidate],
    turn: usize,
    key: Option<u64>,
    mut random: impl FnMut(usize) -> usize,
) -> Option<usize> {
    let n = candidates.len();
    // The turn indexes the eligible origins only, so a skipped origin's share is spread evenly.
    let in_turn = || {
        let eligible = candidates.iter().filter(|c| c.eligible).count();
        let nth = turn.checked_rem(eligible)?;
        (0..n).filter(|&i| candidates[i].eligible).nth(nth)
    };
    if n == 0 {
        return None;
    }
    match strategy {
        Strategy::RoundRobin => in_turn(),
        Strategy::Hash => match key {
            // Rendezvous: each origin scores the key; an ejected origin's keys move, no others.
            Some(key) => candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.eligible)
                .max_by_key(|(_, c)| mix(key ^ mix(c.id)))
                .map(|(i, _)| i),
            None => in_turn(),
        },
        Strategy::Weighted(schedule) => {
            let len = schedule.len();
            (0..len)
                .map(|k| schedule[(turn + k) % len])
                .find(|&i| candidates.get(i).is_some_and(|c| c.eligible))
        }
        Strategy::LeastConn => (0..n)
            .map(|k| (turn + k) % n)
            .filter(|&i| candidates[i].eligible)
            .min_by_key(|&i| candidates[i].in_flight),
        Strategy::RandomTwo => {
            let eligible: Vec<usize> = (0..n).filter(|&i| candidates[i].eligible).collect();
            match eligible.len() {
                0 => None,
                1 => Some(eligible[0]),
                m => {
                    let a = random(m);
                    let mut b = random(m - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (a, b) = (eligible[a], eligible[b]);
                    Some(if candidates[b].in_flight < candidates[a].in_flight {
                        b
                    } else {
                        a
                    })
                }
            }
        }
    }
}

/// nginx's smooth weighted round robin, unrolled into one full cycle of origin indexes:
/// each step every origin gains its weight, the largest is chosen and loses the total.
pub(crate) fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
    // Keeps the schedule small; proportions survive up to rounding.
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| {
            let w = u64::from(w.max(1));
            let scaled = if total > MAX_SCHEDULE {
                (w * MAX_SCHEDULE / total).max(1)
            } else {
                w
            };
            i64::try_from(scaled).expect("at most MAX_SCHEDULE")
        })
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0_i64; weights.len()];
    (0..total)
        .filter_map(|_| {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let best = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i)))?;
            current[best] -= total;
            Some(best)
        })
        .collect()
}

/// A hash that is the same in every process, so `ip_hash` stays sticky across restarts.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// splitmix64's finalizer: spreads bits so rendezvous scores are independent per origin.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                eligible: true,
                in_flight: 0,
                id: mix(i as u64 + 1),
            })
            .collect()
    }

    fn counts(strategy: &Strategy, candidates: &[Candidate], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; candidates.len()];
        let mut seed = 7_u64;
        for turn in 0..picks {
            let random = |n: usize| {
                seed = mix(seed);
                (seed % n as u64) as usize
            };
            let i = choose(strategy, candidates, turn, None, random).expect("one is eligible");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn weighted_spreads_three_to_one_smoothly() {
        let schedule = smooth_weighted_schedule(&[3, 1]);
        assert_eq!(
            schedule,
            vec![0, 0, 1, 0],
            "nginx interleaves, never 3 in a row"
        );
        let counts = counts(&Strategy::Weighted(schedule), &idle(2), 400);
        assert_eq!(counts, vec![300, 100]);
    }

    #[test]
    fn weighted_gives_an_ejected_origins_turns_to_the_others() {
        let mut candidates = idle(3);
        candidates[0].eligible = false;
        let strategy = Strategy::Weighted(smooth_weighted_schedule(&[5, 1, 1]));
        let counts = counts(&strategy, &candidates, 700);
        assert_eq!(counts[0], 0);
        assert_eq!(counts[1] + counts[2], 700);
    }

    #[test]
    fn huge_weights_are_scaled_to_a_bounded_schedule() {
        let schedule = smooth_weighted_schedule(&[u32::MAX, u32::MAX / 3]);
        assert!(schedule.len() as u64 <= MAX_SCHEDULE + 2);
        let zeros = schedule.iter().filter(|&&i| i == 0).count() as f64;
        assert!((zeros / schedule.len() as f64 - 0.75).abs() < 0.01);
    }

    #[test]
    fn round_robin_takes_turns_and_skips_ineligible() {
        let mut candidates = idle(3);
        assert_eq!(counts(&Strategy::RoundRobin, &candidates, 300), [100; 3]);
        candidates[1].eligible = false;
        assert_eq!(
            counts(&Strategy::RoundRobin, &candidates, 300),
            [150, 0, 150]
        );
    }

    #[test]
    fn least_conn_prefers_the_idle_origin_and_rotates_ties() {
        let mut candidates = idle(3);
        candidates[0].in_flight = 4;
        candidates[2].in_flight = 1;
        assert_eq!(counts(&Strategy::LeastConn, &candidates, 50), [0, 50, 0]);
        assert_eq!(counts(&Strategy::LeastConn, &idle(3), 300), [100; 3]);
    }

    #[test]
    fn random_two_picks_the_less_loaded_of_two_and_spreads() {
        let mut candidates = idle(2);
        candidates[0].in_flight = 3;
        assert_eq!(counts(&Strategy::RandomTwo, &candidates, 50), [0, 50]);
        let spread = counts(&Strategy::RandomTwo, &idle(4), 4000);
        assert!(
            spread.iter().all(|&c| (800..1200).contains(&c)),
            "{spread:?}"
        );
    }

    #[test]
    fn hashing_sticks_per_key_and_a_dead_origin_moves_only_its_keys() {
        let candidates = idle(4);
        let pick = |candidates: &[Candidate], key: u64| {
            choose(&Strategy::Hash, candidates, 0, Some(key), |_| 0).expect("eligible")
        };
        let before: Vec<usize> = (0..1000).map(|k| pick(&candidates, mix(k))).collect();
        let again: Vec<usize> = (0..1000).map(|k| pick(&candidates, mix(k))).collect();
        assert_eq!(before, again, "the same key goes to the same origin");
        let mut per_origin = [0; 4];
        before.iter().for_each(|&i| per_origin[i] += 1);
        assert!(per_origin.iter().all(|&c| c > 150), "{per_origin:?}");

        let mut without_two = candidates.clone();
        without_two[2].eligible = false;
        for (k, &was) in before.iter().enumerate() {
            let now = pick(&without_two, mix(k as u64));
            if was != 2 {
                assert_eq!(now, was, "key {k} moved although its origin is fine");
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn hashing_without_a_key_falls_back_to_turns() {
        assert_eq!(counts(&Strategy::Hash, &idle(2), 10), [5, 5]);
    }

    #[tokio::test]
    async fn dropping_the_pool_stops_its_health_checker() {
        use crate::config::{ActiveHealth, ExpectStatus};
        let defaults = UpstreamDefaults {
            connect_timeout: Duration::from_secs(1),
            response_header_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
            resolve_every: Duration::from_secs(30),
            nameservers: Vec::new(),
        };
        let url = UpstreamUrl::parse("http://127.0.0.1:9").expect("literal");
        let mut settings = Upstreams::with_defaults(vec![url], &defaults);
        settings.health = Some(ActiveHealth {
            path: "/healthz".into(),
            every: Duration::from_millis(10),
            timeout: Duration::from_millis(100),
            healthy_after: 1,
            unhealthy_after: 1,
            expect_status: ExpectStatus::Class(2),
        });
        let (pool, background) = UpstreamPool::new(&settings, &defaults);
        tokio::spawn(background);
        let origins = Arc::downgrade(&pool.origins);
        assert_eq!(origins.strong_count(), 2, "the checker holds the origins");
        drop(pool);
        // The checker ends at its next await and releases its handle.
        tokio::time::timeout(Duration::from_secs(5), async {
            while origins.strong_count() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the checker task stopped");
    }

    #[test]
    fn nothing_eligible_means_no_choice() {
        let mut candidates = idle(2);
        candidates.iter_mut().for_each(|c| c.eligible = false);
        for strategy in [
            Strategy::RoundRobin,
            Strategy::Weighted(vec![0, 1]),
            Strategy::LeastConn,
            Strategy::RandomTwo,
            Strategy::Hash,
        ] {
            assert_eq!(choose(&strategy, &candidates, 0, Some(1), |_| 0), None);
        }
    }
}
