//! Errors of the TLS layer: loading, checking and issuing certificates.

use std::io;
use std::path::PathBuf;

use crate::config::HostName;

/// What went wrong while preparing or publishing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM block did not parse.
    #[error("cannot parse the {what} as PEM")]
    Pem {
        /// Which part: "certificate chain" or "private key".
        what: &'static str,
        /// Parser error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The PEM had no certificate.
    #[error("the certificate file holds no certificate")]
    EmptyChain,
    /// The private key is unusable or is not the leaf's.
    #[error("the private key does not match the certificate")]
    KeyMismatch(#[source] rustls::Error),
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
}
