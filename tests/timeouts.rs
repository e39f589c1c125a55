//! Per-route timeouts end to end: an origin that stalls in the middle of its response body is
//! cut off after the route's `timeouts.idle`, so it holds neither the client nor a connection.

mod common;

use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::{Env, empty};

/// An origin that answers every request with the head and the first 10 bytes of a 100-byte
/// body, then sends nothing more (holding the connection open).
async fn staller() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut seen = Vec::new();
            let mut buf = [0_u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
            let _ = tcp.write_all(head.as_bytes()).await;
            held.push(tcp);
        }
    });
    (url, task)
}

#[tokio::test]
async fn an_origin_that_stalls_mid_body_is_cut_off_after_the_idle_timeout() {
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    let (url, origin) = staller().await;
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    routes:
      - path: /
        timeouts: {{ idle: 500ms }}
        upstreams: [{url}]
"
        ))
        .await;
    for mut client in [
        rampart.client("a.test").await,
        rampart.client_h1("a.test").await,
    ] {
        let request = client
            .request(Method::GET, "a.test", "/")
            .body(empty())
            .expect("request");
        let started = Instant::now();
        let response = client.send(request).await.expect("the head arrives");
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
            .await
            .expect("the body ends instead of hanging");
        let elapsed = started.elapsed();
        assert!(body.is_err(), "a cut-off body must not look complete");
        assert!(
            elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
            "cut off after {elapsed:?}; the idle timeout is 500ms"
        );
    }
    rampart.stop().await;
    origin.abort();
}
