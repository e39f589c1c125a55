//! Errors of the TLS layer: loading, checking and issuing certificates.

use std::io;
use std::path::PathBuf;

use crate::pki::{HostName, PemError};

/// What went wrong while preparing or publishing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate and key do not parse or do not belong together.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The leaf did not parse as X.509.
    #[error("the certificate is not valid X.509")]
    X509,
    /// The certificate does not name one of the site's hosts.
    #[error("certificate for site {site} does not name {host}")]
    NameMissing {
        /// Site name.
        site: String,
        /// The host it lacks.
        host: HostName,
    },
    /// Now is outside notBefore..notAfter.
    #[error("certificate for site {site} is not valid now")]
    OutOfDate {
        /// Site name.
        site: String,
    },
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// rcgen refused to build a key or certificate.
    #[error("cannot issue a certificate for site {site}")]
    Issue {
        /// Site name (or "internal CA").
        site: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// The generated tls-alpn-01 key could not be loaded for signing.
    #[error("cannot load the challenge certificate's key: {0}")]
    ChallengeKey(String),
}
