//! Why a request could not be proxied, and the one place that turns that into a response.

use http::StatusCode;
use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};

use crate::config::UpstreamUrl;
use crate::policy::AuthFailure;

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
    /// The route requires a valid bearer token and the request had none, or a bad one.
    #[error("request not authenticated: {failure}")]
    Unauthorized {
        /// Why, also the `reason` log value.
        failure: AuthFailure,
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
            Self::NoSite { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self {
            Self::NoSite { .. } | Self::NoRoute | Self::Unauthorized { .. } => Side::Downstream,
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
            Self::Unauthorized { .. } => "401 unauthorized: a valid bearer token is required\n",
        }
    }

    /// Headers the error response carries besides Content-Type (e.g. `WWW-Authenticate`).
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let header = match self {
            Self::Unauthorized { failure } => Some((WWW_AUTHENTICATE, failure.challenge())),
            _ => None,
        };
        header.into_iter()
    }
}
