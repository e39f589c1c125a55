//! Opens one HTTP/1.1 connection to an origin: TCP (TCP_NODELAY), TLS for `https://` origins,
//! then either a lean `h1::Wire` or hyper's client handshake.
//!
//! A [`Connector`] is built with its `Upstream` (reading the route's `ca:` file once) and used by
//! `origin::Upstream::send` when the pool has no idle connection. The I/O of each hyper
//! connection runs in a task on the upstream's `TaskTracker`; it ends when the connection closes.
//! A lean connection has no task: the request that uses it does its I/O.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::config::UpstreamUrl;
use crate::proxy::body::UpstreamBody;
use crate::proxy::error::ConnectError;
use crate::proxy::upstream::h1::{OriginIo, Wire};

/// How an origin is reached once an address is chosen.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: Tls,
    tasks: TaskTracker,
}

#[derive(Clone)]
enum Tls {
    /// `http://`
    Plain,
    /// `https://`: verified against the roots, as the URL's host.
    Client {
        connector: TlsConnector,
        name: ServerName<'static>,
    },
    /// `https://` whose `ca:` file could not be read: every connect fails (logged once, here).
    NoRoots(Arc<Path>),
    /// `https://` whose host cannot be a TLS server name: every connect fails.
    BadName,
}

impl Connector {
    /// The connector for `url`; `ca` replaces the system roots for `https://` origins.
    /// Connection tasks are spawned on `tasks`.
    pub(crate) fn new(url: &UpstreamUrl, ca: Option<&Path>, tasks: TaskTracker) -> Self {
        let tls = if url.is_https() {
            match (client_config(ca), server_name(url)) {
                (Ok(config), Some(name)) => Tls::Client {
                    connector: TlsConnector::from(config),
                    name,
                },
                (Err(path), _) => Tls::NoRoots(path),
                (Ok(_), None) => {
                    error!(upstream = %url, "upstream host is not a valid TLS server name; connects fail");
                    Tls::BadName
                }
            }
        } else {
            Tls::Plain
        };
        Self { tls, tasks }
    }

    /// Connects to `addr` and returns the request half; the connection half runs in a task.
    ///
    /// # Errors
    /// What failed, for the metrics (`connect`) and the 502 log line.
    ///
    /// # Cancel safety
    /// Dropping the future closes the half-made connection.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<SendRequest<UpstreamBody>, ConnectError> {
        // One limit for TCP, TLS and the HTTP handshake: an origin slow at any step is as bad.
        let connected = tokio::time::timeout(timeout, async {
            let io = self.dial(addr).await?;
            self.handshake(addr, io).await
        });
        match connected.await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout { addr, timeout }),
        }
    }

    /// Connects to `addr` for lean exchanges (see `h1`).
    ///
    /// # Errors
    /// As [`Connector::connect`].
    ///
    /// # Cancel safety
    /// Dropping the future closes the half-made connection.
    pub(crate) async fn connect_wire(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Wire, ConnectError> {
        match tokio::time::timeout(timeout, self.dial(addr)).await {
            Ok(io) => io.map(|io| Wire::new(io, addr)),
            Err(_) => Err(ConnectError::Timeout { addr, timeout }),
        }
    }

    /// TCP, then TLS for an `https://` origin.
    async fn dial(&self, addr: SocketAddr) -> Result<OriginIo, ConnectError> {
        match &self.tls {
            Tls::NoRoots(path) => {
                return Err(ConnectError::Roots {
                    path: path.to_path_buf(),
                });
            }
            Tls::BadName => return Err(ConnectError::ServerName),
            Tls::Plain | Tls::Client { .. } => {}
        }
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        // Small request heads must not wait for Nagle; large bodies fill segments anyway.
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY on an upstream connection");
        }
        match &self.tls {
            Tls::Client { connector, name } => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| ConnectError::Tls { addr, source })?;
                Ok(OriginIo::Tls(Box::new(tls)))
            }
            Tls::Plain | Tls::NoRoots(_) | Tls::BadName => Ok(OriginIo::Plain(tcp)),
        }
    }

    async fn handshake(
        &self,
        addr: SocketAddr,
        io: OriginIo,
    ) -> Result<SendRequest<UpstreamBody>, ConnectError> {
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        // One task per connection, not per request. `with_upgrades` keeps the I/O available to
        // `hyper::upgrade::on` after a 101, so WebSocket tunnels work.
        self.tasks.spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%addr, %error, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = match &self.tls {
            Tls::Plain => "plain",
            Tls::Client { .. } => "tls",
            Tls::NoRoots(_) => "tls without roots",
            Tls::BadName => "tls without a server name",
        };
        f.debug_struct("Connector").field("tls", &tls).finish()
    }
}

/// rustls client settings: `ca` (or the system roots), ALPN http/1.1 only, since the pool
/// speaks HTTP/1.1. On an unreadable `ca` file, its path (the error is logged here).
fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, Arc<Path>> {
    let roots = match ca {
        Some(path) => Arc::new(file_roots(path).ok_or_else(|| Arc::from(path))?),
        None => system_roots(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file, or `None` (logged) when it cannot be read or holds none.
fn file_roots(path: &Path) -> Option<RootCertStore> {
    let certs: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(path) {
        Ok(iter) => iter.collect(),
        Err(error) => Err(error),
    };
    let mut roots = RootCertStore::empty();
    match certs {
        Ok(certs) => {
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added > 0 {
                return Some(roots);
            }
            error!(path = %path.display(), "CA file holds no usable certificate; connects to this upstream fail");
        }
        Err(error) => {
            error!(path = %path.display(), %error, "cannot read CA file; connects to this upstream fail");
        }
    }
    None
}

/// The operating system's roots, loaded once per process; Mozilla's (webpki-roots) when the
/// system has none.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                warn!(%error, "cannot load a system root certificate");
            }
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(roots)
        })
        .clone()
}

/// The name the certificate must carry: the URL's host (an IP literal matches an IP SAN).
fn server_name(url: &UpstreamUrl) -> Option<ServerName<'static>> {
    let host = url.authority().host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_https_origins_by_the_url_host_without_brackets() {
        let url = UpstreamUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!(server_name(&url).unwrap().to_str(), "::1");
        let url = UpstreamUrl::parse("https://api.internal:8443").unwrap();
        assert_eq!(server_name(&url).unwrap().to_str(), "api.internal");
    }

    #[test]
    fn unreadable_ca_file_makes_a_connector_that_refuses() {
        let url = UpstreamUrl::parse("https://localhost:1").unwrap();
        let connector = Connector::new(
            &url,
            Some(Path::new("/nonexistent/ca.pem")),
            TaskTracker::new(),
        );
        assert!(matches!(connector.tls, Tls::NoRoots(_)));
    }
}
