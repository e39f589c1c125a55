//! The cluster store against a real etcd: sealed keys, fenced writes, the issuance lock, the
//! change stream and shared challenge answers, as two nodes (two `Cluster` handles) see them.

#[path = "common/etcd.rs"]
mod etcd;

use std::time::{Duration, Instant};

use etcd::Etcd;
use futures_util::StreamExt as _;
use rampart::acme::storage::{Change, SiteLock};
use rampart::acme::{AcmeError, ChallengeStore, Item, Storage};
use rampart::cluster::{Cluster, EtcdStorage};
use rampart::config::{self, Challenge, SealKey, Site, SiteTls};
use rampart::pki::HostName;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PREFIX: &str = "/test/rampart/";

/// A node of the cluster on `etcd`.
async fn node(etcd: &Etcd, name: &str, key: [u8; 32]) -> (Cluster, EtcdStorage) {
    let settings = config::Cluster {
        etcd: config::Etcd {
            endpoints: vec![etcd.endpoint()],
            prefix: PREFIX.to_owned(),
            tls: None,
            user: None,
        },
        node: name.to_owned(),
        lock_ttl: Duration::from_secs(5),
        encryption_key: SealKey::new(key),
    };
    Cluster::new(&settings).await.expect("cluster client")
}

fn site(name: &str) -> Site {
    Site {
        name: name.into(),
        hosts: vec![HostName::parse(name).expect("literal host")],
        tls: SiteTls::Acme,
        challenges: vec![Challenge::Http01],
        dns: None,
        default: false,
        routes: Vec::new(),
        policy: Default::default(),
    }
}

fn self_signed(name: &str) -> (String, String) {
    let issued = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("rcgen");
    (issued.cert.pem(), issued.signing_key.serialize_pem())
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The lock of `site`, taken at once.
async fn lock(storage: &dyn Storage, site: &str) -> SiteLock {
    let (lock, keep) = storage
        .lock(site, Duration::from_secs(5))
        .await
        .expect("etcd answers")
        .expect("nobody else holds it");
    drop(keep); // not renewed: these tests finish well within the 5 s lease
    lock
}

#[tokio::test]
async fn pairs_round_trip_sealed_and_no_private_key_is_stored_in_the_clear() -> TestResult {
    let etcd = Etcd::start().await;
    let (_, a) = node(&etcd, "a", [1; 32]).await;
    let (_, b) = node(&etcd, "b", [1; 32]).await;
    let (chain, key) = self_signed("a.test");
    let held = lock(&a, "a.test").await;
    a.save_certificate("a.test", chain.as_bytes(), key.as_bytes(), b"{}", &held)
        .await?;
    a.save(
        Item::Account("ca"),
        br#"{"id":"x","key_pkcs8":"secret"}"#,
        None,
    )
    .await?;
    a.unlock(held).await;

    // Another node reads what this one wrote.
    let b: &dyn Storage = &b;
    let stored = b
        .load_cert(&site("a.test"), &provider())
        .await?
        .expect("stored");
    assert_eq!(stored.facts.names, ["a.test"]);
    assert_eq!(stored.key_pem, key.as_bytes());
    assert!(b.load(Item::Account("ca")).await?.is_some());

    let dump = etcd.dump(PREFIX).await;
    let keys: Vec<&str> = dump.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&"/test/rampart/certs/a.test/key"), "{keys:?}");
    for (key, value) in &dump {
        let text = String::from_utf8_lossy(value);
        assert!(
            !text.contains("PRIVATE KEY"),
            "{key} holds a PEM private key"
        );
        assert!(
            !text.contains("secret"),
            "{key} holds the account in the clear"
        );
    }

    // A node with another sealing key cannot use what it reads.
    let (_, stranger) = node(&etcd, "c", [2; 32]).await;
    let stranger: &dyn Storage = &stranger;
    assert!(matches!(
        stranger.load(Item::Key("a.test")).await,
        Err(AcmeError::Store { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn a_write_under_a_lost_lock_is_refused() -> TestResult {
    let etcd = Etcd::start().await;
    let (_, a) = node(&etcd, "a", [1; 32]).await;
    let (_, b) = node(&etcd, "b", [1; 32]).await;
    let (chain, key) = self_signed("f.test");

    let stalled = lock(&a, "f.test").await;
    // As if node a stalled past its lease: etcd drops the lease and the lock with it.
    let lease = stalled
        .fence
        .as_ref()
        .expect("a cluster lock has a fence")
        .lease;
    etcd.client().await.lease_revoke(lease).await?;

    let fresh = lock(&b, "f.test").await;
    b.save_certificate("f.test", chain.as_bytes(), key.as_bytes(), b"{}", &fresh)
        .await?;
    let (other_chain, other_key) = self_signed("f.test");
    let late = a
        .save_certificate(
            "f.test",
            other_chain.as_bytes(),
            other_key.as_bytes(),
            b"{}",
            &stalled,
        )
        .await;
    assert!(matches!(late, Err(AcmeError::Fenced { .. })), "{late:?}");
    let late_meta = (&a as &dyn Storage)
        .save_meta("f.test", &Default::default(), &stalled)
        .await;
    assert!(
        matches!(late_meta, Err(AcmeError::Fenced { .. })),
        "{late_meta:?}"
    );
    // Nor can a write go without a lock from this store.
    let unlocked = a
        .save_certificate(
            "f.test",
            other_chain.as_bytes(),
            other_key.as_bytes(),
            b"{}",
            &SiteLock::local(),
        )
        .await;
    assert!(
        matches!(unlocked, Err(AcmeError::Fenced { .. })),
        "{unlocked:?}"
    );

    let b: &dyn Storage = &b;
    let stored = b
        .load_cert(&site("f.test"), &provider())
        .await?
        .expect("stored");
    assert_eq!(
        stored.chain_pem,
        chain.as_bytes(),
        "the newer holder's write stands"
    );
    Ok(())
}

#[tokio::test]
async fn one_node_holds_a_site_lock_and_the_next_gets_it_when_given_back() -> TestResult {
    let etcd = Etcd::start().await;
    let (_, a) = node(&etcd, "a", [1; 32]).await;
    let (_, b) = node(&etcd, "b", [1; 32]).await;
    let (held, keep) = a
        .lock("l.test", Duration::from_secs(1))
        .await?
        .expect("free");

    let waited = Instant::now();
    let busy = b.lock("l.test", Duration::from_millis(500)).await?;
    assert!(busy.is_none(), "a second holder while the first renews");
    assert!(waited.elapsed() >= Duration::from_millis(500));
    // Another site's lock is independent.
    assert!(
        b.lock("m.test", Duration::from_millis(500))
            .await?
            .is_some()
    );

    // The holder keeps it past its 5 s lease by renewing it.
    let renewing = tokio::spawn(keep);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!renewing.is_finished(), "renewal keeps the lock");
    assert!(
        b.lock("l.test", Duration::from_millis(300))
            .await?
            .is_none()
    );

    renewing.abort();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.lock("l.test", Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let given_back = Instant::now();
    a.unlock(held).await;
    let next = waiting.await??;
    assert!(next.is_some(), "the waiting node gets the lock");
    assert!(
        given_back.elapsed() < Duration::from_secs(2),
        "{:?}",
        given_back.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_dead_holders_lock_expires_with_its_lease() -> TestResult {
    let etcd = Etcd::start().await;
    let (_, a) = node(&etcd, "a", [1; 32]).await;
    let (_, b) = node(&etcd, "b", [1; 32]).await;
    // Held and never renewed nor given back, as by a node killed mid-issuance.
    let (held, keep) = a
        .lock("d.test", Duration::from_secs(1))
        .await?
        .expect("free");
    drop(keep);
    std::mem::forget(held);
    let started = Instant::now();
    let next = b.lock("d.test", Duration::from_secs(15)).await?;
    assert!(next.is_some(), "the lock is free once the lease expires");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn other_nodes_hear_of_stored_certificates() -> TestResult {
    let mut etcd = Etcd::start().await;
    let (_, a) = node(&etcd, "a", [1; 32]).await;
    let (_, b) = node(&etcd, "b", [1; 32]).await;
    let (chain, key) = self_signed("old.test");
    let held = lock(&a, "old.test").await;
    a.save_certificate("old.test", chain.as_bytes(), key.as_bytes(), b"{}", &held)
        .await?;
    a.unlock(held).await;

    // Listed first: a node that starts learns what was stored before it.
    let mut changes = b.changes().expect("a shared store has changes");
    let first = tokio::time::timeout(Duration::from_secs(5), changes.next()).await?;
    assert_eq!(first, Some(Change::Stored("old.test".into())));

    let (chain, key) = self_signed("new.test");
    let held = lock(&a, "new.test").await;
    (&a as &dyn Storage)
        .save_meta("new.test", &Default::default(), &held)
        .await?;
    a.save_certificate("new.test", chain.as_bytes(), key.as_bytes(), b"{}", &held)
        .await?;
    a.unlock(held).await;
    let next = tokio::time::timeout(Duration::from_secs(2), changes.next()).await?;
    assert_eq!(
        next,
        Some(Change::Stored("new.test".into())),
        "a meta write alone is no change"
    );

    // Across an etcd outage, followed as the scheduler follows it (polled all along), the
    // stream says when the store is back, and replays what it missed from the revision it saw.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        while let Some(change) = changes.next().await {
            let _ = seen_tx.send((change, Instant::now()));
        }
    });
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(7)).await; // past a request timeout (5 s)
    assert!(
        seen_rx.try_recv().is_err(),
        "nothing while the store is away"
    );
    etcd.resume().await;
    let back = Instant::now();
    let (first, at) = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
        .await?
        .expect("the stream never ends");
    assert_eq!(first, Change::Back);
    assert!(
        at.duration_since(back) < Duration::from_secs(3),
        "{:?}",
        at.duration_since(back)
    );
    let (chain, key) = self_signed("late.test");
    let held = lock(&a, "late.test").await;
    a.save_certificate("late.test", chain.as_bytes(), key.as_bytes(), b"{}", &held)
        .await?;
    let (next, _) = tokio::time::timeout(Duration::from_secs(2), seen_rx.recv())
        .await?
        .expect("the stream never ends");
    let seen = [first, next];
    assert_eq!(seen, [Change::Back, Change::Stored("late.test".into())]);
    follower.abort();
    Ok(())
}

#[tokio::test]
async fn challenge_answers_reach_every_node_and_go_with_the_lock() -> TestResult {
    let etcd = Etcd::start().await;
    let (_, a) = node(&etcd, "a", [1; 32]).await;
    let (b_cluster, _) = node(&etcd, "b", [1; 32]).await;
    let answers = ChallengeStore::default();
    let stop = CancellationToken::new();
    let watching = tokio::spawn(
        b_cluster
            .clone()
            .watch_challenges(answers.clone(), stop.clone()),
    );

    let held = lock(&a, "c.test").await;
    a.share_challenge(&held, "tok-1", "tok-1.thumb").await?;
    // Asked before the watch could bring it: read from etcd directly.
    assert_eq!(answers.find("tok-1").await.as_deref(), Some("tok-1.thumb"));
    // And the watched copy has it shortly after.
    eventually(Duration::from_secs(2), || answers.get("tok-1").is_some()).await;
    assert_eq!(answers.find("nope").await, None);
    assert_eq!(answers.find("../certs").await, None);
    // A tls-alpn-01 answer travels the same way, and becomes a certificate on the other node.
    let key = rampart::acme::tls_alpn_key("c.test");
    a.share_challenge(&held, &key, "alpn.thumb").await?;
    assert!(answers.certs().find("c.test").await.is_some());
    // A node whose watch has not brought it (none here) reads it from etcd at the handshake.
    let unwatched = ChallengeStore::default();
    let stopped = CancellationToken::new();
    stopped.cancel();
    b_cluster.watch_challenges(unwatched.clone(), stopped).await;
    assert!(unwatched.certs().get("c.test").is_none());
    assert!(unwatched.certs().find("c.test").await.is_some());
    assert!(answers.certs().find("other.test").await.is_none());
    assert_eq!(answers.find(&key).await, None, "never an http-01 answer");

    a.unlock(held).await;
    eventually(Duration::from_secs(2), || answers.get("tok-1").is_none()).await;
    eventually(Duration::from_secs(2), || {
        answers.certs().get("c.test").is_none()
    })
    .await;
    assert_eq!(
        answers.find("tok-1").await,
        None,
        "gone from etcd with the lock"
    );
    stop.cancel();
    watching.await?;
    Ok(())
}

async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_node_reaches_etcd_over_tls_with_a_client_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).map(|()| path)
    };
    // One CA signs etcd's server certificate and the node's client certificate.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| -> Result<(String, String), rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into()])?;
    let (client_cert, client_key) = leaf(vec!["edge-1".into()])?;
    let ca = write("ca.pem", ca_cert.pem())?;
    let etcd = Etcd::start_tls(
        write("server.pem", server_cert)?,
        write("server.key", server_key)?,
        ca.clone(),
    )
    .await;
    assert!(etcd.endpoint().starts_with("https://"));
    let settings = |identity: Option<(std::path::PathBuf, std::path::PathBuf)>| config::Cluster {
        etcd: config::Etcd {
            endpoints: vec![etcd.endpoint()],
            prefix: PREFIX.to_owned(),
            tls: Some(config::EtcdTls {
                ca: ca.clone(),
                identity,
            }),
            user: None,
        },
        node: "edge-1".into(),
        lock_ttl: Duration::from_secs(5),
        encryption_key: SealKey::new([1; 32]),
    };
    let identity = (
        write("client.pem", client_cert)?,
        write("client.key", client_key)?,
    );
    let (_, storage) = Cluster::new(&settings(Some(identity))).await?;
    let storage: &dyn Storage = &storage;
    // The harness saw the TLS port accept; etcd may need a moment more to answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(error) = storage.save(Item::Account("ca"), b"{}", None).await {
        assert!(Instant::now() < deadline, "etcd over TLS: {error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        storage.load(Item::Account("ca")).await?.as_deref(),
        Some(&b"{}"[..])
    );

    // Without a client certificate etcd refuses the node.
    let (_, refused) = Cluster::new(&settings(None)).await?;
    assert!(
        (&refused as &dyn Storage)
            .load(Item::Account("ca"))
            .await
            .is_err()
    );
    Ok(())
}
