//! The admin listener end to end: `/healthz`, `/metrics` after real traffic (parsed with a
//! Prometheus parser, every family present, the certificate gauge equal to the served notAfter),
//! `/certs`, and `/readyz` waiting for an ACME certificate from Pebble.

mod common;
#[path = "common/pebble.rs"]
mod pebble;

use std::error::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use prometheus_parse::{Sample, Scrape, Value};
use rampart::{Listeners, Server};

use common::{
    Env, HttpClient, Reply, TlsClient, Upstream, empty, plain_get, plain_get_with, refused_addr,
    tls_alert,
};
use pebble::{Pebble, PebbleOptions};

type TestResult = Result<(), Box<dyn Error>>;

/// Longest wait for a certificate from a local Pebble (first issuance takes about a second).
const ISSUANCE: Duration = Duration::from_secs(60);

/// Every family `/metrics` must declare after traffic, by the name in its `# HELP` line. A
/// family with no series is not written, so the ACME families (last two) are checked in the
/// Pebble test, where an order has happened.
const FAMILIES: [&str; 14] = [
    "rampart_http_requests",
    "rampart_http_request_duration_seconds",
    "rampart_upstream_requests",
    "rampart_upstream_errors",
    "rampart_upstream_healthy",
    "rampart_downstream_open_connections",
    "rampart_tls_handshakes",
    "rampart_tls_handshake_duration_seconds",
    "rampart_tls_certificate_not_after_timestamp_seconds",
    "rampart_config_reloads",
    "rampart_policy_rate_limited_requests",
    "rampart_policy_concurrency_limited_requests",
    "rampart_acme_renewal_due_timestamp_seconds",
    "rampart_acme_orders",
];
const WITHOUT_ACME: usize = 12;

async fn start(config: &Path, listeners: Listeners) -> Server {
    let config = rampart::config::load(config).unwrap_or_else(|e| panic!("valid config: {e}"));
    Server::start(config, listeners)
        .await
        .expect("server starts")
}

async fn admin_get(server: &Server, path: &str) -> Reply {
    let addr = server.admin_addr().expect("an admin listener");
    plain_get(addr, "localhost", path).await
}

/// `/metrics`, checked for its content type and parsed.
async fn scrape(server: &Server) -> Scrape {
    let reply = admin_get(server, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text; version=1.0.0")),
        "{:?}",
        reply.header("content-type")
    );
    let text = reply.text();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("metrics parse")
}

/// The samples of `metric` whose labels include every pair of `labels`.
fn find<'s>(scrape: &'s Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'s Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The single plain value of `metric` with `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(scrape, metric, labels);
    assert_eq!(found.len(), 1, "{metric}{labels:?}: {found:?}");
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric}{labels:?} is not a plain value: {other:?}"),
    }
}

/// The observation count of the histogram `metric` with `labels` (its `+Inf` bucket).
fn histogram_count(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(scrape, metric, labels);
    assert_eq!(found.len(), 1, "{metric}{labels:?}: {found:?}");
    match &found[0].value {
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count)
            .expect("a +Inf bucket"),
        other => panic!("{metric} is not a histogram: {other:?}"),
    }
}

/// With `listen.admin_token_file`, every endpoint but `/healthz` wants the bearer token.
#[tokio::test]
async fn with_a_token_every_admin_endpoint_but_healthz_wants_it() -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    let token = "0123456789abcdef-token";
    let file = env.write("admin.token", &format!("{token}\n"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    // The whole file: `listen` needs the admin keys, which the shared header does not have.
    let config = env.write(
        "rampart.yaml",
        "listen:
  https: \"127.0.0.1:8443\"
  http: \"127.0.0.1:8080\"
  admin: \"127.0.0.1:9180\"
  admin_token_file: admin.token
storage: storage
log: { format: text, level: warn }
sites:
  - hosts: [a.test]
    tls: { cert: a.pem, key: a.key }
    routes: [{ path: /, respond: { body: ok } }]
",
    );
    let server = start(&config, Listeners::loopback_with_admin()?).await;
    let addr = server.admin_addr().expect("an admin listener");
    assert_eq!(plain_get(addr, "localhost", "/healthz").await.status, 200);
    for path in ["/metrics", "/readyz", "/certs"] {
        let refused = plain_get(addr, "localhost", path).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"), "{path}");
        let wrong = [("authorization", "Bearer 0123456789abcdef-tokem")];
        let refused = plain_get_with(addr, "localhost", path, &wrong).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
        let bearer = format!("Bearer {token}");
        let right = [("authorization", bearer.as_str())];
        let served = plain_get_with(addr, "localhost", path, &right).await;
        assert_eq!(served.status, StatusCode::OK, "{path}: {}", served.text());
    }
    assert!(server.shutdown().await);
    Ok(())
}

/// A request whose client leaves before the answer counts as it is logged: a 4xx (499) on its
/// route, with its duration, once hyper drops it.
#[tokio::test]
async fn a_request_abandoned_before_its_answer_counts_on_its_route() -> TestResult {
    let env = Env::new();
    env.leaf("a", &["abandon.test"]);
    let origin = Upstream::holding("origin").await;
    let config = env.write_config(&format!(
        "sites:
  - hosts: [abandon.test]
    tls: {{ cert: a.pem, key: a.key }}
    upstreams: [{}]
",
        origin.url()
    ));
    let server = start(&config, Listeners::loopback_with_admin()?).await;
    let tls = TlsClient::new(env.ca.roots())
        .connect(server.https_addr(), Some("abandon.test"))
        .await?;
    let mut client = HttpClient::handshake(tls).await;
    let request = client
        .request(http::Method::GET, "abandon.test", "/hold")
        .body(empty())?;
    // Sent on its own task, so that aborting it drops the client and leaves the request.
    let pending = tokio::spawn(async move {
        let _ = client.send(request).await;
    });
    origin.wait_requests(1).await;
    pending.abort();
    let counted = [("site", "abandon.test"), ("route", "/"), ("status", "4xx")];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = scrape(&server).await;
        if find(&scrape, "rampart_http_requests_total", &counted).len() == 1
            && value(&scrape, "rampart_http_requests_total", &counted) == 1.0
        {
            let site = [("site", "abandon.test")];
            let durations =
                histogram_count(&scrape, "rampart_http_request_duration_seconds", &site);
            assert_eq!(durations, 1.0, "its duration is observed too");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned request was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    origin.open_gate();
    server.shutdown().await;
    Ok(())
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as f64
}

#[tokio::test]
async fn metrics_cover_every_family_after_traffic_and_parse() -> TestResult {
    let env = Env::new();
    env.leaf("m", &["metrics.test"]);
    let (echo, refused) = (Upstream::echo("echo").await, refused_addr());
    let config = env.write_config(&format!(
        "sites:
  - hosts: [metrics.test]
    tls: {{ cert: m.pem, key: m.key }}
    routes:
      - {{ path: /, upstreams: [{echo}] }}
      - {{ path: /broken/, upstreams: [\"http://{refused}\"] }}
",
        echo = echo.url(),
    ));
    let server = start(&config, Listeners::loopback_with_admin()?).await;

    let health = admin_get(&server, "/healthz").await;
    assert_eq!(
        (health.status, health.text().as_str()),
        (StatusCode::OK, "ok\n")
    );

    let roots = env.ca.roots();
    let tls = TlsClient::new(roots.clone())
        .connect(server.https_addr(), Some("metrics.test"))
        .await?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&tls.peer_cert)?;
    let not_after = leaf.validity().not_after.timestamp() as f64;
    let mut client = HttpClient::handshake(tls).await;
    for _ in 0..2 {
        assert_eq!(
            client.get("metrics.test", "/hello").await.status,
            StatusCode::OK
        );
    }
    let broken = client.get("metrics.test", "/broken/secret-path").await;
    assert_eq!(broken.status, StatusCode::BAD_GATEWAY);
    let Err(refused_sni) = TlsClient::new(roots)
        .connect(server.https_addr(), Some("unknown-sni.test"))
        .await
    else {
        panic!("a handshake for an unknown name must fail");
    };
    assert!(tls_alert(&refused_sni).is_some(), "{refused_sni}");
    server.reload()?;

    let scrape = scrape(&server).await;
    for family in &FAMILIES[..WITHOUT_ACME] {
        assert!(scrape.docs.contains_key(*family), "{family} is declared");
    }
    let site = [("site", "metrics.test")];
    let ok = [site[0], ("route", "/"), ("status", "2xx")];
    assert_eq!(value(&scrape, "rampart_http_requests_total", &ok), 2.0);
    let bad = [site[0], ("route", "/broken/"), ("status", "5xx")];
    assert_eq!(value(&scrape, "rampart_http_requests_total", &bad), 1.0);
    assert_eq!(
        histogram_count(&scrape, "rampart_http_request_duration_seconds", &site),
        3.0
    );
    let echo_url = echo.url();
    let refused_url = format!("http://{refused}");
    let up = [("upstream", echo_url.as_str())];
    assert_eq!(value(&scrape, "rampart_upstream_requests_total", &up), 2.0);
    assert_eq!(value(&scrape, "rampart_upstream_healthy", &up), 1.0);
    let failed = [("upstream", refused_url.as_str()), ("kind", "connect")];
    assert_eq!(
        value(&scrape, "rampart_upstream_errors_total", &failed),
        1.0
    );
    // Tests in this binary share the registry: process-wide series are at least ours.
    let open = value(
        &scrape,
        "rampart_downstream_open_connections",
        &[("listener", "https")],
    );
    assert!(open >= 1.0, "our client is still connected: {open}");
    let unknown = [("result", "unknown_name"), ("version", "none")];
    assert!(value(&scrape, "rampart_tls_handshakes_total", &unknown) >= 1.0);
    let handshakes: f64 = find(&scrape, "rampart_tls_handshakes_total", &[("result", "ok")])
        .iter()
        .map(|s| match s.value {
            Value::Counter(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(handshakes >= 1.0);
    assert!(histogram_count(&scrape, "rampart_tls_handshake_duration_seconds", &[]) >= 2.0);
    assert_eq!(
        value(
            &scrape,
            "rampart_tls_certificate_not_after_timestamp_seconds",
            &site
        ),
        not_after,
        "the gauge is the served certificate's notAfter"
    );
    assert!(
        value(
            &scrape,
            "rampart_config_reloads_total",
            &[("result", "success")]
        ) >= 1.0
    );
    let route = [site[0], ("route", "/")];
    assert_eq!(
        value(
            &scrape,
            "rampart_policy_rate_limited_requests_total",
            &route
        ),
        0.0
    );
    assert_eq!(
        value(
            &scrape,
            "rampart_policy_concurrency_limited_requests_total",
            &route
        ),
        0.0
    );
    // Labels are configured names only: no SNI a client made up, no client path.
    for sample in &scrape.samples {
        let labels = format!("{:?}", sample.labels);
        assert!(!labels.contains("unknown-sni"), "{labels}");
        assert!(!labels.contains("secret-path"), "{labels}");
    }

    drop(client);
    assert!(server.shutdown().await);
    Ok(())
}

#[tokio::test]
async fn certs_reports_every_site_as_json_and_readyz_is_ready_with_static_certificates()
-> TestResult {
    let env = Env::new();
    env.leaf("c", &["certs.test", "www.certs.test"]);
    let config = env.write_config(
        "sites:
  - hosts: [certs.test, www.certs.test]
    tls: { cert: c.pem, key: c.key }
    routes: [{ path: /, respond: { body: \"hi\\n\" } }]
",
    );
    let server = start(&config, Listeners::loopback_with_admin()?).await;

    let ready = admin_get(&server, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let certs = admin_get(&server, "/certs").await;
    assert_eq!(certs.status, StatusCode::OK);
    assert_eq!(certs.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&certs.body)?;
    let sites = json.as_array().expect("an array of sites");
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0]["site"], "certs.test");
    assert_eq!(sites[0]["source"], "files");
    assert_eq!(
        sites[0]["names"],
        serde_json::json!(["certs.test", "www.certs.test"])
    );
    assert!(sites[0]["certificate"]["not_after"].is_string(), "{json}");
    assert_eq!(
        admin_get(&server, "/nothing-here").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(server.shutdown().await);
    Ok(())
}

/// Polls `/readyz` (the readiness signal under test) until it answers 200.
async fn wait_ready(admin: SocketAddr, limit: Duration) -> Reply {
    let started = Instant::now();
    loop {
        let reply = plain_get(admin, "localhost", "/readyz").await;
        if reply.status == StatusCode::OK {
            return reply;
        }
        assert!(
            started.elapsed() < limit,
            "not ready within {limit:?}: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_acme_sites_until_their_certificates_exist() -> TestResult {
    let env = Env::new();
    env.leaf("s", &["static.test"]);
    let listeners = Listeners::loopback_with_admin()?;
    let pebble = Pebble::start(PebbleOptions::new(
        listeners.http_addr().expect("http listener").port(),
    ))
    .await;
    let config = env.write_config(&format!(
        "acme:\n  directory: {}\n  ca_bundle: {}\nsites:
  - {{ hosts: [static.test], tls: {{ cert: s.pem, key: s.key }}, routes: [{{ path: /, respond: {{ body: \"s\\n\" }} }}] }}
  - {{ hosts: [ready.test], routes: [{{ path: /, respond: {{ body: \"r\\n\" }} }}] }}
",
        pebble.directory_url(),
        pebble.ca_bundle().display()
    ));
    let server = start(&config, listeners).await;
    let admin = server.admin_addr().expect("an admin listener");

    // Asked right after start: the first order needs several round trips to the CA and a
    // validation of our :80, so the ACME site cannot have its certificate yet.
    let waiting = plain_get(admin, "localhost", "/readyz").await;
    assert_eq!(waiting.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = waiting.text();
    assert!(body.contains("ready.test"), "{body}");
    assert!(!body.contains("static.test"), "{body}");

    wait_ready(admin, ISSUANCE).await;
    let scrape = scrape(&server).await;
    for family in FAMILIES {
        assert!(scrape.docs.contains_key(family), "{family} is declared");
    }
    let site = [("site", "ready.test")];
    let now = unix_seconds(SystemTime::now());
    let not_after = value(
        &scrape,
        "rampart_tls_certificate_not_after_timestamp_seconds",
        &site,
    );
    let due = value(&scrape, "rampart_acme_renewal_due_timestamp_seconds", &site);
    assert!(now < due && due < not_after, "{now} < {due} < {not_after}");
    let directory = pebble.directory_url();
    let success = [
        ("ca", directory.as_str()),
        ("result", "success"),
        ("problem_type", "none"),
    ];
    assert!(value(&scrape, "rampart_acme_orders_total", &success) >= 1.0);
    assert!(server.shutdown().await);
    Ok(())
}
