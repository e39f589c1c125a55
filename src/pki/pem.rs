//! Certificate chains and private keys read from PEM, checked to belong together.
//!
//! Used by config validation (`tls: {cert, key}` files), start-up and reload (the same files),
//! the ACME store (issued certificates) and `rampart certs`.

use std::io;
use std::path::{Path, PathBuf};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate and key cannot be served together.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// A file could not be read.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
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
}

/// Reads and checks an operator's `{cert, key}` PEM files (static sites, reload, `rampart certs`).
///
/// # Errors
/// `Io` naming the unreadable file, otherwise as [`certified_key_from_pem`].
pub fn load_pem_files(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, PemError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| PemError::Io {
            path: path.to_owned(),
            source,
        })
    };
    certified_key_from_pem(provider, &read(cert)?, &read(key)?)
}

/// Builds a servable key from a PEM chain (leaf first) and a PEM private key.
///
/// # Errors
/// `Pem` when either is unparsable or empty, `KeyMismatch` when the key is not the leaf's.
pub fn certified_key_from_pem(
    provider: &CryptoProvider,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, PemError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Pem {
            what: "certificate chain",
            source,
        })?;
    if chain.is_empty() {
        return Err(PemError::EmptyChain);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| PemError::Pem {
        what: "private key",
        source,
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(PemError::KeyMismatch)
}
