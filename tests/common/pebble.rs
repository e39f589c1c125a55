//! Pebble, Let's Encrypt's test CA, as child processes for end-to-end ACME tests.
//!
//! [`Pebble::start`] runs `pebble-challtestsrv` (DNS answering 127.0.0.1 for every name, its own
//! challenge responders off) and `pebble` on free loopback ports, with a throwaway HTTPS CA made
//! by rcgen in a temp dir, and waits until both accept connections. Both children are killed on
//! `Drop`. [`Http01Responder`] is a minimal `:80` stand-in answering
//! `/.well-known/acme-challenge/TOKEN` from a lookup function, for tests of the ACME layer alone.
//! Binaries come from `PEBBLE` / `CHALLTESTSRV` or `PATH`; when missing the test fails with the
//! install command (these tests never skip).

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::convert::Infallible;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How long the children may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The message a missing Pebble produces; the README's test command installs it.
const INSTALL_HINT: &str = "pebble not found: run `apt-get install -y pebble`";

/// Knobs of one Pebble run.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// Port Pebble's validator connects to for http-01 (our `:80` stand-in).
    pub http_port: u16,
    /// Port for tls-alpn-01 (unused by Rampart; any port).
    pub tls_port: u16,
    /// Percentage of nonces rejected with badNonce (`PEBBLE_WFE_NONCEREJECT`).
    pub nonce_reject: u8,
    /// Lifetime of issued certificates in seconds (`certificateValidityPeriod`).
    pub validity_secs: u64,
    /// Require external account binding with this key ID and base64url HMAC key.
    pub eab: Option<(String, String)>,
    /// Where Pebble resolves names and TXT records (`-dnsserver`); challtestsrv's DNS when None.
    pub dns_server: Option<SocketAddr>,
}

impl PebbleOptions {
    /// Deterministic defaults: no nonce chaos, 10-minute certificates.
    pub fn new(http_port: u16) -> Self {
        Self {
            http_port,
            tls_port: free_tcp_port(),
            nonce_reject: 0,
            validity_secs: 600,
            eab: None,
            dns_server: None,
        }
    }
}

/// A running Pebble and challtestsrv pair, killed on drop.
pub struct Pebble {
    dir: tempfile::TempDir,
    options: PebbleOptions,
    pebble: Option<Child>,
    challtestsrv: Child,
    port: u16,
    management_port: u16,
    dns_port: u16,
    challtestsrv_port: u16,
    root: CertificateDer<'static>,
}

impl Pebble {
    /// Starts both servers and fetches Pebble's issuing root.
    ///
    /// # Panics
    /// With [`INSTALL_HINT`] when `pebble` is not installed, or when a server does not come up.
    pub async fn start(options: PebbleOptions) -> Self {
        // Look for pebble first so a missing install fails before anything starts.
        binary("PEBBLE", "pebble");
        let challtestsrv_bin = binary("CHALLTESTSRV", "pebble-challtestsrv");
        let dir = tempfile::tempdir().expect("temp dir for pebble");
        write_https_identity(dir.path());
        let (port, management_port, challtestsrv_port) =
            (free_tcp_port(), free_tcp_port(), free_tcp_port());
        let dns_port = free_dns_port();

        // -defaultIPv6 "": otherwise the validator dials [::1] first, where nothing listens.
        let challtestsrv = Command::new(&challtestsrv_bin)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtestsrv_port}")])
            .current_dir(dir.path())
            .stdout(log_file(dir.path(), "challtestsrv.log"))
            .stderr(log_file(dir.path(), "challtestsrv.log"))
            .spawn()
            .unwrap_or_else(|error| {
                panic!("{INSTALL_HINT} ({}: {error})", challtestsrv_bin.display())
            });
        let mut harness = Self {
            dir,
            options,
            pebble: None,
            challtestsrv,
            port,
            management_port,
            dns_port,
            challtestsrv_port,
            root: CertificateDer::from(Vec::new()),
        };
        wait_listening(
            challtestsrv_port,
            &mut harness.challtestsrv,
            &harness.dir.path().join("challtestsrv.log"),
        );
        // A port found free may be taken by another test's socket before Pebble binds it: the
        // first start then tries new ones (a restart must keep them, and its directory URL).
        for attempt in 1.. {
            harness.write_config();
            match harness.spawn_pebble() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("address already in use") => {
                    harness.port = free_tcp_port();
                    harness.management_port = free_tcp_port();
                }
                Err(log) => panic!("pebble did not start:\n{log}"),
            }
        }
        harness.root = harness.fetch_root().await;
        harness
    }

    /// Writes `pebble.json` for the current ports and options.
    fn write_config(&self) {
        let options = &self.options;
        let mac_keys: serde_json::Map<String, serde_json::Value> = options
            .eab
            .iter()
            .map(|(kid, key)| (kid.clone(), key.clone().into()))
            .collect();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
            "certificate": "localhost.pem",
            "privateKey": "localhost.key",
            "httpPort": options.http_port,
            "tlsPort": options.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.eab.is_some(),
            "externalAccountMACKeys": mac_keys,
            "certificateValidityPeriod": options.validity_secs,
        }});
        fs::write(self.dir.path().join("pebble.json"), config.to_string())
            .expect("write pebble.json");
    }

    /// Kills and restarts Pebble on the same ports: it forgets every account, order and
    /// certificate, and makes a new root (fetched again here).
    pub async fn restart(&mut self) {
        self.stop_pebble();
        self.start_pebble().await;
    }

    /// Stops Pebble only (the "CA down" case); [`Pebble::restart`] brings it back.
    pub fn stop_pebble(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            // Errors mean it is gone already, which is what we want.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The PEM file of the CA behind Pebble's own HTTPS (give it to `acme.ca_bundle`).
    pub fn ca_bundle(&self) -> PathBuf {
        self.dir.path().join("https-ca.pem")
    }

    /// Pebble's current issuing root, for verifying issued chains.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// A root store holding only [`Pebble::root`], for TLS clients of what it issued.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).expect("Pebble's root parses");
        roots
    }

    /// Makes challtestsrv answer `host` with `addresses` (e.g. 127.0.0.2, where nothing
    /// listens, to make its validation fail), besides any address it had.
    pub async fn add_a(&self, host: &str, addresses: &[&str]) {
        let body = serde_json::json!({"host": host, "addresses": addresses});
        self.challtestsrv("add-a", body).await;
    }

    /// Makes challtestsrv answer `host` with `addresses` only.
    pub async fn set_a(&self, host: &str, addresses: &[&str]) {
        self.challtestsrv("clear-a", serde_json::json!({"host": host}))
            .await;
        self.add_a(host, addresses).await;
    }

    async fn challtestsrv(&self, path: &str, body: serde_json::Value) {
        let url = format!("http://127.0.0.1:{}/{path}", self.challtestsrv_port);
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = Request::post(url)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let response = client.request(request).await.expect("challtestsrv answers");
        assert!(
            response.status().is_success(),
            "challtestsrv /{path} answered {}",
            response.status()
        );
    }

    /// Pebble's log so far (for assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    async fn start_pebble(&mut self) {
        if let Err(log) = self.spawn_pebble() {
            panic!("pebble did not start again on its ports:\n{log}");
        }
        self.root = self.fetch_root().await;
    }

    /// Starts Pebble and waits until both its ports listen; its log if it exits first.
    fn spawn_pebble(&mut self) -> Result<(), String> {
        let pebble_bin = binary("PEBBLE", "pebble");
        let log = self.dir.path().join("pebble.log");
        let dns_server = match self.options.dns_server {
            Some(addr) => addr.to_string(),
            None => format!("127.0.0.1:{}", self.dns_port),
        };
        let mut child = Command::new(&pebble_bin)
            .args([
                "-config",
                "pebble.json",
                "-dnsserver",
                &dns_server,
                "-strict=false",
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                self.options.nonce_reject.to_string(),
            )
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(self.dir.path())
            .stdout(log_file(self.dir.path(), "pebble.log"))
            .stderr(log_file(self.dir.path(), "pebble.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{INSTALL_HINT} ({}: {error})", pebble_bin.display()));
        let listening = try_wait_listening(self.port, &mut child, &log)
            .and_then(|()| try_wait_listening(self.management_port, &mut child, &log));
        if listening.is_err() {
            // Exited already, or stalled: it must not outlive the attempt.
            let _ = child.kill();
            let _ = child.wait();
        }
        listening?;
        self.pebble = Some(child);
        Ok(())
    }

    async fn fetch_root(&self) -> CertificateDer<'static> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = fs::read(self.ca_bundle()).expect("read https-ca.pem");
        roots
            .add(CertificateDer::from_pem_slice(&ca).expect("PEM we wrote"))
            .expect("our CA is valid");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https);
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let response = client
            .get(url.parse().expect("valid URL"))
            .await
            .expect("GET /roots/0");
        assert_eq!(response.status(), StatusCode::OK, "Pebble /roots/0");
        let pem = response
            .into_body()
            .collect()
            .await
            .expect("root body")
            .to_bytes();
        CertificateDer::from_pem_slice(&pem).expect("Pebble root is PEM")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop_pebble();
        // Best effort: a child that already exited cannot be killed, and that is fine.
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}

/// Token → key authorization, as the `:80` listener would look it up.
pub type TokenLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A minimal `:80` stand-in answering http-01 tokens from `lookup`, on 127.0.0.1:0.
pub struct Http01Responder {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Http01Responder {
    /// Binds and serves until dropped.
    pub async fn start(lookup: TokenLookup) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind responder");
        let addr = listener.local_addr().expect("responder address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (lookup, counter) = (lookup.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let answer = request
                            .uri()
                            .path()
                            .strip_prefix("/.well-known/acme-challenge/")
                            .and_then(|token| lookup(token));
                        if answer.is_some() {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        let response = match answer {
                            Some(key_authorization) => {
                                Response::new(Full::new(Bytes::from(key_authorization)))
                            }
                            None => {
                                let mut response =
                                    Response::new(Full::new(Bytes::from_static(b"no such token")));
                                *response.status_mut() = StatusCode::NOT_FOUND;
                                response
                            }
                        };
                        async move { Ok::<_, Infallible>(response) }
                    });
                    // A validator that hangs up early is not our test's concern.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    /// The port to give Pebble as `httpPort`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Token requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A port free for both UDP and TCP (DNS listens on both).
pub fn free_dns_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
        let port = udp.local_addr().expect("udp address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("{INSTALL_HINT} (looked for `{name}` in PATH; or set {env})"))
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("open log file");
    Stdio::from(file)
}

/// Polls until `port` accepts a connection; panics with the child's log if it dies or stalls.
fn wait_listening(port: u16, child: &mut Child, log: &Path) {
    if let Err(problem) = try_wait_listening(port, child, log) {
        panic!("{problem}");
    }
}

/// Polls until `port` accepts a connection; the child's log if it dies or stalls.
fn try_wait_listening(port: u16, child: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        let log = || fs::read_to_string(log).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "child exited with {status} before listening on {port}:\n{}",
                log()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nothing listens on {port} after {READY_TIMEOUT:?}:\n{}",
                log()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A throwaway CA and a `localhost`/127.0.0.1 leaf for Pebble's own HTTPS.
fn write_https_identity(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Pebble test HTTPS CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
    leaf_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca)
        .expect("leaf certificate");
    fs::write(dir.join("https-ca.pem"), ca.pem()).expect("write CA");
    fs::write(dir.join("localhost.pem"), leaf.pem()).expect("write leaf");
    fs::write(dir.join("localhost.key"), leaf_key.serialize_pem()).expect("write leaf key");
}
