//! The real client IP end to end: an untrusted peer's X-Forwarded-For is ignored and replaced,
//! a trusted proxy's is believed; PROXY protocol v1/v2 headers from a configured source name
//! the client, and are refused from anyone else; a configured source must send one.
//!
//! Rampart sees different peers because the client binds 127.0.0.2 (any 127/8 address is
//! loopback on Linux) before connecting.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use ppp::v2;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use common::{Env, HttpClient, Rampart, Tls, Upstream, WAIT, empty, logs, within};

/// The load balancer's address in these tests.
const BALANCER: [u8; 4] = [127, 0, 0, 2];

/// A config with `listen_extra` inside `listen:` and `top` before `sites:`, one site `c.test`
/// proxying to `origin`.
fn config(env: &Env, listen_extra: &str, top: &str, origin: &str) -> PathBuf {
    env.leaf("c", &["c.test"]);
    env.write(
        "rampart.yaml",
        &format!(
            "listen: {{ https: \"127.0.0.1:8443\", http: \"127.0.0.1:8080\"{listen_extra} }}
storage: storage
log: {{ format: text, level: warn }}
shutdown_grace: 5s
{top}sites:
  - hosts: [c.test]
    tls: {{ cert: c.pem, key: c.key }}
    upstreams: [{origin}]
"
        ),
    )
}

/// A TCP connection to `to` from `from` (port chosen by the kernel).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("127/8 is loopback");
    within(WAIT, "a TCP connection", socket.connect(to))
        .await
        .expect("connect")
}

/// TLS for `c.test` over an already-open `tcp` (after whatever the test wrote first).
async fn tls_over(env: &Env, tcp: TcpStream) -> std::io::Result<Tls> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(env.ca.roots())
        .with_no_client_auth();
    let name = ServerName::try_from("c.test").expect("valid name");
    let stream = within(
        WAIT,
        "the TLS handshake",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await?;
    let (_, conn) = stream.get_ref();
    let peer_cert = conn.peer_certificates().expect("a server certificate")[0].clone();
    let version = conn.protocol_version().expect("a version");
    Ok(Tls {
        stream,
        alpn: None,
        peer_cert,
        version,
    })
}

/// `GET /` with `xff` as X-Forwarded-For, over `client`; what the origin saw as
/// (X-Real-IP, X-Forwarded-For).
async fn forwarded(client: &mut HttpClient, xff: Option<&str>) -> (String, String) {
    let mut request = client.request(Method::GET, "c.test", "/");
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    let echoed = client
        .fetch(request.body(empty()).expect("valid request"))
        .await
        .echo();
    let real_ip = echoed.header("x-real-ip").expect("X-Real-IP").to_owned();
    let chain = echoed.header("x-forwarded-for").expect("XFF").to_owned();
    (real_ip, chain)
}

/// The `peer` of the access log line of `request_id`, waiting (bounded) for it: it is written
/// when the response body ends, which may be just after the client has read it.
async fn logged_peer(request_id: &str) -> String {
    let started = Instant::now();
    loop {
        let text = logs::captured();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "rampart::access" && v["request_id"] == request_id);
        if let Some(line) = found {
            return line["peer"].as_str().expect("peer is logged").to_owned();
        }
        assert!(
            started.elapsed() < WAIT,
            "no access log line for {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the server closed `tcp` without sending anything.
async fn closed_without_answer(mut tcp: TcpStream) -> bool {
    let mut buf = [0u8; 64];
    // A reset counts as closed too; both mean no response.
    matches!(
        within(WAIT, "the connection to close", tcp.read(&mut buf)).await,
        Ok(0) | Err(_)
    )
}

#[tokio::test]
async fn an_untrusted_peers_forwarded_for_is_ignored_and_replaced() {
    let env = Env::new();
    let origin = Upstream::echo("origin").await;
    let rampart = Rampart::start(&config(&env, "", "", &origin.url()), env.ca.roots()).await;
    let mut client = rampart.client_h1("c.test").await;
    let (real_ip, chain) = forwarded(&mut client, Some("203.0.113.66")).await;
    assert_eq!(
        real_ip, "127.0.0.1",
        "the spoofed address is not the client"
    );
    assert_eq!(
        chain, "127.0.0.1",
        "a client-written chain never reaches the origin"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_for_names_the_client() {
    let env = Env::new();
    let origin = Upstream::echo("origin").await;
    let top = "trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n";
    let rampart = Rampart::start(&config(&env, "", top, &origin.url()), env.ca.roots()).await;
    let mut client = rampart.client_h1("c.test").await;
    // Right to left past trusted hops: 10.1.1.1 is a trusted hop, 203.0.113.7 the client,
    // 198.51.100.1 something the client wrote itself.
    let (real_ip, chain) =
        forwarded(&mut client, Some("198.51.100.1, 203.0.113.7, 10.1.1.1")).await;
    assert_eq!(real_ip, "203.0.113.7");
    assert_eq!(chain, "198.51.100.1, 203.0.113.7, 10.1.1.1, 127.0.0.1");
    let (real_ip, _) = forwarded(&mut client, None).await;
    assert_eq!(real_ip, "127.0.0.1");
    rampart.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_from_a_configured_source_name_the_client() {
    let env = Env::new();
    let origin = Upstream::echo("origin").await;
    let listen = ", proxy_protocol: { from: [127.0.0.2/32] }";
    let rampart = Rampart::start(&config(&env, listen, "", &origin.url()), env.ca.roots()).await;
    let https = rampart.https_addr();

    let mut tcp = connect_from(BALANCER, https).await;
    tcp.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")
        .await
        .expect("write the v1 header");
    let mut client = HttpClient::handshake(tls_over(&env, tcp).await.expect("TLS after v1")).await;
    let (real_ip, chain) = forwarded(&mut client, None).await;
    assert_eq!(
        (real_ip.as_str(), chain.as_str()),
        ("203.0.113.7", "203.0.113.7")
    );

    let source: SocketAddr = "[2001:db8::7]:51000".parse().expect("literal");
    let destination: SocketAddr = "[2001:db8::1]:443".parse().expect("literal");
    let header = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .expect("a v2 header");
    let mut tcp = connect_from(BALANCER, https).await;
    tcp.write_all(&header).await.expect("write the v2 header");
    let mut client = HttpClient::handshake(tls_over(&env, tcp).await.expect("TLS after v2")).await;
    let (real_ip, _) = forwarded(&mut client, None).await;
    assert_eq!(real_ip, "2001:db8::7");

    // LOCAL (the balancer's own health check) keeps the real peer.
    let local = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Local,
        v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .expect("a v2 header");
    let mut tcp = connect_from(BALANCER, https).await;
    tcp.write_all(&local).await.expect("write the v2 header");
    let mut client = HttpClient::handshake(tls_over(&env, tcp).await.expect("TLS after v2")).await;
    let (real_ip, _) = forwarded(&mut client, None).await;
    assert_eq!(real_ip, "127.0.0.2");
    rampart.stop().await;
}

#[tokio::test]
async fn a_proxy_header_from_an_unconfigured_peer_is_refused() {
    let env = Env::new();
    let origin = Upstream::echo("origin").await;
    let listen = ", proxy_protocol: { from: [127.0.0.2/32] }";
    let rampart = Rampart::start(&config(&env, listen, "", &origin.url()), env.ca.roots()).await;
    let mut tcp = connect_from([127, 0, 0, 1], rampart.https_addr()).await;
    tcp.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")
        .await
        .expect("write the header");
    assert!(closed_without_answer(tcp).await);
    // Plain TLS from the same peer still works: only the header is refused.
    let mut client = rampart.client_h1("c.test").await;
    let (real_ip, _) = forwarded(&mut client, None).await;
    assert_eq!(real_ip, "127.0.0.1");
    assert_eq!(
        origin.requests(),
        1,
        "the refused connection reached no origin"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn a_configured_source_without_a_proxy_header_is_refused() {
    let env = Env::new();
    let origin = Upstream::echo("origin").await;
    let listen = ", proxy_protocol: { from: [127.0.0.2/32] }";
    let rampart = Rampart::start(&config(&env, listen, "", &origin.url()), env.ca.roots()).await;
    let tcp = connect_from(BALANCER, rampart.https_addr()).await;
    assert!(
        tls_over(&env, tcp).await.is_err(),
        "a bare ClientHello from a PROXY source must not be served"
    );
    assert_eq!(origin.requests(), 0);
    rampart.stop().await;
}

#[tokio::test]
async fn the_access_log_records_the_resolved_client_ip() {
    logs::capture(logs::Format::Json, "rampart::access=info");
    let env = Env::new();
    let origin = Upstream::echo("origin").await;
    let top = "trusted_proxies: [127.0.0.1]\n";
    let rampart = Rampart::start(&config(&env, "", top, &origin.url()), env.ca.roots()).await;
    let mut client = rampart.client_h1("c.test").await;
    let request = client
        .request(Method::GET, "c.test", "/")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "client-ip-log-1")
        .body(empty())
        .expect("valid request");
    assert_eq!(client.fetch(request).await.status, 200);
    assert_eq!(logged_peer("client-ip-log-1").await, "203.0.113.7");
    rampart.stop().await;
}
