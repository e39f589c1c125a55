//! Retries end to end: a request that never reached an origin, or an idempotent one with a
//! small body, is sent again to a different origin; a POST that reached one is not; the
//! route's total deadline bounds every try together.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use common::{Env, Upstream, empty, full, refused_addr};

#[tokio::test]
async fn get_to_a_refusing_origin_is_retried_on_the_live_one() {
    let env = Env::new();
    let live = Upstream::echo("live").await;
    let rampart = env
        .start_a_test_route(&format!(
            "        retries: 1\n        upstreams: [http://{}, {}]\n",
            refused_addr(),
            live.url()
        ))
        .await;
    let mut client = rampart.client("a.test").await;
    for i in 0..10 {
        let reply = client.get("a.test", "/").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(reply.echo().name, "live");
    }
    assert_eq!(live.requests(), 10);
    rampart.stop().await;
}

#[tokio::test]
async fn post_that_reached_an_origin_is_not_retried() {
    let env = Env::new();
    let closer = Closer::start(false).await;
    let other = Upstream::echo("other").await;
    let rampart = env
        .start_a_test_route(&format!(
            "        retries: 1\n        upstreams: [{}, {}]\n",
            closer.url(),
            other.url()
        ))
        .await;
    let mut client = rampart.client("a.test").await;
    // Round robin starts at the first origin: the one that hangs up.
    let request = client
        .request(Method::POST, "a.test", "/orders")
        .header("content-length", "5")
        .body(full("hello"))
        .expect("valid");
    let reply = client.fetch(request).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(closer.requests(), 1);
    assert_eq!(other.requests(), 0, "the POST was sent a second time");
    rampart.stop().await;
}

#[tokio::test]
async fn put_with_a_small_body_is_retried_after_a_reset_with_the_whole_body() {
    let env = Env::new();
    let closer = Closer::start(true).await;
    let other = Upstream::echo("other").await;
    let rampart = env
        .start_a_test_route(&format!(
            "        retries: 1\n        upstreams: [{}, {}]\n",
            closer.url(),
            other.url()
        ))
        .await;
    let mut client = rampart.client("a.test").await;
    let body = vec![b'x'; 10_000];
    let request = client
        .request(Method::PUT, "a.test", "/doc")
        .header("content-length", body.len().to_string())
        .header("x-client-tag", "seven")
        .body(full(body))
        .expect("valid");
    let reply = client.fetch(request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echoed = reply.echo();
    assert_eq!(
        (echoed.name.as_str(), echoed.method.as_str()),
        ("other", "PUT")
    );
    assert_eq!(echoed.body_len, 10_000, "the retry lost part of the body");
    assert_eq!(
        echoed.all("x-client-tag"),
        ["seven"],
        "the retry lost the request's headers"
    );
    assert_eq!(
        echoed.all("x-forwarded-for").len(),
        1,
        "forwarding fields once"
    );
    assert_eq!(
        closer.requests(),
        1,
        "the first try reached the resetting origin"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn get_that_timed_out_is_retried_on_another_origin() {
    let env = Env::new();
    let slow = Upstream::slow(Duration::from_secs(5)).await;
    let fast = Upstream::echo("fast").await;
    let rampart = env
        .start_a_test_route(&format!(
            "        timeouts: {{ response_header: 300ms, total: 5s }}
        upstreams: [{}, {}]
",
            slow.url(),
            fast.url()
        ))
        .await;
    let mut client = rampart.client("a.test").await;
    let reply = client.get("a.test", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.echo().name, "fast");
    assert_eq!(slow.requests(), 1);
    rampart.stop().await;
}

#[tokio::test]
async fn total_deadline_bounds_all_tries_together() {
    let env = Env::new();
    let (one, two) = (
        Upstream::slow(Duration::from_secs(5)).await,
        Upstream::slow(Duration::from_secs(5)).await,
    );
    let rampart = env
        .start_a_test_route(&format!(
            "        retries: 3
        timeouts: {{ response_header: 1s, total: 1200ms }}
        upstreams: [{}, {}]
",
            one.url(),
            two.url()
        ))
        .await;
    let mut client = rampart.client("a.test").await;
    let started = Instant::now();
    let reply = client.get("a.test", "/").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        elapsed >= Duration::from_millis(1100) && elapsed < Duration::from_millis(1800),
        "took {elapsed:?}; the total deadline is 1.2s, two full tries would take 2s"
    );
    // The second try ran, with only what was left of the deadline.
    assert_eq!((one.requests(), two.requests()), (1, 1));
    rampart.stop().await;
}

/// An origin that reads a request head and hangs up without answering (with a TCP reset when
/// `reset`), counting the requests it took.
struct Closer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Closer {
    async fn start(reset: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback");
        let addr = listener.local_addr().expect("bound");
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut seen = Vec::new();
                let mut buf = [0_u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                if reset {
                    // SO_LINGER 0: close() sends RST instead of FIN.
                    socket2::SockRef::from(&tcp)
                        .set_linger(Some(Duration::ZERO))
                        .expect("set SO_LINGER");
                }
                drop(tcp);
            }
        });
        Self {
            addr,
            requests,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test]
async fn no_body_get_counts_as_buffered_so_a_never_sent_request_is_retried() {
    // Same as the refused case, on HTTP/1.1, so both protocol paths are covered.
    let env = Env::new();
    let live = Upstream::echo("live").await;
    let rampart = env
        .start_a_test_route(&format!(
            "        upstreams: [http://{}, {}]\n",
            refused_addr(),
            live.url()
        ))
        .await;
    let mut client = rampart.client_h1("a.test").await;
    for _ in 0..4 {
        let request = client
            .request(Method::GET, "a.test", "/")
            .body(empty())
            .expect("valid");
        assert_eq!(client.fetch(request).await.status, 200);
    }
    rampart.stop().await;
}
