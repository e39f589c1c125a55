//! The validated gateway policies of sites and routes: balancing, health, retries, timeouts,
//! limits, authentication, header rules and matching.
//!
//! Built only by `config::validate`; read by `proxy/` and `policy/` when the route table is
//! built. Site-level settings that routes inherit (`max_body`, `auth`, `timeouts`, `retries`)
//! are already resolved into each [`Route`](super::Route) here, so the request path never
//! looks at two places.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};

use super::UpstreamUrl;

/// An IP network (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
pub type IpNet = ipnet::IpNet;

/// Whether `ip` is inside any of `nets` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn contains_ip(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

/// `listen.proxy_protocol:` accept a PROXY protocol (v1 or v2) header on the https listener
/// from these peers only; any other peer sending one is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Peers allowed to send the header (load balancers in front of Rampart).
    pub from: Vec<IpNet>,
}

/// How a route's path is matched. Precedence within a site: every `Exact`, then the longest
/// `Prefix`, then each `Regex` in file order.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// `path: /api/` — the request path starts with it.
    Prefix(String),
    /// `path_exact: /login` — the request path is exactly it.
    Exact(String),
    /// `path_regex: ^/u/[0-9]+$` — the request path matches it (unanchored unless written so).
    Regex(regex::Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Prefix(a), Self::Prefix(b)) | (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for PathMatch {}

impl fmt::Display for PathMatch {
    /// The route's label in metrics and logs: the path as written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(path) | Self::Exact(path) => f.write_str(path),
            Self::Regex(regex) => write!(f, "~{}", regex.as_str()),
        }
    }
}

/// How the path is rewritten before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Rewrite {
    /// Forwarded as received.
    #[default]
    None,
    /// `strip_prefix: true` — the route's prefix is removed (a `Prefix` route only).
    StripPrefix,
    /// `replace_prefix: {from, to}` — a leading `from` becomes `to`.
    ReplacePrefix {
        /// The prefix to replace.
        from: String,
        /// What it becomes.
        to: String,
    },
}

/// A proxy route's origins and how requests are spread, checked and retried among them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Upstreams {
    /// The origins, in file order, distinct.
    pub targets: Vec<UpstreamTarget>,
    /// `balance:` how the next origin is chosen.
    pub balance: Balance,
    /// `ca:` roots that verify `https://` origins instead of the system roots.
    pub ca: Option<PathBuf>,
    /// `health:` active checks, if configured.
    pub health: Option<ActiveHealth>,
    /// `passive:` circuit breaking on request failures (on by default).
    pub passive: PassiveHealth,
    /// `retries:` further tries on another origin (default 1).
    pub retries: u32,
    /// `timeouts:` per route, defaults from the top-level `upstream:` section.
    pub timeouts: Timeouts,
}

/// One entry of `upstreams:` — a URL, or `{url, weight, max_conns}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTarget {
    /// Where it is (`http://` or `https://`, host name or address, no path).
    pub url: UpstreamUrl,
    /// Share under `balance: weighted` (default 1, at least 1).
    pub weight: u32,
    /// At most this many concurrent requests (and so connections) to it; unlimited if `None`.
    pub max_conns: Option<usize>,
}

/// `balance:`
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Balance {
    /// `round_robin` (default).
    #[default]
    RoundRobin,
    /// `weighted`: smooth weighted round robin by `weight`.
    Weighted,
    /// `least_conn`: fewest requests in flight, ties in round-robin order.
    LeastConn,
    /// `random_two`: the less loaded of two random picks.
    RandomTwo,
    /// `ip_hash`: by the client IP (after `trusted_proxies`).
    IpHash,
    /// `header_hash: NAME`: by that request header's value (round robin when absent).
    HeaderHash(HeaderName),
}

/// `health:` active checks, run in the background per route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActiveHealth {
    /// Path requested with GET (`/healthz`).
    pub path: String,
    /// Interval between checks of one origin (default 10s).
    pub every: Duration,
    /// Time allowed for one check (default 2s).
    pub timeout: Duration,
    /// Consecutive passes that bring an origin back (default 2).
    pub healthy_after: u32,
    /// Consecutive failures that take it out (default 3).
    pub unhealthy_after: u32,
    /// Statuses that count as passing (default 2xx).
    pub expect_status: ExpectStatus,
}

/// `expect_status: 200` or `2xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectStatus {
    /// This status only.
    Exact(StatusCode),
    /// Any status of this class (2 for 2xx).
    Class(u8),
}

impl ExpectStatus {
    /// Whether `status` passes.
    pub fn matches(self, status: StatusCode) -> bool {
        match self {
            Self::Exact(expected) => status == expected,
            Self::Class(class) => status.as_u16() / 100 == u16::from(class),
        }
    }
}

/// `passive:` circuit breaking from request outcomes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PassiveHealth {
    /// Consecutive failures that eject an origin (default 5; 0 turns passive checks off).
    pub unhealthy_after: u32,
    /// How long an ejected origin rests before one probe request decides (default 10s).
    pub cooldown: Duration,
    /// Whether a 5xx response counts as a failure (default false).
    pub include_5xx: bool,
}

/// `timeouts:` per route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// TCP (and TLS) connect to one origin.
    pub connect: Duration,
    /// From the request sent to the response head, per try.
    pub response_header: Duration,
    /// The origin sending no response body bytes for this long ends the response, and an
    /// upgraded (WebSocket) tunnel with no bytes moving either way this long closes
    /// (default 60s).
    pub idle: Duration,
    /// Deadline for the response head over all tries, retries included (default 60s).
    pub total: Duration,
}

/// The per-route policy steps, in the order the request path applies them:
/// `max_body` → `auth` → `rate_limits` → `concurrency` → `headers` → forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Largest request body in bytes (route's, else site's); larger → 413.
    pub max_body: Option<u64>,
    /// JWT authentication (route's, else site's).
    pub auth: Option<JwtAuth>,
    /// `rate_limit:` of the route; the site's is in [`SitePolicy`].
    pub rate_limit: Option<RateLimit>,
    /// `max_in_flight:` (and `queue:`).
    pub concurrency: Option<Concurrency>,
    /// Header rules of the route, applied after the site's.
    pub headers: HeaderRules,
    /// `escaped_slashes:` whether `%2F`/`%5C` in a path are refused (route's, else site's).
    pub escaped_slashes: EscapedSlashes,
    /// `buffer_request_body:` request bodies up to this many bytes are read whole before an
    /// origin connection is taken (route's, else site's; default 64 KiB; 0 streams them all).
    pub buffer_request_body: u64,
    /// `buffer_response:` this many bytes of a response body are read from the origin ahead
    /// of the client (route's, else site's; default 64 KiB; 0 reads only as the client does).
    pub buffer_response: u64,
}

/// `escaped_slashes:` what a route does with a path holding an encoded slash or backslash
/// (`%2F`, `%5C`), which some origins decode into a separator and others do not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EscapedSlashes {
    /// `reject` (default): 400.
    #[default]
    Reject,
    /// `keep`: forwarded still encoded, for origins that take them as data (`/repos/a%2Fb`).
    Keep,
}

/// Site-wide policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SitePolicy {
    /// `hsts:` Strict-Transport-Security on every response of the site.
    pub hsts: Option<Hsts>,
    /// `rate_limit:` one set of buckets shared by all routes of the site.
    pub rate_limit: Option<RateLimit>,
    /// `headers:` applied before each route's.
    pub headers: HeaderRules,
}

/// `max_in_flight: N` with optional `queue: {max, timeout}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Concurrency {
    /// Requests served at once.
    pub max_in_flight: usize,
    /// Requests allowed to wait for a slot, and for how long; none wait when `None`.
    pub queue: Option<Queue>,
}

/// `queue: {max, timeout}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Waiting requests at most.
    pub max: usize,
    /// Longest wait.
    pub timeout: Duration,
}

/// `rate_limit: {rate: 100/s, burst: 200, key: client_ip}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests replenished per `per`.
    pub rate: u32,
    /// The unit of `rate` (`/s`, `/m`, `/h`).
    pub per: Duration,
    /// Bucket size (default = rate).
    pub burst: u32,
    /// What a bucket belongs to.
    pub key: RateKey,
}

/// `key:` of a rate limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateKey {
    /// `client_ip` (default): the client IP after `trusted_proxies`.
    ClientIp,
    /// `header:NAME`: that header's value (requests without it share one bucket).
    Header(HeaderName),
    /// `jwt:CLAIM`: that claim of the verified token (needs `auth`).
    JwtClaim(String),
}

/// `auth: {jwt: {...}}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtAuth {
    /// Where verification keys come from.
    pub keys: JwtKeys,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must be present), if set.
    pub audience: Vec<String>,
    /// Accepted algorithms (default RS256, ES256, EdDSA).
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew allowed on `exp`/`nbf` (default 30s).
    pub leeway: Duration,
    /// Claim → request header, e.g. `sub` → `X-User-Id`.
    pub forward_claims: Vec<(String, HeaderName)>,
    /// Whether the Authorization header is removed before forwarding (default false).
    pub strip_authorization: bool,
}

/// `keys: FILE` or `jwks_url: URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtKeys {
    /// A JWKS document (or PEM public key) on disk, read when the table is built.
    File(PathBuf),
    /// A JWKS endpoint, fetched in the background every `refresh`.
    Url {
        /// `jwks_url:`
        url: Uri,
        /// `jwks_refresh:` (default 5m).
        refresh: Duration,
        /// `jwks_ca:` extra roots for reaching it.
        ca: Option<PathBuf>,
    },
}

/// Signature algorithms a route accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256 (a shared secret in the key file).
    HS256,
}

/// `headers: {request: {...}, response: {...}}`
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Applied to the request before forwarding.
    pub request: HeaderOps,
    /// Applied to the response before it is sent.
    pub response: HeaderOps,
}

/// `{set: {NAME: VALUE}, add: {NAME: VALUE}, remove: [NAME]}`, applied remove → set → add.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Replace every value of the header.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append a value.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove the header.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// `hsts: 365d` or `hsts: {max_age: 365d, include_subdomains: true, preload: true}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hsts {
    /// `max-age`.
    pub max_age: Duration,
    /// `includeSubDomains`.
    pub include_subdomains: bool,
    /// `preload` (requires include_subdomains and max_age ≥ 1 year).
    pub preload: bool,
}

/// Methods whose requests may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Upstreams {
    /// The origin URLs, in file order.
    pub fn urls(&self) -> Vec<UpstreamUrl> {
        self.targets.iter().map(|t| t.url.clone()).collect()
    }
}
