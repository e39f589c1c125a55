//! ARI (RFC 9773) against a stub CA: Debian's Pebble 2.4 has no `renewalInfo`, so a tiny HTTPS
//! server serves a directory that offers it and a fixed renewal window. Checks that the scheduler
//! fetches the window for the stored certificate, picks a time inside it, persists it and orders
//! nothing while the window is in the future; and that in a cluster (real etcd) one node polls
//! and the others use its answer.

#[path = "common/etcd.rs"]
mod etcd;

use std::convert::Infallible;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rampart::acme::storage::RenewalReason;
use rampart::acme::{ChallengeStore, DiskStorage, RenewalScheduler, Storage, account_path};
use rampart::config::{Acme, Challenge, KeyType, Site, SiteTls};
use rampart::pki::HostName;
use rampart::tls::CertStore;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn Error>>;

/// An HTTPS stub CA recording every path it is asked for. It serves a directory, nonces, a
/// renewal window the test may move, and refuses every order: one carrying `replaces` with the
/// problem the test chose, one without as `unauthorized` (it issues nothing).
struct StubCa {
    base: String,
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    state: Arc<StubState>,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the stub answers, and what it was sent.
struct StubState {
    root: String,
    window: Mutex<(SystemTime, SystemTime)>,
    retry_after: AtomicU64,
    /// Status and problem type for an order carrying `replaces`.
    replaces_refusal: Mutex<(u16, &'static str)>,
    /// The payload of every newOrder request, in order.
    orders: Mutex<Vec<serde_json::Value>>,
    paths: Arc<Mutex<Vec<String>>>,
    nonces: AtomicU64,
}

impl StubState {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        self.paths.lock().expect("path list").push(path.clone());
        let root = &self.root;
        let nonce = format!("n{}", self.nonces.fetch_add(1, Ordering::Relaxed));
        let builder = Response::builder().header("replay-nonce", nonce);
        let response = if path == "/dir" {
            let directory = serde_json::json!({
                "newNonce": format!("{root}/nonce"),
                "newAccount": format!("{root}/account"),
                "newOrder": format!("{root}/order"),
                "renewalInfo": format!("{root}/ari"),
            });
            builder.body(Full::new(Bytes::from(directory.to_string())))
        } else if path == "/nonce" {
            builder.body(Full::new(Bytes::new()))
        } else if path.starts_with("/ari/") {
            let (start, end) = *self.window.lock().expect("window");
            let window = serde_json::json!({"suggestedWindow": {
                "start": humantime::format_rfc3339_seconds(start).to_string(),
                "end": humantime::format_rfc3339_seconds(end).to_string(),
            }});
            builder
                .header("retry-after", self.retry_after.load(Ordering::Relaxed))
                .body(Full::new(Bytes::from(window.to_string())))
        } else if path == "/order" {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|body| body.to_bytes())
                .unwrap_or_default();
            let payload = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|jws| BASE64_URL_SAFE_NO_PAD.decode(jws["payload"].as_str()?).ok())
                .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
                .unwrap_or_default();
            let (status, kind) = if payload.get("replaces").is_some() {
                *self.replaces_refusal.lock().expect("refusal")
            } else {
                (403, "unauthorized")
            };
            self.orders.lock().expect("orders").push(payload);
            let problem = serde_json::json!({
                "type": format!("urn:ietf:params:acme:error:{kind}"),
                "detail": "the stub issues nothing",
                "status": status,
            });
            builder
                .status(status)
                .header("content-type", "application/problem+json")
                .body(Full::new(Bytes::from(problem.to_string())))
        } else {
            builder.status(404).body(Full::new(Bytes::new()))
        };
        response.expect("valid response")
    }
}

impl StubCa {
    async fn start(window: (SystemTime, SystemTime)) -> Result<Self, Box<dyn Error>> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let tls_key = rcgen::KeyPair::generate()?;
        let mut tls_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        tls_params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let tls_cert = tls_params.signed_by(&tls_key, &issuer)?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![tls_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(tls_key.serialize_der().into()),
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let paths = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(StubState {
            root: base.clone(),
            window: Mutex::new(window),
            retry_after: AtomicU64::new(3600),
            replaces_refusal: Mutex::new((409, "alreadyReplaced")),
            orders: Mutex::new(Vec::new()),
            paths: paths.clone(),
            nonces: AtomicU64::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(request).await) }
                    });
                    // A client hanging up early is not this test's concern.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            base,
            ca_pem: ca_cert.pem(),
            issuer,
            state,
            paths,
            task,
        })
    }

    /// A 90-day leaf for `name` carrying the authority key identifier ARI needs.
    fn leaf(&self, name: &str) -> Result<(String, String, String), Box<dyn Error>> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(90);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0x1b, 0x2c]));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            cert.pem(),
            key.serialize_pem(),
            format!("{}\n{}", cert.pem(), self.ca_pem),
        ))
    }
}

impl StubCa {
    /// `acme:` for this CA, its root written into `dir` as the CA bundle.
    fn acme(&self, dir: &std::path::Path) -> Result<Acme, Box<dyn Error>> {
        let port = self.base.rsplit(':').next().unwrap_or_default();
        let bundle = dir.join(format!("stub-ca-{port}.pem"));
        std::fs::write(&bundle, &self.ca_pem)?;
        Ok(Acme {
            email: None,
            directory: format!("{}/dir", self.base).parse()?,
            ca_bundle: Some(bundle),
            key_type: KeyType::EcdsaP256,
            profile: None,
            eab: None,
            challenges: vec![Challenge::Http01],
            fallbacks: Vec::new(),
            fallback_after: 3,
        })
    }

    /// Credentials of an account at this CA: restoring them only fetches the directory (no
    /// registration at the stub).
    fn account(&self) -> Result<serde_json::Value, Box<dyn Error>> {
        let key = rcgen::KeyPair::generate()?;
        Ok(serde_json::json!({
            "id": format!("{}/account/1", self.base),
            "key_pkcs8": BASE64_URL_SAFE_NO_PAD.encode(key.serialize_der()),
            "directory": format!("{}/dir", self.base),
        }))
    }
}

/// The site whose certificate the stub issues.
fn site() -> Result<Site, Box<dyn Error>> {
    Ok(Site {
        name: "ari.rampart.test".into(),
        hosts: vec![HostName::parse("ari.rampart.test")?],
        tls: SiteTls::Acme,
        challenges: vec![Challenge::Http01],
        dns: None,
        default: false,
        routes: Vec::new(),
        policy: Default::default(),
    })
}

impl Drop for StubCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_window_from_the_ca_sets_the_renewal_time() -> TestResult {
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let window = (now + 10 * day, now + 11 * day);
    let stub = StubCa::start(window).await?;
    let (storage, acme, site, files) = seeded(&stub, &serde_json::json!({})).await?;

    let certs = CertStore::default();
    let stop = CancellationToken::new();
    let scheduler = RenewalScheduler::new(
        acme,
        storage.path(),
        std::slice::from_ref(&site),
        certs.clone(),
        ChallengeStore::default(),
    );
    let task = tokio::spawn(scheduler.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let meta = loop {
        let meta = files.load_meta(&site.name)?;
        if meta.ari.is_some() {
            break meta;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal window stored; stub saw {:?}",
            stub.paths.lock().map(|p| p.clone())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    task.await?;

    assert!(certs.covers(&site), "the stored certificate is served");
    let ari = meta.ari.ok_or("no ARI state")?;
    let whole_seconds = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
    };
    assert_eq!(whole_seconds(ari.window_start)?, whole_seconds(window.0)?);
    assert_eq!(whole_seconds(ari.window_end)?, whole_seconds(window.1)?);
    assert!(
        ari.chosen >= ari.window_start && ari.chosen < ari.window_end,
        "chosen time outside the window"
    );
    assert_eq!(ari.serial, "0a1b2c");
    let renewal = meta.renewal.ok_or("no renewal time")?;
    assert_eq!(renewal.reason, RenewalReason::Ari);
    assert_eq!(renewal.at, ari.chosen);
    assert!(
        ari.next_check >= now + Duration::from_secs(3500),
        "Retry-After honoured"
    );
    let paths = stub.paths.lock().map_err(|_| "poisoned")?.clone();
    // RFC 9773 §4.1: the certificate ID is base64url(AKI keyIdentifier) "." base64url(serial).
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/ari/") && p.ends_with(".Chss")),
        "ARI path in {paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("/order") || p.starts_with("/nonce")),
        "ordered too early: {paths:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_one_node_polls_the_renewal_window_for_all() -> TestResult {
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let stub = StubCa::start((now + 10 * day, now + 11 * day)).await?;
    let etcd = etcd::Etcd::start().await;
    let dir = tempfile::tempdir()?;
    let acme = stub.acme(dir.path())?;
    let site = site()?;
    let node = |name: &str| rampart::config::Cluster {
        etcd: rampart::config::Etcd {
            endpoints: vec![etcd.endpoint()],
            prefix: "/rampart/".into(),
            tls: None,
            user: None,
        },
        node: name.into(),
        lock_ttl: Duration::from_secs(5),
        encryption_key: rampart::config::SealKey::new([5; 32]),
    };
    // The account and the certificate are in the cluster store already, as another node left
    // them; the nodes' own storage directories are empty.
    let (_, seed) = rampart::cluster::Cluster::new(&node("seed")).await?;
    let credentials = stub.account()?;
    let ca = rampart::acme::ca_id(&acme.directory);
    seed.save(
        rampart::acme::Item::Account(&ca),
        credentials.to_string().as_bytes(),
        None,
    )
    .await?;
    let (_leaf, key, chain) = stub.leaf("ari.rampart.test")?;
    let (lock, _keep) = seed
        .lock(&site.name, Duration::from_secs(5))
        .await?
        .ok_or("lock")?;
    seed.save_certificate(&site.name, chain.as_bytes(), key.as_bytes(), b"{}", &lock)
        .await?;
    seed.unlock(lock).await;

    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut served = Vec::new();
    for name in ["a", "b", "c"] {
        let (_, storage) = rampart::cluster::Cluster::new(&node(name)).await?;
        let local = dir.path().join(name);
        let certs = CertStore::default();
        let scheduler = RenewalScheduler::new(
            acme.clone(),
            &local,
            std::slice::from_ref(&site),
            certs.clone(),
            ChallengeStore::default(),
        )
        .with_shared_storage(Arc::new(storage));
        tasks.push(tokio::spawn(scheduler.run(stop.clone())));
        served.push(certs);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !served.iter().all(|certs| certs.covers(&site)) {
        assert!(
            Instant::now() < deadline,
            "not every node serves the stored certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for every node's first task (under the lock, one after another) to run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for task in tasks {
        task.await?;
    }
    let meta = (&seed as &dyn Storage).load_meta(&site.name).await?;
    assert!(meta.ari.is_some(), "the window is stored for the cluster");
    let paths = stub.paths.lock().map_err(|_| "poisoned")?.clone();
    let polls = paths.iter().filter(|p| p.starts_with("/ari/")).count();
    assert_eq!(
        polls, 1,
        "one renewal-information poll for three nodes: {paths:?}"
    );
    assert!(!paths.iter().any(|p| p.starts_with("/order")), "{paths:?}");
    Ok(())
}

/// Storage holding an account at `stub` and a stored certificate for [`site`] (its meta.json
/// is `meta`): what a running Rampart has before a renewal.
async fn seeded(
    stub: &StubCa,
    meta: &serde_json::Value,
) -> Result<(tempfile::TempDir, Acme, Site, DiskStorage), Box<dyn Error>> {
    let storage = tempfile::tempdir()?;
    let acme = stub.acme(storage.path())?;
    let account_file = account_path(storage.path(), &acme.directory);
    std::fs::create_dir_all(account_file.parent().ok_or("no parent")?)?;
    std::fs::write(&account_file, stub.account()?.to_string())?;
    let site = site()?;
    let (_leaf, key, chain) = stub.leaf("ari.rampart.test")?;
    let files = DiskStorage::new(storage.path());
    files
        .save_certificate(
            &site.name,
            chain.as_bytes(),
            key.as_bytes(),
            meta.to_string().as_bytes(),
            &rampart::acme::storage::SiteLock::local(),
        )
        .await?;
    Ok((storage, acme, site, files))
}

/// A scheduler for `site` with production tuning, except that renewal information may be
/// polled again after a second; stopped through the token.
fn run_scheduler(
    acme: Acme,
    storage: &std::path::Path,
    site: &Site,
    backoff: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let tuning = rampart::acme::Tuning {
        ari_recheck_min: Duration::from_secs(1),
        backoff: rampart::acme::timing::Backoff {
            first: backoff,
            max: backoff * 4,
        },
        ..Default::default()
    };
    let scheduler = RenewalScheduler::new(
        acme,
        storage,
        std::slice::from_ref(site),
        CertStore::default(),
        ChallengeStore::default(),
    )
    .with_tuning(tuning);
    let stop = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(stop.clone()));
    (stop, task)
}

impl StubCa {
    /// The newOrder payloads so far.
    fn orders(&self) -> Vec<serde_json::Value> {
        self.state.orders.lock().expect("orders").clone()
    }

    /// Waits (bounded) until `count` orders arrived; then how long that took.
    async fn await_orders(&self, count: usize, within: Duration) -> Duration {
        let started = Instant::now();
        while self.orders().len() < count {
            assert!(
                started.elapsed() < within,
                "{} of {count} orders within {within:?}; stub saw {:?}",
                self.orders().len(),
                self.paths.lock().map(|p| p.clone())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_moved_into_the_past_renews_at_once_even_in_backoff() -> TestResult {
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let stub = StubCa::start((now + 10 * day, now + 11 * day)).await?;
    stub.state.retry_after.store(1, Ordering::Relaxed);
    // Three failures so far: the next order is an hour away.
    let in_backoff = serde_json::json!({
        "consecutive_failures": 3,
        "next_attempt": humantime::format_rfc3339_seconds(now + Duration::from_secs(3600)).to_string(),
    });
    let (storage, acme, site, files) = seeded(&stub, &in_backoff).await?;
    let (stop, task) = run_scheduler(acme, storage.path(), &site, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(20);
    while files.load_meta(&site.name)?.ari.is_none() {
        assert!(Instant::now() < deadline, "no renewal window stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Polled again and again (Retry-After: 1), but the window is ahead: no order.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stub.orders(), Vec::<serde_json::Value>::new());

    // The CA revokes the certificate, or an incident: the window moves into the past.
    *stub.state.window.lock().map_err(|_| "poisoned")? = (now - 2 * day, now - day);
    let waited = stub.await_orders(1, Duration::from_secs(15)).await;
    stop.cancel();
    task.await?;
    let replaces = stub.orders()[0]["replaces"]
        .as_str()
        .ok_or("the renewal names the certificate it replaces")?
        .to_owned();
    assert!(replaces.ends_with(".Chss"), "{replaces}");
    assert!(
        waited < Duration::from_secs(10),
        "renewal began after {waited:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_replaces_is_retried_once_without_it() -> TestResult {
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    // (status, problem type, orders expected): the two ways CAs say "not that one", and a rate
    // limit, which dropping `replaces` would only make worse.
    for (status, kind, expected) in [
        (409, "alreadyReplaced", 2),
        (400, "malformed", 2),
        (429, "rateLimited", 1),
    ] {
        // Revoked, as the CA says through ARI: due now.
        let stub = StubCa::start((now - 2 * day, now - day)).await?;
        *stub.state.replaces_refusal.lock().map_err(|_| "poisoned")? = (status, kind);
        let (storage, acme, site, files) = seeded(&stub, &serde_json::json!({})).await?;
        let (stop, task) = run_scheduler(acme, storage.path(), &site, Duration::from_secs(60));
        stub.await_orders(expected, Duration::from_secs(15)).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let meta = loop {
            let meta = files.load_meta(&site.name)?;
            if meta.last_error.is_some() {
                break meta;
            }
            assert!(Instant::now() < deadline, "{kind}: no failure recorded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        stop.cancel();
        task.await?;
        let orders = stub.orders();
        assert_eq!(orders.len(), expected, "{kind}: {orders:?}");
        assert!(orders[0].get("replaces").is_some(), "{kind}: {orders:?}");
        if expected == 2 {
            assert!(orders[1].get("replaces").is_none(), "{kind}: {orders:?}");
        }
        let recorded = meta
            .last_error
            .and_then(|e| e.problem_type)
            .unwrap_or_default();
        let last = if expected == 2 { "unauthorized" } else { kind };
        assert_eq!(recorded, format!("urn:ietf:params:acme:error:{last}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_information_and_replaces_go_only_to_the_issuing_ca() -> TestResult {
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let first = StubCa::start((now + 10 * day, now + 11 * day)).await?;
    // The second CA issued the certificate, and wants it replaced now.
    let issuer = StubCa::start((now - 2 * day, now - day)).await?;
    let issued_by = serde_json::json!({"ca": format!("{}/dir", issuer.base)});
    let (storage, at_issuer, site, _) = seeded(&issuer, &issued_by).await?;
    let mut acme = first.acme(storage.path())?;
    let account_file = account_path(storage.path(), &acme.directory);
    std::fs::create_dir_all(account_file.parent().ok_or("no parent")?)?;
    std::fs::write(&account_file, first.account()?.to_string())?;
    acme.fallbacks = at_issuer.cas();
    acme.fallback_after = 1;
    let (stop, task) = run_scheduler(acme, storage.path(), &site, Duration::from_millis(200));
    // The renewal starts at the first CA, which does not know the certificate...
    first.await_orders(1, Duration::from_secs(15)).await;
    // ...which refuses, so the site moves on to the issuer, which is told what it replaces.
    issuer.await_orders(1, Duration::from_secs(15)).await;
    stop.cancel();
    task.await?;
    assert!(
        first
            .orders()
            .iter()
            .all(|order| order.get("replaces").is_none()),
        "{:?}",
        first.orders()
    );
    assert!(issuer.orders()[0].get("replaces").is_some());
    let asked = |stub: &StubCa| {
        stub.paths
            .lock()
            .map(|paths| paths.iter().filter(|p| p.starts_with("/ari/")).count())
            .unwrap_or_default()
    };
    assert_eq!(asked(&first), 0, "renewal information only from the issuer");
    assert!(asked(&issuer) >= 1);
    Ok(())
}
