//! Trace context and request ids end to end: a valid `traceparent` is continued with a new span
//! id, an absent or invalid one starts a trace; `X-Request-Id` is kept or set; both reach the
//! upstream and the JSON access log line.

mod common;

use std::time::{Duration, Instant};

use http::Method;

use common::{Echoed, Env, Rampart, Upstream, WAIT, empty, logs};

/// A valid incoming `traceparent`, unsampled so that keeping the flags is visible.
const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

/// Waits (bounded) for the access log line of `request_id`: it is written when the response
/// body ends, which may be just after the client has read it.
async fn access_line(request_id: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let text = logs::captured();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "rampart::access" && v["request_id"] == request_id);
        if let Some(line) = found {
            return line;
        }
        assert!(
            started.elapsed() < WAIT,
            "no access log line for {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start(env: &Env, upstream: &Upstream) -> Rampart {
    logs::capture(logs::Format::Json, "rampart::access=info");
    env.leaf("t", &["trace.test"]);
    env.start(&format!(
        "sites:
  - hosts: [trace.test]
    tls: {{ cert: t.pem, key: t.key }}
    upstreams: [{}]
",
        upstream.url()
    ))
    .await
}

/// Sends GET / with `headers` and returns what the upstream saw.
async fn echoed(rampart: &Rampart, headers: &[(&str, &str)]) -> Echoed {
    let mut client = rampart.client("trace.test").await;
    let mut request = client.request(Method::GET, "trace.test", "/");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = client
        .fetch(request.body(empty()).expect("valid request"))
        .await;
    reply.echo()
}

/// Splits a version-00 traceparent into (trace id, span id, flags), checking its shape.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let hex = |s: &str, len: usize| {
        assert_eq!(s.len(), len, "{traceparent}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(s.bytes().any(|b| b != b'0'), "all-zero id in {traceparent}");
        s.to_owned()
    };
    assert_eq!(parts[0], "00");
    (hex(parts[1], 32), hex(parts[2], 16), parts[3].to_owned())
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_with_a_new_span_and_logged() {
    let env = Env::new();
    let upstream = Upstream::echo("origin").await;
    let rampart = start(&env, &upstream).await;

    let seen = echoed(&rampart, &[("traceparent", PARENT), ("tracestate", "v=1")]).await;
    let (trace, span, flags) = fields(seen.header("traceparent").expect("sent upstream"));
    assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c", "same trace");
    assert_ne!(span, "b7ad6b7169203331", "a new span for this hop");
    assert_eq!(flags, "00", "flags kept");
    assert_eq!(
        seen.header("tracestate"),
        Some("v=1"),
        "kept with its trace"
    );

    let request_id = seen.header("x-request-id").expect("set when absent");
    let line = access_line(request_id).await;
    assert_eq!(line["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(line["site"], "trace.test");
    assert_eq!(line["status"], 200);
    assert_eq!(line["error"], "-", "the origin answered");
    rampart.stop().await;
}

#[tokio::test]
async fn an_answer_of_rampart_s_own_says_why_in_the_access_log() {
    let env = Env::new();
    let upstream = Upstream::echo("origin").await;
    let rampart = start(&env, &upstream).await;
    let mut client = rampart.client("trace.test").await;
    // A host no site serves, on this site's connection: 421.
    let request = client
        .request(Method::GET, "elsewhere.test", "/")
        .header("x-request-id", "why-421")
        .body(empty())
        .expect("valid request");
    assert_eq!(client.fetch(request).await.status, 421);
    let line = access_line("why-421").await;
    assert_eq!(line["status"], 421);
    assert_eq!(line["error"], "no_site");
    assert_eq!(line["auth"], "-");
    rampart.stop().await;
}

#[tokio::test]
async fn an_absent_or_invalid_traceparent_starts_a_new_sampled_trace() {
    let env = Env::new();
    let upstream = Upstream::echo("origin").await;
    let rampart = start(&env, &upstream).await;

    let absent = echoed(&rampart, &[]).await;
    let (first, _, flags) = fields(absent.header("traceparent").expect("started"));
    assert_eq!(flags, "01");

    let invalid = "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
    let replaced = echoed(&rampart, &[("traceparent", invalid), ("tracestate", "v=1")]).await;
    let (second, _, flags) = fields(replaced.header("traceparent").expect("started"));
    assert_eq!(flags, "01");
    assert_ne!(first, second, "every new trace has its own id");
    assert_ne!(second, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        replaced.header("tracestate"),
        None,
        "stale with a new trace"
    );

    let line = access_line(replaced.header("x-request-id").expect("set")).await;
    assert_eq!(line["trace_id"], second.as_str());
    rampart.stop().await;
}

#[tokio::test]
async fn x_request_id_is_kept_when_present_and_set_when_absent() {
    let env = Env::new();
    let upstream = Upstream::echo("origin").await;
    let rampart = start(&env, &upstream).await;

    let kept = echoed(&rampart, &[("x-request-id", "client-chose-this-1")]).await;
    assert_eq!(kept.header("x-request-id"), Some("client-chose-this-1"));
    access_line("client-chose-this-1").await;

    let (a, b) = (echoed(&rampart, &[]).await, echoed(&rampart, &[]).await);
    let (a, b) = (
        a.header("x-request-id").expect("set"),
        b.header("x-request-id").expect("set"),
    );
    assert_eq!(a.len(), 32, "{a}");
    assert_ne!(a, b, "each request gets its own id");
    rampart.stop().await;
}

#[tokio::test]
async fn a_request_whose_client_leaves_before_the_answer_is_logged_as_499() {
    let env = Env::new();
    let upstream = Upstream::holding("origin").await;
    let rampart = start(&env, &upstream).await;
    for (n, h2) in [(1, true), (2, false)] {
        let mut client = if h2 {
            rampart.client("trace.test").await
        } else {
            rampart.client_h1("trace.test").await
        };
        let id = format!("left-early-{n}");
        let request = client
            .request(Method::GET, "trace.test", "/hold")
            .header("x-request-id", id.as_str())
            .body(empty())
            .expect("valid request");
        // Sent on its own task, so that dropping the client below leaves it unanswered.
        let pending = tokio::spawn(async move {
            let _ = client.send(request).await;
        });
        upstream.wait_requests(n).await;
        pending.abort();
        let line = access_line(&id).await;
        assert_eq!(line["status"], 499, "h2 {h2}: {line}");
        assert_eq!(line["error"], "client_closed", "h2 {h2}: {line}");
        assert_eq!(line["complete"], false, "h2 {h2}: {line}");
        assert_eq!(line["path"], "/hold", "h2 {h2}: {line}");
    }
    upstream.open_gate();
    rampart.stop().await;
}
