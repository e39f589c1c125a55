//! The renewal scheduler: keeps every `tls: acme` site served with a valid certificate.
//!
//! At start it publishes every valid stored certificate before talking to the CA, then orders the
//! missing ones in the background, a bounded number at a time. Afterwards it wakes when something
//! is due (and at least every tenth of the shortest lifetime served), fetches ARI windows when the
//! CA offers them, renews, and backs off after failures. Reads and writes `storage/certs/*` and
//! the account file; changes shared state only through [`CertStore::publish`] and the
//! [`ChallengeStore`]. The server runs [`RenewalScheduler::run`] as one long-lived task.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use rustls::crypto::CryptoProvider;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::acme::renewal::{
    ARI_UNKNOWN, Ca, ServedCert, Shared, SiteState, attempt, catch_up, load_state,
};
use crate::acme::storage::{Change, DiskStorage, Storage};
use crate::acme::timing::{self, Backoff};
use crate::acme::{AccountSlot, ChallengeStore};
use crate::config::{Acme, Site, SiteTls};
use crate::observe::Chain;
use crate::tls::{CertStore, Published};

/// Called after each publish, to confirm the listener now serves the new certificate.
///
/// The server implements it with a TLS handshake to its own listener per host, comparing the
/// served serial with `published.serial`, and logs a mismatch as an error.
pub trait SelfCheck: Send + Sync + 'static {
    /// Checks that `site` is served with the certificate just published.
    fn verify<'a>(
        &'a self,
        site: &'a Site,
        published: &'a Published,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// A [`SelfCheck`] that checks nothing (tests of the ACME layer alone).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSelfCheck;

impl SelfCheck for NoSelfCheck {
    fn verify<'a>(
        &'a self,
        _: &'a Site,
        _: &'a Published,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
}

/// How long orders in flight may take to give up when Rampart stops: they stop at once but
/// for removing their DNS-01 records (or a task waiting for a cluster lock or the CA's
/// renewal information, which is dropped after this).
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Knobs of the scheduler; the defaults are the production values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Orders in flight at once (CA rate limits count concurrent orders too).
    pub concurrency: usize,
    /// Backoff after failed orders.
    pub backoff: Backoff,
    /// Longest sleep between checks.
    pub max_sleep: Duration,
    /// Shortest pause between two renewal-information polls of one certificate, whatever the
    /// CA's `Retry-After` (a CA answering 0 must not make us spin).
    pub ari_recheck_min: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            concurrency: 4,
            backoff: Backoff::default(),
            max_sleep: Duration::from_secs(3600),
            ari_recheck_min: Duration::from_secs(60),
        }
    }
}

/// Obtains and renews certificates for ACME sites; see the module docs.
pub struct RenewalScheduler {
    acme: Acme,
    /// The local files: read at start, before any task runs.
    local: DiskStorage,
    /// Where issuance writes: the local files, or a shared store.
    storage: Arc<dyn Storage>,
    /// With a shared store: the local files, kept as its mirror.
    mirror: Option<DiskStorage>,
    sites: Vec<Arc<Site>>,
    certs: CertStore,
    challenges: ChallengeStore,
    self_check: Arc<dyn SelfCheck>,
    tuning: Tuning,
    provider: Arc<CryptoProvider>,
    /// What [`RenewalScheduler::publish_stored`] read, so `run` starts from it instead of
    /// reading and publishing every certificate a second time.
    loaded: Option<Vec<SiteState>>,
    /// Sites added while running (on-demand names), when there can be any.
    added: Option<mpsc::UnboundedReceiver<Arc<Site>>>,
}

impl RenewalScheduler {
    /// A scheduler for the `tls: acme` sites among `sites`, storing under `storage`.
    pub fn new(
        acme: Acme,
        storage: &Path,
        sites: &[Site],
        certs: CertStore,
        challenges: ChallengeStore,
    ) -> Self {
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        Self {
            acme,
            local: DiskStorage::new(storage),
            storage: Arc::new(DiskStorage::new(storage)),
            mirror: None,
            sites: sites
                .iter()
                .filter(|s| s.tls == SiteTls::Acme)
                .cloned()
                .map(Arc::new)
                .collect(),
            certs,
            challenges,
            self_check: Arc::new(NoSelfCheck),
            tuning: Tuning::default(),
            provider,
            loaded: None,
            added: None,
        }
    }

    /// Also keeps the sites received on `added` served (on-demand names, one host each).
    #[must_use]
    pub fn with_added_sites(mut self, added: mpsc::UnboundedReceiver<Arc<Site>>) -> Self {
        self.added = Some(added);
        self
    }

    /// Runs `check` after every publish.
    #[must_use]
    pub fn with_self_check(mut self, check: Arc<dyn SelfCheck>) -> Self {
        self.self_check = check;
        self
    }

    /// Issues through a store other nodes share (a cluster): certificates and state are read
    /// from and written to it under each site's lock, and the local files become its mirror,
    /// read at start so a node serves even while the store is away.
    #[must_use]
    pub fn with_shared_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.mirror = Some(self.local.clone());
        self.storage = storage;
        self
    }

    /// Replaces the production tuning (tests use short backoffs).
    #[must_use]
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Publishes every valid stored certificate now, without touching the network; returns how
    /// many sites are served. [`RenewalScheduler::run`] starts from what this read, or reads it
    /// itself when this was not called: call it to serve stored certificates before `run` starts.
    pub fn publish_stored(&mut self) -> usize {
        let loaded = self.load_all();
        let served = loaded.iter().filter(|state| state.served.is_some()).count();
        self.loaded = Some(loaded);
        served
    }

    /// Every site's stored state, each usable certificate published.
    fn load_all(&self) -> Vec<SiteState> {
        self.sites
            .iter()
            .map(|site| load_state(&self.local, site, &self.certs, &self.provider))
            .collect()
    }

    /// Keeps certificates valid until `stop` is cancelled; orders in flight are abandoned then
    /// (their challenge tokens are withdrawn).
    ///
    /// # Cancel safety
    /// Meant to run as its own task and be stopped through `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let loaded = match self.loaded.take() {
            Some(loaded) => loaded,
            None => self.load_all(),
        };
        let mut states: Vec<Option<SiteState>> = loaded.into_iter().map(Some).collect();
        let mut added = self.added.take();
        if self.sites.is_empty() && added.is_none() {
            return;
        }
        let mut cas = Vec::new();
        for ca in self.acme.cas() {
            match AccountSlot::for_ca(&ca, self.acme.email.as_deref(), self.storage.clone()) {
                Ok(slot) => cas.push(Ca {
                    slot,
                    directory: ca.directory.to_string(),
                    profile: ca.profile,
                    ari: AtomicU8::new(ARI_UNKNOWN),
                }),
                Err(error) => {
                    error!(ca = %ca.directory, error = %Chain(&error), "this CA is not used");
                }
            }
        }
        if cas.is_empty() {
            error!("ACME disabled: no certificate can be obtained");
            stop.cancelled().await;
            return;
        }
        let shared = Arc::new(Shared {
            cas,
            fallback_after: self.acme.fallback_after,
            storage: self.storage,
            mirror: self.mirror,
            certs: self.certs,
            challenges: self.challenges,
            self_check: self.self_check,
            tuning: self.tuning,
            provider: self.provider,
            key_type: self.acme.key_type,
            stop: stop.clone(),
        });
        let mut tasks = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
        // Certificates other nodes store: served as they arrive, not at the next renewal check.
        let mut changes = shared.storage.changes();
        let mut index_of: HashMap<String, usize> = self
            .sites
            .iter()
            .enumerate()
            .map(|(index, site)| (site.name.clone(), index))
            .collect();
        // In a cluster each node walks the sites from its own place in the list, so nodes that
        // start together order different sites instead of queueing for the same locks.
        let start = shared.storage.node().map_or(0, |node| {
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(node, &mut hasher);
            usize::try_from(std::hash::Hasher::finish(&hasher) % states.len().max(1) as u64)
                .unwrap_or(0)
        });
        // Sites another node stored a certificate for, waiting for a task slot, each once.
        let mut stale: VecDeque<usize> = VecDeque::new();
        let mut is_stale = vec![false; states.len()];
        loop {
            let now = SystemTime::now();
            let limit = shared.tuning.concurrency.max(1);
            while running.len() < limit
                && let Some(index) = stale.pop_front()
            {
                is_stale[index] = false;
                // A site with a task running reads the store under its lock anyway.
                if let Some(state) = states[index].take() {
                    let handle = tasks.spawn(catch_up(shared.clone(), state));
                    running.insert(handle.id(), index);
                }
            }
            let mut next_due: Option<SystemTime> = None;
            let count = states.len();
            for index in (0..count).map(|i| (i + start) % count) {
                let slot = &mut states[index];
                let Some(state) = slot else { continue };
                let due = state.next_action(now, shared.ari_of(state));
                if due > now {
                    next_due = Some(next_due.map_or(due, |d| d.min(due)));
                } else if running.len() < limit {
                    let state = slot.take().expect("checked Some above");
                    let handle = tasks.spawn(attempt(shared.clone(), state));
                    running.insert(handle.id(), index);
                }
                // Due but over the limit: a finishing task wakes the loop.
            }
            let shortest = states
                .iter()
                .flatten()
                .filter_map(|s| s.served.as_ref())
                .map(ServedCert::lifetime)
                .min();
            let pause = timing::wake_after(now, next_due, shortest, shared.tuning.max_sleep);
            tokio::select! {
                () = stop.cancelled() => break,
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, state) = match joined {
                        Ok((id, state)) => (id, state),
                        Err(failed) => {
                            // A panic in one issuance must not stop the others: reload that site.
                            let Some(index) = running.remove(&failed.id()) else { continue };
                            let site = &self.sites[index];
                            error!(site = %site.name, error = %failed, "ACME task failed; reloading its state");
                            states[index] = Some(load_state(&self.local, site, &shared.certs, &shared.provider));
                            continue;
                        }
                    };
                    if let Some(index) = running.remove(&id) {
                        states[index] = Some(state);
                    }
                }
                Some(site) = async { added.as_mut()?.recv().await } => {
                    if !index_of.contains_key(&site.name) {
                        let state = load_state(&self.local, &site, &shared.certs, &shared.provider);
                        index_of.insert(site.name.clone(), states.len());
                        self.sites.push(site);
                        states.push(Some(state));
                        is_stale.push(false);
                    }
                }
                Some(change) = async { changes.as_mut()?.next().await } => match change {
                    Change::Stored(site) => {
                        if let Some(&index) = index_of.get(&site)
                            && !is_stale[index]
                        {
                            is_stale[index] = true;
                            stale.push_back(index);
                        }
                    }
                    // What waited for the store goes ahead now, not at its next retry.
                    Change::Back => {
                        info!("cluster store back: sites that waited for it go ahead");
                        states.iter_mut().flatten().for_each(SiteState::store_back);
                    }
                },
                () = tokio::time::sleep(pause) => {}
            }
        }
        // Orders in flight saw `stop` too: they give up and remove their DNS-01 records. Those
        // still running after STOP_WAIT are dropped, which withdraws their tokens; nothing
        // half-written is left (atomic files).
        let drained = tokio::time::timeout(STOP_WAIT, async {
            while tasks.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            info!(
                orders = tasks.len(),
                "ACME orders still running at shutdown are dropped"
            );
        }
        tasks.shutdown().await;
    }
}
