//! Rampart's side of origin connections, over real sockets: `https://` origins verified against
//! the route's `ca:` (and refused without it), connection reuse, a pooled connection the origin
//! closed, a client leaving mid-download or hanging up while the origin thinks, the ways an origin may frame a response, and host-name
//! origins re-resolved through a real DNS server (pebble-challtestsrv) when their A record
//! changes.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::client::TlsStream;

use common::{BoxError, Env, Rampart, WAIT, empty, within};

/// The message a missing challtestsrv produces; the README's test command installs it.
const INSTALL_HINT: &str = "pebble-challtestsrv not found: run `apt-get install -y pebble`";

#[tokio::test]
async fn https_upstream_verified_against_the_route_ca_answers() {
    let env = Env::new();
    let origin = Origin::start("127.0.0.1:0", Some(tls_identity(&env)), "secure").await;
    let rampart = one_route(
        &env,
        &format!("https://127.0.0.1:{}", origin.addr.port()),
        "ca: upstream-ca.pem",
        "",
    )
    .await;
    let reply = rampart.client_h1("a.test").await.get("a.test", "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "secure");
}

#[tokio::test]
async fn https_upstream_outside_the_system_roots_is_refused_without_its_ca() {
    let env = Env::new();
    let origin = Origin::start("127.0.0.1:0", Some(tls_identity(&env)), "secure").await;
    let rampart = one_route(
        &env,
        &format!("https://127.0.0.1:{}", origin.addr.port()),
        "",
        "",
    )
    .await;
    let reply = rampart.client_h1("a.test").await.get("a.test", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn sequential_requests_reuse_one_origin_connection() {
    let env = Env::new();
    let (origin, rampart) = plain_behind_rampart(&env).await;
    for _ in 0..5 {
        // A new client connection each time: reuse must not depend on the downstream side.
        let reply = rampart.client_h1("a.test").await.get("a.test", "/").await;
        assert_eq!(reply.text(), "plain");
    }
    assert_eq!(*origin.accepted.borrow(), 1, "origin connections accepted");
}

#[tokio::test]
async fn sequential_requests_reuse_one_tls_origin_connection() {
    let env = Env::new();
    let origin = Origin::start("127.0.0.1:0", Some(tls_identity(&env)), "secure").await;
    let upstream = format!("https://127.0.0.1:{}", origin.addr.port());
    let rampart = one_route(&env, &upstream, "ca: upstream-ca.pem", "").await;
    for _ in 0..5 {
        let reply = rampart.client_h1("a.test").await.get("a.test", "/").await;
        assert_eq!(reply.text(), "secure");
    }
    assert_eq!(*origin.accepted.borrow(), 1, "origin connections accepted");
}

#[tokio::test]
async fn pooled_connection_the_origin_closed_while_idle_does_not_fail_the_next_request() {
    let env = Env::new();
    let (origin, rampart) = plain_behind_rampart(&env).await;
    let mut client = rampart.client_h1("a.test").await;
    assert_eq!(client.get("a.test", "/").await.text(), "plain");
    origin.close_idle().await;
    let reply = client.get("a.test", "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "plain");
    assert_eq!(
        *origin.accepted.borrow(),
        2,
        "a fresh connection replaced it"
    );
}

#[tokio::test]
async fn client_leaving_mid_download_closes_the_origin_connection_instead_of_pooling_it()
-> Result<(), BoxError> {
    let env = Env::new();
    let (origin, rampart) = plain_behind_rampart(&env).await;
    let mut client = rampart.client_h1("a.test").await;
    let request = client
        .request(http::Method::GET, "a.test", "/big")
        .body(empty())?;
    let response = within(WAIT, "the download's head", client.send(request)).await?;
    let mut body = response.into_body();
    let first = within(WAIT, "the first bytes", body.frame()).await;
    assert!(first.is_some_and(|frame| frame.is_ok()), "download started");
    drop(body);
    client.abort();
    origin.all_closed("the origin connection to close").await;
    let reply = rampart.client_h1("a.test").await.get("a.test", "/").await;
    assert_eq!(reply.text(), "plain");
    assert_eq!(
        *origin.accepted.borrow(),
        2,
        "the broken connection was not reused"
    );
    Ok(())
}

/// Sends `GET /hang` on a raw HTTP/1.1 connection, waits until the origin has it, then hangs
/// up: `politely` with a TLS close_notify and FIN (keeping the socket), or by dropping the
/// connection. Rampart must abandon the request, closing its origin connection, long before
/// the response header timeout (30 s) would.
async fn hang_up_while_the_origin_thinks(politely: bool) -> Result<(), BoxError> {
    use tokio::io::AsyncWriteExt;

    let env = Env::new();
    let (origin, rampart) = plain_behind_rampart(&env).await;
    let mut tls = raw_h1(&rampart).await?;
    tls.write_all(b"GET /hang HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await?;
    let mut hanging = origin.hanging.clone();
    within(
        WAIT,
        "the request at the origin",
        hanging.wait_for(|n| *n == 1),
    )
    .await?;
    let kept = if politely {
        tls.shutdown().await?;
        Some(tls)
    } else {
        drop(tls);
        None
    };
    origin.all_closed("the origin connection to close").await;
    drop(kept);
    Ok(())
}

#[tokio::test]
async fn client_dropping_its_connection_while_the_origin_thinks_abandons_the_origin_request()
-> Result<(), BoxError> {
    hang_up_while_the_origin_thinks(false).await
}

#[tokio::test]
async fn client_closing_tls_while_the_origin_thinks_abandons_the_origin_request()
-> Result<(), BoxError> {
    hang_up_while_the_origin_thinks(true).await
}

#[tokio::test]
async fn a_request_arriving_while_the_previous_one_is_answered_is_answered_next()
-> Result<(), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = Env::new();
    let (_origin, rampart) = plain_behind_rampart(&env).await;
    let mut tls = raw_h1(&rampart).await?;
    // The second request is sent while the origin holds the first (300 ms): unread bytes on
    // the socket while a request is open are not a hang-up.
    tls.write_all(b"GET /slow HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answers = Vec::new();
    within(WAIT, "both answers", tls.read_to_end(&mut answers)).await?;
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK").count(),
        2,
        "answers: {answers}"
    );
    assert!(answers.ends_with("plain"), "answers: {answers}");
    Ok(())
}

#[tokio::test]
async fn host_name_upstream_follows_its_a_record_when_re_resolved() {
    let dns = ChallTestSrv::start();
    let (one, two) = same_port_origins().await;
    dns.set_a("origin.test", "127.0.0.2").await;
    let env = Env::new();
    let upstream = format!(
        "upstream: {{ resolve_every: 1s, nameservers: [\"127.0.0.1:{}\"] }}\n",
        dns.dns_port
    );
    let url = format!("http://origin.test:{}", one.addr.port());
    let rampart = one_route(&env, &url, "", &upstream).await;
    let reply = rampart.client_h1("a.test").await.get("a.test", "/").await;
    assert_eq!(reply.text(), "one");

    dns.set_a("origin.test", "127.0.0.3").await;
    // Re-resolution runs every second; give it a generous, bounded number of chances.
    let mut seen = Vec::new();
    for _ in 0..50 {
        let reply = rampart.client_h1("a.test").await.get("a.test", "/").await;
        seen.push(reply.text());
        if reply.text() == "two" {
            assert_eq!(*two.accepted.borrow(), 1);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("requests never reached the new address; answers: {seen:?}");
}

/// Raw HTTP/1.1 answers by path, written as an origin might frame them.
fn framed_answer(method: &str, path: &str) -> &'static [u8] {
    match (method, path) {
        ("GET", "/chunked") => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;note=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 11\r\n\r\n"
        }
        ("HEAD", "/head") => b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
        ("GET", "/early") => {
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        }
        ("GET", "/close") => b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    }
}

#[tokio::test]
async fn every_framing_an_origin_may_use_reaches_the_client_intact() -> Result<(), BoxError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = Env::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                    seen.drain(..end + 4);
                    let mut line = head.split(' ');
                    let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
                    if tcp.write_all(framed_answer(method, path)).await.is_err() || path == "/close"
                    {
                        return;
                    }
                }
            });
        }
    });
    let rampart = one_route(&env, &format!("http://{addr}"), "", "").await;
    let mut client = rampart.client_h1("a.test").await;

    // Chunked, with a chunk extension and a trailer: the data arrives whole.
    let response = client
        .send(
            client
                .request(http::Method::GET, "a.test", "/chunked")
                .body(empty())?,
        )
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await?;
    assert_eq!(collected.to_bytes(), "hello world");

    // HEAD: the origin's Content-Length describes a body that is never sent.
    let reply = client
        .fetch(
            client
                .request(http::Method::HEAD, "a.test", "/head")
                .body(empty())?,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-length"), Some("1234"));
    assert!(reply.body.is_empty());

    // An interim 103 is skipped; the final answer follows on the same connection.
    let reply = client.get("a.test", "/early").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "ok")
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one origin connection so far"
    );

    // A body that ends when the origin closes: whole, and that connection is not reused.
    let reply = client.get("a.test", "/close").await;
    assert_eq!(reply.text(), "until the end");
    let reply = client.get("a.test", "/early").await;
    assert_eq!(reply.text(), "ok");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a new connection after the close"
    );
    server.abort();
    Ok(())
}

/// A TLS connection to `rampart` for `a.test` that has negotiated HTTP/1.1, to write requests
/// on by hand.
async fn raw_h1(rampart: &Rampart) -> std::io::Result<TlsStream<TcpStream>> {
    let tls = rampart
        .tls()
        .alpn(&["http/1.1"])
        .connect(rampart.https_addr(), Some("a.test"))
        .await?;
    Ok(tls.stream)
}

/// A plain-HTTP origin answering "plain", and Rampart in front of it (`one_route`).
async fn plain_behind_rampart(env: &Env) -> (Origin, Rampart) {
    let origin = Origin::start("127.0.0.1:0", None, "plain").await;
    let rampart = one_route(env, &origin.url(), "", "").await;
    (origin, rampart)
}

/// One site, `a.test`, with one route `/` to `upstream` (`route_extra` indented as route keys),
/// after `top` (top-level keys).
async fn one_route(env: &Env, upstream: &str, route_extra: &str, top: &str) -> Rampart {
    env.leaf("a", &["a.test"]);
    env.start(&format!(
        "{top}sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    routes:
      - path: /
        upstreams: [{{ url: \"{upstream}\", max_conns: 10 }}]
        {route_extra}
"
    ))
    .await
}

/// The origin's own CA (not in any system store) and a TLS acceptor for a `127.0.0.1` leaf
/// it issued. The CA's PEM is written to `upstream-ca.pem` in the env (the route's `ca:`).
fn tls_identity(env: &Env) -> TlsAcceptor {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key generation works");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Origin Test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("self-signing works");
    env.write("upstream-ca.pem", &ca.pem());
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key generation works");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("valid SAN");
    let leaf = params.signed_by(&key, &issuer).expect("signing works");
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("rcgen key PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("leaf matches key");
    TlsAcceptor::from(Arc::new(config))
}

/// An origin answering `text` (and 64 MiB of zeros on `/big`), counting connections.
struct Origin {
    addr: SocketAddr,
    accepted: watch::Receiver<usize>,
    open: watch::Receiver<usize>,
    /// Requests for `/hang` received (never answered).
    hanging: watch::Receiver<usize>,
    close_idle: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Origin {
    async fn start(bind: &str, tls: Option<TlsAcceptor>, text: &'static str) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind origin");
        Self::serve(listener, tls, text)
    }

    fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, text: &'static str) -> Self {
        let addr = listener.local_addr().expect("origin address");
        let (accepted_tx, accepted) = watch::channel(0);
        let (open_tx, open) = watch::channel(0);
        let open_tx = Arc::new(open_tx);
        let (close_idle, close_rx) = watch::channel(0u64);
        let (hanging_tx, hanging) = watch::channel(0);
        let hanging_tx = Arc::new(hanging_tx);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted_tx.send_modify(|n| *n += 1);
                open_tx.send_modify(|n| *n += 1);
                let (open_tx, close_rx, tls) = (open_tx.clone(), close_rx.clone(), tls.clone());
                let hanging = hanging_tx.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                serve_conn(stream, text, close_rx, hanging).await;
                            }
                        }
                        None => serve_conn(tcp, text, close_rx, hanging).await,
                    }
                    open_tx.send_modify(|n| *n -= 1);
                });
            }
        });
        Self {
            addr,
            accepted,
            open,
            hanging,
            close_idle,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every idle connection and waits until they are gone.
    async fn close_idle(&self) {
        self.close_idle.send_modify(|n| *n += 1);
        self.all_closed("idle origin connections to close").await;
    }

    /// Waits (up to `WAIT`, failing the test with `what`) until no connection to it is open.
    async fn all_closed(&self, what: &str) {
        let mut open = self.open.clone();
        within(WAIT, what, open.wait_for(|n| *n == 0))
            .await
            .expect("origin alive");
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `text`, except `/big` (64 MiB), `/slow` (`text` after 300 ms) and `/hang` (counted
/// in `hanging`, never answered).
async fn serve_conn<I>(
    io: I,
    text: &'static str,
    mut close: watch::Receiver<u64>,
    hanging: Arc<watch::Sender<usize>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let hanging = hanging.clone();
        async move { origin_answer(request, text, &hanging).await }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    close.mark_unchanged();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = close.changed() => {
            // Closes at once when idle, after the current response otherwise.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn origin_answer(
    request: Request<Incoming>,
    text: &'static str,
    hanging: &watch::Sender<usize>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    match request.uri().path() {
        "/hang" => {
            hanging.send_modify(|n| *n += 1);
            std::future::pending().await
        }
        "/slow" => tokio::time::sleep(Duration::from_millis(300)).await,
        _ => {}
    }
    let body = if request.uri().path() == "/big" {
        let chunks = std::iter::repeat_n(Bytes::from(vec![0u8; 64 * 1024]), 1024)
            .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
        StreamBody::new(futures_util::stream::iter(chunks)).boxed()
    } else {
        http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    };
    Ok(Response::new(body))
}

/// "one" on 127.0.0.2:PORT and "two" on 127.0.0.3:PORT (the same port, so one URL names both).
async fn same_port_origins() -> (Origin, Origin) {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2");
        let port = first.local_addr().expect("address").port();
        if let Ok(second) = TcpListener::bind(("127.0.0.3", port)).await {
            return (
                Origin::serve(first, None, "one"),
                Origin::serve(second, None, "two"),
            );
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// pebble-challtestsrv as a DNS server on free loopback ports, killed on drop.
struct ChallTestSrv {
    child: Child,
    dns_port: u16,
    management_port: u16,
}

impl ChallTestSrv {
    fn start() -> Self {
        let binary = std::env::var_os("CHALLTESTSRV")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|dir| dir.join("pebble-challtestsrv"))
                    .find(|path| path.is_file())
            })
            .unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let (dns_port, management_port) = (free_dns_port(), free_tcp_port());
        let child = Command::new(&binary)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{management_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{INSTALL_HINT} ({}: {error})", binary.display()));
        let mut server = Self {
            child,
            dns_port,
            management_port,
        };
        server.wait_listening();
        server
    }

    /// Polls until both the management and the DNS (TCP) ports accept.
    fn wait_listening(&mut self) {
        let deadline = std::time::Instant::now() + WAIT;
        for port in [self.management_port, self.dns_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("pebble-challtestsrv exited with {status}");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "pebble-challtestsrv does not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Makes `host` resolve to `address` only (`/add-a` appends, so clear first).
    async fn set_a(&self, host: &str, address: &str) {
        let clear = serde_json::json!({"host": host});
        self.manage("/clear-a", clear).await;
        let add = serde_json::json!({"host": host, "addresses": [address]});
        self.manage("/add-a", add).await;
    }

    async fn manage(&self, path: &str, body: serde_json::Value) {
        let body = body.to_string();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.management_port))
            .await
            .expect("challtestsrv management");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP handshake with challtestsrv");
        tokio::spawn(conn);
        let request = Request::post(path)
            .header(
                http::header::HOST,
                format!("127.0.0.1:{}", self.management_port),
            )
            .body(common::full(body))
            .expect("valid request");
        let response = within(WAIT, "challtestsrv /add-a", sender.send_request(request))
            .await
            .expect("challtestsrv answers");
        assert!(
            response.status().is_success(),
            "/add-a answered {}",
            response.status()
        );
    }
}

impl Drop for ChallTestSrv {
    fn drop(&mut self) {
        // Errors mean it is gone already, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A port free for both UDP and TCP (DNS listens on both).
fn free_dns_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("udp address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}
