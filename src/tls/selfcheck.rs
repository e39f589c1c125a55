//! Asks our own listener which certificate it serves for a name, after a publish.
//!
//! Used once per name after the ACME task publishes a certificate, to catch "renewed but not
//! served". The handshake does not verify the chain on purpose: the question is *which*
//! certificate is served (its serial), not whether a client would trust it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{LeafFacts, TlsError};

/// Why the served certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    /// Connecting or handshaking failed.
    #[error("cannot handshake with {addr} as {name}")]
    Handshake {
        /// Our listener.
        addr: SocketAddr,
        /// The SNI used.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The handshake did not finish in time.
    #[error("handshake with {addr} as {name} timed out")]
    Timeout {
        /// Our listener.
        addr: SocketAddr,
        /// The SNI used.
        name: String,
    },
    /// The name is not a valid SNI, or the served certificate did not parse.
    #[error("cannot read the certificate served for {name}")]
    Certificate {
        /// The SNI used.
        name: String,
        /// Cause, when it was a parse failure.
        #[source]
        source: Option<TlsError>,
    },
}

/// The serial (lower-case hex) of the leaf that `addr` serves for `name`.
///
/// # Errors
/// See [`SelfCheckError`].
pub async fn served_serial(
    provider: Arc<CryptoProvider>,
    addr: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<String, SelfCheckError> {
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|_| SelfCheckError::Certificate {
            name: name.to_owned(),
            source: None,
        })?;
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| SelfCheckError::Handshake {
            addr,
            name: name.to_owned(),
            source: std::io::Error::other(source),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
    };
    let tls = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| SelfCheckError::Timeout {
            addr,
            name: name.to_owned(),
        })?
        .map_err(|source| SelfCheckError::Handshake {
            addr,
            name: name.to_owned(),
            source,
        })?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| SelfCheckError::Certificate {
            name: name.to_owned(),
            source: None,
        })?;
    LeafFacts::parse(leaf)
        .map(|facts| facts.serial)
        .map_err(|source| SelfCheckError::Certificate {
            name: name.to_owned(),
            source: Some(source),
        })
}

/// Accepts any chain but still checks the handshake signature, so the peer proves it holds the
/// key of the certificate it showed.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
