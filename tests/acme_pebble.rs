//! Automatic certificates end to end: Rampart's own `:80` listener answers Pebble's HTTP-01
//! validation, certificates are served on the real TLS listener, stored certificates are
//! reused across restarts without the CA, short-lived certificates are renewed while open
//! connections keep working, and `rampart certs` reports what is on disk.

mod common;
#[path = "common/pebble.rs"]
mod pebble;

use std::error::Error;
use std::time::{Duration, Instant};

use rampart::tls::LeafFacts;
use rampart::{Listeners, Server};
use rustls::RootCertStore;

use common::{Env, HttpClient, TlsClient, certs_json};
use pebble::{Pebble, PebbleOptions};

type TestResult = Result<(), Box<dyn Error>>;

/// Longest wait for a certificate from a local Pebble (first issuance takes about a second).
const ISSUANCE: Duration = Duration::from_secs(60);

/// Writes a config whose `tls: acme` sites use `pebble`.
fn write_config(env: &Env, pebble: &Pebble, sites: &str) -> std::path::PathBuf {
    env.write_config(&format!(
        "acme:\n  directory: {}\n  ca_bundle: {}\nsites:\n{sites}",
        pebble.directory_url(),
        pebble.ca_bundle().display()
    ))
}

async fn start(config: &std::path::Path, listeners: Listeners) -> Server {
    let config = rampart::config::load(config).unwrap_or_else(|e| panic!("valid config: {e}"));
    Server::start(config, listeners)
        .await
        .expect("server starts")
}

/// Waits (bounded) until the store serves a certificate for every name.
async fn served(server: &Server, names: &[&str], limit: Duration) {
    let started = Instant::now();
    while !names
        .iter()
        .all(|n| server.certs().lookup(Some(n)).is_some())
    {
        assert!(
            started.elapsed() < limit,
            "no certificate for {names:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The serial the listener serves for `name`, verified against Pebble's root.
async fn serial(server: &Server, roots: &RootCertStore, name: &str) -> String {
    let tls = TlsClient::new(roots.clone())
        .connect(server.https_addr(), Some(name))
        .await
        .unwrap_or_else(|e| panic!("{name}: the served chain verifies against Pebble's root: {e}"));
    LeafFacts::parse(&tls.peer_cert)
        .expect("leaf parses")
        .serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_get_certificates_over_http01_and_a_restart_reuses_them_without_the_ca() -> TestResult
{
    let env = Env::new();
    let listeners = Listeners::loopback()?;
    let mut pebble = Pebble::start(PebbleOptions::new(
        listeners.http_addr().expect("http listener").port(),
    ))
    .await;
    // bad.test resolves to an address where nothing answers: its validation must fail.
    pebble.add_a("bad.test", &["127.0.0.2"]).await;
    let config = write_config(
        &env,
        &pebble,
        "  - { hosts: [a.test, www.a.test], routes: [{ path: /, respond: { body: \"a\\n\" } }] }\n\
         \x20 - { hosts: [b.test], routes: [{ path: /, respond: { body: \"b\\n\" } }] }\n\
         \x20 - { hosts: [bad.test], routes: [{ path: /, respond: { body: \"bad\\n\" } }] }\n",
    );
    let server = start(&config, listeners).await;
    served(&server, &["a.test", "www.a.test", "b.test"], ISSUANCE).await;

    let roots = pebble.roots();
    let mut serials = Vec::new();
    for (name, body) in [("a.test", "a\n"), ("www.a.test", "a\n"), ("b.test", "b\n")] {
        serials.push(serial(&server, &roots, name).await);
        let tls = TlsClient::new(roots.clone())
            .connect(server.https_addr(), Some(name))
            .await?;
        let mut http = HttpClient::handshake(tls).await;
        assert_eq!(http.get(name, "/").await.text(), body);
    }
    assert_eq!(
        serials[0], serials[1],
        "one certificate covers a site's names"
    );
    assert_ne!(serials[0], serials[2], "each site has its own certificate");
    assert!(
        server.certs().lookup(Some("bad.test")).is_none(),
        "a failed site has nothing to serve"
    );

    // `rampart certs` reads the same from storage, and names the CA's problem for bad.test.
    let report = certs_json(&config);
    assert_eq!(report[0]["certificate"]["serial"], serials[0].as_str());
    assert_eq!(report[1]["certificate"]["serial"], serials[2].as_str());
    assert_eq!(report[0]["renewal_reason"], "lifetime");
    let started = Instant::now();
    let bad = loop {
        let report = certs_json(&config);
        if !report[2]["last_error"].is_null() {
            break report[2].clone();
        }
        assert!(
            started.elapsed() < ISSUANCE,
            "bad.test never recorded its failure"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(bad["certificate"].is_null());
    let problem = bad["last_error"]["problem_type"]
        .as_str()
        .unwrap_or_default();
    assert!(
        problem.starts_with("urn:ietf:params:acme:error:"),
        "CA problem type recorded: {bad}"
    );
    assert!(
        !bad["next_attempt"].is_null(),
        "a failure schedules a retry with backoff"
    );
    assert!(server.shutdown().await, "drained within the grace period");

    // Restart with the CA gone: the stored certificates are served at once, same serials.
    pebble.stop_pebble();
    let server = start(&config, Listeners::loopback()?).await;
    assert!(
        server.certs().lookup(Some("a.test")).is_some(),
        "served before any CA request"
    );
    assert_eq!(serial(&server, &roots, "a.test").await, serials[0]);
    assert_eq!(serial(&server, &roots, "b.test").await, serials[2]);
    assert!(server.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificate_is_renewed_and_open_connections_keep_working() -> TestResult {
    let env = Env::new();
    let listeners = Listeners::loopback()?;
    let mut options = PebbleOptions::new(listeners.http_addr().expect("http listener").port());
    // 20 s certificates: renewal is due after half the lifetime (lifetimes of 10 days or less).
    options.validity_secs = 20;
    let pebble = Pebble::start(options).await;
    let config = write_config(
        &env,
        &pebble,
        "  - { hosts: [r.test], routes: [{ path: /, respond: { body: \"r\\n\" } }] }\n",
    );
    let server = start(&config, listeners).await;
    served(&server, &["r.test"], ISSUANCE).await;
    let roots = pebble.roots();

    let first = serial(&server, &roots, "r.test").await;
    let tls = TlsClient::new(roots.clone())
        .connect(server.https_addr(), Some("r.test"))
        .await?;
    let mut open = HttpClient::handshake(tls).await;
    assert_eq!(open.get("r.test", "/").await.text(), "r\n");

    let started = Instant::now();
    let renewed = loop {
        let now = serial(&server, &roots, "r.test").await;
        if now != first {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "not renewed within 40 s of 20 s certificates"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_ne!(renewed, first);
    // The connection opened on the old certificate is untouched by the swap.
    assert_eq!(open.get("r.test", "/").await.text(), "r\n");
    assert!(server.shutdown().await);
    Ok(())
}
