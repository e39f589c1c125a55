//! Why a request could not be proxied, and the one place that turns that into a response.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// No connection to the origin could be made (the request was never sent).
    #[error("cannot connect to upstream {upstream}")]
    UpstreamConnect {
        /// The origin.
        upstream: UpstreamUrl,
        /// Cause.
        #[source]
        source: ConnectError,
    },
    /// The origin reset the connection or spoke invalid HTTP.
    #[error("upstream {upstream} failed")]
    Upstream {
        /// The origin.
        upstream: UpstreamUrl,
        /// Cause.
        #[source]
        source: hyper::Error,
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
        source: hickory_resolver::ResolveError,
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
            Self::NoSite { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::UpstreamConnect { .. } | Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self {
            Self::NoSite { .. } | Self::NoRoute => Side::Downstream,
            Self::UpstreamConnect { .. } | Self::Upstream { .. } | Self::UpstreamTimeout { .. } => {
                Side::Upstream
            }
        }
    }

    /// The short text body: says what failed, never internal detail.
    pub fn body(&self) -> &'static str {
        match self {
            Self::NoSite { .. } => {
                "421 misdirected request: this host is not served on this connection\n"
            }
            Self::NoRoute => "404 not found\n",
            Self::UpstreamConnect { .. } | Self::Upstream { .. } => {
                "502 bad gateway: the upstream server could not be reached\n"
            }
            Self::UpstreamTimeout { .. } => {
                "504 gateway timeout: the upstream server did not answer in time\n"
            }
        }
    }
}
