//! Rampart in process: a temporary directory with certificates and `rampart.yaml`, loaded with
//! `config::load` and served by `Server::start` on `Listeners::loopback()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart::{Listeners, Server};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

use super::client::{HttpClient, Tls, TlsClient};
use super::{Leaf, TestCa, within};

/// Keys every test config shares. The listen addresses are only validated: tests hand Rampart
/// already-bound ephemeral listeners. `storage` is relative, so it lands in the temp directory.
pub const HEADER: &str = "\
listen: { https: \"127.0.0.1:8443\", http: \"127.0.0.1:8080\" }
storage: storage
log: { format: text, level: warn }
shutdown_grace: 5s
";

/// A temporary directory holding the config, certificates and storage, and the CA behind them.
pub struct Env {
    pub dir: TempDir,
    pub ca: TestCa,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            ca: TestCa::new(),
        }
    }

    /// Issues a leaf for `names` and writes it as `STEM.pem` / `STEM.key` next to the config.
    pub fn leaf(&self, stem: &str, names: &[&str]) -> CertificateDer<'static> {
        let leaf: Leaf = self.ca.leaf(names);
        leaf.write(self.dir.path(), stem);
        leaf.der
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where `storage: storage` resolves.
    pub fn storage(&self) -> PathBuf {
        self.path("storage")
    }

    /// Writes [`HEADER`] followed by `body` as `rampart.yaml`, returning its path.
    pub fn write_config(&self, body: &str) -> PathBuf {
        let path = self.path("rampart.yaml");
        std::fs::write(&path, format!("{HEADER}{body}")).expect("temp dir is writable");
        path
    }

    /// Writes `text` to `name` in the temp directory, returning its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("temp dir is writable");
        path
    }

    /// Writes the config and starts Rampart on it; clients trust the test CA.
    pub async fn start(&self, body: &str) -> Rampart {
        let path = self.write_config(body);
        Rampart::start(&path, self.ca.roots()).await
    }

    /// Starts Rampart with one site, `a.test` (its certificate issued here): `site_keys` are
    /// its further keys and `routes` its route list, YAML indented to sit in the site.
    pub async fn start_a_test(&self, site_keys: &str, routes: &str) -> Rampart {
        self.leaf("a", &["a.test"]);
        self.start(&format!(
            "sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
{site_keys}    routes:
{routes}"
        ))
        .await
    }

    /// Starts Rampart with one site, `a.test` (its certificate issued here), proxying to
    /// `origin`: `top` is further top-level YAML (e.g. `downstream: {...}`), `site_keys` the
    /// site's further keys, indented to sit in it.
    pub async fn start_a_test_to(&self, origin: &str, top: &str, site_keys: &str) -> Rampart {
        self.leaf("a", &["a.test"]);
        self.start(&format!(
            "{top}
sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    upstreams: [{origin}]
{site_keys}"
        ))
        .await
    }

    /// [`Env::start_a_test`] with one route, at `/`, whose settings are `route` (indented).
    pub async fn start_a_test_route(&self, route: &str) -> Rampart {
        self.start_a_test("", &format!("      - path: /\n{route}"))
            .await
    }
}

/// A running in-process Rampart.
pub struct Rampart {
    server: Server,
    roots: RootCertStore,
}

impl Rampart {
    /// Loads `config` and serves it on fresh loopback listeners. `Server::start` returning is
    /// the readiness signal: the listeners are bound and accepting.
    pub async fn start(config: &Path, roots: RootCertStore) -> Self {
        let config =
            rampart::config::load(config).unwrap_or_else(|e| panic!("test config is valid: {e}"));
        let listeners = Listeners::loopback().expect("loopback listeners");
        let server = within(
            super::WAIT,
            "Server::start",
            Server::start(config, listeners),
        )
        .await
        .unwrap_or_else(|e| panic!("server starts: {}", chain(&e)));
        Self { server, roots }
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.server.https_addr()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.server
            .http_addr()
            .expect("tests keep the http listener")
    }

    /// A TLS client trusting this instance's CA, offering h2 and http/1.1.
    pub fn tls(&self) -> TlsClient {
        TlsClient::new(self.roots.clone())
    }

    /// Handshakes with `sni`, offering h2 and http/1.1.
    pub async fn connect(&self, sni: &str) -> std::io::Result<Tls> {
        self.tls().connect(self.https_addr(), Some(sni)).await
    }

    /// The certificate served for `sni`, verified against `roots`.
    pub async fn connect_with_roots(
        &self,
        roots: RootCertStore,
        sni: &str,
    ) -> CertificateDer<'static> {
        let tls = TlsClient::new(roots)
            .connect(self.https_addr(), Some(sni))
            .await;
        tls.unwrap_or_else(|e| panic!("{sni}: {e}")).peer_cert
    }

    /// An HTTP client on a new connection with `sni`, speaking whatever ALPN picked (h2).
    pub async fn client(&self, sni: &str) -> HttpClient {
        HttpClient::handshake(self.connect(sni).await.expect("handshake")).await
    }

    /// A new connection with `sni` that offers only HTTP/1.1, for requests written by hand.
    pub async fn h1_stream(&self, sni: &str) -> TlsStream<TcpStream> {
        self.connect_offering(sni, &["http/1.1"]).await.stream
    }

    /// A WebSocket to `url` (`wss://a.test/ws`) over a new HTTP/1.1 connection with `sni`
    /// (RFC 6455 upgrades need HTTP/1.1).
    pub async fn websocket(&self, sni: &str, url: &str) -> WebSocketStream<TlsStream<TcpStream>> {
        let stream = self.h1_stream(sni).await;
        let (socket, response) = within(
            super::WAIT,
            "the WebSocket handshake",
            tokio_tungstenite::client_async(url, stream),
        )
        .await
        .expect("WebSocket upgrade through the proxy");
        assert_eq!(response.status(), 101);
        socket
    }

    /// An HTTP/1.1-only client on a new connection with `sni`.
    pub async fn client_h1(&self, sni: &str) -> HttpClient {
        HttpClient::handshake(self.connect_offering(sni, &["http/1.1"]).await).await
    }

    /// A finished handshake with `sni` that offered exactly `alpn`.
    pub async fn connect_offering(&self, sni: &str, alpn: &[&str]) -> Tls {
        let client = self.tls().alpn(alpn);
        let tls = client.connect(self.https_addr(), Some(sni)).await;
        tls.expect("handshake")
    }

    /// Drains and stops, failing the test if open requests overran the grace period.
    pub async fn stop(self) {
        let drained = within(Duration::from_secs(15), "shutdown", self.server.shutdown()).await;
        assert!(
            drained,
            "connections were still open when the grace period ended"
        );
    }
}

/// The error and its causes on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
