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

use common::{Binary, Env, TlsClient};
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
    config: PathBuf,
}

impl Node {
    fn new(env: &Env, name: &'static str, ip: &str, http_port: u16, common: &str) -> Self {
        let https: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().expect("address");
        let storage = env.path(&format!("storage-{name}"));
        let config = env.write(
            &format!("{name}.yaml"),
            &format!(
                "listen:\n  https: \"{https}\"\n  http: \"{ip}:{http_port}\"\n\
                 storage: {}\ncluster:\n  node: {name}\n{common}",
                storage.display()
            ),
        );
        Self {
            name,
            https,
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
    let env = Env::new();
    let etcd = Etcd::start().await;
    let http_port = free_port("127.0.0.1");
    let pebble = Pebble::start(PebbleOptions::new(http_port)).await;
    // The CA validates every name on node c, which never orders (see below).
    for site in SITES {
        pebble.add_a(site, &["127.0.0.4"]).await;
    }
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let key_file = env.write("cluster.key", &format!("{key}\n"));
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let sites: String = SITES
        .iter()
        .map(|s| {
            format!(
                "  - {{ hosts: [{s}], routes: [{{ path: /, respond: {{ body: \"{s}\\n\" }} }}] }}\n"
            )
        })
        .collect();
    let common = format!(
        "  etcd:\n    endpoints: [\"{}\"]\n  lock_ttl: 5s\n  encryption_key_file: {}\n\
         acme:\n  directory: {}\n  ca_bundle: {}\nsites:\n{sites}",
        etcd.endpoint(),
        key_file.display(),
        pebble.directory_url(),
        pebble.ca_bundle().display(),
    );
    let nodes = [
        Node::new(&env, "a", "127.0.0.2", http_port, &common),
        Node::new(&env, "b", "127.0.0.3", http_port, &common),
        Node::new(&env, "c", "127.0.0.4", http_port, &common),
    ];

    // Order who gets each lock: the test holds four sites' locks while a and b queue behind
    // it, then c queues, then the test lets go; etcd hands a lock over in queue order. The
    // fifth site goes to whoever frees a task first, which is a or b (c's four tasks wait
    // behind theirs).
    let mut client = etcd.client().await;
    let lease = client.lease_grant(60, None).await?.id();
    for site in &SITES[..4] {
        client
            .lock(
                format!("{PREFIX}locks/{site}"),
                Some(LockOptions::new().with_lease(lease)),
            )
            .await?;
    }
    let a = nodes[0].start().await;
    let b = nodes[1].start().await;
    for site in &SITES[..4] {
        until(Duration::from_secs(8), "a and b queue", async || {
            lock_keys(&etcd, site).await == 3
        })
        .await;
    }
    let c = nodes[2].start().await;
    for site in &SITES[..4] {
        until(Duration::from_secs(8), "c queues", async || {
            lock_keys(&etcd, site).await == 4
        })
        .await;
    }
    client.lease_revoke(lease).await?;

    // Every node serves every site, with one certificate per site.
    let mut roots = RootCertStore::empty();
    roots.add(pebble.root().clone())?;
    let started = Instant::now();
    for site in SITES {
        let mut served: Vec<Option<String>>;
        loop {
            served = Vec::new();
            for node in &nodes {
                served.push(serial(node, &roots, site).await);
            }
            if served.iter().all(Option::is_some) && served.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            assert!(
                started.elapsed() < ISSUANCE,
                "{site}: nodes serve {served:?}\na:\n{}\nb:\n{}\nc:\n{}",
                a.stderr(),
                b.stderr(),
                c.stderr()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

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
        assert_eq!(orders[2], 0, "{site}: c answered the CA, it did not order");
        let meta = etcd.dump(&format!("{PREFIX}certs/{site}/meta")).await;
        let meta: serde_json::Value = serde_json::from_slice(&meta[0].1)?;
        assert!(
            ["a", "b"].contains(&meta["issued_by"].as_str().unwrap_or_default()),
            "{site}: {meta}"
        );
    }
    for (key, value) in etcd.dump(PREFIX).await {
        assert!(
            !String::from_utf8_lossy(&value).contains("PRIVATE KEY"),
            "{key} holds a PEM private key"
        );
    }
    // Each node keeps a local copy, private, for a restart without etcd.
    for node in &nodes {
        let key = env
            .path(&format!("storage-{}", node.name))
            .join("certs/s1.test/key.pem");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    Ok(())
}
