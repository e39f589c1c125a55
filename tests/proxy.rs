//! The proxy core end to end: routing, balancing, forwarding headers, hop-by-hop stripping, 421,
//! request-head limits, upstream failures (502, 504), WebSocket tunnelling, and clean-up when a
//! client goes away mid-response. Large bodies are in `streaming.rs`, which measures memory.

mod common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Method;
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

use common::{Env, Rampart, Upstream, WAIT, empty, full, refused_addr, within};

/// Size of the downloads a client abandons: far more than any buffer on the way.
const FIFTY_MB: u64 = 50 * 1024 * 1024;

/// One site, `a.test`, whose only route proxies to `upstream`; `extra` goes before `sites:`.
async fn one_site(env: &Env, upstream: &str, extra: &str) -> Rampart {
    env.leaf("a", &["a.test"]);
    env.start(&format!(
        "{extra}sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    upstreams: [{upstream}]
"
    ))
    .await
}

#[tokio::test]
async fn routes_by_longest_prefix_and_strips_the_prefix_when_asked() {
    let env = Env::new();
    env.leaf("b", &["b.test"]);
    let (api, admin, root) = (
        Upstream::echo("api").await,
        Upstream::echo("admin").await,
        Upstream::echo("root").await,
    );
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [b.test]
    tls: {{ cert: b.pem, key: b.key }}
    routes:
      - {{ path: /, upstreams: [{root}] }}
      - {{ path: /v1/, strip_prefix: true, upstreams: [{api}] }}
      - {{ path: /v1/admin/, upstreams: [{admin}] }}
",
            root = root.url(),
            api = api.url(),
            admin = admin.url(),
        ))
        .await;
    let mut client = rampart.client("b.test").await;
    for (path, upstream, target) in [
        ("/v1/users?id=3", "api", "/users?id=3"),
        ("/v1/", "api", "/"),
        ("/v1/admin/keys", "admin", "/v1/admin/keys"),
        ("/v1", "root", "/v1"),
        ("/elsewhere?x=y", "root", "/elsewhere?x=y"),
    ] {
        let echoed = client.get("b.test", path).await.echo();
        assert_eq!(
            (echoed.name.as_str(), echoed.target.as_str()),
            (upstream, target),
            "GET {path}"
        );
    }
    rampart.stop().await;
}

#[tokio::test]
async fn respond_routes_answer_directly_with_their_status_and_body() {
    let env = Env::new();
    env.leaf("b", &["b.test"]);
    let api = Upstream::echo("api").await;
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [b.test]
    tls: {{ cert: b.pem, key: b.key }}
    routes:
      - {{ path: /v1/, upstreams: [{}] }}
      - {{ path: /teapot, respond: {{ status: 418, body: \"short and stout\\n\" }} }}
      - {{ path: /, respond: {{ status: 200, body: \"ok\\n\" }} }}
",
            api.url()
        ))
        .await;
    let mut client = rampart.client_h1("b.test").await;
    let ok = client.get("b.test", "/anything").await;
    assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "ok\n"));
    assert_eq!(ok.header("content-type"), Some("text/plain; charset=utf-8"));
    let teapot = client.get("b.test", "/teapot").await;
    assert_eq!(
        (teapot.status.as_u16(), teapot.text().as_str()),
        (418, "short and stout\n")
    );
    assert_eq!(client.get("b.test", "/v1/x").await.echo().name, "api");
    assert_eq!(api.requests(), 1, "respond routes never reach an upstream");
    rampart.stop().await;
}

#[tokio::test]
async fn balances_round_robin_across_a_routes_upstreams() {
    let env = Env::new();
    let (one, two) = (Upstream::echo("one").await, Upstream::echo("two").await);
    let rampart = one_site(&env, &format!("{}, {}", one.url(), two.url()), "").await;
    let mut client = rampart.client("a.test").await;
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(client.get("a.test", "/").await.echo().name);
    }
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "not alternating: {names:?}"
    );
    assert_eq!((one.requests(), two.requests()), (3, 3));
    rampart.stop().await;
}

#[tokio::test]
async fn forwarding_headers_extend_the_chain_and_the_host_is_kept() {
    let env = Env::new();
    let echo = Upstream::echo("echo").await;
    // Only a trusted peer's chain is kept (tests/client_ip.rs: an untrusted one is replaced).
    let rampart = one_site(&env, &echo.url(), "trusted_proxies: [127.0.0.1]\n").await;
    let host = format!("a.test:{}", rampart.https_addr().port());
    for mut client in [
        rampart.client_h1("a.test").await,
        rampart.client("a.test").await,
    ] {
        let request = client
            .request(Method::GET, &host, "/headers")
            .header("x-forwarded-for", "203.0.113.7, 198.51.100.2")
            .header("x-real-ip", "203.0.113.7")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", "spoofed.example")
            .body(empty())
            .expect("valid request");
        let version = client.version();
        let echoed = client.fetch(request).await.echo();
        assert_eq!(
            echoed.header("x-forwarded-for"),
            Some("203.0.113.7, 198.51.100.2, 127.0.0.1"),
            "{version:?}"
        );
        // The first untrusted hop from the right, not the client's own X-Real-IP.
        assert_eq!(
            echoed.header("x-real-ip"),
            Some("198.51.100.2"),
            "{version:?}"
        );
        // The scheme the trusted proxy's client used (tests/canonical.rs: from an untrusted
        // peer it is always https).
        assert_eq!(
            echoed.header("x-forwarded-proto"),
            Some("http"),
            "{version:?}"
        );
        let forwarded_host = echoed
            .header("x-forwarded-host")
            .expect("X-Forwarded-Host is set");
        // The request's authority, port included, whatever the proxy's field said.
        assert_eq!(forwarded_host, host, "{version:?}");
        // The client's Host (or HTTP/2 :authority) reaches the origin unchanged.
        assert_eq!(echoed.header("host"), Some(host.as_str()), "{version:?}");
    }
    rampart.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_in_both_directions() {
    let env = Env::new();
    let echo = Upstream::echo("echo").await;
    let rampart = one_site(&env, &echo.url(), "").await;
    let mut client = rampart.client_h1("a.test").await;
    let request = client
        .request(Method::GET, "a.test", "/")
        .header("connection", "keep-alive, x-client-secret")
        .header("x-client-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("upgrade", "h2c")
        .header("proxy-connection", "keep-alive")
        .header("x-end-to-end", "kept")
        .body(empty())
        .expect("valid request");
    let reply = client.fetch(request).await;
    let echoed = reply.echo();
    for name in [
        "connection",
        "x-client-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert_eq!(
            echoed.all(name),
            Vec::<&str>::new(),
            "request header {name} reached the origin"
        );
    }
    assert_eq!(echoed.header("x-end-to-end"), Some("kept"));
    // The origin's response named x-upstream-secret in Connection and sent Keep-Alive.
    for name in ["x-upstream-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(
            reply.header(name),
            None,
            "response header {name} reached the client"
        );
    }
    if let Some(connection) = reply.header("connection") {
        assert!(
            !connection.contains("x-upstream-secret"),
            "origin's Connection passed on: {connection}"
        );
    }
    assert_eq!(
        reply.header("x-upstream-name"),
        Some("echo"),
        "end-to-end response headers are kept"
    );
    // A request whose body streams goes through hyper's client, not the lean path: its
    // response is stripped too.
    let streamed = client
        .request(Method::POST, "a.test", "/streamed")
        .body(full("a body sent once"))
        .expect("valid request");
    let reply = client.fetch(streamed).await;
    assert_eq!(reply.echo().body_len, 16, "the body arrived");
    for name in ["x-upstream-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(
            reply.header(name),
            None,
            "streamed: {name} reached the client"
        );
    }
    assert_eq!(reply.header("x-upstream-name"), Some("echo"), "streamed");

    // HTTP/2 forbids connection-specific fields: a leaked one would make the stream fail.
    let mut h2 = rampart.client("a.test").await;
    let reply = h2.get("a.test", "/h2").await;
    assert_eq!(reply.status, 200);
    for name in [
        "connection",
        "x-upstream-secret",
        "keep-alive",
        "transfer-encoding",
        "proxy-connection",
    ] {
        assert_eq!(reply.header(name), None, "HTTP/2 response header {name}");
    }
    rampart.stop().await;
}

#[tokio::test]
async fn request_for_a_host_of_another_site_gets_421() {
    let env = Env::new();
    env.leaf("a", &["a.test", "*.wild.test"]);
    env.leaf("b", &["b.test"]);
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [a.test, \"*.wild.test\"]
    tls: {{ cert: a.pem, key: a.key }}
    upstreams: [{}]
  - hosts: [b.test]
    tls: {{ cert: b.pem, key: b.key }}
    upstreams: [{}]
",
            a.url(),
            b.url()
        ))
        .await;
    for mut client in [
        rampart.client_h1("a.test").await,
        rampart.client("a.test").await,
    ] {
        let version = client.version();
        for host in ["b.test", "nowhere.test"] {
            let reply = client.get(host, "/").await;
            assert_eq!(
                reply.status, 421,
                "{version:?}: Host {host} on an a.test connection"
            );
        }
        // The connection stays usable for its own site, including names its wildcard covers.
        assert_eq!(
            client.get("a.test", "/").await.echo().name,
            "a",
            "{version:?}"
        );
        assert_eq!(
            client.get("x.wild.test", "/").await.echo().name,
            "a",
            "{version:?}"
        );
    }
    assert_eq!(
        b.requests(),
        0,
        "misdirected requests never reach the other site's upstream"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn refused_upstream_gives_502_quickly() {
    let env = Env::new();
    let rampart = one_site(&env, &format!("http://{}", refused_addr()), "").await;
    let mut client = rampart.client("a.test").await;
    let started = Instant::now();
    let reply = client.get("a.test", "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "502 took {:?}",
        started.elapsed()
    );
    assert!(!reply.body.is_empty(), "a 502 carries a short explanation");
    // The failure is per request: the connection serves the next one.
    assert_eq!(client.get("a.test", "/").await.status, 502);
    rampart.stop().await;
}

#[tokio::test]
async fn slow_upstream_gives_504_at_the_response_header_timeout() {
    let env = Env::new();
    let slow = Upstream::slow(Duration::from_secs(5)).await;
    let rampart = one_site(
        &env,
        &slow.url(),
        "upstream: { response_header_timeout: 500ms }\n",
    )
    .await;
    let mut client = rampart.client("a.test").await;
    let started = Instant::now();
    let reply = client.get("a.test", "/").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        elapsed >= Duration::from_millis(450),
        "504 before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(2500),
        "504 long after the 500ms timeout: {elapsed:?}"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn websocket_echoes_through_the_proxy() {
    let env = Env::new();
    let ws = Upstream::ws_echo().await;
    let rampart = one_site(&env, &ws.url(), "").await;
    let mut socket = rampart.websocket("a.test", "wss://a.test/ws").await;
    echo(&mut socket, Message::text("hello through rampart")).await;
    echo(&mut socket, Message::binary(vec![0u8, 1, 2, 255])).await;
    socket.close(None).await.expect("close");
    assert_eq!(ws.requests(), 1);
    drop(socket);
    ws.wait_open(WAIT, "the tunnel to close upstream", |n| n == 0)
        .await;
    rampart.stop().await;
}

/// Sends `message` on `socket` and expects it back.
async fn echo<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>, message: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    socket.send(message.clone()).await.expect("send");
    let echoed = within(WAIT, "the echo", socket.next())
        .await
        .expect("a message")
        .expect("no error");
    assert_eq!(echoed, message);
}

/// A WebSocket tunnel lives while bytes move and closes once none has moved either way for
/// the route's `timeouts.idle`, on both sides.
#[tokio::test]
async fn an_idle_websocket_tunnel_is_closed_after_the_idle_timeout() {
    let env = Env::new();
    let ws = Upstream::ws_echo().await;
    let rampart = env
        .start_a_test_to(&ws.url(), "", "    timeouts: { idle: 1s }\n")
        .await;
    let mut socket = rampart.websocket("a.test", "wss://a.test/ws").await;
    // Busy for twice the timeout: the tunnel stays.
    for n in 0..8 {
        echo(&mut socket, Message::text(format!("message {n}"))).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Then quiet: Rampart closes both sides.
    let quiet = Instant::now();
    let end = within(WAIT, "the idle tunnel to close", socket.next()).await;
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed before the idle timeout: {waited:?}"
    );
    ws.wait_open(WAIT, "the tunnel to close upstream", |n| n == 0)
        .await;
    rampart.stop().await;
}

#[tokio::test]
async fn client_disconnecting_mid_download_leaves_no_upstream_connection() {
    let env = Env::new();
    let origin = Upstream::download(FIFTY_MB, None).await;
    let rampart = one_site(&env, &origin.url(), "").await;
    for client in [
        rampart.client_h1("a.test").await,
        rampart.client("a.test").await,
    ] {
        let mut client = client;
        let version = client.version();
        let request = client
            .request(Method::GET, "a.test", "/download")
            .body(empty())
            .expect("valid request");
        let response = within(WAIT, "the response head", client.send(request))
            .await
            .expect("response");
        let mut body = response.into_body();
        let first = within(WAIT, "the first bytes", body.frame())
            .await
            .expect("a frame")
            .expect("no error");
        assert!(first.is_data());
        assert_eq!(
            origin.open(),
            1,
            "{version:?}: one upstream connection while downloading"
        );
        // Gone without a word: the TCP connection closes mid-body.
        drop(body);
        client.abort();
        origin
            .wait_open(
                WAIT,
                "the upstream connection to close after the client left",
                |n| n == 0,
            )
            .await;
    }
    rampart.stop().await;
}

#[tokio::test]
async fn h2_stream_cancelled_mid_download_closes_its_upstream_connection() {
    let env = Env::new();
    let origin = Upstream::download(FIFTY_MB, None).await;
    let rampart = one_site(&env, &origin.url(), "").await;
    let mut client = rampart.client("a.test").await;
    let request = client
        .request(Method::GET, "a.test", "/download")
        .body(empty())
        .expect("valid request");
    let response = within(WAIT, "the response head", client.send(request))
        .await
        .expect("response");
    let mut body = response.into_body();
    within(WAIT, "the first bytes", body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    // Dropping the body resets the stream (RST_STREAM) but keeps the connection.
    drop(body);
    origin
        .wait_open(
            WAIT,
            "the upstream connection to close after the stream was reset",
            |n| n == 0,
        )
        .await;
    assert_eq!(
        client.get("a.test", "/small").await.status,
        200,
        "the connection still serves"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn request_heads_over_the_configured_limits_are_refused_with_431() {
    let env = Env::new();
    let echo = Upstream::echo("echo").await;
    let rampart = one_site(
        &env,
        &echo.url(),
        "downstream: { max_headers: 20, max_header_bytes: 16KiB }\n",
    )
    .await;
    let mut client = rampart.client_h1("a.test").await;
    let mut builder = client.request(Method::GET, "a.test", "/many");
    for i in 0..40 {
        builder = builder.header(format!("x-filler-{i}"), "1");
    }
    let reply = client
        .fetch(builder.body(empty()).expect("valid request"))
        .await;
    assert_eq!(reply.status, 431, "40 fields with max_headers 20");

    let mut client = rampart.client_h1("a.test").await;
    let request = client
        .request(Method::GET, "a.test", "/big")
        .header("x-big", "a".repeat(64 * 1024))
        .body(empty())
        .expect("valid request");
    let reply = client.fetch(request).await;
    assert_eq!(
        reply.status, 431,
        "a 64 KiB field with max_header_bytes 16KiB"
    );
    assert_eq!(echo.requests(), 0, "refused heads never reach the origin");

    // Within the limits all is well.
    let mut client = rampart.client_h1("a.test").await;
    assert_eq!(client.get("a.test", "/").await.status, 200);
    rampart.stop().await;
}
