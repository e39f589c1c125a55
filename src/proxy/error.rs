//! Why a request could not be proxied, and the one place that turns that into a response.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};

use crate::policy::AuthFailure;
use crate::policy::admit::Refused;
use crate::policy::rate_limit::Limited;
use crate::proxy::upstream::h1::WireError;
use crate::request::Refusal;

/// Why an exchange with an origin broke, by the client that ran it.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// hyper's client: streamed bodies and upgrades.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The lean HTTP/1.1 client: bodies in memory.
    #[error(transparent)]
    H1(#[from] WireError),
}

/// A request that failed before the origin's response reached the client.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request cannot be made canonical (see `request::canonical`): never forwarded.
    #[error("request refused")]
    BadRequest(#[source] Refusal),
    /// The request's host belongs to no site, or to another site than the TLS connection's.
    #[error("host {host:?} is not served on this connection")]
    NoSite {
        /// The host asked for.
        host: String,
    },
    /// No route of the site matches the path.
    #[error("no route for the path")]
    NoRoute,
    /// Routes match the path but none allows the method.
    #[error("method not allowed on the path")]
    MethodNotAllowed {
        /// The methods the path-matching routes allow (sent as `Allow`).
        allow: Vec<http::Method>,
    },
    /// No connection to the origin could be made (the request was never sent).
    #[error("cannot connect to upstream {upstream}")]
    UpstreamConnect {
        /// The origin.
        upstream: Arc<str>,
        /// Cause.
        #[source]
        source: ConnectError,
    },
    /// The origin reset the connection or spoke invalid HTTP.
    #[error("upstream {upstream} failed")]
    Upstream {
        /// The origin.
        upstream: Arc<str>,
        /// Cause, by the client that ran the exchange.
        #[source]
        source: ExchangeError,
    },
    /// The origin sent no response head in time.
    #[error("upstream {upstream} sent no response within {timeout:?}")]
    UpstreamTimeout {
        /// The origin.
        upstream: Arc<str>,
        /// The limit that passed.
        timeout: std::time::Duration,
    },
    /// Every origin of the route is down (active checks) or ejected (circuit open).
    #[error("no healthy upstream for the route")]
    NoHealthyUpstream {
        /// Until the earliest origin may be tried again.
        retry_after: Duration,
    },
    /// Every available origin of the route is at its `max_conns`.
    #[error("every upstream of the route is at its connection limit")]
    UpstreamsBusy,
    /// The client's request body is malformed (invalid chunked framing, more than declared,
    /// an HTTP/2 protocol error): the client's failure, never the origin's.
    #[error("cannot read the request body")]
    RequestBody {
        /// Cause.
        #[source]
        source: crate::proxy::BodyError,
    },
    /// The client went away before its request body was complete (499, as nginx logs it).
    #[error("the client left before sending its whole request body")]
    ClientGone,
    /// The client stopped sending its request body for `client_body_timeout`, had not sent it
    /// all when the response head was due, or did not send a small one within the deadline.
    #[error("request body not received within {timeout:?}")]
    RequestBodyTimeout {
        /// The limit that passed.
        timeout: Duration,
    },
    /// The route requires a valid bearer token and the request had none, or a bad one.
    #[error("request not authenticated: {failure}")]
    Unauthorized {
        /// Why, also the `reason` log value.
        failure: AuthFailure,
    },
    /// The request's body is larger than the route's `max_body`.
    #[error("request body over the route's limit of {max} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        max: u64,
    },
    /// The client's bucket of the site's or route's `rate_limit` is empty.
    #[error("request over the {scope} rate limit")]
    RateLimited {
        /// Whose limit: `site` or `route`.
        scope: &'static str,
        /// What the client is told.
        limit: Limited,
    },
    /// The route already has `max_in_flight` requests in flight (and its queue, if any, is
    /// full or the wait timed out).
    #[error("route has its maximum of requests in flight")]
    ConcurrencyLimited,
}

impl From<Refused> for ProxyError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::BodyTooLarge { max } => Self::BodyTooLarge { max },
            Refused::RateLimited { scope, limit } => Self::RateLimited { scope, limit },
            Refused::Unauthorized(failure) => Self::Unauthorized { failure },
        }
    }
}

impl From<Refusal> for ProxyError {
    /// A 400, except CONNECT, which no route serves: 405.
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Connect => Self::MethodNotAllowed {
                allow: crate::proxy::router::ANY_METHOD.to_vec(),
            },
            refusal => Self::BadRequest(refusal),
        }
    }
}

/// nginx's status for a request whose client left before the response (never sent).
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// Why a connection to an origin could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The origin's host name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The name looked up.
        host: String,
        /// Cause.
        #[source]
        source: Box<hickory_resolver::net::NetError>,
    },
    /// TCP connect failed.
    #[error("cannot connect to {addr}")]
    Tcp {
        /// The address dialled.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// TCP connect, TLS and HTTP handshakes together took longer than `timeouts.connect`.
    #[error("connecting to {addr} took longer than {timeout:?}")]
    Timeout {
        /// The address dialled.
        addr: SocketAddr,
        /// The limit that passed.
        timeout: Duration,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, protocol error).
    #[error("TLS handshake with {addr} failed")]
    Tls {
        /// The address dialled.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The route's `ca:` file could not be read, so no certificate can be verified.
    #[error("cannot read CA file {path}")]
    Roots {
        /// The `ca:` file.
        path: PathBuf,
    },
    /// The `https://` origin's host is not a valid TLS server name.
    #[error("upstream host is not a valid TLS server name")]
    ServerName,
    /// hyper refused to start the HTTP/1.1 connection.
    #[error("HTTP/1.1 handshake with {addr} failed")]
    Handshake {
        /// The address dialled.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
}

/// Who caused a failure: chooses the log level and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client asked for something we do not serve.
    Downstream,
    /// The origin failed.
    Upstream,
}

impl ProxyError {
    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoSite { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamConnect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::NoHealthyUpstream { .. } | Self::UpstreamsBusy => StatusCode::SERVICE_UNAVAILABLE,
            Self::RequestBody { .. } => StatusCode::BAD_REQUEST,
            Self::ClientGone => StatusCode::from_u16(CLIENT_CLOSED).expect("499 is a valid code"),
            Self::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } | Self::ConcurrencyLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A stable name for the access log's `error` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(refusal) => refusal.kind(),
            Self::NoSite { .. } => "no_site",
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::UpstreamConnect { .. } => "upstream_connect",
            Self::Upstream { .. } => "upstream_failed",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::NoHealthyUpstream { .. } => "no_healthy_upstream",
            Self::UpstreamsBusy => "upstreams_busy",
            Self::RequestBody { .. } => "request_body",
            Self::ClientGone => "client_closed",
            Self::RequestBodyTimeout { .. } => "request_body_timeout",
            Self::Unauthorized { .. } => "unauthorized",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::ConcurrencyLimited => "concurrency_limited",
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self {
            Self::BadRequest(_)
            | Self::NoSite { .. }
            | Self::NoRoute
            | Self::MethodNotAllowed { .. }
            | Self::RequestBody { .. }
            | Self::ClientGone
            | Self::RequestBodyTimeout { .. }
            | Self::Unauthorized { .. }
            | Self::BodyTooLarge { .. }
            | Self::RateLimited { .. }
            | Self::ConcurrencyLimited => Side::Downstream,
            Self::UpstreamConnect { .. }
            | Self::Upstream { .. }
            | Self::UpstreamTimeout { .. }
            | Self::NoHealthyUpstream { .. }
            | Self::UpstreamsBusy => Side::Upstream,
        }
    }

    /// The short text body: says what failed, never internal detail.
    pub fn body(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "400 bad request: the request is malformed or ambiguous\n",
            Self::NoSite { .. } => {
                "421 misdirected request: this host is not served on this connection\n"
            }
            Self::NoRoute => "404 not found\n",
            Self::MethodNotAllowed { .. } => "405 method not allowed\n",
            Self::UpstreamConnect { .. } | Self::Upstream { .. } => {
                "502 bad gateway: the upstream server could not be reached\n"
            }
            Self::UpstreamTimeout { .. } => {
                "504 gateway timeout: the upstream server did not answer in time\n"
            }
            Self::NoHealthyUpstream { .. } => {
                "503 service unavailable: no healthy upstream server\n"
            }
            Self::UpstreamsBusy => {
                "503 service unavailable: every upstream server is at its connection limit\n"
            }
            Self::RequestBody { .. } => "400 bad request: the request body could not be read\n",
            // Nobody reads it: the client has gone.
            Self::ClientGone => "499 client closed request\n",
            Self::RequestBodyTimeout { .. } => {
                "408 request timeout: the request body did not arrive in time\n"
            }
            Self::Unauthorized { .. } => "401 unauthorized: a valid bearer token is required\n",
            Self::BodyTooLarge { .. } => "413 content too large: the request body is too large\n",
            Self::RateLimited { .. } => "429 too many requests: rate limit exceeded\n",
            Self::ConcurrencyLimited => "429 too many requests: too many requests in flight\n",
        }
    }

    /// The `Retry-After` the client gets with a 503, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NoHealthyUpstream { retry_after } => Some(*retry_after),
            Self::UpstreamsBusy => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Header fields the error response carries besides its content type: `WWW-Authenticate`,
    /// `Retry-After`, and the RateLimit fields of a rate limit.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Self::Unauthorized { failure } => vec![(WWW_AUTHENTICATE, failure.challenge())],
            Self::RateLimited { limit, .. } => limit.headers().into(),
            // A slot usually frees within a request's time; one second is a polite minimum.
            Self::ConcurrencyLimited => vec![(RETRY_AFTER, HeaderValue::from_static("1"))],
            _ => self.retry_after().map_or_else(Vec::new, |after| {
                // Whole seconds, rounded up: "0" would invite an immediate retry.
                let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                vec![(RETRY_AFTER, HeaderValue::from(seconds.max(1)))]
            }),
        }
    }
}
