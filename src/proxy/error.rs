//! Why a request could not be proxied, and the one place that turns that into a response.

use http::StatusCode;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};

use crate::config::UpstreamUrl;
use crate::policy::rate_limit::Limited;

/// A request that failed before the origin's response reached the client.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request's host belongs to no site, or to another site than the TLS connection's.
    #[error("host {host:?} is not served on this connection")]
    NoSite {
        /// The host asked for.
        host: String,
    },
    /// No route of the site matches the path.
    #[error("no route for the path")]
    NoRoute,
    /// The origin refused, reset or could not be reached.
    #[error("upstream {upstream} failed")]
    Upstream {
        /// The origin.
        upstream: UpstreamUrl,
        /// Cause.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The origin sent no response head in time.
    #[error("upstream {upstream} sent no response within {timeout:?}")]
    UpstreamTimeout {
        /// The origin.
        upstream: UpstreamUrl,
        /// The limit that passed.
        timeout: std::time::Duration,
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
            Self::NoSite { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } | Self::ConcurrencyLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self {
            Self::NoSite { .. }
            | Self::NoRoute
            | Self::BodyTooLarge { .. }
            | Self::RateLimited { .. }
            | Self::ConcurrencyLimited => Side::Downstream,
            Self::Upstream { .. } | Self::UpstreamTimeout { .. } => Side::Upstream,
        }
    }

    /// The short text body: says what failed, never internal detail.
    pub fn body(&self) -> &'static str {
        match self {
            Self::NoSite { .. } => {
                "421 misdirected request: this host is not served on this connection\n"
            }
            Self::NoRoute => "404 not found\n",
            Self::Upstream { .. } => "502 bad gateway: the upstream server could not be reached\n",
            Self::UpstreamTimeout { .. } => {
                "504 gateway timeout: the upstream server did not answer in time\n"
            }
            Self::BodyTooLarge { .. } => "413 content too large: the request body is too large\n",
            Self::RateLimited { .. } => "429 too many requests: rate limit exceeded\n",
            Self::ConcurrencyLimited => "429 too many requests: too many requests in flight\n",
        }
    }

    /// Header fields the error response carries besides its content type (`Retry-After`, and
    /// the RateLimit fields of a rate limit).
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Self::RateLimited { limit, .. } => limit.headers().into(),
            // A slot usually frees within a request's time; one second is a polite minimum.
            Self::ConcurrencyLimited => vec![(RETRY_AFTER, HeaderValue::from_static("1"))],
            _ => Vec::new(),
        }
    }
}
