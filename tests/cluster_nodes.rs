//! Three Rampart nodes (the binary, on 127.0.0.2-4) sharing one etcd and one Pebble: each site
//! gets one order cluster-wide, the CA's HTTP-01 requests reach a node that did not order, and
//! every node serves the same certificate.

mod common;
#[path = "common/etcd.rs"]
mod etcd;
#[path = "common/pebble.rs"]
mod pebble;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use etcd::Etcd;
use etcd_client::{GetOptions, LockOptions};
use rampart::tls::LeafFacts;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;

use common::{Binary, Env, TlsClient, certs_json};
use pebble::{Pebble, PebbleOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PREFIX: &str = "/rampart/";
const SITES: [&str; 5] = ["s1.test", "s2.test", "s3.test", "s4.test", "s5.test"];
/// Longest wait for every node to serve every site.
const ISSUANCE: Duration = Duration::from_secs(90);

/// One node's addresses and files.
struct Node {
    name: &'static str,
    https: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

impl Node {
    fn new(env: &Env, name: &'static str, ip: &str, http_port: u16, common: &str) -> Self {
        let https: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().expect("address");
        let admin: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().expect("address");
        let storage = env.path(&format!("storage-{name}"));
        let config = env.write(
            &format!("{name}.yaml"),
            &format!(
                "listen:\n  https: \"{https}\"\n  http: \"{ip}:{http_port}\"\n  admin: \"{admin}\"\n\
                 storage: {}\ncluster:\n  node: {name}\n{common}",
                storage.display()
            ),
        );
        Self {
            name,
            https,
            admin,
            config,
        }
    }

    async fn start(&self) -> Binary {
        Binary::run(&self.config, self.https).await
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// What every test here runs its nodes on: one etcd, one Pebble (certificates of
/// `validity_secs`) and the port Pebble validates HTTP-01 on, the same on every node's address.
struct Bed {
    env: Env,
    etcd: Etcd,
    pebble: Pebble,
    http_port: u16,
}

impl Bed {
    async fn start(validity_secs: u64) -> Self {
        let env = Env::new();
        let etcd = Etcd::start().await;
        let http_port = free_port("127.0.0.1");
        let mut options = PebbleOptions::new(http_port);
        options.validity_secs = validity_secs;
        let pebble = Pebble::start(options).await;
        Self {
            env,
            etcd,
            pebble,
            http_port,
        }
    }

    /// Nodes a, b, c, … on 127.0.0.2, .3, .4, …, all serving `sites`.
    fn nodes(&self, count: usize, sites: &[&str]) -> Vec<Node> {
        let common = shared_config(&self.env, &self.etcd, &self.pebble, sites);
        ["a", "b", "c"][..count]
            .iter()
            .zip(2..)
            .map(|(name, ip)| {
                Node::new(
                    &self.env,
                    name,
                    &format!("127.0.0.{ip}"),
                    self.http_port,
                    &common,
                )
            })
            .collect()
    }
}

/// The part of every node's configuration that is the same on all: etcd, the sealing key,
/// Pebble and `sites`.
fn shared_config(env: &Env, etcd: &Etcd, pebble: &Pebble, sites: &[&str]) -> String {
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let key_file = env.write("cluster.key", &format!("{key}\n"));
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let sites: String = sites
        .iter()
        .map(|s| {
            format!(
                "  - {{ hosts: [{s}], routes: [{{ path: /, respond: {{ body: \"{s}\\n\" }} }}] }}\n"
            )
        })
        .collect();
    format!(
        "  etcd:\n    endpoints: [\"{}\"]\n  lock_ttl: 5s\n  encryption_key_file: {}\n\
         acme:\n  directory: {}\n  ca_bundle: {}\nsites:\n{sites}",
        etcd.endpoint(),
        key_file.display(),
        pebble.directory_url(),
        pebble.ca_bundle().display(),
    )
}

/// Waits until every one of `nodes` serves `site` with one certificate; returns its serial.
async fn same_serial(
    nodes: &[&Node],
    roots: &RootCertStore,
    site: &str,
    limit: Duration,
) -> String {
    let started = Instant::now();
    loop {
        let mut served = Vec::new();
        for node in nodes {
            served.push(serial(node, roots, site).await);
        }
        if served.iter().all(Option::is_some) && served.windows(2).all(|w| w[0] == w[1]) {
            return served[0].clone().expect("checked");
        }
        assert!(started.elapsed() < limit, "{site}: nodes serve {served:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The serial `node` serves for `name`, if its chain verifies against Pebble's root.
async fn serial(node: &Node, roots: &RootCertStore, name: &str) -> Option<String> {
    let tls = TlsClient::new(roots.clone())
        .connect(node.https, Some(name))
        .await
        .ok()?;
    Some(LeafFacts::parse(&tls.peer_cert).ok()?.serial)
}

/// How many lock keys (holder and waiters) `site` has in etcd.
async fn lock_keys(etcd: &Etcd, site: &str) -> usize {
    let mut client = etcd.client().await;
    let name = format!("{PREFIX}locks/{site}");
    client
        .get(name, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .map_or(0, |found| found.kvs().len())
}

async fn until(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log lines of `binary` (JSON) whose message is `message`.
fn logged_any(binary: &Binary, message: &str) -> usize {
    binary
        .stderr()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message)
        .count()
}

/// Log lines of `binary` (JSON) whose message is `message`, for `site`.
fn logged(binary: &Binary, message: &str, site: &str) -> usize {
    binary
        .stderr()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message && line["site"] == site)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_order_per_site_and_answer_each_others_challenges() -> TestResult {
    let bed = Bed::start(600).await;
    let (etcd, pebble) = (&bed.etcd, &bed.pebble);
    // The CA validates every name on node c; most sites are ordered elsewhere (see below).
    for site in SITES {
        pebble.add_a(site, &["127.0.0.4"]).await;
    }
    let nodes = bed.nodes(3, &SITES);

    // Order who gets each lock: the test holds every site's lock while a and b queue behind it
    // (each node walks the sites from its own offset, four at a time, so together they queue on
    // at least three sites), then c starts, then the test lets go; etcd hands a lock over in
    // queue order, so those sites are ordered by a or b and validated on c.
    let mut client = etcd.client().await;
    let lease = client.lease_grant(60, None).await?.id();
    for site in SITES {
        client
            .lock(
                format!("{PREFIX}locks/{site}"),
                Some(LockOptions::new().with_lease(lease)),
            )
            .await?;
    }
    let a = nodes[0].start().await;
    let b = nodes[1].start().await;
    until(Duration::from_secs(8), "a and b queue", async || {
        let mut waiting = 0;
        for site in SITES {
            waiting += lock_keys(etcd, site).await - 1;
        }
        waiting == 8
    })
    .await;
    let c = nodes[2].start().await;
    client.lease_revoke(lease).await?;

    // Every node serves every site, with one certificate per site.
    let roots = pebble.roots();
    let all: Vec<&Node> = nodes.iter().collect();
    for site in SITES {
        same_serial(&all, &roots, site, ISSUANCE).await;
    }

    let mut by_others = 0;
    for site in SITES {
        let orders: Vec<usize> = [&a, &b, &c]
            .iter()
            .map(|node| logged(node, "ordering certificate", site))
            .collect();
        assert_eq!(
            orders.iter().sum::<usize>(),
            1,
            "{site}: orders per node {orders:?}"
        );
        let meta = etcd.dump(&format!("{PREFIX}certs/{site}/meta")).await;
        let meta: serde_json::Value = serde_json::from_slice(&meta[0].1)?;
        let issuer = ["a", "b", "c"][orders.iter().position(|&n| n == 1).expect("one order")];
        assert_eq!(meta["issued_by"], issuer, "{site}: {meta}");
        if issuer != "c" {
            // Ordered by a node that c is not: c answered the CA without holding the lock.
            by_others += 1;
        }
    }
    assert!(
        by_others >= 3,
        "{by_others} sites validated on a node that did not order"
    );
    for (key, value) in etcd.dump(PREFIX).await {
        assert!(
            !String::from_utf8_lossy(&value).contains("PRIVATE KEY"),
            "{key} holds a PEM private key"
        );
    }
    // Each node keeps a local copy, private, for a restart without etcd.
    for node in &nodes {
        let key = bed
            .env
            .path(&format!("storage-{}", node.name))
            .join("certs/s1.test/key.pem");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    Ok(())
}

/// A TCP listener that accepts and never answers: an HTTP-01 validation sent to it hangs, which
/// keeps an order in flight for as long as the test needs.
async fn black_hole(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the black hole");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_issuance_leaves_the_order_to_another() -> TestResult {
    let bed = Bed::start(600).await;
    let (etcd, pebble) = (&bed.etcd, &bed.pebble);
    let site = "k.test";
    // The validation of a's order hangs, so a is killed with the lock held and the order open.
    let hole = black_hole(format!("127.0.0.5:{}", bed.http_port).parse()?).await;
    pebble.add_a(site, &["127.0.0.5"]).await;
    let [a, b] = <[Node; 2]>::try_from(bed.nodes(2, &[site])).map_err(|_| "two nodes")?;

    let mut a_run = a.start().await;
    until(
        Duration::from_secs(20),
        "a's challenge is ready",
        async || logged(&a_run, "ACME challenge ready", site) == 1,
    )
    .await;
    // `rampart certs` names the node holding the lock.
    assert_eq!(certs_json(&b.config)[0]["lock_holder"], "a");
    a_run.sigkill().await;
    let killed = Instant::now();
    hole.abort();
    pebble.set_a(site, &["127.0.0.3"]).await;

    let b_run = b.start().await;
    let roots = pebble.roots();
    let deadline = Instant::now() + ISSUANCE;
    while serial(&b, &roots, site).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "b never served {site}:\n{}",
            b_run.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // b waited out a's lease (5 s) rather than ordering beside it.
    assert!(
        killed.elapsed() >= Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(logged(&a_run, "certificate obtained", site), 0);
    assert_eq!(
        logged(
            &b_run,
            "that node stopped while ordering; taking the order over",
            site
        ),
        1,
        "b saw a's unfinished order and did not wait out a's crash guard"
    );
    assert_eq!(
        logged(&b_run, "ordering certificate", site),
        1,
        "{}",
        b_run.stderr()
    );
    let meta = etcd.dump(&format!("{PREFIX}certs/{site}/meta")).await;
    let meta: serde_json::Value = serde_json::from_slice(&meta[0].1)?;
    assert_eq!(meta["issued_by"], "b");
    let report = certs_json(&a.config);
    assert_eq!(
        report[0]["issued_by"], "b",
        "read from the cluster store, not a's files"
    );
    assert!(report[0]["lock_holder"].is_null(), "{report}");
    assert_eq!(
        report[0]["ca"],
        pebble.directory_url(),
        "which CA issued it: {report}"
    );
    Ok(())
}

/// The admin answer at `path` of `node`: status and body.
async fn admin(node: &Node, path: &str) -> (u16, String) {
    let reply = common::plain_get(node.admin, "localhost", path).await;
    (reply.status.as_u16(), reply.text())
}

/// The value of the metric line starting with `name` on `node`, if any.
async fn metric(node: &Node, name: &str) -> Option<f64> {
    let (_, text) = admin(node, "/metrics").await;
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_nodes_serve_what_they_have_and_renew_when_it_is_back() -> TestResult {
    // 30 s certificates: renewal is due 15 s after issuance, while etcd is away.
    let mut bed = Bed::start(30).await;
    let site = "o.test";
    bed.pebble.add_a(site, &["127.0.0.2"]).await;
    let [a, b] = <[Node; 2]>::try_from(bed.nodes(2, &[site])).map_err(|_| "two nodes")?;
    let (etcd, pebble) = (&mut bed.etcd, &bed.pebble);
    let a_run = a.start().await;
    let mut b_run = b.start().await;
    let roots = pebble.roots();
    let first = same_serial(&[&a, &b], &roots, site, ISSUANCE).await;
    let issued = Instant::now();

    etcd.stop();
    // Both keep serving; each says the store is away, in a metric and a log line.
    for node in [&a, &b] {
        until(
            Duration::from_secs(10),
            "the store is seen unreachable",
            async || metric(node, "rampart_cluster_store_up").await == Some(0.0),
        )
        .await;
        assert_eq!(
            admin(node, "/readyz").await.0,
            200,
            "ready while the certificate is valid"
        );
    }
    assert!(a_run.stderr().contains("cluster store unreachable"));
    assert_eq!(
        same_serial(&[&a, &b], &roots, site, Duration::from_secs(5)).await,
        first
    );

    // A node restarted without etcd serves its local copy.
    b_run.sigkill().await;
    let b_run = b.start().await;
    assert_eq!(
        same_serial(&[&b], &roots, site, Duration::from_secs(5)).await,
        first
    );

    // The renewal falls due (half the 30 s lifetime) while etcd is away: it waits, and goes
    // ahead once etcd is back.
    let waits =
        |binary: &Binary| logged_any(binary, "cannot take the issuance lock; trying again later");
    tokio::time::sleep(Duration::from_secs(14).saturating_sub(issued.elapsed())).await;
    let before = waits(&a_run);
    until(
        Duration::from_secs(15),
        "a's renewal waits for the store",
        async || waits(&a_run) > before,
    )
    .await;
    etcd.resume().await;
    let renewed = Instant::now();
    let second = loop {
        let serial = same_serial(&[&a, &b], &roots, site, Duration::from_secs(20)).await;
        if serial != first {
            break serial;
        }
        assert!(
            // A lock the killed b held when etcd went away expires a lease (5 s) after etcd is
            // back: the one wait a node cannot cut short.
            renewed.elapsed() < Duration::from_secs(10),
            "no renewal after etcd came back:\n{}",
            a_run.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(second, first);
    assert!(
        b_run.stderr().contains("cluster store reachable again")
            || a_run.stderr().contains("cluster store reachable again")
    );
    assert_eq!(metric(&a, "rampart_cluster_store_up").await, Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_stored_by_another_node_is_served_within_two_seconds() -> TestResult {
    let bed = Bed::start(600).await;
    let pebble = &bed.pebble;
    let site_name = "w.test";
    pebble.add_a(site_name, &["127.0.0.2"]).await;
    let [a, b] = <[Node; 2]>::try_from(bed.nodes(2, &[site_name])).map_err(|_| "two nodes")?;
    let _a_run = a.start().await;
    let _b_run = b.start().await;
    let roots = pebble.roots();
    let first = same_serial(&[&a, &b], &roots, site_name, ISSUANCE).await;

    let mut lags = Vec::new();
    for node in [&a, &b] {
        lags.push(
            metric(node, "rampart_cluster_watch_lag_seconds_count")
                .await
                .unwrap_or(0.0),
        );
    }

    // The test joins as a third node and renews early, while a and b are not due: they learn
    // of it only through their watch of the store.
    let settings = rampart::config::load(&a.config)?;
    let cluster = settings.cluster.clone().expect("cluster config");
    let (_, storage) = rampart::cluster::Cluster::new(&rampart::config::Cluster {
        node: "t".into(),
        ..cluster
    })
    .await?;
    let storage: std::sync::Arc<dyn rampart::acme::Storage> = std::sync::Arc::new(storage);
    let site = &settings.sites[0];
    let (lock, _keep) = storage
        .lock(site_name, Duration::from_secs(5))
        .await?
        .expect("the lock is free");
    let slot = rampart::acme::AccountSlot::new(&settings.acme, storage.clone())?;
    let request = rampart::acme::OrderRequest {
        site,
        key_type: settings.acme.key_type,
        profile: None,
        replaces: None,
        share: Some((storage.as_ref(), &lock)),
        stop: None,
    };
    let issued = rampart::acme::issue(&slot, &request, &Default::default()).await?;
    let meta = rampart::acme::Meta {
        last_success: Some(std::time::SystemTime::now()),
        issued_by: Some("t".into()),
        ..Default::default()
    };
    let meta = serde_json::to_vec(&meta)?;
    storage
        .save_certificate(
            site_name,
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            &meta,
            &lock,
        )
        .await?;
    let stored = Instant::now();
    storage.unlock(lock).await;

    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .next()
        .expect("a chain")?;
    let new = LeafFacts::parse(&leaf)?.serial;
    assert_ne!(new, first);
    loop {
        let served = [
            serial(&a, &roots, site_name).await,
            serial(&b, &roots, site_name).await,
        ];
        if served.iter().all(|s| s.as_deref() == Some(new.as_str())) {
            break;
        }
        assert!(
            stored.elapsed() < Duration::from_secs(2),
            "not served by both within 2 s: {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (node, before) in [&a, &b].into_iter().zip(lags) {
        let count = metric(node, "rampart_cluster_watch_lag_seconds_count").await;
        assert_eq!(
            count,
            Some(before + 1.0),
            "{} recorded how late it served it",
            node.name
        );
    }
    Ok(())
}
