//! [`EtcdStorage`]: the ACME scheduler's storage in a cluster.
//!
//! Reads and writes the keys listed in `cluster`'s module docs. A site's writes are transactions
//! that succeed only while the writer's lock key exists, so a node that stalled past its lease
//! cannot overwrite what the next holder stored. Private keys (a site's, the account's) are
//! sealed under `encryption_key_file` before they leave the host.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, LockOptions,
    PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use tracing::{info, warn};

use super::seal::Sealer;
use super::{Cluster, WATCH_RETRY, request, watch_broke};
use crate::acme::storage::{Change, Fence, Keep, SiteLock};
use crate::acme::{AcmeError, Item, Storage};
use crate::config::SealKey;
use crate::observe::metrics;

/// The ACME scheduler's storage in etcd.
#[derive(Clone)]
pub struct EtcdStorage {
    cluster: Cluster,
    sealer: Arc<Sealer>,
    /// Leases this node gave back while etcd did not answer: revoked when it answers again,
    /// so this node's own stale lock does not hold its next attempt back for a whole TTL.
    unrevoked: Arc<Mutex<Vec<i64>>>,
}

impl std::fmt::Debug for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStorage")
            .field("prefix", &self.cluster.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStorage {
    pub(super) fn new(cluster: Cluster, key: &SealKey) -> Self {
        Self {
            cluster,
            sealer: Arc::new(Sealer::new(key)),
            unrevoked: Arc::default(),
        }
    }

    /// The etcd key of `item`.
    fn key_of(&self, item: Item<'_>) -> String {
        match item {
            Item::Chain(site) => self.cluster.key(&format!("certs/{site}/chain")),
            Item::Key(site) => self.cluster.key(&format!("certs/{site}/key")),
            Item::Meta(site) => self.cluster.key(&format!("certs/{site}/meta")),
            Item::Account(ca) => self.cluster.key(&format!("accounts/{ca}")),
        }
    }

    /// What is written for `item`: sealed when it holds a private key.
    fn value_of(&self, item: Item<'_>, key: &str, bytes: &[u8]) -> Vec<u8> {
        if item.is_secret() {
            self.sealer.seal(key.as_bytes(), bytes)
        } else {
            bytes.to_vec()
        }
    }

    /// `ops` in one transaction that succeeds only while `lock` is held.
    async fn fenced(&self, site: &str, lock: &SiteLock, ops: Vec<TxnOp>) -> Result<(), AcmeError> {
        let Some(fence) = &lock.fence else {
            // Only a lock from this store proves anything: writing without one is a bug.
            return Err(AcmeError::Fenced {
                site: site.to_owned(),
            });
        };
        let txn = Txn::new()
            .when([Compare::version(fence.key.clone(), CompareOp::Greater, 0)])
            .and_then(ops);
        let mut client = self.cluster.client();
        let done = request(|| format!("write site {site}"), client.txn(txn)).await?;
        if done.succeeded() {
            Ok(())
        } else {
            Err(AcmeError::Fenced {
                site: site.to_owned(),
            })
        }
    }

    /// Gives a lease back; if that fails it is tried again before the next lock (it expires on
    /// its own after `lock_ttl` anyway).
    async fn revoke(&self, lease: i64) {
        let mut client = self.cluster.client();
        let revoked = request(
            || format!("revoke lease {lease:x}"),
            client.lease_revoke(lease),
        )
        .await;
        if let Err(error) = revoked {
            warn!(error = %crate::observe::Chain(&error), "lock not given back yet; trying again when the store answers");
            self.unrevoked().push(lease);
        }
    }

    /// Revokes what could not be revoked before (see `unrevoked`).
    async fn revoke_stale(&self) {
        let stale = std::mem::take(&mut *self.unrevoked());
        for lease in stale {
            let mut client = self.cluster.client();
            let revoked = request(
                || format!("revoke lease {lease:x}"),
                client.lease_revoke(lease),
            )
            .await;
            match revoked {
                Ok(_) => {}
                // Gone already: it expired, or etcd lost it.
                Err(AcmeError::Store { source, .. })
                    if source.downcast_ref::<etcd_client::Error>().is_some_and(|e| {
                        matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound)
                    }) => {}
                Err(_) => self.unrevoked().push(lease),
            }
        }
    }

    fn unrevoked(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.unrevoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage for EtcdStorage {
    fn place(&self, item: Item<'_>) -> String {
        format!("etcd {}", self.key_of(item))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn node(&self) -> Option<&str> {
        Some(self.cluster.node())
    }

    fn load<'a>(&'a self, item: Item<'a>) -> BoxFuture<'a, Result<Option<Vec<u8>>, AcmeError>> {
        Box::pin(async move {
            let key = self.key_of(item);
            let mut client = self.cluster.client();
            let mut found =
                request(|| format!("read {key}"), client.get(key.as_str(), None)).await?;
            let Some(kv) = found.take_kvs().into_iter().next() else {
                return Ok(None);
            };
            let (_, value) = kv.into_key_value();
            if !item.is_secret() {
                return Ok(Some(value));
            }
            self.sealer
                .open(key.as_bytes(), &value)
                .map(Some)
                .map_err(|unsealable| AcmeError::Store {
                    action: format!("open {key}"),
                    source: Box::new(unsealable),
                })
        })
    }

    fn save<'a>(
        &'a self,
        item: Item<'a>,
        bytes: &'a [u8],
        lock: Option<&'a SiteLock>,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let key = self.key_of(item);
            let value = self.value_of(item, &key, bytes);
            match (item, lock) {
                (Item::Account(_), _) => {
                    // Nodes registering at once each get a valid account; the first stored is
                    // the one every node uses from then on.
                    let txn = Txn::new()
                        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key.as_str(), value, None)]);
                    let mut client = self.cluster.client();
                    request(|| format!("write {key}"), client.txn(txn)).await?;
                    Ok(())
                }
                (Item::Chain(site) | Item::Key(site) | Item::Meta(site), Some(lock)) => {
                    self.fenced(site, lock, vec![TxnOp::put(key, value, None)])
                        .await
                }
                (Item::Chain(site) | Item::Key(site) | Item::Meta(site), None) => {
                    Err(AcmeError::Fenced {
                        site: site.to_owned(),
                    })
                }
            }
        })
    }

    fn save_certificate<'a>(
        &'a self,
        site: &'a str,
        chain: &'a [u8],
        key: &'a [u8],
        meta: &'a [u8],
        lock: &'a SiteLock,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            // One transaction: every node sees the old certificate or the new one, never half,
            // and its state with it.
            let chain_key = self.key_of(Item::Chain(site));
            let key_key = self.key_of(Item::Key(site));
            let sealed = self.value_of(Item::Key(site), &key_key, key);
            let ops = vec![
                TxnOp::put(key_key, sealed, None),
                TxnOp::put(chain_key, chain.to_vec(), None),
                TxnOp::put(self.key_of(Item::Meta(site)), meta.to_vec(), None),
            ];
            self.fenced(site, lock, ops).await
        })
    }

    fn discard<'a>(&'a self, item: Item<'a>) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let key = self.key_of(item);
            let mut client = self.cluster.client();
            request(
                || format!("delete {key}"),
                client.delete(key.as_str(), None),
            )
            .await?;
            Ok(())
        })
    }

    fn lock<'a>(
        &'a self,
        site: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<(SiteLock, Keep)>, AcmeError>> {
        Box::pin(async move {
            self.revoke_stale().await;
            let name = self.cluster.key(&format!("locks/{site}"));
            let ttl = self.cluster.inner.lock_ttl;
            let mut client = self.cluster.client();
            let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
            let lease = request(
                || format!("grant a lease for {name}"),
                client.lease_grant(seconds, None),
            )
            .await
            .inspect_err(|_| metrics::cluster_lock("failed"))?
            .id();
            let (keeper, replies) = match request(
                || format!("keep lease {lease:x} alive"),
                client.lease_keep_alive(lease),
            )
            .await
            {
                Ok(pair) => pair,
                Err(error) => {
                    self.revoke(lease).await;
                    return Err(error);
                }
            };
            let mut keep: Keep = Box::pin(renew(self.cluster.clone(), lease, keeper, replies, ttl));
            // The lease is renewed while waiting too: a long wait must not lose the place.
            let acquired = tokio::select! {
                acquired = client.lock(name.as_str(), Some(LockOptions::new().with_lease(lease))) => Some(acquired),
                error = &mut keep => {
                    self.revoke(lease).await;
                    return Err(error);
                }
                () = tokio::time::sleep(wait) => None,
            };
            match acquired {
                Some(Ok(held)) => {
                    info!(site, node = self.cluster.node(), "issuance lock taken");
                    metrics::cluster_lock("taken");
                    metrics::cluster_lock_held(1);
                    // Who holds it, for `rampart certs`: on the lease, so it goes with the lock.
                    let holder = self.cluster.key(&format!("holders/{site}"));
                    let options = PutOptions::new().with_lease(lease);
                    let _ = request(
                        || format!("write {holder}"),
                        client.put(holder.as_str(), self.cluster.node(), Some(options)),
                    )
                    .await;
                    let fence = Fence {
                        key: held.key().to_vec(),
                        lease,
                    };
                    Ok(Some((SiteLock { fence: Some(fence) }, keep)))
                }
                Some(Err(source)) => {
                    metrics::cluster_lock("failed");
                    self.revoke(lease).await;
                    Err(AcmeError::Store {
                        action: format!("take the lock {name}"),
                        source: Box::new(source),
                    })
                }
                None => {
                    metrics::cluster_lock("busy");
                    // Dropping the lock call withdrew this node's place in the queue.
                    self.revoke(lease).await;
                    Ok(None)
                }
            }
        })
    }

    fn unlock(&self, lock: SiteLock) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The lease holds the lock key and the challenge answers: revoking it drops them all.
            if let Some(fence) = lock.fence {
                metrics::cluster_lock_held(-1);
                self.revoke(fence.lease).await;
            }
        })
    }

    fn share_challenge<'a>(
        &'a self,
        lock: &'a SiteLock,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let Some(fence) = &lock.fence else {
                return Ok(());
            };
            let key = self.cluster.key(&format!("challenges/{token}"));
            let options = PutOptions::new().with_lease(fence.lease);
            let mut client = self.cluster.client();
            request(
                || format!("write {key}"),
                client.put(key.as_str(), key_authorization, Some(options)),
            )
            .await?;
            Ok(())
        })
    }

    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        let follow = Follow {
            cluster: self.cluster.clone(),
            prefix: self.cluster.key("certs/"),
            watch: None,
            revision: 0,
            ready: VecDeque::new(),
            broken: false,
        };
        Some(Box::pin(stream::unfold(follow, |mut follow| async move {
            let change = follow.next().await;
            Some((change, follow))
        })))
    }
}

/// Renews `lease` at a third of `ttl`, until it cannot anymore: a failed renewal is retried
/// (with a new keep-alive stream) until the lease would have expired, then the lock is lost.
async fn renew(
    cluster: Cluster,
    lease: i64,
    mut keeper: LeaseKeeper,
    mut replies: LeaseKeepAliveStream,
    ttl: Duration,
) -> AcmeError {
    let every = ttl / 3;
    let mut valid_until = Instant::now() + ttl;
    loop {
        tokio::time::sleep(every.min(valid_until.saturating_duration_since(Instant::now()))).await;
        let renewed = request(|| format!("keep lease {lease:x} alive"), async {
            keeper.keep_alive().await?;
            replies.message().await
        })
        .await;
        match renewed {
            Ok(Some(reply)) if reply.ttl() > 0 => {
                valid_until = Instant::now() + Duration::from_secs(reply.ttl().unsigned_abs());
                continue;
            }
            Ok(_) => {
                return AcmeError::Store {
                    action: format!("keep lease {lease:x} alive"),
                    source: "the lease expired".into(),
                };
            }
            Err(error) if Instant::now() >= valid_until => return error,
            Err(error) => {
                warn!(error = %crate::observe::Chain(&error), "lock lease not renewed; trying again while it lasts");
                // The stream may be broken for good: a new one, if etcd answers.
                let mut client = cluster.client();
                if let Ok((new_keeper, new_replies)) = request(
                    || format!("keep lease {lease:x} alive"),
                    client.lease_keep_alive(lease),
                )
                .await
                {
                    // Opening the stream renewed the lease once already.
                    (keeper, replies) = (new_keeper, new_replies);
                    valid_until = Instant::now() + ttl;
                }
            }
        }
    }
}

/// Follows `certs/` for [`EtcdStorage::changes`]: every stored site first, then each site whose
/// chain is written, across watch breaks (from the last revision seen) and compactions (by
/// listing again).
struct Follow {
    cluster: Cluster,
    prefix: String,
    watch: Option<WatchStream>,
    /// The store's revision this node has seen up to.
    revision: i64,
    ready: VecDeque<Change>,
    /// A break was logged and not yet mended.
    broken: bool,
}

impl Follow {
    async fn next(&mut self) -> Change {
        loop {
            if let Some(change) = self.ready.pop_front() {
                return change;
            }
            if self.revision == 0 {
                if let Err(error) = self.list().await {
                    self.broke(&error).await;
                }
                continue;
            }
            let Some(watch) = &mut self.watch else {
                let mut client = self.cluster.client();
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(self.revision + 1);
                match request(
                    || format!("watch {}", self.prefix),
                    client.watch(self.prefix.as_str(), Some(options)),
                )
                .await
                {
                    Ok(watch) => {
                        self.watch = Some(watch);
                        self.mended();
                    }
                    Err(error) => self.broke(&error).await,
                }
                continue;
            };
            match watch.message().await {
                Ok(Some(reply)) if reply.canceled() => {
                    // Compacted past what this node saw: list everything again.
                    self.watch = None;
                    if reply.compact_revision() > 0 {
                        self.revision = 0;
                    }
                }
                Ok(Some(reply)) => {
                    self.mended();
                    let mut sites = BTreeSet::new();
                    for event in reply.events() {
                        let Some(kv) = event.kv() else { continue };
                        self.revision = self.revision.max(kv.mod_revision());
                        if event.event_type() == EventType::Put
                            && let Some(site) = self.site_of(kv.key())
                        {
                            sites.insert(site);
                        }
                    }
                    self.ready.extend(sites.into_iter().map(Change::Stored));
                }
                Ok(None) => {
                    self.watch = None;
                    self.broke(&std::io::Error::other("the watch ended")).await;
                }
                Err(error) => {
                    self.watch = None;
                    self.broke(&error).await;
                }
            }
        }
    }

    /// Every site with a stored chain, and the revision to watch from.
    async fn list(&mut self) -> Result<(), AcmeError> {
        let mut client = self.cluster.client();
        let options = GetOptions::new().with_prefix().with_keys_only();
        let listed = request(
            || format!("list {}", self.prefix),
            client.get(self.prefix.as_str(), Some(options)),
        )
        .await?;
        self.revision = listed.header().map_or(1, |h| h.revision().max(1));
        let sites: BTreeSet<String> = listed
            .kvs()
            .iter()
            .filter_map(|kv| self.site_of(kv.key()))
            .collect();
        self.ready.extend(sites.into_iter().map(Change::Stored));
        self.mended();
        Ok(())
    }

    /// The store answered: after a break, say so once.
    fn mended(&mut self) {
        if std::mem::take(&mut self.broken) {
            self.ready.push_back(Change::Back);
        }
    }

    /// `prefix<site>/chain` → `site`.
    fn site_of(&self, key: &[u8]) -> Option<String> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        let site = rest.strip_suffix(b"/chain")?;
        String::from_utf8(site.to_vec()).ok()
    }

    async fn broke(&mut self, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        if !self.broken {
            watch_broke(&self.prefix, error);
            self.broken = true;
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}
