//! The ACME layer alone against a real ACME server (Pebble): issuance, account reuse and
//! re-registration, nonce chaos, failed validation, and the scheduler's start-up, renewal and
//! backoff. A minimal http-01 responder stands in for the `:80` listener.

#[path = "common/pebble.rs"]
mod pebble;

use std::error::Error;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rampart::acme::timing::Backoff;
use rampart::acme::{
    AccountSlot, AcmeError, ChallengeStore, DiskStorage, OrderRequest, RenewalScheduler, SelfCheck,
    Tuning, account_path, issue,
};
use rampart::config::{Acme, Challenge, KeyType, Site, SiteTls};
use rampart::pki::HostName;
use rampart::tls::{CertStore, LeafFacts, Published};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_util::sync::CancellationToken;

use pebble::{Http01Responder, Pebble, PebbleOptions};

type TestResult = Result<(), Box<dyn Error>>;

/// A Pebble with a responder serving `challenges`; tokens the CA fetched are recorded.
struct Bench {
    pebble: Pebble,
    responder: Http01Responder,
    challenges: ChallengeStore,
    tokens: Arc<Mutex<Vec<String>>>,
    storage: tempfile::TempDir,
}

impl Bench {
    async fn start(tweak: impl FnOnce(&mut PebbleOptions)) -> Self {
        init_logs();
        let challenges = ChallengeStore::default();
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let (store, seen) = (challenges.clone(), tokens.clone());
        let responder = Http01Responder::start(Arc::new(move |token: &str| {
            seen.lock().expect("token list").push(token.to_owned());
            store.get(token)
        }))
        .await;
        let mut options = PebbleOptions::new(responder.port());
        tweak(&mut options);
        let pebble = Pebble::start(options).await;
        Self {
            pebble,
            responder,
            challenges,
            tokens,
            storage: tempfile::tempdir().expect("storage dir"),
        }
    }

    fn acme(&self) -> Acme {
        Acme {
            email: Some("ops@rampart.test".into()),
            directory: self.pebble.directory_url().parse().expect("directory URL"),
            ca_bundle: Some(self.pebble.ca_bundle()),
            key_type: KeyType::EcdsaP256,
            profile: None,
            eab: None,
            challenges: vec![Challenge::Http01],
            fallbacks: Vec::new(),
            fallback_after: 3,
        }
    }

    fn disk(&self) -> Arc<DiskStorage> {
        Arc::new(DiskStorage::new(self.storage.path()))
    }

    fn slot(&self) -> AccountSlot {
        AccountSlot::new(&self.acme(), self.disk()).expect("account slot")
    }

    fn slot_with(&self, acme: &Acme) -> AccountSlot {
        AccountSlot::new(acme, self.disk()).expect("account slot")
    }

    fn scheduler(&self, sites: &[Site], certs: &CertStore) -> RenewalScheduler {
        let tuning = Tuning {
            concurrency: 4,
            backoff: Backoff {
                first: Duration::from_secs(1),
                max: Duration::from_secs(4),
            },
            max_sleep: Duration::from_secs(2),
            ari_recheck_min: Duration::from_secs(1),
        };
        RenewalScheduler::new(
            self.acme(),
            self.storage.path(),
            sites,
            certs.clone(),
            self.challenges.clone(),
        )
        .with_tuning(tuning)
    }

    /// Every token the CA fetched must be withdrawn once its order is over.
    fn assert_tokens_withdrawn(&self) {
        let tokens = self.tokens.lock().expect("token list");
        assert!(
            !tokens.is_empty(),
            "the CA fetched no token: http-01 was not exercised"
        );
        for token in tokens.iter() {
            assert_eq!(
                self.challenges.get(token),
                None,
                "token {token} still served"
            );
        }
    }
}

/// A self-check that records what it was asked to verify.
#[derive(Default)]
struct RecordedChecks(Mutex<Vec<(String, String)>>);

impl SelfCheck for RecordedChecks {
    fn verify<'a>(
        &'a self,
        site: &'a Site,
        published: &'a Published,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let entry = (site.name.clone(), published.serial.clone());
            self.0.lock().expect("check list").push(entry);
        })
    }
}

fn site(hosts: &[&str]) -> Site {
    Site {
        name: hosts[0].to_owned(),
        hosts: hosts
            .iter()
            .map(|h| HostName::parse(h).expect("test host"))
            .collect(),
        tls: SiteTls::Acme,
        challenges: vec![Challenge::Http01],
        dns: None,
        default: false,
        routes: Vec::new(),
        policy: Default::default(),
    }
}

fn request(site: &Site) -> OrderRequest<'_> {
    OrderRequest {
        site,
        key_type: KeyType::EcdsaP256,
        profile: None,
        replaces: None,
        share: None,
        stop: None,
    }
}

/// Verifies `chain_pem` for `name` against `root` the way a TLS client would.
fn verify_chain(chain_pem: &[u8], root: &CertificateDer<'static>, name: &str) -> TestResult {
    let chain = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    verifier.verify_server_cert(
        leaf,
        intermediates,
        &ServerName::try_from(name.to_owned())?,
        &[],
        UnixTime::now(),
    )?;
    Ok(())
}

fn served_serial(certs: &CertStore, host: &str) -> Option<String> {
    let key = certs.lookup(Some(host))?;
    Some(LeafFacts::parse(key.end_entity_cert().ok()?).ok()?.serial)
}

/// Polls `condition` every 100 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn init_logs() {
    // Several tests per binary: only the first install wins, the rest are no-ops by design.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "rampart=info".into()))
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_a_certificate_for_two_names_that_verifies_against_pebble_root() -> TestResult {
    let bench = Bench::start(|_| {}).await;
    let site = site(&["a.rampart.test", "b.rampart.test"]);
    let started = Instant::now();
    let issued = issue(&bench.slot(), &request(&site), &bench.challenges).await?;
    eprintln!(
        "first certificate (account included) in {:?}, {} ACME requests",
        started.elapsed(),
        issued.requests
    );
    for name in ["a.rampart.test", "b.rampart.test"] {
        verify_chain(issued.chain_pem.as_bytes(), bench.pebble.root(), name)?;
    }
    assert!(
        verify_chain(
            issued.chain_pem.as_bytes(),
            bench.pebble.root(),
            "c.rampart.test"
        )
        .is_err()
    );
    assert!(
        bench.responder.hits() >= 2,
        "each name was validated over http-01"
    );
    bench.assert_tokens_withdrawn();
    assert!(issued.key_pem.contains("PRIVATE KEY"));
    assert!(
        !format!("{issued:?}").contains("PRIVATE"),
        "Debug must not print the key"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_issuance_reuses_the_stored_account() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let bench = Bench::start(|_| {}).await;
    let site = site(&["reuse.rampart.test"]);
    issue(&bench.slot(), &request(&site), &bench.challenges).await?;
    let path = account_path(bench.storage.path(), &bench.acme().directory);
    let stored = std::fs::read(&path)?;
    assert_eq!(
        std::fs::metadata(&path)?.permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(path.parent().ok_or("no parent")?)?
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // A new slot is what a restart sees: it must load, not register.
    let started = Instant::now();
    let issued = issue(&bench.slot(), &request(&site), &bench.challenges).await?;
    eprintln!(
        "one name, stored account: {:?}, {} ACME requests",
        started.elapsed(),
        issued.requests
    );
    assert_eq!(
        std::fs::read(&path)?,
        stored,
        "account file rewritten: a new account was made"
    );
    verify_chain(
        issued.chain_pem.as_bytes(),
        bench.pebble.root(),
        "reuse.rampart.test",
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_registers_once_and_the_account_is_kept() -> TestResult {
    let hmac = [7u8; 32];
    let encoded: String = hmac.iter().map(|b| format!("{b:02x}")).collect::<String>();
    // Pebble takes the HMAC key base64url-encoded; hex digits are valid base64url characters,
    // so the key Pebble uses is the decoding of `encoded`.
    let bench = Bench::start(|options| options.eab = Some(("kid-1".into(), encoded.clone()))).await;
    let site = site(&["eab.rampart.test"]);

    let error = issue(&bench.slot(), &request(&site), &bench.challenges)
        .await
        .expect_err("EAB is required");
    assert!(matches!(error, AcmeError::Register { .. }), "{error:?}");
    assert_eq!(
        error.problem_type(),
        Some("urn:ietf:params:acme:error:externalAccountRequired")
    );

    let mut acme = bench.acme();
    let hmac_key = base64_url_decode(&encoded).ok_or("decodable key")?;
    acme.eab = Some(rampart::config::Eab {
        key_id: "kid-1".into(),
        hmac_key,
    });
    issue(&bench.slot_with(&acme), &request(&site), &bench.challenges).await?;
    let path = account_path(bench.storage.path(), &acme.directory);
    let stored = std::fs::read(&path)?;
    // A restart reuses the account; registering again with the single-use binding is not needed.
    issue(&bench.slot_with(&acme), &request(&site), &bench.challenges).await?;
    assert_eq!(std::fs::read(&path)?, stored);
    Ok(())
}

/// Decodes unpadded base64url (test helper; the crate receives keys already decoded).
fn base64_url_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0u32);
    for c in text.bytes() {
        bits = (bits << 6) | value(c)?;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_all_nonces_rejected_still_yields_a_certificate() -> TestResult {
    let bench = Bench::start(|options| options.nonce_reject = 50).await;
    let site = site(&["nonce-a.rampart.test", "nonce-b.rampart.test"]);
    for _ in 0..2 {
        let issued = issue(&bench.slot(), &request(&site), &bench.challenges).await?;
        eprintln!("NONCEREJECT=50: {} ACME requests", issued.requests);
        verify_chain(
            issued.chain_pem.as_bytes(),
            bench.pebble.root(),
            "nonce-b.rampart.test",
        )?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_pebble_forgets_the_account_and_the_same_key_registers_again() -> TestResult {
    let mut bench = Bench::start(|_| {}).await;
    let site = site(&["restart.rampart.test"]);
    issue(&bench.slot(), &request(&site), &bench.challenges).await?;
    let path = account_path(bench.storage.path(), &bench.acme().directory);
    let key_of = |path: &Path| -> Result<serde_json::Value, Box<dyn Error>> {
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
        Ok(json["key_pkcs8"].clone())
    };
    let key_before = key_of(&path)?;

    bench.pebble.restart().await;
    let issued = issue(&bench.slot(), &request(&site), &bench.challenges).await?;
    verify_chain(
        issued.chain_pem.as_bytes(),
        bench.pebble.root(),
        "restart.rampart.test",
    )?;
    assert_eq!(
        key_of(&path)?,
        key_before,
        "re-registration must keep the account key"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_validation_names_the_host_and_the_ca_problem_type() -> TestResult {
    let bench = Bench::start(|_| {}).await;
    // Nothing listens on 127.0.0.2:httpPort, so the CA cannot fetch this name's token.
    bench
        .pebble
        .add_a("unreachable.rampart.test", &["127.0.0.2"])
        .await;
    let site = site(&["fine.rampart.test", "unreachable.rampart.test"]);
    let error = issue(&bench.slot(), &request(&site), &bench.challenges)
        .await
        .expect_err("validation must fail");
    let AcmeError::Invalid { failures, .. } = &error else {
        return Err(format!("expected Invalid, got {error:?}").into());
    };
    let failure = failures
        .iter()
        .find(|f| f.host.as_deref() == Some("unreachable.rampart.test"))
        .ok_or_else(|| format!("no failure for the unreachable host in {failures:?}"))?;
    assert_eq!(
        failure.problem_type.as_deref(),
        Some("urn:ietf:params:acme:error:connection")
    );
    assert!(failure.detail.is_some());
    assert!(
        !failures
            .iter()
            .any(|f| f.host.as_deref() == Some("fine.rampart.test"))
    );
    assert_eq!(
        error.problem_type(),
        Some("urn:ietf:params:acme:error:connection")
    );
    assert!(error.to_string().contains("unreachable.rampart.test"));
    bench.assert_tokens_withdrawn();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_serves_sites_and_a_restart_reuses_stored_certificates() -> TestResult {
    let bench = Bench::start(|_| {}).await;
    let sites = [
        site(&["one.rampart.test", "www.one.rampart.test"]),
        site(&["two.rampart.test"]),
    ];
    let certs = CertStore::default();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let checks = Arc::new(RecordedChecks::default());
    let scheduler = bench
        .scheduler(&sites, &certs)
        .with_self_check(checks.clone());
    let task = tokio::spawn(scheduler.run(stop.clone()));
    eventually(Duration::from_secs(60), "both sites served", || {
        sites.iter().all(|s| certs.covers(s))
    })
    .await;
    eprintln!("2 sites served after {:?}", started.elapsed());
    stop.cancel();
    task.await?;
    let serial = served_serial(&certs, "www.one.rampart.test").ok_or("no serial")?;
    let checked = checks.0.lock().map_err(|_| "poisoned")?.clone();
    let expected = ("one.rampart.test".to_owned(), serial.clone());
    assert!(
        checked.contains(&expected),
        "self-check not run: {checked:?}"
    );
    let files = DiskStorage::new(bench.storage.path());
    let meta = files.load_meta("one.rampart.test")?;
    assert_eq!(meta.consecutive_failures, 0);
    assert!(meta.last_success.is_some() && meta.renewal.is_some());

    // Restart: stored certificates are served before any CA request, and no new order is made.
    let certs = CertStore::default();
    let mut scheduler = bench.scheduler(&sites, &certs);
    assert_eq!(scheduler.publish_stored(), 2);
    assert_eq!(
        served_serial(&certs, "www.one.rampart.test").as_deref(),
        Some(serial.as_str())
    );
    let published = certs
        .lookup(Some("www.one.rampart.test"))
        .ok_or("not served")?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    task.await?;
    assert_eq!(served_serial(&certs, "www.one.rampart.test"), Some(serial));
    // `run` starts from what `publish_stored` read, rather than reading and publishing every
    // stored certificate a second time.
    let served = certs
        .lookup(Some("www.one.rampart.test"))
        .ok_or("not served")?;
    assert!(Arc::ptr_eq(&published, &served), "published again by run");
    assert_eq!(
        files.load_meta("one.rampart.test")?.last_attempt,
        meta.last_attempt,
        "a new order was made"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_before_they_expire() -> TestResult {
    let bench = Bench::start(|options| options.validity_secs = 20).await;
    let sites = [site(&["short.rampart.test"])];
    let certs = CertStore::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bench.scheduler(&sites, &certs).run(stop.clone()));
    eventually(Duration::from_secs(30), "first certificate", || {
        certs.covers(&sites[0])
    })
    .await;
    let first = certs
        .lookup(Some("short.rampart.test"))
        .ok_or("not served")?;
    let first = LeafFacts::parse(first.end_entity_cert()?)?;
    eventually(Duration::from_secs(30), "a renewed certificate", || {
        served_serial(&certs, "short.rampart.test").is_some_and(|s| s != first.serial)
    })
    .await;
    assert!(
        SystemTime::now() < first.not_after,
        "renewed only after the old certificate expired"
    );
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_certificate_file_is_not_served_and_is_reissued() -> TestResult {
    let bench = Bench::start(|_| {}).await;
    let sites = [site(&["truncated.rampart.test"])];
    let certs = CertStore::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bench.scheduler(&sites, &certs).run(stop.clone()));
    eventually(Duration::from_secs(30), "first certificate", || {
        certs.covers(&sites[0])
    })
    .await;
    stop.cancel();
    task.await?;
    let old = served_serial(&certs, "truncated.rampart.test").ok_or("not served")?;

    let cert_path = DiskStorage::new(bench.storage.path())
        .site_dir("truncated.rampart.test")
        .join("cert.pem");
    let pem = std::fs::read(&cert_path)?;
    std::fs::write(&cert_path, &pem[..pem.len() / 3])?;
    let certs = CertStore::default();
    let mut scheduler = bench.scheduler(&sites, &certs);
    assert_eq!(
        scheduler.publish_stored(),
        0,
        "a truncated certificate must not be served"
    );
    assert!(!certs.covers(&sites[0]));
    let stop = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(stop.clone()));
    eventually(Duration::from_secs(30), "re-issued certificate", || {
        certs.covers(&sites[0])
    })
    .await;
    stop.cancel();
    task.await?;
    assert_ne!(served_serial(&certs, "truncated.rampart.test"), Some(old));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ca_at_start_is_retried_with_backoff_until_it_is_back() -> TestResult {
    let mut bench = Bench::start(|_| {}).await;
    bench.pebble.stop_pebble();
    let sites = [site(&["late.rampart.test"])];
    let certs = CertStore::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bench.scheduler(&sites, &certs).run(stop.clone()));
    let files = DiskStorage::new(bench.storage.path());
    eventually(Duration::from_secs(60), "two recorded failures", || {
        files
            .load_meta("late.rampart.test")
            .is_ok_and(|m| m.consecutive_failures >= 2)
    })
    .await;
    let meta = files.load_meta("late.rampart.test")?;
    assert!(meta.last_error.is_some() && meta.next_attempt.is_some());
    bench.pebble.restart().await;
    eventually(
        Duration::from_secs(60),
        "certificate once the CA is back",
        || certs.covers(&sites[0]),
    )
    .await;
    stop.cancel();
    task.await?;
    let meta = files.load_meta("late.rampart.test")?;
    assert_eq!((meta.consecutive_failures, meta.last_error), (0, None));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_site_backs_off_with_the_ca_problem_while_others_are_served() -> TestResult {
    let bench = Bench::start(|_| {}).await;
    bench
        .pebble
        .add_a("broken.rampart.test", &["127.0.0.2"])
        .await;
    let sites = [
        site(&["broken.rampart.test"]),
        site(&["healthy.rampart.test"]),
    ];
    let certs = CertStore::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bench.scheduler(&sites, &certs).run(stop.clone()));
    let files = DiskStorage::new(bench.storage.path());
    eventually(
        Duration::from_secs(60),
        "healthy site served and broken one failed twice",
        || {
            certs.covers(&sites[1])
                && files
                    .load_meta("broken.rampart.test")
                    .is_ok_and(|m| m.consecutive_failures >= 2)
        },
    )
    .await;
    stop.cancel();
    task.await?;
    assert!(!certs.covers(&sites[0]));
    let meta = files.load_meta("broken.rampart.test")?;
    let last_error = meta.last_error.ok_or("no last error")?;
    assert_eq!(
        last_error.problem_type.as_deref(),
        Some("urn:ietf:params:acme:error:connection")
    );
    assert_eq!(
        last_error.hosts.first().and_then(|h| h.host.as_deref()),
        Some("broken.rampart.test")
    );
    let (last, next) = (
        meta.last_attempt.ok_or("no last attempt")?,
        meta.next_attempt.ok_or("no next attempt")?,
    );
    assert!(next > last, "next attempt must wait out the backoff");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sites_are_obtained_concurrently() -> TestResult {
    let bench = Bench::start(|_| {}).await;
    let names: Vec<String> = (0..20).map(|i| format!("site{i}.rampart.test")).collect();
    let sites: Vec<Site> = names.iter().map(|n| site(&[n.as_str()])).collect();
    let certs = CertStore::default();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(bench.scheduler(&sites, &certs).run(stop.clone()));
    eventually(Duration::from_secs(120), "20 sites served", || {
        sites.iter().all(|s| certs.covers(s))
    })
    .await;
    eprintln!("20 sites served after {:?}", started.elapsed());
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_failing_at_one_ca_is_issued_by_the_next() -> TestResult {
    let bench = Bench::start(|_| {}).await;
    // Answers, but only with errors: it requires external account binding, which we lack.
    let mut strict = PebbleOptions::new(pebble::free_tcp_port());
    strict.eab = Some(("kid-1".into(), "c2VjcmV0LWtleS1mb3ItdGVzdHM".into()));
    let strict = Pebble::start(strict).await;
    let unreachable = format!("https://127.0.0.1:{}/dir", pebble::free_tcp_port());
    let mut acme = bench.acme();
    let last = rampart::config::AcmeCa {
        directory: acme.directory.clone(),
        ca_bundle: acme.ca_bundle.clone(),
        profile: None,
        eab: None,
    };
    acme.directory = unreachable.parse()?;
    acme.ca_bundle = None;
    acme.fallbacks = vec![
        rampart::config::AcmeCa {
            directory: strict.directory_url().parse()?,
            ca_bundle: Some(strict.ca_bundle()),
            profile: None,
            eab: None,
        },
        last.clone(),
    ];
    acme.fallback_after = 1;
    let sites = [site(&["fallback.rampart.test"])];
    let certs = CertStore::default();
    let stop = CancellationToken::new();
    let scheduler = RenewalScheduler::new(
        acme,
        bench.storage.path(),
        &sites,
        certs.clone(),
        bench.challenges.clone(),
    )
    .with_tuning(Tuning {
        backoff: Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(2),
        },
        ..Tuning::default()
    });
    let task = tokio::spawn(scheduler.run(stop.clone()));
    eventually(
        Duration::from_secs(60),
        "a certificate from the third CA",
        || certs.covers(&sites[0]),
    )
    .await;
    stop.cancel();
    task.await?;
    // The second CA was asked (and refused the account) before the third issued.
    assert!(
        strict.log().contains("POST /sign-me-up"),
        "{}",
        strict.log()
    );

    let meta = DiskStorage::new(bench.storage.path()).load_meta("fallback.rampart.test")?;
    assert_eq!(
        meta.ca.as_deref(),
        Some(last.directory.to_string().as_str())
    );
    assert_eq!((meta.trying_ca, meta.ca_failures), (None, 0));
    let served = certs
        .lookup(Some("fallback.rampart.test"))
        .ok_or("served")?;
    assert!(
        !LeafFacts::parse(served.end_entity_cert()?)?
            .serial
            .is_empty()
    );
    Ok(())
}
