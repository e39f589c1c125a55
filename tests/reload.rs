//! Live reload: a bad file changes nothing, a good one swaps routes, sites and certificates
//! without failing a request or closing a WebSocket, and a change of the file is picked up by
//! itself.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Method;
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

use common::{Env, HttpClient, Rampart, Upstream, WAIT, empty, logs, within};

/// A second site, b.test: adding it changes the snapshot and nothing about a.test.
const SITE_B: &str = "  - hosts: [b.test]
    tls: { cert: b.pem, key: b.key }
    routes: [{ path: /, respond: { body: \"b\" } }]
";

/// Two routes and, when `extra`, a second site: enough to change every part of a snapshot.
fn config(ws: &Upstream, origin: &Upstream, extra: bool) -> String {
    let mut text = format!(
        "sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    routes:
      - {{ path: /ws, upstreams: [{ws}] }}
      - {{ path: /, upstreams: [{origin}] }}
",
        ws = ws.url(),
        origin = origin.url()
    );
    if extra {
        text.push_str(SITE_B);
    }
    text
}

/// What this binary's tests capture (the first capture decides for all of them).
const LOG_FILTER: &str = "rampart=warn";

/// `rampart_config_reloads_total{result="failure"}` from the process-wide registry.
fn failed_reloads() -> f64 {
    let text = rampart::observe::metrics::encode_text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "rampart_config_reloads_total" && s.labels.get("result") == Some("failure")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn invalid_reload_keeps_serving_the_old_configuration() {
    logs::capture(logs::Format::Text, LOG_FILTER);
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    let (ws, one, two) = (
        Upstream::ws_echo().await,
        Upstream::echo("one").await,
        Upstream::echo("two").await,
    );
    let rampart = env.start(&config(&ws, &one, false)).await;
    let mut client = rampart.client("a.test").await;
    assert_eq!(client.get("a.test", "/").await.echo().name, "one");

    // Two bad values: rejected with file, line and key, both of them, as `rampart check`
    // reports them; the old routes keep serving.
    let failures_before = failed_reloads();
    let path = env.write_config(&format!(
        "downstream: {{ max_headers: 0, idle_timeout: soon }}\n{}",
        config(&ws, &two, false)
    ));
    let err = rampart
        .server()
        .reload()
        .expect_err("an invalid file is refused");
    let message = common::rampart::chain(&err);
    let position = format!("{}:", path.display());
    assert!(
        message.contains(&position)
            && message.contains("downstream.idle_timeout")
            && message.contains("downstream.max_headers"),
        "{message}"
    );
    // The error is in the log (file, line, key) and counted in the metrics.
    let logged = logs::captured();
    assert!(
        logged.contains("reload failed")
            && logged.contains(&position)
            && logged.contains("downstream.idle_timeout")
            && logged.contains("downstream.max_headers"),
        "{logged}"
    );
    assert!(
        failed_reloads() >= failures_before + 1.0,
        "failed reloads are counted"
    );
    assert_eq!(client.get("a.test", "/").await.echo().name, "one");

    // A structural problem (an unknown key) is reported alone, as `rampart check` does.
    env.write_config(&format!("{}    upstreamz: []\n", config(&ws, &two, false)));
    let err = rampart
        .server()
        .reload()
        .expect_err("an unknown key is refused");
    let message = common::rampart::chain(&err);
    assert!(message.contains("did you mean `upstreams`"), "{message}");
    assert_eq!(client.get("a.test", "/").await.echo().name, "one");

    // Fixed: the new routes apply to the next request on the same connection.
    env.write_config(&config(&ws, &two, false));
    rampart.server().reload().expect("a valid file applies");
    assert_eq!(client.get("a.test", "/").await.echo().name, "two");
    rampart.stop().await;
}

#[tokio::test]
async fn a_changed_config_file_is_applied_without_a_signal() {
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    let (ws, one, two) = (
        Upstream::ws_echo().await,
        Upstream::echo("one").await,
        Upstream::echo("two").await,
    );
    let rampart = env.start(&config(&ws, &one, false)).await;
    let mut client = rampart.client("a.test").await;
    assert_eq!(client.get("a.test", "/").await.echo().name, "one");
    env.write_config(&config(&ws, &two, false));
    let started = Instant::now();
    while client.get("a.test", "/").await.echo().name != "two" {
        assert!(
            started.elapsed() < WAIT,
            "the file change was not applied within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rampart.stop().await;
}

/// Sends requests until `stop`, counting successes per origin name and failures.
async fn load(
    mut client: HttpClient,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let request = client
            .request(Method::GET, "a.test", "/")
            .body(empty())
            .expect("valid request");
        let result = async {
            let response = client.send(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status != 200 {
                return Err(format!("status {status}"));
            }
            let echoed: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            Ok(echoed["name"].as_str().unwrap_or_default().to_owned())
        }
        .await;
        match result {
            Ok(name) => {
                ok.fetch_add(1, Ordering::Relaxed);
                if !seen.contains(&name) {
                    seen.push(name);
                }
            }
            Err(error) => {
                eprintln!("failed request: {error}");
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_request_and_keep_a_websocket_open() {
    let env = Env::new();
    let first_cert = env.leaf("a", &["a.test"]);
    env.leaf("b", &["b.test"]);
    let (ws, one, two) = (
        Upstream::ws_echo().await,
        Upstream::echo("one").await,
        Upstream::echo("two").await,
    );
    let rampart: Rampart = env.start(&config(&ws, &one, false)).await;

    let mut socket = rampart.websocket("a.test", "wss://a.test/ws").await;

    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut clients = Vec::new();
    for index in 0..4 {
        let client = if index % 2 == 0 {
            rampart.client_h1("a.test").await
        } else {
            rampart.client("a.test").await
        };
        clients.push(tokio::spawn(load(
            client,
            stop.clone(),
            ok.clone(),
            failed.clone(),
        )));
    }

    let mut replaced_cert = None;
    for round in 0..50 {
        let origin = if round % 2 == 0 { &two } else { &one };
        if round == 25 {
            // A static certificate file replaced in place is picked up by the reload.
            replaced_cert = Some(env.leaf("a", &["a.test"]));
        }
        env.write_config(&config(&ws, origin, round % 2 == 0));
        rampart.server().reload().expect("reload applies");
        // 50 reloads over about 20 s of load.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(client.await.expect("load task"));
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the reloads"
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 50,
        "the load kept going: {} requests",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        seen.contains(&"one".to_owned()) && seen.contains(&"two".to_owned()),
        "both snapshots served: {seen:?}"
    );

    // The WebSocket opened before the first reload still echoes after the last.
    socket
        .send(Message::text("still here"))
        .await
        .expect("send");
    let echoed = within(WAIT, "the echo", socket.next())
        .await
        .expect("a message")
        .expect("no error");
    assert_eq!(echoed, Message::text("still here"));
    socket.close(None).await.expect("close");
    drop(socket);

    // New handshakes get the replaced certificate; the last config (round 49: `one`, no b.test) rules.
    let served = rampart
        .connect("a.test")
        .await
        .expect("handshake")
        .peer_cert;
    assert_eq!(Some(served), replaced_cert);
    assert_ne!(replaced_cert.as_ref(), Some(&first_cert));
    assert!(
        rampart.connect("b.test").await.is_err(),
        "the removed site's name is no longer served"
    );
    rampart.stop().await;
}

/// A site whose route has `rate_limit` and `max_in_flight`; `extra` adds a second site, a
/// change that leaves the route's limits as they were.
fn limited(origin: &Upstream, rate: &str, extra: bool) -> String {
    let mut text = format!(
        "sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    routes:
      - {{ path: /, upstreams: [{origin}], max_in_flight: 1, rate_limit: {{ rate: {rate}, burst: 3 }} }}
",
        origin = origin.url()
    );
    if extra {
        text.push_str(SITE_B);
    }
    text
}

#[tokio::test]
async fn a_reload_keeps_unchanged_limits_and_renews_changed_ones() {
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    env.leaf("b", &["b.test"]);
    let slow = Upstream::slow(Duration::from_secs(2)).await;
    let rampart = env.start(&limited(&slow, "1/h", false)).await;
    let mut client = rampart.client("a.test").await;

    // The one slot is taken by a request that stays in flight across the reload.
    let mut holder = rampart.client("a.test").await;
    let held = tokio::spawn(async move { holder.get("a.test", "/").await.status });
    slow.wait_requests(1).await;
    assert_eq!(
        client.get("a.test", "/").await.status,
        http::StatusCode::TOO_MANY_REQUESTS,
        "max_in_flight 1 is taken"
    );

    // Adding a site changes nothing about this route: its slot stays taken and its bucket
    // stays as drained (3 of 3: the held request and the refused one took a token each).
    env.write_config(&limited(&slow, "1/h", true));
    rampart.server().reload().expect("reload applies");
    let refused = client.get("a.test", "/").await;
    assert_eq!(refused.status, http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.header("ratelimit-policy"),
        None,
        "refused for the slot, not the rate: the kept slot is still taken"
    );
    assert_eq!(held.await.expect("held request"), http::StatusCode::OK);
    let limited_now = client.get("a.test", "/").await;
    assert_eq!(
        limited_now.header("ratelimit-policy"),
        Some("\"default\";q=3;w=10800"),
        "the kept bucket is empty"
    );

    // A changed rate is a new limit: full buckets.
    env.write_config(&limited(&slow, "2/h", true));
    rampart.server().reload().expect("reload applies");
    assert_eq!(client.get("a.test", "/").await.status, http::StatusCode::OK);
    rampart.stop().await;
}

#[tokio::test]
async fn a_reload_changing_downstream_settings_says_they_need_a_restart() {
    logs::capture(logs::Format::Text, LOG_FILTER);
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    let origin = Upstream::echo("one").await;
    let site = format!(
        "sites:\n  - hosts: [a.test]\n    tls: {{ cert: a.pem, key: a.key }}\n    upstreams: [{}]\n",
        origin.url()
    );
    let rampart = env.start(&site).await;
    env.write_config(&format!("downstream: {{ idle_timeout: 5s }}\n{site}"));
    rampart.server().reload().expect("a valid file applies");
    let logged = logs::captured();
    assert!(
        logged.contains("downstream settings changed: restart Rampart to apply them"),
        "{logged}"
    );
    rampart.stop().await;
}
