//! Upstream health end to end: active checks take a failing origin out and bring it back, the
//! passive circuit breaker ejects a dead origin and closes again after one successful probe,
//! and a route with no origin left answers 503 with `Retry-After`. Each transition is logged.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use common::{Env, HttpClient, Upstream, WAIT, logs, refused_addr};

/// The health log lines about `upstream`, as (level, message), in order.
fn transitions(upstream: &str) -> Vec<(String, String)> {
    let text = logs::captured();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["upstream"] == upstream)
        .map(|v| {
            (
                v["level"].as_str().unwrap_or_default().to_owned(),
                v["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits (bounded) for a log line about `upstream` whose message starts with `prefix`.
async fn logged(upstream: &str, prefix: &str) {
    let started = Instant::now();
    while !transitions(upstream)
        .iter()
        .any(|(_, m)| m.starts_with(prefix))
    {
        assert!(
            started.elapsed() < WAIT,
            "no {prefix:?} line for {upstream}: {:?}",
            transitions(upstream)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The name each of `n` GETs was answered by (the body of a [`Flaky`] or echo origin).
async fn names(client: &mut HttpClient, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let reply = client.get("a.test", "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        names.push(if reply.text().starts_with('{') {
            reply.echo().name
        } else {
            reply.text()
        });
    }
    names
}

#[tokio::test]
async fn active_checks_eject_an_origin_whose_healthz_fails_and_bring_it_back() {
    logs::capture(logs::Format::Json, "rampart::proxy::upstream::health=info");
    let env = Env::new();
    let flaky = Flaky::start(None).await;
    let steady = Upstream::echo("steady").await;
    let rampart = env.start_a_test_route(
        &format!(
            "        health: {{ path: /healthz, every: 100ms, timeout: 1s, healthy_after: 1, unhealthy_after: 2 }}
        passive: {{ unhealthy_after: 0 }}
        upstreams: [{}, {}]
",
            flaky.url(),
            steady.url()
        ),
    )
    .await;
    let mut client = rampart.client("a.test").await;
    flaky.wait_checks(1).await;
    assert!(names(&mut client, 4).await.contains(&"flaky".to_owned()));

    flaky.set_healthy(false);
    logged(&flaky.url(), "upstream down").await;
    let served = names(&mut client, 8).await;
    assert!(served.iter().all(|n| n == "steady"), "{served:?}");

    flaky.set_healthy(true);
    logged(&flaky.url(), "upstream back").await;
    assert!(names(&mut client, 4).await.contains(&"flaky".to_owned()));
    let lines = transitions(&flaky.url());
    assert_eq!(
        lines
            .iter()
            .map(|(level, _)| level.as_str())
            .collect::<Vec<_>>(),
        ["WARN", "INFO"],
        "each transition once: {lines:?}"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn circuit_opens_on_a_dead_origin_and_closes_after_one_probe_when_it_returns() {
    logs::capture(logs::Format::Json, "rampart::proxy::upstream::health=info");
    let env = Env::new();
    let dead = refused_addr();
    let steady = Upstream::echo("steady").await;
    let rampart = env
        .start_a_test_route(&format!(
            "        passive: {{ unhealthy_after: 2, cooldown: 500ms }}
        retries: 1
        upstreams: [http://{dead}, {}]
",
            steady.url()
        ))
        .await;
    let label = format!("http://{dead}");
    let mut client = rampart.client("a.test").await;
    // Retries hide the dead origin from the client while the breaker counts its failures.
    assert!(names(&mut client, 4).await.iter().all(|n| n == "steady"));
    logged(&label, "upstream ejected").await;

    let back = Flaky::start(Some(dead)).await;
    let started = Instant::now();
    while back.requests() == 0 {
        assert!(started.elapsed() < WAIT, "the origin never got its probe");
        names(&mut client, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    logged(&label, "upstream back").await;
    let served = names(&mut client, 6).await;
    assert_eq!(
        served.iter().filter(|n| *n == "flaky").count(),
        3,
        "closed again, round robin resumes: {served:?}"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn no_healthy_origin_answers_503_with_retry_after() {
    let env = Env::new();
    let rampart = env
        .start_a_test_route(&format!(
            "        passive: {{ unhealthy_after: 1, cooldown: 5s }}
        upstreams: [http://{}, http://{}]
",
            refused_addr(),
            refused_addr()
        ))
        .await;
    let mut client = rampart.client("a.test").await;
    let first = client.get("a.test", "/").await;
    assert_eq!(first.status, StatusCode::BAD_GATEWAY, "{}", first.text());
    let second = client.get("a.test", "/").await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        second.text()
    );
    let after: u64 = second
        .header("retry-after")
        .expect("Retry-After on 503")
        .parse()
        .expect("whole seconds");
    assert!((1..=5).contains(&after), "Retry-After: {after}");
    rampart.stop().await;
}

/// An origin answering `flaky` on every path, and `/healthz` with 200 or 503 as set.
struct Flaky {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    checks: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Flaky {
    /// Listens on `addr` (a port freed earlier) or an ephemeral port.
    async fn start(addr: Option<SocketAddr>) -> Self {
        let listener =
            TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("literal")))
                .await
                .expect("loopback port is free");
        let addr = listener.local_addr().expect("bound");
        let healthy = Arc::new(AtomicBool::new(true));
        let checks = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let state = (healthy.clone(), checks.clone(), requests.clone());
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (healthy, checks, requests) = state.clone();
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from("flaky")));
                            if request.uri().path() == "/healthz" {
                                checks.fetch_add(1, Ordering::SeqCst);
                                if !healthy.load(Ordering::SeqCst) {
                                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                }
                            } else {
                                requests.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    // The proxy may drop the connection at the end of a test.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            healthy,
            checks,
            requests,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` health checks have arrived.
    async fn wait_checks(&self, n: usize) {
        let started = Instant::now();
        while self.checks.load(Ordering::SeqCst) < n {
            assert!(started.elapsed() < WAIT, "no health checks arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
