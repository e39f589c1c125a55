//! One TLS handshake with a deadline, refusing unknown names with `unrecognized_name`.
//!
//! Run by the `:443` accept loop on each connection's own task. Reads the [`CertStore`]
//! snapshot; writes nothing shared.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::ServerSessionMemoryCache;
use rustls::{ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::observe::metrics::{HandshakeMetrics, HandshakeResult};
use crate::pki::{crypto_provider, iana_name};
use crate::tls::{CertStore, SniResolver};

/// Bounded session-ID cache for TLS 1.2 resumption (TLS 1.3 uses stateless tickets).
const SESSION_CACHE_ENTRIES: usize = 10_240;

/// A fatal `unrecognized_name` alert record (RFC 6066 §3), sent in plaintext before any keys exist.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// [`crypto_provider`] offering only `names` (IANA names, checked by the config), or all of
/// its suites when `names` is empty.
fn provider_with_suites(names: &[String]) -> Arc<CryptoProvider> {
    let mut provider = Arc::unwrap_or_clone(crypto_provider());
    if !names.is_empty() {
        provider
            .cipher_suites
            .retain(|suite| iana_name(*suite).is_some_and(|n| names.iter().any(|w| w == n)));
    }
    Arc::new(provider)
}

/// Accepts TLS connections for the certificates in a [`CertStore`].
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    store: CertStore,
    handshake_timeout: Duration,
    /// Pre-created counter handles: a handshake only adds to atomics.
    metrics: HandshakeMetrics,
}

/// What a finished handshake negotiated.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// The SNI the client sent, lower-case.
    pub sni: Option<Arc<str>>,
    /// Whether ALPN chose HTTP/2.
    pub is_h2: bool,
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: &'static str,
}

/// Why a handshake did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish within the deadline.
    #[error("TLS handshake timed out")]
    Timeout,
    /// No certificate for the name and no default site.
    #[error("no certificate for server name {sni:?}")]
    UnknownName {
        /// The SNI asked for.
        sni: Option<String>,
    },
    /// The peer sent something that is not a valid handshake, or the connection broke.
    #[error("TLS handshake failed")]
    Io(#[source] io::Error),
}

impl TlsAcceptor {
    /// TLS 1.2 and 1.3 with the `cipher_suites` named (all when empty), ALPN h2 and http/1.1,
    /// resumption by rotating tickets and a bounded cache.
    ///
    /// # Errors
    /// When no suite is left for the protocol versions, or the ticketer cannot start.
    pub fn new(
        store: CertStore,
        handshake_timeout: Duration,
        cipher_suites: &[String],
    ) -> Result<Self, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(provider_with_suites(cipher_suites))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver::new(store.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        // Ticket keys rotate every 6 hours; old tickets stay valid for one more period.
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        Ok(Self {
            config: Arc::new(config),
            store,
            handshake_timeout,
            metrics: HandshakeMetrics::new(),
        })
    }

    /// Runs the handshake on `io`, refusing names with no certificate.
    ///
    /// # Errors
    /// See [`HandshakeError`]; the connection is then to be dropped.
    pub async fn accept<IO>(&self, io: IO) -> Result<(TlsStream<IO>, Handshake), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.handshake_timeout, self.handshake(io))
            .await
            .unwrap_or(Err(HandshakeError::Timeout));
        let label = match &result {
            Ok((_, handshake)) if handshake.version == "TLSv1_2" => HandshakeResult::Tls12,
            Ok(_) => HandshakeResult::Tls13,
            Err(HandshakeError::UnknownName { .. }) => HandshakeResult::UnknownName,
            Err(HandshakeError::Timeout) => HandshakeResult::Timeout,
            Err(HandshakeError::Io(_)) => HandshakeResult::Error,
        };
        self.metrics.record(label, started.elapsed());
        result
    }

    async fn handshake<IO>(&self, io: IO) -> Result<(TlsStream<IO>, Handshake), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(HandshakeError::Io)?;
        let sni = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        if self.store.lookup(sni.as_deref()).is_none() {
            // rustls would answer access_denied; RFC 6066 names the right alert.
            // Best effort: the connection is closed either way.
            let _ = start.io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            return Err(HandshakeError::UnknownName { sni });
        }
        let stream = start
            .into_stream(self.config.clone())
            .await
            .map_err(HandshakeError::Io)?;
        let (_, conn) = stream.get_ref();
        let handshake = Handshake {
            sni: sni.map(Arc::from),
            is_h2: conn.alpn_protocol() == Some(b"h2"),
            version: match conn.protocol_version() {
                Some(ProtocolVersion::TLSv1_2) => "TLSv1_2",
                _ => "TLSv1_3",
            },
        };
        Ok((stream, handshake))
    }
}
