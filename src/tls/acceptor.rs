//! One TLS handshake with a deadline, refusing unknown names with `unrecognized_name`.
//!
//! Run by the `:443` accept loop on each connection's own task. Reads the [`CertStore`]
//! snapshot, and the [`ChallengeCerts`] for a CA's TLS-ALPN-01 validation (a handshake offering
//! ALPN `acme-tls/1`, which gets the challenge certificate and nothing else); writes nothing
//! shared.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::{ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::observe::metrics::{HandshakeMetrics, HandshakeResult};
use crate::pki::{crypto_provider, iana_name};
use crate::tls::{ACME_TLS_ALPN, CertStore, ChallengeCerts, OnDemandCerts, SniResolver};

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
    /// For validation handshakes only: ALPN `acme-tls/1`, certificates from `challenges`.
    challenge_config: Arc<ServerConfig>,
    challenges: ChallengeCerts,
    /// Certificates for names no site lists, obtained at their first handshake.
    on_demand: Option<Arc<dyn OnDemandCerts>>,
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
    /// A CA's TLS-ALPN-01 validation got its challenge certificate; there is nothing to serve
    /// on such a connection.
    #[error("answered the ACME tls-alpn-01 validation for {sni}")]
    AcmeChallenge {
        /// The name validated.
        sni: String,
    },
    /// The peer sent something that is not a valid handshake, or the connection broke.
    #[error("TLS handshake failed")]
    Io(#[source] io::Error),
}

impl TlsAcceptor {
    /// TLS 1.2 and 1.3 with the `cipher_suites` named (all when empty), ALPN h2 and http/1.1,
    /// resumption by rotating tickets and a bounded cache; `challenges` answers TLS-ALPN-01.
    ///
    /// # Errors
    /// When no suite is left for the protocol versions, or the ticketer cannot start.
    pub fn new(
        store: CertStore,
        challenges: ChallengeCerts,
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
        // The CA's validator is not a client of the sites: every suite, no resumption.
        let mut challenge_config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(challenges.clone()));
        challenge_config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        challenge_config.session_storage = Arc::new(NoServerSessionStorage {});
        challenge_config.send_tls13_tickets = 0;
        Ok(Self {
            config: Arc::new(config),
            store,
            challenge_config: Arc::new(challenge_config),
            challenges,
            on_demand: None,
            handshake_timeout,
            metrics: HandshakeMetrics::new(),
        })
    }

    /// Has handshakes for names an on-demand site covers wait for their certificate.
    #[must_use]
    pub fn with_on_demand(mut self, on_demand: Arc<dyn OnDemandCerts>) -> Self {
        self.on_demand = Some(on_demand);
        self
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
        // The wait for an on-demand certificate comes on top of the client's own time.
        let allowance = self
            .on_demand
            .as_ref()
            .map_or(Duration::ZERO, |o| o.timeout());
        let result = tokio::time::timeout(self.handshake_timeout + allowance, self.handshake(io))
            .await
            .unwrap_or(Err(HandshakeError::Timeout));
        let label = match &result {
            Ok((_, handshake)) if handshake.version == "TLSv1_2" => HandshakeResult::Tls12,
            Ok(_) => HandshakeResult::Tls13,
            Err(HandshakeError::UnknownName { .. }) => HandshakeResult::UnknownName,
            Err(HandshakeError::Timeout) => HandshakeResult::Timeout,
            Err(HandshakeError::AcmeChallenge { .. }) => HandshakeResult::AcmeChallenge,
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
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let validation = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|protocol| protocol == ACME_TLS_ALPN));
        if validation {
            return self.answer_challenge(start, sni).await;
        }
        // The common case, a name with its certificate, costs one lookup.
        let named = sni
            .as_deref()
            .and_then(|name| self.store.lookup_named(name));
        if named.is_none() {
            if let (Some(on_demand), Some(name)) = (&self.on_demand, sni.as_deref())
                && on_demand.covers(name)
            {
                // Only this connection waits; the outcome shows in the lookup below.
                let _ = tokio::time::timeout(on_demand.timeout(), on_demand.obtain(name)).await;
            }
            if self.store.lookup(sni.as_deref()).is_none() {
                // rustls would answer access_denied; RFC 6066 names the right alert.
                // Best effort: the connection is closed either way.
                let _ = start.io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
                return Err(HandshakeError::UnknownName { sni });
            }
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

    /// A handshake offering `acme-tls/1` gets the pending challenge certificate for its name,
    /// or `unrecognized_name`: never a site's certificate (RFC 8737 §3), and never the
    /// challenge certificate without that ALPN.
    async fn answer_challenge<IO, T>(
        &self,
        mut start: tokio_rustls::StartHandshake<IO>,
        sni: Option<String>,
    ) -> Result<T, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let sni = match sni {
            Some(sni) if self.challenges.find(&sni).await.is_some() => sni,
            sni => {
                // Best effort: the connection is closed either way.
                let _ = start.io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
                return Err(HandshakeError::UnknownName { sni });
            }
        };
        let mut stream = start
            .into_stream(self.challenge_config.clone())
            .await
            .map_err(HandshakeError::Io)?;
        // The validator closes once it has seen the certificate; say goodbye in case it waits.
        let _ = stream.shutdown().await;
        Err(HandshakeError::AcmeChallenge { sni })
    }
}
