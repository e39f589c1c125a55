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
    /// The cluster store's client could not be set up.
    #[error("cannot set up the cluster store")]
    Cluster(#[source] crate::cluster::ClusterError),
    /// The TLS configuration could not be built.
    #[error("cannot build the TLS configuration")]
    TlsConfig(#[source] rustls::Error),
    /// The configuration file is unreadable or invalid (on reload: the old one stays).
    #[error("cannot load the configuration")]
    Config(#[source] crate::config::ConfigError),
    /// A reload was asked for before the first configuration was applied.
    #[error("no configuration has been applied yet")]
    NotStarted,
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
