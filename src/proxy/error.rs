//! Why a request could not be proxied, and the one place that turns that into a response.

use http::StatusCode;

use crate::config::UpstreamUrl;

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
    /// Routes match the path but none allows the method.
    #[error("method not allowed on the path")]
    MethodNotAllowed {
        /// The methods the path-matching routes allow (sent as `Allow`).
        allow: Vec<http::Method>,
    },
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
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self {
            Self::NoSite { .. } | Self::NoRoute | Self::MethodNotAllowed { .. } => Side::Downstream,
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
            Self::MethodNotAllowed { .. } => "405 method not allowed\n",
            Self::Upstream { .. } => "502 bad gateway: the upstream server could not be reached\n",
            Self::UpstreamTimeout { .. } => {
                "504 gateway timeout: the upstream server did not answer in time\n"
            }
        }
    }
}
