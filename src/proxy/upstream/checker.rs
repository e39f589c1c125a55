//! Active health checks: one task per pool with `health:`, probing every origin each
//! `every` and marking it up or down in the pool's [`PoolHealth`](super::health::PoolHealth)
//! after `healthy_after` or `unhealthy_after` results in a row.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::{ActiveHealth, Timeouts};
use crate::proxy::body::UpstreamBody;
use crate::proxy::forward;
use crate::proxy::upstream::origin::Upstream;
use crate::proxy::upstream::origins::Origins;

/// Checks every origin of `origins` each `check.every` until `stop` is cancelled (when the pool
/// is dropped).
///
/// # Cancel safety
/// Stops at any await; a check in progress is dropped with its connection.
pub(crate) async fn run(
    origins: Arc<Origins>,
    check: ActiveHealth,
    timeouts: Timeouts,
    stop: CancellationToken,
) {
    let timeouts = Timeouts {
        connect: timeouts.connect.min(check.timeout),
        response_header: check.timeout,
        ..timeouts
    };
    let mut streaks = vec![Streak::default(); origins.upstreams.len()];
    let mut tick = tokio::time::interval(check.every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let checks = origins
            .upstreams
            .iter()
            .map(|upstream| probe(upstream, &check, &timeouts));
        let results = tokio::select! {
            () = stop.cancelled() => return,
            results = futures_util::future::join_all(checks) => results,
        };
        for (index, passed) in results.into_iter().enumerate() {
            if let Some(up) = streaks[index].record(passed, &check) {
                origins.health.set_active(index, up);
            }
        }
    }
}

/// Consecutive check results of one origin, as the checker task sees them.
#[derive(Clone, Copy, Debug, Default)]
struct Streak {
    down: bool,
    passes: u32,
    fails: u32,
}

impl Streak {
    /// Counts one check; returns the new verdict when it changes.
    fn record(&mut self, passed: bool, check: &ActiveHealth) -> Option<bool> {
        if passed {
            self.passes += 1;
            self.fails = 0;
        } else {
            self.fails += 1;
            self.passes = 0;
        }
        if self.down && self.passes >= check.healthy_after.max(1) {
            self.down = false;
            return Some(true);
        }
        if !self.down && self.fails >= check.unhealthy_after.max(1) {
            self.down = true;
            return Some(false);
        }
        None
    }
}

/// One `GET <path>`: passes when the status matches within `check.timeout`.
async fn probe(upstream: &Upstream, check: &ActiveHealth, timeouts: &Timeouts) -> bool {
    let Ok(path) = check.path.parse::<http::Uri>() else {
        return false;
    };
    let uri = forward::origin_target(&path, None);
    // No Host: `Upstream::send` gives a request without one the origin's authority.
    let mut request = Request::new(UpstreamBody::buffered(Bytes::new()));
    *request.method_mut() = Method::GET;
    request.headers_mut().insert(
        header::USER_AGENT,
        http::HeaderValue::from_static("rampart-health-check"),
    );
    *request.uri_mut() = uri;
    let exchange = async {
        let response = match upstream.send(request, timeouts).await {
            Ok(response) => response,
            Err(failed) => {
                upstream.count_failure(failed.failure);
                return None;
            }
        };
        let status: StatusCode = response.status();
        // Read the body so the connection can go back to the pool.
        response.into_body().collect().await.ok()?;
        Some(status)
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(Some(status)) => check.expect_status.matches(status),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ExpectStatus;

    #[test]
    fn active_checks_need_streaks_in_both_directions() {
        let check = ActiveHealth {
            path: "/healthz".into(),
            every: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
            expect_status: ExpectStatus::Class(2),
        };
        let mut streak = Streak::default();
        assert_eq!(streak.record(false, &check), None);
        assert_eq!(streak.record(false, &check), None);
        assert_eq!(streak.record(false, &check), Some(false));
        assert_eq!(streak.record(true, &check), None);
        assert_eq!(streak.record(false, &check), None);
        assert_eq!(streak.record(true, &check), None);
        assert_eq!(streak.record(true, &check), Some(true));
    }
}
