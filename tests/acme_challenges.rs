//! Challenge types end to end against Pebble: TLS-ALPN-01 on the TLS listener with no `:80`
//! listener at all, DNS-01 through RFC 2136 updates to a real Knot DNS server (a wildcard
//! certificate, served for one-label names) and through the exec provider; and the acceptor's
//! rule that only a handshake offering `acme-tls/1` ever sees a challenge certificate.

mod common;
#[path = "common/knot.rs"]
mod knot;
#[path = "common/pebble.rs"]
mod pebble;

use std::error::Error;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart::tls::LeafFacts;
use rampart::{Listeners, Server};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use common::{Env, TlsClient};
use pebble::{Pebble, PebbleOptions, free_tcp_port};

type TestResult = Result<(), Box<dyn Error>>;

/// Longest wait for a certificate from a local Pebble.
const ISSUANCE: Duration = Duration::from_secs(60);
/// id-pe-acmeIdentifier (RFC 8737 §6.1).
const ACME_IDENTIFIER: &str = "1.3.6.1.5.5.7.1.31";

async fn start(config: &std::path::Path, listeners: Listeners) -> Server {
    let config = rampart::config::load(config).unwrap_or_else(|e| panic!("valid config: {e}"));
    Server::start(config, listeners)
        .await
        .expect("server starts")
}

/// Waits (bounded) until the store serves a certificate for every name.
async fn served(server: &Server, names: &[&str], pebble: &Pebble) {
    let started = Instant::now();
    while !names
        .iter()
        .all(|n| server.certs().lookup(Some(n)).is_some())
    {
        assert!(
            started.elapsed() < ISSUANCE,
            "no certificate for {names:?} within {ISSUANCE:?}; pebble log:\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `openssl s_client` gets from `addr` for `sni` offering `alpn`: the negotiated ALPN
/// protocol and the leaf, or the alert text when the handshake fails.
fn s_client(
    addr: SocketAddr,
    sni: &str,
    alpn: &str,
) -> (Option<String>, Result<CertificateDer<'static>, String>) {
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
        ])
        .args(["-alpn", alpn])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs: apt-get install -y openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let negotiated = text
        .lines()
        .find_map(|line| line.strip_prefix("ALPN protocol: "))
        .map(str::to_owned);
    let leaf = CertificateDer::pem_slice_iter(text.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or(text);
    (negotiated, leaf)
}

/// The acmeIdentifier extension of `cert`: (critical, value).
fn acme_identifier(cert: &CertificateDer<'_>) -> Option<(bool, Vec<u8>)> {
    let (_, parsed) = X509Certificate::from_der(cert).expect("the leaf parses");
    parsed
        .extensions()
        .iter()
        .find(|ext| ext.oid.to_id_string() == ACME_IDENTIFIER)
        .map(|ext| (ext.critical, ext.value.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_handshake_offering_acme_tls_gets_a_challenge_certificate() -> TestResult {
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    let config = env.write_config(
        "sites:\n  - hosts: [a.test]\n    tls: { cert: a.pem, key: a.key }\n    routes: [{ path: /, respond: { body: \"a\\n\" } }]\n",
    );
    let server = start(&config, Listeners::loopback()?).await;
    let addr = server.https_addr();
    server
        .challenges()
        .insert_tls_alpn("a.test", "token.thumbprint")?;

    let (negotiated, leaf) = s_client(addr, "a.test", "acme-tls/1");
    assert_eq!(negotiated.as_deref(), Some("acme-tls/1"));
    let leaf = leaf.map_err(|text| format!("no certificate:\n{text}"))?;
    let (critical, value) = acme_identifier(&leaf).ok_or("no acmeIdentifier extension")?;
    assert!(critical, "RFC 8737 §3: the extension is critical");
    let mut digest = common::Sha256::new();
    digest.update(b"token.thumbprint");
    assert_eq!(
        value[2..],
        digest.finalize(),
        "the key authorization's digest"
    );

    // A browser's handshake to the same name gets the site's certificate, never the challenge.
    let (negotiated, leaf) = s_client(addr, "a.test", "h2,http/1.1");
    assert_eq!(negotiated.as_deref(), Some("h2"));
    let leaf = leaf.map_err(|text| format!("no certificate:\n{text}"))?;
    assert_eq!(acme_identifier(&leaf), None);
    // ... even when acme-tls/1 is offered among others, the challenge answers, not the site.
    let (negotiated, _) = s_client(addr, "a.test", "h2,acme-tls/1");
    assert_eq!(negotiated.as_deref(), Some("acme-tls/1"));

    // No pending challenge for the name: refused, never the site's certificate.
    let (_, leaf) = s_client(addr, "b.test", "acme-tls/1");
    let text = leaf.expect_err("no certificate for b.test");
    assert!(text.contains("unrecognized name"), "{text}");
    server
        .challenges()
        .remove(&rampart::acme::tls_alpn_key("a.test"));
    let (_, leaf) = s_client(addr, "a.test", "acme-tls/1");
    let text = leaf.expect_err("gone once removed");
    assert!(text.contains("unrecognized name"), "{text}");
    assert!(server.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_with_no_port_80_listener() -> TestResult {
    let env = Env::new();
    let listeners = Listeners::loopback()?.without_http();
    // Pebble's http-01 validation would go to a port where nothing listens: only tls-alpn-01,
    // on Rampart's TLS listener, can succeed.
    let mut options = PebbleOptions::new(free_tcp_port());
    options.tls_port = listeners.https_addr().port();
    let pebble = Pebble::start(options).await;
    let config = env.write(
        "rampart.yaml",
        &format!(
            "listen: {{ https: \"127.0.0.1:8443\", http: \"off\" }}\nstorage: storage\n\
             log: {{ format: text, level: warn }}\nshutdown_grace: 5s\n\
             acme:\n  directory: {}\n  ca_bundle: {}\n\
             sites:\n  - {{ hosts: [t.test], routes: [{{ path: /, respond: {{ body: \"t\\n\" }} }}] }}\n",
            pebble.directory_url(),
            pebble.ca_bundle().display()
        ),
    );
    let server = start(&config, listeners).await;
    assert_eq!(server.http_addr(), None, "no :80 listener");
    served(&server, &["t.test"], &pebble).await;
    let roots = pebble.roots();
    let tls = TlsClient::new(roots)
        .connect(server.https_addr(), Some("t.test"))
        .await?;
    assert!(!LeafFacts::parse(&tls.peer_cert)?.serial.is_empty());
    assert_eq!(acme_identifier(&tls.peer_cert), None);
    // Validated: the challenge certificate is gone.
    let (_, leaf) = s_client(server.https_addr(), "t.test", "acme-tls/1");
    let text = leaf.expect_err("no challenge certificate after validation");
    assert!(text.contains("unrecognized name"), "{text}");
    assert!(server.shutdown().await);
    Ok(())
}

/// A config ordering from `pebble` with `extra` top-level sections (e.g. `dns:`) and `sites`.
fn acme_config(env: &Env, pebble: &Pebble, extra: &str, sites: &str) -> std::path::PathBuf {
    env.write(
        "rampart.yaml",
        &format!(
            "listen: {{ https: \"127.0.0.1:8443\", http: \"127.0.0.1:8080\" }}\nstorage: storage\n\
             log: {{ format: text, level: warn }}\nshutdown_grace: 5s\n\
             acme:\n  directory: {}\n  ca_bundle: {}\n{extra}sites:\n{sites}",
            pebble.directory_url(),
            pebble.ca_bundle().display()
        ),
    )
}

/// Pebble validating DNS-01 (and resolving names) through `knot`; its http-01 and tls-alpn-01
/// validations go to ports where nothing listens, so only DNS-01 can succeed.
async fn pebble_asking(knot: &knot::Knot) -> Pebble {
    let mut options = PebbleOptions::new(free_tcp_port());
    options.dns_server = Some(knot.addr());
    Pebble::start(options).await
}

/// `dns:` with one exec provider `hook`, running a script of `body` (after the shebang), whose
/// records are looked for at `knot` for at most `propagation`.
fn exec_provider(env: &Env, knot: &knot::Knot, body: &str, propagation: &str) -> String {
    let script = env.write("dns.sh", &format!("#!/bin/sh\n{body}"));
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("make dns.sh executable");
    format!(
        "dns:\n  hook:\n    provider: exec\n    command: {}\n    nameservers: [\"{}\"]\n    \
         propagation_timeout: {propagation}\n",
        script.display(),
        knot.addr()
    )
}

/// A hook body that only records its calls in `calls`: it claims to write, writes nothing.
fn recording_only(calls: &std::path::Path) -> String {
    format!("echo \"$1 $2 $3\" >> {}\n", calls.display())
}

/// A site for `host` proving it through the `hook` provider only.
fn hook_site(host: &str) -> String {
    format!(
        "  - hosts: [{host}]\n    dns: hook\n    challenges: [dns-01]\n    \
         routes: [{{ path: /, respond: {{ body: \"{host}\\n\" }} }}]\n"
    )
}

/// Checks that the hook was called exactly twice for `host`: `present` then `cleanup` of the
/// same value (lego's convention: the name ends with a dot); returns the value.
fn presented_then_cleaned(calls: &std::path::Path, host: &str) -> Result<String, Box<dyn Error>> {
    let calls = std::fs::read_to_string(calls)?;
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 2, "{calls}");
    let value = lines[0]
        .strip_prefix(&format!("present _acme-challenge.{host}. "))
        .ok_or(format!("lego's convention, trailing dot: {calls}"))?;
    assert_eq!(lines[1], format!("cleanup _acme-challenge.{host}. {value}"));
    Ok(value.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_through_rfc2136_issues_a_wildcard_served_for_one_label() -> TestResult {
    let env = Env::new();
    let knot = knot::Knot::start(&["w.test"]);
    let pebble = pebble_asking(&knot).await;
    let dns = format!(
        "dns:\n  primary:\n    provider: rfc2136\n    server: \"{}\"\n    key_name: {}\n    \
         key_secret_file: {}\n    nameservers: [\"{}\"]\n    propagation_timeout: 20s\n",
        knot.addr(),
        knot.key_name(),
        knot.secret_file().display(),
        knot.addr()
    );
    // The wildcard and its parent: two values on one `_acme-challenge.w.test` at once.
    let sites = "  - hosts: [\"*.w.test\", w.test]\n    dns: primary\n    \
                 routes: [{ path: /, respond: { body: \"w\\n\" } }]\n";
    let config = acme_config(&env, &pebble, &dns, sites);
    let server = start(&config, Listeners::loopback()?).await;
    served(&server, &["x.w.test", "w.test"], &pebble).await;

    let roots = pebble.roots();
    let tls = TlsClient::new(roots.clone())
        .connect(server.https_addr(), Some("x.w.test"))
        .await?;
    let facts = LeafFacts::parse(&tls.peer_cert)?;
    assert!(
        facts.names.iter().any(|name| name == "*.w.test"),
        "{:?}",
        facts.names
    );
    // A wildcard covers one label: nothing is served for a deeper name.
    assert!(server.certs().lookup(Some("a.b.w.test")).is_none());
    // Validated, success or not: both records are gone, added and removed by signed updates.
    assert_eq!(knot.txt("_acme-challenge.w.test"), Vec::<String>::new());
    assert_eq!(knot.updates(), 4, "knot log:\n{}", knot.log());
    assert!(server.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_through_the_exec_provider_runs_present_then_cleanup() -> TestResult {
    let env = Env::new();
    let knot = knot::Knot::start(&["w.test"]);
    let pebble = pebble_asking(&knot).await;
    let calls = env.path("calls.log");
    // What an operator's script does: drive their DNS (here knsupdate to Knot), exit 0 when done.
    let body = format!(
        "set -e\necho \"$1 $2 $3\" >> {calls}\ncase \"$1\" in\n  \
         present) op=\"add $2 60\" ;;\n  cleanup) op=\"delete $2\" ;;\n  *) exit 2 ;;\nesac\n\
         printf 'server 127.0.0.1 {port}\\nzone w.test.\\nkey hmac-sha256:{key}:{secret}\\n\
         update %s TXT \"%s\"\\nsend\\n' \"$op\" \"$3\" | knsupdate\n",
        calls = calls.display(),
        port = knot.port(),
        key = knot.key_name(),
        secret = knot.secret(),
    );
    let dns = exec_provider(&env, &knot, &body, "20s");
    let config = acme_config(&env, &pebble, &dns, &hook_site("e.w.test"));
    let server = start(&config, Listeners::loopback()?).await;
    served(&server, &["e.w.test"], &pebble).await;
    TlsClient::new(pebble.roots())
        .connect(server.https_addr(), Some("e.w.test"))
        .await?;

    let value = presented_then_cleaned(&calls, "e.w.test")?;
    assert_eq!(value.len(), 43, "a base64url SHA-256: {value}");
    assert_eq!(knot.txt("_acme-challenge.e.w.test"), Vec::<String>::new());
    assert!(server.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tsig_key_is_reported_with_the_servers_code() -> TestResult {
    use base64::Engine as _;
    use rampart::acme::dns::{self, TxtRecord};
    use rampart::config::{DnsKind, DnsProvider, Tsig, TsigAlgorithm};

    let knot = knot::Knot::start(&["w.test"]);
    let provider = |secret: Vec<u8>| DnsProvider {
        name: "primary".to_owned(),
        kind: DnsKind::Rfc2136 {
            server: knot.addr(),
            zone: None,
            key: Tsig {
                name: knot.key_name().to_owned(),
                algorithm: TsigAlgorithm::HmacSha256,
                secret,
            },
        },
        propagation_timeout: Duration::from_secs(2),
        nameservers: vec![knot.addr()],
    };
    let record = TxtRecord {
        fqdn: "_acme-challenge.r.w.test".to_owned(),
        value: "v".to_owned(),
    };
    let error = dns::present(&provider(b"not the key".to_vec()), &record)
        .await
        .expect_err("a wrong secret is refused");
    let text = error.to_string();
    assert!(
        text.contains("NotAuth") && text.contains("BadSig"),
        "{text}"
    );
    assert_eq!(knot.txt(&record.fqdn), Vec::<String>::new());
    // Not visible: the wait ends at the timeout, naming the server.
    let error = dns::wait_visible(&provider(Vec::new()), std::slice::from_ref(&record))
        .await
        .expect_err("nothing was written");
    assert!(
        error.to_string().contains(&knot.addr().to_string()),
        "{error}"
    );

    let right = provider(base64::engine::general_purpose::STANDARD.decode(knot.secret())?);
    dns::present(&right, &record).await?;
    dns::wait_visible(&right, std::slice::from_ref(&record)).await?;
    assert_eq!(knot.txt(&record.fqdn), ["v"]);
    dns::clean_up(&right, &record).await?;
    assert_eq!(knot.txt(&record.fqdn), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_never_shows_fails_the_order_and_is_still_cleaned_up() -> TestResult {
    let env = Env::new();
    let knot = knot::Knot::start(&["w.test"]);
    let pebble = pebble_asking(&knot).await;
    let calls = env.path("calls.log");
    let dns = exec_provider(&env, &knot, &recording_only(&calls), "2s");
    let config = acme_config(&env, &pebble, &dns, &hook_site("f.w.test"));
    let server = start(&config, Listeners::loopback()?).await;
    let files = rampart::acme::DiskStorage::new(&env.storage());
    let started = Instant::now();
    let error = loop {
        if let Some(error) = files.load_meta("f.w.test")?.last_error {
            break error;
        }
        assert!(started.elapsed() < ISSUANCE, "the order did not fail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        error.message.contains("was not visible on"),
        "{}",
        error.message
    );
    assert!(server.certs().lookup(Some("f.w.test")).is_none());
    presented_then_cleaned(&calls, "f.w.test")?;
    assert!(server.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_mid_order_removes_the_records_written() -> TestResult {
    let env = Env::new();
    let knot = knot::Knot::start(&["w.test"]);
    let pebble = pebble_asking(&knot).await;
    let calls = env.path("calls.log");
    // The order waits for a record that never comes, until Rampart stops.
    let dns = exec_provider(&env, &knot, &recording_only(&calls), "60s");
    let config = acme_config(&env, &pebble, &dns, &hook_site("s.w.test"));
    let server = start(&config, Listeners::loopback()?).await;
    let started = Instant::now();
    while !std::fs::read_to_string(&calls).is_ok_and(|calls| calls.starts_with("present ")) {
        assert!(started.elapsed() < ISSUANCE, "no record presented");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.shutdown().await, "stopped within the grace period");
    presented_then_cleaned(&calls, "s.w.test")?;
    Ok(())
}
