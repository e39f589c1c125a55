//! The test client: TLS with a chosen SNI and ALPN (tokio-rustls), and HTTP/1.1 or HTTP/2 over
//! it (hyper's low-level `client::conn`), so each test controls exactly what goes on the wire.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore,
    SignatureScheme,
};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{WAIT, within};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies of the harness: anything that streams `Bytes`.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A finished handshake and what it negotiated.
pub struct Tls {
    pub stream: TlsStream<TcpStream>,
    pub alpn: Option<Vec<u8>>,
    pub peer_cert: CertificateDer<'static>,
    pub version: ProtocolVersion,
}

/// Connects with `sni`, offering `alpn`, verifying the server against `roots` for `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&str],
    roots: &RootCertStore,
) -> io::Result<Tls> {
    TlsClient::new(roots.clone())
        .alpn(alpn)
        .connect(addr, Some(sni))
        .await
}

/// How to connect: trust, ALPN offer, which name to verify, which TLS versions.
#[derive(Clone)]
pub struct TlsClient {
    roots: Arc<RootCertStore>,
    alpn: Vec<Vec<u8>>,
    verify_as: Option<String>,
    tls12_only: bool,
    receive_buffer: Option<u32>,
    send_buffer: Option<u32>,
    local: Option<std::net::IpAddr>,
}

impl TlsClient {
    /// Trusts `roots`, offers h2 and http/1.1, verifies the SNI name, TLS 1.2 and 1.3.
    pub fn new(roots: RootCertStore) -> Self {
        Self {
            roots: Arc::new(roots),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            verify_as: None,
            tls12_only: false,
            receive_buffer: None,
            send_buffer: None,
            local: None,
        }
    }

    /// Offers exactly `protocols` (none when empty).
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Verifies the server certificate for `name` whatever SNI is sent (or none).
    pub fn verify_as(mut self, name: &str) -> Self {
        self.verify_as = Some(name.to_owned());
        self
    }

    /// Asks the kernel for a receive buffer of `bytes` (it doubles it): a client that does
    /// not read then stops the server's writes after a few KiB.
    pub fn receive_buffer(mut self, bytes: u32) -> Self {
        self.receive_buffer = Some(bytes);
        self
    }

    /// Asks the kernel for a send buffer of `bytes` (it doubles it, and no longer grows it):
    /// a server that stops reading then stops the client's writes after a few KiB.
    pub fn local_address(mut self, ip: std::net::IpAddr) -> Self {
        self.local = Some(ip);
        self
    }

    pub fn send_buffer(mut self, bytes: u32) -> Self {
        self.send_buffer = Some(bytes);
        self
    }

    /// Offers TLS 1.2 only.
    pub fn tls12_only(mut self) -> Self {
        self.tls12_only = true;
        self
    }

    /// Handshakes with `sni` (`None`: no server_name extension at all).
    pub async fn connect(&self, addr: SocketAddr, sni: Option<&str>) -> io::Result<Tls> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(io::Error::other)?;
        let verify_name = self
            .verify_as
            .as_deref()
            .or(sni)
            .expect("a name to verify: pass an SNI or verify_as");
        let mut config = match (&self.verify_as, sni) {
            (Some(name), Some(_)) => {
                let inner =
                    WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider)
                        .build()
                        .map_err(io::Error::other)?;
                let name = ServerName::try_from(name.clone()).map_err(io::Error::other)?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(VerifyAs { inner, name }))
                    .with_no_client_auth()
            }
            _ => builder
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        // Without SNI, rustls still verifies against the name given to `connect`.
        config.enable_sni = sni.is_some();
        let server_name = ServerName::try_from(sni.unwrap_or(verify_name).to_owned())
            .map_err(io::Error::other)?;
        let handshake = async {
            let tcp = match (self.receive_buffer, self.send_buffer, self.local) {
                (None, None, None) => TcpStream::connect(addr).await?,
                (receive, send, local) => {
                    let socket = if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    if let Some(bytes) = receive {
                        socket.set_recv_buffer_size(bytes)?;
                    }
                    if let Some(bytes) = send {
                        socket.set_send_buffer_size(bytes)?;
                    }
                    if let Some(ip) = local {
                        socket.bind(SocketAddr::new(ip, 0))?;
                    }
                    socket.connect(addr).await?
                }
            };
            TlsConnector::from(Arc::new(config))
                .connect(server_name, tcp)
                .await
        };
        let stream = within(WAIT, "the TLS handshake", handshake).await?;
        let (_, conn) = stream.get_ref();
        let peer_cert = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("a finished handshake has a server certificate")
            .clone()
            .into_owned();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let version = conn
            .protocol_version()
            .expect("a finished handshake has a version");
        Ok(Tls {
            stream,
            alpn,
            peer_cert,
            version,
        })
    }
}

/// The TLS alert the server sent, if that is why `error` happened.
pub fn tls_alert(error: &io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Standard chain validation, but for a fixed name instead of the SNI sent.
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sent: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One HTTP connection over a [`Tls`] stream, speaking what ALPN chose.
pub struct HttpClient {
    sender: Sender,
    conn: JoinHandle<()>,
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl HttpClient {
    /// HTTP/2 when ALPN chose `h2`, HTTP/1.1 otherwise.
    pub async fn handshake(tls: Tls) -> Self {
        let io = TokioIo::new(tls.stream);
        if tls.alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = within(
                WAIT,
                "the HTTP/2 handshake",
                http2::handshake(TokioExecutor::new(), io),
            )
            .await
            .expect("HTTP/2 handshake");
            let conn = tokio::spawn(async move {
                // The connection ends with an error when a test drops it: that is the point.
                let _ = conn.await;
            });
            Self {
                sender: Sender::H2(sender),
                conn,
            }
        } else {
            let (sender, conn) = http1::handshake(io).await.expect("HTTP/1.1 handshake");
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            Self {
                sender: Sender::H1(sender),
                conn,
            }
        }
    }

    /// The HTTP version this connection speaks.
    pub fn version(&self) -> Version {
        match self.sender {
            Sender::H1(_) => Version::HTTP_11,
            Sender::H2(_) => Version::HTTP_2,
        }
    }

    /// A request for `host` and `path` in the form this version needs: origin-form plus Host for
    /// HTTP/1.1, an absolute URI (which becomes `:authority`) for HTTP/2.
    pub fn request(&self, method: Method, host: &str, path: &str) -> http::request::Builder {
        match self.sender {
            Sender::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, host),
            Sender::H2(_) => Request::builder()
                .method(method)
                .uri(format!("https://{host}{path}"))
                .version(Version::HTTP_2),
        }
    }

    /// Sends `request` and returns the response head; the body streams.
    pub async fn send(&mut self, request: Request<Body>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }

    /// Sends `request` and reads the whole response.
    pub async fn fetch(&mut self, request: Request<Body>) -> Reply {
        let response = within(WAIT, "the response head", self.send(request))
            .await
            .expect("a response");
        let (parts, body) = response.into_parts();
        let body = within(WAIT, "the response body", body.collect())
            .await
            .expect("the whole body")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `GET path` for `host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        let request = self
            .request(Method::GET, host, path)
            .body(empty())
            .expect("valid request");
        self.fetch(request).await
    }

    /// Resolves when the server has closed the connection.
    pub async fn closed(&mut self) {
        // The driver task ends when the connection does; `abort` on drop is then a no-op.
        let _ = (&mut self.conn).await;
    }

    /// Closes the connection at once (the TCP socket is dropped).
    pub fn abort(self) {}
}

impl Drop for HttpClient {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as the echo upstream's JSON description of the request it got.
    pub fn echo(&self) -> Echoed {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected an echo reply ({e}), got {} {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("test headers are ASCII"))
    }
}

/// What the echo upstream saw.
#[derive(Debug, Deserialize)]
pub struct Echoed {
    /// The upstream's name, to tell origins apart.
    pub name: String,
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub version: String,
    /// Every header field in order, names lower-case.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Echoed {
    /// All values of header `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name`, failing the test when there are several.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "header {name} sent {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

/// `GET path` with `Host: host` over plain HTTP/1.1 (the `:80` listener).
pub async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    plain_get_with(addr, host, path, &[]).await
}

/// [`plain_get`] with further header `fields`.
pub async fn plain_get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> Reply {
    let tcp = within(WAIT, "a TCP connection", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut sender, conn) = http1::handshake::<_, Body>(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::get(path).header(http::header::HOST, host);
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let request = request.body(empty()).expect("valid request");
    let response = within(WAIT, "the response", sender.send_request(request))
        .await
        .expect("a response");
    let (parts, body) = response.into_parts();
    let body = within(WAIT, "the body", body.collect())
        .await
        .expect("the whole body")
        .to_bytes();
    conn.abort();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
