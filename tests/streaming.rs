//! Large bodies stream through the proxy both ways: 50 MB up and down, over HTTP/1.1 and
//! HTTP/2, arrive intact (SHA-256 on both sides) while the origin and the client see the first
//! bytes before the last are sent, and this process's memory (Rampart runs in it) stays far below
//! the body size.
//!
//! Kept in their own test binary: resident memory is per process, and other tests running in
//! parallel would blur the measurement.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use common::upstream::{CHUNK, pattern_chunks};
use common::{BoxError, Env, Rampart, Sha256, Upstream, WAIT, empty, hex, pattern_sha256, within};

/// Size of the bodies.
const FIFTY_MB: u64 = 50 * 1024 * 1024;
/// Allowed growth of resident memory while 50 MB bodies pass: whole-body buffering would exceed it.
const RSS_LIMIT: u64 = 25 * 1024 * 1024;

/// One site, `a.test`, whose only route proxies to `upstream`.
async fn one_site(env: &Env, upstream: &str) -> Rampart {
    env.leaf("a", &["a.test"]);
    env.start(&format!(
        "sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    upstreams: [{upstream}]
"
    ))
    .await
}

#[tokio::test]
async fn fifty_megabyte_upload_streams_through_intact() {
    let env = Env::new();
    let sink = Upstream::sink().await;
    let rampart = one_site(&env, &sink.url()).await;
    let rss = RssWatch::start();
    for mut client in [
        rampart.client_h1("a.test").await,
        rampart.client("a.test").await,
    ] {
        let version = client.version();
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, BoxError>(Frame::data(chunk)), rx))
        }));
        let request = client
            .request(Method::POST, "a.test", "/upload")
            .header("content-length", FIFTY_MB)
            .body(body.boxed_unsync())
            .expect("valid request");
        let response = tokio::spawn(async move { client.fetch(request).await });
        let mut sent = Sha256::new();
        for (index, chunk) in pattern_chunks(FIFTY_MB).enumerate() {
            if index == 16 {
                // Streaming, not buffering: the origin sees bytes before the client is done.
                sink.wait_received(1, "the upload's first bytes to reach the origin")
                    .await;
            }
            sent.update(&chunk);
            within(WAIT, "the proxy to take more of the upload", tx.send(chunk))
                .await
                .expect("request in flight");
        }
        drop(tx);
        let reply = within(WAIT * 3, "the upload to finish", response)
            .await
            .expect("no panic");
        assert_eq!(reply.status, 200, "{version:?}: {}", reply.text());
        let got: serde_json::Value = serde_json::from_slice(&reply.body).expect("sink JSON");
        assert_eq!(got["len"], FIFTY_MB, "{version:?}");
        assert_eq!(got["sha256"], hex(&sent.finalize()), "{version:?}");
    }
    rss.assert_growth_below(RSS_LIMIT, "uploading 2 × 50 MB");
    rampart.stop().await;
}

#[tokio::test]
async fn fifty_megabyte_download_streams_through_intact() {
    let env = Env::new();
    let gate = 4 * CHUNK as u64;
    let origin = Upstream::download(FIFTY_MB, Some(gate)).await;
    let expected = hex(&pattern_sha256(FIFTY_MB));
    let rampart = one_site(&env, &origin.url()).await;
    let rss = RssWatch::start();
    for mut client in [
        rampart.client_h1("a.test").await,
        rampart.client("a.test").await,
    ] {
        let version = client.version();
        let request = client
            .request(Method::GET, "a.test", "/download")
            .body(empty())
            .expect("valid request");
        let response = within(WAIT, "the response head", client.send(request))
            .await
            .expect("response");
        assert_eq!(response.status(), 200, "{version:?}");
        assert_eq!(
            response.headers()["content-length"],
            FIFTY_MB.to_string().as_str(),
            "{version:?}"
        );
        let mut body = response.into_body();
        let (mut hash, mut len) = (Sha256::new(), 0u64);
        while let Some(frame) = within(WAIT, "the next part of the download", body.frame()).await {
            if let Some(data) = frame.expect("the body streams without error").data_ref() {
                if len == 0 {
                    // The origin holds back the rest until the client has seen the start: a proxy
                    // that buffered the whole body would never get here.
                    origin.open_gate();
                }
                hash.update(data);
                len += data.len() as u64;
            }
        }
        assert_eq!(len, FIFTY_MB, "{version:?}");
        assert_eq!(hex(&hash.finalize()), expected, "{version:?}");
    }
    rss.assert_growth_below(RSS_LIMIT, "downloading 2 × 50 MB");
    rampart.stop().await;
}

/// Samples this process's resident memory while alive; Rampart runs in this process.
struct RssWatch {
    baseline: u64,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start() -> Self {
        let baseline = rss_bytes();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
        let sampler = tokio::spawn({
            let peak = peak.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_millis(20));
                loop {
                    every.tick().await;
                    peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Self {
            baseline,
            peak,
            sampler,
        }
    }

    fn assert_growth_below(self, limit: u64, what: &str) {
        self.sampler.abort();
        let peak = self
            .peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(rss_bytes());
        let growth = peak.saturating_sub(self.baseline);
        assert!(
            growth < limit,
            "{what}: resident memory grew by {} MiB; bodies must stream",
            growth >> 20
        );
    }
}

/// VmRSS from /proc/self/status, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}
