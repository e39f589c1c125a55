//! Blame where it belongs, end to end: a client's malformed, abandoned, stalled or oversized
//! request body is the client's failure (400, 499, 408, 413). Fifty of each leave the origin's
//! circuit breaker closed (it opens after 5 origin failures here), so the next ordinary request
//! is served, and none of them counts in `rampart_upstream_errors_total`.

mod common;

use std::time::Duration;

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Env, Rampart, Upstream, WAIT, within};

/// How many bad requests each class sends: ten times what opens the breaker.
const BAD: usize = 50;

/// `host` in front of `origin`: the breaker opens after 5 failures for a minute, a request
/// body may pause 300 ms, and may be 1 KiB at most. Bodies stream (`buffer_request_body: 0`),
/// so a bad one is already at the origin when it fails: the case where blame can go wrong
/// (a buffered one fails before any origin is asked). Each test has its own host, so its
/// requests count in series of their own (the metrics registry is the process's).
async fn guarded(env: &Env, origin: &Upstream, host: &str) -> Rampart {
    env.leaf("site", &[host]);
    env.start(&format!(
        "downstream: {{ client_body_timeout: 300ms }}
sites:
  - hosts: [{host}]
    tls: {{ cert: site.pem, key: site.key }}
    routes:
      - path: /
        upstreams: [{}]
        max_body: 1KiB
        buffer_request_body: 0
        passive: {{ unhealthy_after: 5, cooldown: 60s }}
        timeouts: {{ response_header: 3s }}
",
        origin.url()
    ))
    .await
}

/// A request head for `host` (`fields` end with CRLF) followed by `body`.
fn request(head: &str, host: &str, fields: &str, body: &str) -> Vec<u8> {
    format!("{head} HTTP/1.1\r\nHost: {host}\r\n{fields}\r\n{body}").into_bytes()
}

/// Writes `raw` on a new HTTP/1.1 connection to `host` and reads the response's status line.
/// The status, if one came.
async fn raw_h1(rampart: &Rampart, host: &str, raw: &[u8]) -> Option<u16> {
    let mut stream = rampart.connect_offering(host, &["http/1.1"]).await.stream;
    stream.write_all(raw).await.expect("write");
    // TLS buffers what the socket did not take at once; reading would not send it.
    stream.flush().await.expect("flush");
    // The status line is enough: the server may keep the connection to drain the body.
    let mut response = Vec::new();
    let head = async {
        let mut buf = [0u8; 1024];
        while !response.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    };
    within(WAIT, "the response", head).await;
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|code| code.parse().ok())
}

/// Waits until `n` requests of `host` have been answered with a 4xx (a request whose client
/// left counts once Rampart has let it go), so every bad request has had its outcome.
async fn wait_refused(host: &str, n: u64) {
    let counted = || {
        let metrics = rampart::observe::metrics::encode_text();
        let site = format!("site=\"{host}\",route=\"/\",status=\"4xx\"");
        let series = metrics
            .lines()
            .find(|l| l.starts_with("rampart_http_requests_total{") && l.contains(&site));
        series
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let reached = async {
        while counted() < n as f64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(WAIT, "the bad requests to be answered", reached).await;
}

/// After the bad requests: the breaker is closed (an ordinary request is served) and no
/// failure was counted against the origin.
async fn origin_unblamed(rampart: &Rampart, origin: &Upstream, host: &str) {
    let mut client = rampart.client(host).await;
    let reply = client.get(host, "/after").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.echo().target, "/after");
    let metrics = rampart::observe::metrics::encode_text();
    let label = format!("upstream=\"{}\"", origin.url());
    let counted: Vec<&str> = (metrics.lines())
        .filter(|l| l.starts_with("rampart_upstream_errors_total") && l.contains(&label))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        counted.is_empty(),
        "counted against the origin: {counted:?}"
    );
}

#[tokio::test]
async fn malformed_bodies_are_the_clients_400_and_never_the_origins() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let host = "malformed.test";
    let rampart = guarded(&env, &origin, host).await;
    let fields = "Transfer-Encoding: chunked\r\nConnection: close\r\n";
    let bad = request("POST /x", host, fields, "5\r\nhello\r\nzz\r\nmore\r\n");
    for _ in 0..BAD {
        assert_eq!(raw_h1(&rampart, host, &bad).await, Some(400));
    }
    origin_unblamed(&rampart, &origin, host).await;
    rampart.stop().await;
}

#[tokio::test]
async fn bodies_over_max_body_are_the_clients_413_and_never_the_origins() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let host = "oversized.test";
    let rampart = guarded(&env, &origin, host).await;
    // Chunked, so no declared length refuses it up front: the limit cuts it as it streams.
    let chunk = format!("800\r\n{}\r\n", "a".repeat(0x800));
    let fields = "Transfer-Encoding: chunked\r\nConnection: close\r\n";
    let bad = request("POST /x", host, fields, &format!("{chunk}{chunk}0\r\n\r\n"));
    for _ in 0..BAD {
        assert_eq!(raw_h1(&rampart, host, &bad).await, Some(413));
    }
    origin_unblamed(&rampart, &origin, host).await;
    rampart.stop().await;
}

#[tokio::test]
async fn bodies_that_stop_arriving_are_the_clients_408_and_never_the_origins() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let host = "stalled.test";
    let rampart = guarded(&env, &origin, host).await;
    let fields = "Content-Length: 100\r\nConnection: close\r\n";
    let bad = request("POST /x", host, fields, "0123456789");
    // At once: each waits out the 300 ms between reads (under the 3 s the origin gets).
    let started = tokio::time::Instant::now();
    let stalled = (0..BAD).map(|_| raw_h1(&rampart, host, &bad));
    let statuses = futures_util::future::join_all(stalled).await;
    assert!(statuses.iter().all(|s| *s == Some(408)), "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    origin_unblamed(&rampart, &origin, host).await;
    rampart.stop().await;
}

#[tokio::test]
async fn clients_that_leave_mid_body_are_never_the_origins_failure() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let host = "gone.test";
    let rampart = guarded(&env, &origin, host).await;
    let bad = request("POST /x", host, "Content-Length: 1000\r\n", "0123456789");
    // Each client leaves once the origin has the request, waiting for the rest of its body.
    for sent in 1..=BAD {
        let mut stream = rampart.connect_offering(host, &["http/1.1"]).await.stream;
        stream.write_all(&bad).await.expect("write");
        stream.flush().await.expect("flush");
        origin.wait_requests(sent).await;
        drop(stream);
    }
    // HTTP/2: streams reset (CANCEL) after part of their body.
    let tls = rampart.connect_offering(host, &["h2"]).await;
    let (sender, conn) = h2::client::handshake(tls.stream)
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut sender = sender.ready().await.expect("ready");
    for sent in BAD + 1..=2 * BAD {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("https://{host}/x"))
            .header("content-length", "1000")
            .body(())
            .expect("valid request");
        let (_, mut stream) = sender.send_request(request, false).expect("sent");
        stream
            .send_data(bytes::Bytes::from_static(b"0123456789"), false)
            .expect("data");
        origin.wait_requests(sent).await;
        stream.send_reset(h2::Reason::CANCEL);
        sender = sender.ready().await.expect("ready");
    }
    wait_refused(host, 2 * BAD as u64).await;
    origin_unblamed(&rampart, &origin, host).await;
    conn.abort();
    rampart.stop().await;
}
