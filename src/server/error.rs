//! Start-up failures of the server layer.

use std::io;
use std::net::SocketAddr;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener address could not be bound (in use, no permission, no such address).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("cannot build the TLS configuration")]
    TlsConfig(#[source] rustls::Error),
    /// A site's certificate could not be loaded or issued.
    #[error("cannot prepare the certificate of site {site}")]
    Certificate {
        /// The site.
        site: String,
        /// Cause.
        #[source]
        source: crate::tls::TlsError,
    },
}
