//! `tls: internal`: a local CA created under `storage` on first start, reused after, whose
//! leaves clients verify with nothing but `storage/internal-ca/root.pem`.

mod common;

use std::os::unix::fs::PermissionsExt;

use rampart::tls::InternalCa;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use common::{Env, HttpClient, Rampart};

const SITES: &str = "sites:
  - hosts: [internal.test, \"*.internal.test\"]
    tls: internal
    routes: [{ path: /, respond: { status: 200, body: \"internal ok\\n\" } }]
";

/// A trust store holding only the CA certificate Rampart wrote.
fn roots_from(root_pem: &[u8]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let root = CertificateDer::from_pem_slice(root_pem).expect("root.pem holds a certificate");
    roots.add(root).expect("root.pem is a CA certificate");
    roots
}

/// Handshakes as `sni`, verifying against `roots`, and fetches `/`.
async fn fetch_verified(rampart: &Rampart, roots: RootCertStore, sni: &str) -> String {
    let tls = common::TlsClient::new(roots)
        .connect(rampart.https_addr(), Some(sni))
        .await;
    let tls = tls.unwrap_or_else(|e| panic!("{sni}: leaf does not verify against root.pem: {e}"));
    let reply = HttpClient::handshake(tls).await.get(sni, "/").await;
    assert_eq!(reply.status, 200);
    reply.text()
}

#[tokio::test]
async fn internal_site_is_served_with_a_leaf_from_a_ca_created_under_storage() {
    let env = Env::new();
    let root_path = InternalCa::root_path(&env.storage());
    assert!(!root_path.exists());
    let config = env.write_config(SITES);
    // Trust comes from the file Rampart writes, so the harness CA is irrelevant here.
    let rampart = Rampart::start(&config, RootCertStore::empty()).await;
    assert!(
        root_path.starts_with(env.dir.path()),
        "relative storage resolves next to the config"
    );
    let root_pem = std::fs::read(&root_path).expect("the CA certificate is written on first start");
    for sni in ["internal.test", "www.internal.test"] {
        assert_eq!(
            fetch_verified(&rampart, roots_from(&root_pem), sni).await,
            "internal ok\n"
        );
    }
    rampart.stop().await;
}

#[tokio::test]
async fn internal_ca_key_is_private_to_its_owner() {
    let env = Env::new();
    let rampart = Rampart::start(&env.write_config(SITES), RootCertStore::empty()).await;
    let dir = InternalCa::root_path(&env.storage())
        .parent()
        .expect("root.pem is in a directory")
        .to_owned();
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let keys: Vec<_> = std::fs::read_dir(&dir)
        .expect("readable")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert!(!keys.is_empty(), "the CA key is stored next to root.pem");
    for key in keys {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    rampart.stop().await;
}

#[tokio::test]
async fn internal_ca_persists_across_restarts_and_keeps_issuing_verifiable_leaves() {
    let env = Env::new();
    let config = env.write_config(SITES);
    let root_path = InternalCa::root_path(&env.storage());

    let first = Rampart::start(&config, RootCertStore::empty()).await;
    let root_before = std::fs::read(&root_path).expect("root.pem after the first start");
    let leaf_before = common::TlsClient::new(roots_from(&root_before))
        .connect(first.https_addr(), Some("internal.test"))
        .await
        .expect("first leaf verifies")
        .peer_cert;
    first.stop().await;

    let second = Rampart::start(&config, RootCertStore::empty()).await;
    let root_after = std::fs::read(&root_path).expect("root.pem after the restart");
    assert_eq!(
        root_before, root_after,
        "the restart replaced the CA: clients would stop trusting it"
    );
    // The old root still verifies the leaf issued after the restart.
    assert_eq!(
        fetch_verified(&second, roots_from(&root_before), "internal.test").await,
        "internal ok\n"
    );
    let leaf_after = second
        .connect_with_roots(roots_from(&root_before), "internal.test")
        .await;
    assert_ne!(
        leaf_before, leaf_after,
        "leaves are issued per start (kept in memory only)"
    );
    second.stop().await;
}
