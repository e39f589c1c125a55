//! Prometheus metrics: one process-wide registry, served by the admin listener's `/metrics`.
//!
//! Names follow `rampart_<area>_<what>_<unit>`; counters end in `_total` (the encoder adds it),
//! durations in `_seconds`. Labels take only configured names (sites, route paths, upstream URLs)
//! and fixed words, never raw SNI, hosts or client paths, so the series count stays bounded.
//!
//! Hot paths (requests, handshakes, connections) never look a series up: the route table, the
//! upstream pools and the TLS acceptor pre-create their handles ([`RouteMetrics`],
//! [`SiteMetrics`], [`UpstreamMetrics`], [`HandshakeMetrics`]) when they are built, and a request
//! or handshake costs only atomic adds. Rare events (publishes, orders, reloads) go through the
//! free functions below, which take the family's lock.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`encode_text`]'s output (OpenMetrics 1.0 text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Status classes in label order: index `status / 100 - 1`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Route label for requests that matched no site or no route.
const NO_ROUTE: &str = "none";

type Labels<const N: usize> = [(&'static str, String); N];

/// Request durations from 1 ms to about 33 s, doubling.
#[derive(Clone, Copy, Debug)]
struct RequestBuckets;
/// Handshake durations from 0.5 ms to about 4 s, doubling.
#[derive(Clone, Copy, Debug)]
struct HandshakeBuckets;

impl MetricConstructor<Histogram> for RequestBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 16))
    }
}

impl MetricConstructor<Histogram> for HandshakeBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 14))
    }
}

/// Every family, registered once.
#[derive(Debug)]
struct Families {
    registry: Registry,
    requests: Family<Labels<3>, Counter>,
    request_duration: Family<Labels<1>, Histogram, RequestBuckets>,
    upstream_requests: Family<Labels<1>, Counter>,
    upstream_errors: Family<Labels<2>, Counter>,
    upstream_healthy: Family<Labels<1>, Gauge>,
    open_connections: Family<Labels<1>, Gauge>,
    listener_full: Family<Labels<1>, Counter>,
    per_ip_refused: Family<Labels<1>, Counter>,
    handshakes: Family<Labels<2>, Counter>,
    handshake_duration: Histogram,
    certificate_not_after: Family<Labels<1>, Gauge>,
    renewal_due: Family<Labels<1>, Gauge>,
    acme_orders: Family<Labels<3>, Counter>,
    reloads: Family<Labels<1>, Counter>,
    rate_limited: Family<Labels<2>, Counter>,
    concurrency_limited: Family<Labels<2>, Counter>,
    cluster_store_up: Gauge,
    cluster_locks: Family<Labels<1>, Counter>,
    cluster_locks_held: Gauge,
    cluster_issued: Family<Labels<1>, Counter>,
    cluster_watch_lag: Histogram,
}

static FAMILIES: OnceLock<Families> = OnceLock::new();

fn families() -> &'static Families {
    FAMILIES.get_or_init(|| {
        let mut registry = Registry::default();
        let f = Families {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(RequestBuckets),
            upstream_requests: Family::default(),
            upstream_errors: Family::default(),
            upstream_healthy: Family::default(),
            open_connections: Family::default(),
            listener_full: Family::default(),
            per_ip_refused: Family::default(),
            handshakes: Family::default(),
            handshake_duration: HandshakeBuckets.new_metric(),
            certificate_not_after: Family::default(),
            renewal_due: Family::default(),
            acme_orders: Family::default(),
            reloads: Family::default(),
            rate_limited: Family::default(),
            concurrency_limited: Family::default(),
            cluster_store_up: Gauge::default(),
            cluster_locks: Family::default(),
            cluster_locks_held: Gauge::default(),
            cluster_issued: Family::default(),
            // From 50 ms to about 100 s, doubling.
            cluster_watch_lag: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            registry: Registry::default(),
        };
        // Counter names lack `_total`: the OpenMetrics encoder appends it to the samples.
        let r = &mut registry;
        r.register(
            "rampart_http_requests",
            "Requests answered, by site, route and status class",
            f.requests.clone(),
        );
        r.register(
            "rampart_http_request_duration_seconds",
            "Time from the request head to the response head, by site",
            f.request_duration.clone(),
        );
        r.register(
            "rampart_upstream_requests",
            "Requests sent to an upstream",
            f.upstream_requests.clone(),
        );
        r.register(
            "rampart_upstream_errors",
            "Upstream failures, by kind: connect, timeout or exchange",
            f.upstream_errors.clone(),
        );
        r.register(
            "rampart_upstream_healthy",
            "1 while an upstream is considered healthy, 0 while ejected",
            f.upstream_healthy.clone(),
        );
        r.register(
            "rampart_downstream_open_connections",
            "Client connections open now, by listener",
            f.open_connections.clone(),
        );
        r.register(
            "rampart_downstream_listener_full",
            "Times a listener stopped accepting, at downstream.max_connections, by listener",
            f.listener_full.clone(),
        );
        r.register(
            "rampart_downstream_per_ip_refused",
            "Connections closed on accept, their client at downstream.max_connections_per_ip, \
             by listener",
            f.per_ip_refused.clone(),
        );
        r.register(
            "rampart_tls_handshakes",
            "TLS handshakes, by result and negotiated version",
            f.handshakes.clone(),
        );
        r.register(
            "rampart_tls_handshake_duration_seconds",
            "Time from accepting a connection to the end of its TLS handshake",
            f.handshake_duration.clone(),
        );
        r.register(
            "rampart_tls_certificate_not_after_timestamp_seconds",
            "notAfter of the certificate served for a site, as a Unix time",
            f.certificate_not_after.clone(),
        );
        r.register(
            "rampart_acme_renewal_due_timestamp_seconds",
            "When a site's ACME certificate is due for renewal, as a Unix time",
            f.renewal_due.clone(),
        );
        r.register(
            "rampart_acme_orders",
            "Certificate orders, by CA (its directory URL), result and the CA's problem type",
            f.acme_orders.clone(),
        );
        r.register(
            "rampart_config_reloads",
            "Configuration reloads, by result",
            f.reloads.clone(),
        );
        r.register(
            "rampart_policy_rate_limited_requests",
            "Requests refused by a rate limit, by site and route",
            f.rate_limited.clone(),
        );
        r.register(
            "rampart_policy_concurrency_limited_requests",
            "Requests refused by a concurrency limit, by site and route",
            f.concurrency_limited.clone(),
        );
        r.register(
            "rampart_cluster_store_up",
            "1 while the cluster store (etcd) answers this node, 0 while it does not",
            f.cluster_store_up.clone(),
        );
        r.register(
            "rampart_cluster_locks",
            "Attempts to take a site's issuance lock, by result: taken, busy (held by another \
             node), lost (while held) or failed (store unreachable)",
            f.cluster_locks.clone(),
        );
        r.register(
            "rampart_cluster_locks_held",
            "Issuance locks this node holds now",
            f.cluster_locks_held.clone(),
        );
        r.register(
            "rampart_cluster_issued",
            "Certificates this node obtained and stored for the cluster, by node",
            f.cluster_issued.clone(),
        );
        r.register(
            "rampart_cluster_watch_lag_seconds",
            "From another node storing a certificate to this node serving it (clocks of both)",
            f.cluster_watch_lag.clone(),
        );
        Families { registry, ..f }
    })
}

/// The whole registry in OpenMetrics text format, `# EOF` included.
pub fn encode_text() -> String {
    let mut text = String::with_capacity(16 * 1024);
    encode(&mut text, &families().registry).expect("writing to a String cannot fail");
    text
}

/// One route's request counters, created with the route table.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    /// Requests a rate limit refused on this route.
    pub rate_limited: Counter,
    /// Requests a concurrency limit refused on this route.
    pub concurrency_limited: Counter,
}

impl RouteMetrics {
    /// Handles for `route` (a configured path prefix) of `site` (a configured site name).
    pub fn new(site: &str, route: &str) -> Self {
        let f = families();
        let by_class = STATUS_CLASSES.map(|class| {
            f.requests.get_or_create_owned(&[
                ("site", site.to_owned()),
                ("route", route.to_owned()),
                ("status", class.to_owned()),
            ])
        });
        let labels = [("site", site.to_owned()), ("route", route.to_owned())];
        Self {
            by_class,
            rate_limited: f.rate_limited.get_or_create_owned(&labels),
            concurrency_limited: f.concurrency_limited.get_or_create_owned(&labels),
        }
    }

    /// Handles for requests of `site` that matched no route (`site` is `none` when no site did).
    pub fn unrouted(site: &str) -> Self {
        Self::new(site, NO_ROUTE)
    }

    /// Counts one answered request.
    pub fn count(&self, status: u16) {
        let index = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[index].inc();
    }
}

/// One site's request-duration histogram, created with the route table.
#[derive(Clone, Debug)]
pub struct SiteMetrics {
    duration: Histogram,
}

impl SiteMetrics {
    /// Handles for `site` (a configured site name, or `none`).
    pub fn new(site: &str) -> Self {
        let duration = families()
            .request_duration
            .get_or_create_owned(&[("site", site.to_owned())]);
        Self { duration }
    }

    /// Records the time a request took to get its response head.
    pub fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Why an upstream exchange failed, as a label word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection could be made.
    Connect,
    /// No response head in time.
    Timeout,
    /// The connection broke or the origin spoke invalid HTTP.
    Exchange,
}

/// One upstream's counters and health gauge, created with its pool.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    requests: Counter,
    errors: [Counter; 3],
    healthy: Gauge,
}

impl UpstreamMetrics {
    /// Handles for `upstream` (its configured URL); it starts out healthy.
    pub fn new(upstream: &str) -> Self {
        let f = families();
        let label = [("upstream", upstream.to_owned())];
        let errors = ["connect", "timeout", "exchange"].map(|kind| {
            f.upstream_errors.get_or_create_owned(&[
                ("upstream", upstream.to_owned()),
                ("kind", kind.to_owned()),
            ])
        });
        let healthy = f.upstream_healthy.get_or_create_owned(&label);
        // Health checks are not implemented yet: every configured upstream counts as healthy.
        healthy.set(1);
        Self {
            requests: f.upstream_requests.get_or_create_owned(&label),
            errors,
            healthy,
        }
    }

    /// Counts one request sent.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Counts one failed exchange.
    pub fn failure(&self, kind: UpstreamFailure) {
        self.errors[kind as usize].inc();
    }

    /// Records whether the upstream is healthy.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }
}

/// How a TLS handshake ended, as a label word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Finished with TLS 1.3.
    Tls13,
    /// Finished with TLS 1.2.
    Tls12,
    /// No certificate for the name asked for.
    UnknownName,
    /// The client did not finish in time.
    Timeout,
    /// Anything else: invalid handshake or a broken connection.
    Error,
    /// A CA's TLS-ALPN-01 validation, answered with the challenge certificate.
    AcmeChallenge,
}

/// Handshake counters and the duration histogram, created with the TLS acceptor.
#[derive(Clone, Debug)]
pub struct HandshakeMetrics {
    results: [Counter; 6],
    duration: Histogram,
}

impl Default for HandshakeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HandshakeMetrics {
    /// Handles for every result; failed handshakes carry version `none`.
    pub fn new() -> Self {
        let f = families();
        let pairs = [
            ("ok", "TLSv1_3"),
            ("ok", "TLSv1_2"),
            ("unknown_name", "none"),
            ("timeout", "none"),
            ("error", "none"),
            ("acme_challenge", "none"),
        ];
        let results = pairs.map(|(result, version)| {
            f.handshakes.get_or_create_owned(&[
                ("result", result.to_owned()),
                ("version", version.to_owned()),
            ])
        });
        Self {
            results,
            duration: f.handshake_duration.clone(),
        }
    }

    /// Counts one handshake that took `elapsed`.
    pub fn record(&self, result: HandshakeResult, elapsed: Duration) {
        self.results[result as usize].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// A gauge of open connections for `listener` (`https` or `http`).
pub fn open_connections(listener: &'static str) -> Gauge {
    families()
        .open_connections
        .get_or_create_owned(&[("listener", listener.to_owned())])
}

/// A counter of the times `listener` stopped accepting at its connection cap.
pub fn listener_full(listener: &'static str) -> Counter {
    families()
        .listener_full
        .get_or_create_owned(&[("listener", listener.to_owned())])
}

/// A counter of the connections `listener` closed on accept, their client at its cap.
pub fn per_ip_refused(listener: &'static str) -> Counter {
    families()
        .per_ip_refused
        .get_or_create_owned(&[("listener", listener.to_owned())])
}

/// Holds one connection in an open-connections gauge until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl OpenConnection {
    /// Adds one to `gauge` now and takes it away on drop.
    pub fn enter(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records the notAfter of the certificate just published for `site`.
pub fn certificate_published(site: &str, not_after: SystemTime) {
    families()
        .certificate_not_after
        .get_or_create(&[("site", site.to_owned())])
        .set(unix_seconds(not_after));
}

/// Records when `site`'s certificate is due for renewal; `None` (nothing served yet, an order
/// is due now) removes the series.
pub fn renewal_due(site: &str, at: Option<SystemTime>) {
    let labels = [("site", site.to_owned())];
    match at {
        Some(at) => {
            families()
                .renewal_due
                .get_or_create(&labels)
                .set(unix_seconds(at));
        }
        None => {
            families().renewal_due.remove(&labels);
        }
    }
}

/// Counts one finished certificate order at the CA whose directory is `ca`; `problem_type` is
/// the CA's URN for a failure it explained (`None` becomes `none`).
pub fn acme_order(ca: &str, success: bool, problem_type: Option<&str>) {
    let result = if success { "success" } else { "failure" };
    families()
        .acme_orders
        .get_or_create(&[
            ("ca", ca.to_owned()),
            ("result", result.to_owned()),
            ("problem_type", problem_type.unwrap_or("none").to_owned()),
        ])
        .inc();
}

/// Counts one configuration reload.
pub fn config_reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    families()
        .reloads
        .get_or_create(&[("result", result.to_owned())])
        .inc();
}

/// Whether the cluster store answered this node's last request.
pub fn cluster_store_up(up: bool) {
    families().cluster_store_up.set(i64::from(up));
}

/// Counts one attempt to take an issuance lock: `taken`, `busy`, `lost` or `failed`.
pub fn cluster_lock(result: &'static str) {
    families()
        .cluster_locks
        .get_or_create(&[("result", result.to_owned())])
        .inc();
}

/// Tracks the issuance locks held now: +1 when one is taken, -1 when it is given back.
pub fn cluster_lock_held(delta: i64) {
    families().cluster_locks_held.inc_by(delta);
}

/// Counts a certificate `node` obtained and stored for the cluster.
pub fn cluster_issued(node: &str) {
    families()
        .cluster_issued
        .get_or_create(&[("node", node.to_owned())])
        .inc();
}

/// Records how long a certificate stored by another node took to be served here.
pub fn cluster_watch_lag(lag: Duration) {
    families().cluster_watch_lag.observe(lag.as_secs_f64());
}

/// Whole seconds since the Unix epoch; times before it are clamped to 0.
fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_status_class_and_encodes_the_series() {
        let route = RouteMetrics::new("unit.test", "/unit");
        route.count(204);
        route.count(502);
        route.count(999); // out of range: counted as 5xx rather than dropped
        let text = encode_text();
        assert!(text.contains(
            "rampart_http_requests_total{site=\"unit.test\",route=\"/unit\",status=\"2xx\"} 1"
        ));
        assert!(text.contains(
            "rampart_http_requests_total{site=\"unit.test\",route=\"/unit\",status=\"5xx\"} 2"
        ));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn timestamps_are_whole_unix_seconds() {
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1500)), 1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
