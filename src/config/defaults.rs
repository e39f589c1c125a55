//! Every default of the configuration file, written once.
//!
//! Section keys are written as a file would write them: validation parses a default exactly as
//! it parses what an operator writes, so the two cannot disagree. Route policy defaults are typed,
//! because a route inherits them after validation, and the typed values built from them (a
//! route's [`RoutePolicy`], [`PassiveHealth`], [`Timeouts`], a bare `upstreams:` list) are
//! assembled here too. Enum defaults (`balance`, `escaped_slashes`, ...) are the `#[default]`
//! variant of their type. This module imports the config types and nothing imports back into
//! them, so it stays out of any cycle. `config/rampart.yaml` states these values in its
//! comments, and `config/tests/example.rs` holds every such statement to what loading does.

use std::time::Duration;

use super::{
    Balance, Challenge, EscapedSlashes, ExpectStatus, HeaderRules, JwtAlgorithm, PassiveHealth,
    RoutePolicy, Timeouts, UpstreamDefaults, UpstreamTarget, UpstreamUrl, Upstreams,
};

// cluster:
pub(super) const CLUSTER_PREFIX: &str = "/rampart/";
pub(super) const CLUSTER_LOCK_TTL: &str = "30s";

// listen:
pub(super) const HTTPS: &str = "[::]:443";
pub(super) const HTTP: &str = "[::]:80";

pub(super) const STORAGE: &str = "/var/lib/rampart";
pub(super) const SHUTDOWN_GRACE: &str = "30s";
pub(super) const HEADERS_WITH_UNDERSCORES: &str = "drop";

// log:
pub(super) const LOG_FORMAT: &str = "json";
pub(super) const LOG_LEVEL: &str = "info";

// acme:
pub(super) const ACME_DIRECTORY: &str = "letsencrypt";
pub(super) const ACME_KEY_TYPE: &str = "ecdsa-p256";
/// `acme.fallback_after:` failed orders in a row at one CA before a site tries the next.
pub(super) const ACME_FALLBACK_AFTER: u32 = 3;
/// `acme.challenges:` DNS-01 only where a site names a `dns:` provider.
pub(super) const ACME_CHALLENGES: [Challenge; 2] = [Challenge::Http01, Challenge::TlsAlpn01];

// on_demand:
pub(super) const ON_DEMAND_RATE: &str = "10/m";
pub(super) const ON_DEMAND_BURST: u32 = 20;
pub(super) const ON_DEMAND_MAX_CERTIFICATES: u32 = 1000;
pub(super) const ON_DEMAND_TIMEOUT: &str = "15s";
pub(super) const ON_DEMAND_REFUSAL_TTL: &str = "10m";

// dns.NAME:
pub(super) const DNS_PROPAGATION_TIMEOUT: &str = "2m";

// downstream:
pub(super) const HANDSHAKE_TIMEOUT: &str = "10s";
pub(super) const HEADER_TIMEOUT: &str = "10s";
pub(super) const IDLE_TIMEOUT: &str = "60s";
pub(super) const CLIENT_BODY_TIMEOUT: &str = "30s";
pub(super) const SEND_TIMEOUT: &str = "60s";
pub(super) const MAX_HEADER_BYTES: &str = "64KiB";
pub(super) const MAX_HEADERS: i64 = 100;
pub(super) const H2_MAX_STREAMS: i64 = 256;
pub(super) const MAX_CONNECTIONS: i64 = 50_000;

// upstream:
pub(super) const CONNECT_TIMEOUT: &str = "5s";
pub(super) const RESPONSE_HEADER_TIMEOUT: &str = "30s";
pub(super) const POOL_IDLE_TIMEOUT: &str = "90s";
pub(super) const POOL_MAX_IDLE: i64 = 32;
pub(super) const RESOLVE_EVERY: &str = "30s";

// sites[]:
pub(super) const SITE_TLS: &str = "acme";

// A route's policies (a site's when it sets them; the route's own first).

/// `upstreams[].weight:` (used by `balance: weighted`).
pub(super) const WEIGHT: u32 = 1;
/// `retries:` further tries on another origin.
pub(super) const RETRIES: u32 = 1;
/// `timeouts.idle:` a response body that stalls this long is cut off.
pub(super) const ROUTE_IDLE: Duration = Duration::from_secs(60);
/// `timeouts.total:` all tries to a response head, and never less than `response_header`.
pub(super) const ROUTE_TOTAL: Duration = Duration::from_secs(60);
/// `passive.unhealthy_after:` consecutive failures that open an origin's circuit.
pub(super) const PASSIVE_UNHEALTHY_AFTER: u32 = 5;
/// `passive.cooldown:` how long an open circuit stays open before a probe.
pub(super) const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);
/// `health.every` and `health.timeout`: how often an origin is probed, and for how long.
pub(super) const HEALTH_EVERY: Duration = Duration::from_secs(10);
pub(super) const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// `health.healthy_after` and `health.unhealthy_after`: consecutive probes that flip a state.
pub(super) const HEALTH_HEALTHY_AFTER: u32 = 2;
pub(super) const HEALTH_UNHEALTHY_AFTER: u32 = 3;
/// `health.expect_status:` any 2xx.
pub(super) const HEALTH_EXPECT_STATUS: ExpectStatus = ExpectStatus::Class(2);
/// `auth.jwt.jwks_refresh:` how often a `jwks_url` is fetched again.
pub(super) const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// `auth.jwt.leeway:` clock skew allowed on `exp` and `nbf`.
pub(super) const JWT_LEEWAY: Duration = Duration::from_secs(30);
/// `auth.jwt.algorithms:` the asymmetric ones in common use.
pub(super) const JWT_ALGORITHMS: [JwtAlgorithm; 3] = [
    JwtAlgorithm::RS256,
    JwtAlgorithm::ES256,
    JwtAlgorithm::EdDSA,
];
/// `buffer_request_body:` a request body up to this size is read whole before an origin
/// connection is taken (and may be sent again on a retry).
pub(super) const BUFFER_REQUEST_BODY: u64 = 64 * 1024;
/// `buffer_response:` this much of a response body is read from the origin ahead of a client,
/// so a response that fits frees its origin connection at once.
pub(super) const BUFFER_RESPONSE: u64 = 64 * 1024;
/// `respond.status:`
pub(super) const RESPOND_STATUS: i64 = 200;

/// `timeouts.total` when only `response_header` is known: the default, or longer so one try
/// can use its whole `response_header`.
pub(super) fn route_total(response_header: Duration) -> Duration {
    ROUTE_TOTAL.max(response_header)
}

impl Default for RoutePolicy {
    /// What a route without policy keys gets.
    fn default() -> Self {
        Self {
            max_body: None,
            auth: None,
            rate_limit: None,
            concurrency: None,
            headers: HeaderRules::default(),
            escaped_slashes: EscapedSlashes::default(),
            buffer_request_body: BUFFER_REQUEST_BODY,
            buffer_response: BUFFER_RESPONSE,
        }
    }
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self {
            unhealthy_after: PASSIVE_UNHEALTHY_AFTER,
            cooldown: PASSIVE_COOLDOWN,
            include_5xx: false,
        }
    }
}

impl Timeouts {
    /// The route defaults: connect and response head from the `upstream:` section.
    pub fn from_defaults(defaults: &UpstreamDefaults) -> Self {
        Self {
            connect: defaults.connect_timeout,
            response_header: defaults.response_header_timeout,
            idle: ROUTE_IDLE,
            total: route_total(defaults.response_header_timeout),
        }
    }
}

impl Upstreams {
    /// Origins with every policy at its default: what a bare `upstreams: [URL, …]` means.
    pub fn with_defaults(urls: Vec<UpstreamUrl>, defaults: &UpstreamDefaults) -> Self {
        Self {
            targets: urls
                .into_iter()
                .map(|url| UpstreamTarget {
                    url,
                    weight: WEIGHT,
                    max_conns: None,
                })
                .collect(),
            balance: Balance::default(),
            ca: None,
            health: None,
            passive: PassiveHealth::default(),
            retries: RETRIES,
            timeouts: Timeouts::from_defaults(defaults),
        }
    }
}
