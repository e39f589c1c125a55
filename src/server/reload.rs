//! Applying a configuration snapshot, at start and on every reload.
//!
//! A reload (SIGHUP, or a change of the config file or of a static certificate file, debounced)
//! parses and validates the file, prepares every certificate the new snapshot needs, and only
//! then swaps: certificates first, then the route table. An invalid file or an unloadable
//! certificate changes nothing. Pools of unchanged upstream lists carry over; requests and
//! tunnels in flight finish on what they started with. Renewal tasks restart only for what
//! changed. The server's reload task runs each reload on a blocking thread; `apply` never
//! awaits, so its lock is never held across an await point.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::acme::{ChallengeStore, OnDemandService, RenewalScheduler, Storage};
use crate::config::{self, Config, Site, SiteTls};
use crate::observe::{Chain, metrics};
use crate::proxy::{Proxy, RouteTable};
use crate::server::ServerError;
use crate::server::selfcheck::ListenerCheck;
use crate::server::systemd;
use crate::tls::{CertStore, InternalCa, TlsError};

/// Quiet time after a file event before reloading: editors write a file in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Applies snapshots to the shared stores and owns the renewal tasks of the current one.
pub(crate) struct Reloader {
    provider: Arc<CryptoProvider>,
    certs: CertStore,
    challenges: ChallengeStore,
    proxy: Proxy,
    https_addr: SocketAddr,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// `cluster:`'s store, set up at start: the ACME scheduler issues through it.
    shared: Option<Arc<dyn Storage>>,
    /// Certificates for names no site lists; its admitted names outlive schedulers.
    on_demand: OnDemandService,
    current: Mutex<Option<Applied>>,
}

/// What the current snapshot started.
struct Applied {
    config: Arc<Config>,
    internal: Option<(Arc<InternalCa>, CancellationToken)>,
    acme: Option<CancellationToken>,
}

impl Reloader {
    pub(crate) fn new(
        provider: Arc<CryptoProvider>,
        certs: CertStore,
        challenges: ChallengeStore,
        proxy: Proxy,
        https_addr: SocketAddr,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Self {
            provider,
            on_demand: OnDemandService::new(certs.clone()),
            certs,
            challenges,
            proxy,
            https_addr,
            tasks,
            stop,
            shared: None,
            current: Mutex::new(None),
        }
    }

    /// The on-demand service, for the acceptor.
    pub(crate) fn on_demand(&self) -> OnDemandService {
        self.on_demand.clone()
    }

    /// Issues certificates through `storage`, shared with the other nodes of a cluster.
    pub(crate) fn with_shared_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.shared = Some(storage);
        self
    }

    /// The snapshot being served.
    pub(crate) fn config(&self) -> Option<Arc<Config>> {
        self.lock().as_ref().map(|a| a.config.clone())
    }

    /// Reads, validates and applies the file the current snapshot came from.
    ///
    /// # Errors
    /// `Config` for an unreadable or invalid file, `Certificate` when a certificate of the new
    /// snapshot cannot be loaded or issued. Either way the running snapshot stays.
    pub(crate) fn reload(&self) -> Result<(), ServerError> {
        // systemd sees RELOADING=1 … READY=1 around every reload, failed ones included.
        systemd::reloading();
        let result = self
            .config()
            .map(|c| c.source.clone())
            .ok_or(ServerError::NotStarted)
            .and_then(|source| config::load(&source).map_err(ServerError::Config))
            .and_then(|config| self.apply(config));
        systemd::reloaded(result.as_ref().err().map(|err| err as _));
        metrics::config_reload(result.is_ok());
        if let Err(err) = &result {
            // Every problem, each with file, line and key (ConfigError prints them all).
            error!(error = %Chain(err), "reload failed; still serving the previous configuration");
        }
        result
    }

    /// Makes `config` the served snapshot.
    ///
    /// # Errors
    /// As [`Reloader::reload`]; nothing changes on error.
    pub(crate) fn apply(&self, config: Config) -> Result<(), ServerError> {
        let mut current = self.lock();
        let previous = current.as_ref();
        if let Some(previous) = previous {
            // The listeners, their TLS and HTTP settings are built once, at start.
            if previous.config.listen != config.listen {
                warn!(
                    "listen addresses changed: restart Rampart to apply them; the other changes apply now"
                );
            }
            if previous.config.cluster != config.cluster {
                warn!(
                    "cluster settings changed: restart Rampart to apply them; the other changes apply now"
                );
            }
            if previous.config.downstream != config.downstream {
                warn!(
                    "downstream settings changed: restart Rampart to apply them; the other changes apply now"
                );
            }
        }
        // By name (a site's first host, unique): with thousands of sites, a scan of the old
        // list per new site made a reload quadratic.
        let old_sites: HashMap<&str, &Site> = previous
            .iter()
            .flat_map(|p| &p.config.sites)
            .map(|site| (&*site.name, site))
            .collect();

        // Everything that can fail happens before anything is swapped.
        let internal_ca = match (
            config.sites.iter().any(|s| s.tls == SiteTls::Internal),
            previous,
        ) {
            (false, _) => None,
            (
                true,
                Some(Applied {
                    internal: Some((ca, _)),
                    config: old,
                    ..
                }),
            ) if old.storage == config.storage => Some(ca.clone()),
            (true, _) => Some(Arc::new(
                InternalCa::load_or_create(&config.storage, self.provider.clone()).map_err(
                    |source| ServerError::Certificate {
                        site: "internal CA".into(),
                        source,
                    },
                )?,
            )),
        };
        let mut ready: Vec<(&Site, CertifiedKey)> = Vec::new();
        for site in &config.sites {
            let unchanged = old_sites.get(&*site.name) == Some(&site);
            let prepared = match &site.tls {
                SiteTls::Files { cert, key } => Some(
                    crate::pki::load_pem_files(&self.provider, cert, key).map_err(TlsError::from),
                ),
                SiteTls::Internal if !unchanged => internal_ca
                    .as_ref()
                    .map(|ca| ca.issue(site, SystemTime::now())),
                SiteTls::Internal | SiteTls::Acme | SiteTls::OnDemand => None,
            };
            if let Some(prepared) = prepared {
                let cert = prepared.map_err(|source| ServerError::Certificate {
                    site: site.name.clone(),
                    source,
                })?;
                ready.push((site, cert));
            }
        }

        // Swap: certificates first, so a new route never lacks its certificate, then routes.
        self.on_demand.configure(&config);
        let hosts: HashSet<_> = config
            .sites
            .iter()
            .flat_map(|s| s.hosts.iter().cloned())
            .chain(self.on_demand.names())
            .collect();
        self.certs
            .retain(&hosts, config.sites.iter().any(|s| s.default));
        for (site, cert) in ready {
            match self.certs.publish(site, cert, SystemTime::now()) {
                Ok(published) => {
                    info!(site = %site.name, serial = %published.serial, "certificate published")
                }
                // Checked names and dates: only a clock jump could fail here; the site stays as it was.
                Err(err) => {
                    error!(site = %site.name, error = %Chain(&err), "certificate not published")
                }
            }
        }
        let (table, background) = RouteTable::from_config(&config, Some(&self.proxy.table()));
        for work in background {
            let stop = self.stop.clone();
            // Ends with what it serves (dropped with a replaced table) or at shutdown.
            self.tasks.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = work => {}
                }
            });
        }
        self.proxy.replace(table);

        let config = Arc::new(config);
        let internal = self.restart_internal(previous, &config, internal_ca);
        let acme = self.restart_acme(previous, &config);
        if let Some(previous) = current.take() {
            info!(
                sites = config.sites.len(),
                was = previous.config.sites.len(),
                "configuration applied"
            );
        }
        *current = Some(Applied {
            config,
            internal,
            acme,
        });
        Ok(())
    }

    /// Reloads on SIGHUP and on changes of the config file or static certificate files, until
    /// `stop`. A failed reload is logged with every problem and the old snapshot keeps serving.
    pub(crate) async fn watch(self: Arc<Self>, mut hangup: Option<Signal>) {
        let (events, mut changed) = mpsc::channel::<()>(1);
        // Kept alive for as long as it should watch; replaced after each successful reload.
        let mut _watcher = self.watch_files(&events);
        loop {
            let cause = tokio::select! {
                () = self.stop.cancelled() => return,
                Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
                Some(()) = changed.recv() => {
                    // Debounce: wait until the files have been quiet for a moment.
                    while tokio::time::timeout(DEBOUNCE, changed.recv()).await.is_ok_and(|e| e.is_some()) {}
                    "file change"
                }
            };
            info!(cause, "reloading the configuration");
            // Reading, validating and applying a large file takes a while (0.3 s for 10,000
            // sites): on a blocking thread, so no runtime worker stalls the connections it runs.
            let reloader = self.clone();
            match tokio::task::spawn_blocking(move || reloader.reload()).await {
                // A failure is logged by `reload` itself; the old snapshot and watcher stay.
                Ok(Ok(())) => _watcher = self.watch_files(&events),
                Ok(Err(_)) => {}
                Err(err) => {
                    error!(error = %err, "reload did not finish; the previous configuration stays")
                }
            }
        }
    }

    /// Watches the directories of the config file and of static certificate files (editors and
    /// deploy tools replace files by renaming, so the directory is what sees the change).
    fn watch_files(&self, events: &mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let config = self.config()?;
        let mut files: HashSet<PathBuf> = HashSet::from([config.source.clone()]);
        for site in &config.sites {
            if let SiteTls::Files { cert, key } = &site.tls {
                files.extend([cert.clone(), key.clone()]);
            }
        }
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(PathBuf::from))
            .collect();
        let events = events.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = event
                .is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(|p| files.contains(p)));
            if relevant {
                // Full means a reload is already pending, which covers this event too.
                let _ = events.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(err) => {
                error!(error = %err, "cannot watch files; reload with SIGHUP");
                return None;
            }
        };
        for dir in dirs {
            if let Err(err) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = %err, "cannot watch directory; reload with SIGHUP");
            }
        }
        Some(watcher)
    }

    /// Installs the SIGHUP handler. Done at start, before the listeners answer, so that an early
    /// SIGHUP cannot hit the default action (terminate).
    pub(crate) fn hangup() -> Option<Signal> {
        signal(SignalKind::hangup())
            .inspect_err(|err| error!(error = %err, "cannot handle SIGHUP; reloads follow file changes only"))
            .ok()
    }

    /// Restarts the internal CA's renewal task when the internal sites changed.
    fn restart_internal(
        &self,
        previous: Option<&Applied>,
        config: &Config,
        ca: Option<Arc<InternalCa>>,
    ) -> Option<(Arc<InternalCa>, CancellationToken)> {
        // Compared in place and cloned only for a new task: most reloads change nothing here.
        if let Some(Applied {
            config: old,
            internal: Some((old_ca, token)),
            ..
        }) = previous
        {
            if sites_with(config, &SiteTls::Internal).eq(sites_with(old, &SiteTls::Internal))
                && ca.as_ref().is_some_and(|ca| Arc::ptr_eq(ca, old_ca))
            {
                return Some((old_ca.clone(), token.clone()));
            }
            token.cancel();
        }
        let ca = ca?;
        let sites: Vec<Site> = sites_with(config, &SiteTls::Internal).cloned().collect();
        let token = self.stop.child_token();
        self.tasks
            .spawn(ca.clone().run(self.certs.clone(), sites, token.clone()));
        Some((ca, token))
    }

    /// Restarts the ACME scheduler when the ACME settings or sites changed. A new scheduler
    /// publishes stored certificates before it orders anything.
    fn restart_acme(
        &self,
        previous: Option<&Applied>,
        config: &Config,
    ) -> Option<CancellationToken> {
        if let Some(previous) = previous {
            let same = previous.config.acme == config.acme
                && previous.config.storage == config.storage
                && sites_with(config, &SiteTls::Acme)
                    .eq(sites_with(&previous.config, &SiteTls::Acme))
                && sites_with(config, &SiteTls::OnDemand)
                    .eq(sites_with(&previous.config, &SiteTls::OnDemand));
            if same {
                return previous.acme.clone();
            }
            if let Some(token) = &previous.acme {
                token.cancel();
            }
        }
        let sites: Vec<Site> = sites_with(config, &SiteTls::Acme).cloned().collect();
        let on_demand = sites_with(config, &SiteTls::OnDemand).next().is_some();
        if sites.is_empty() && !on_demand {
            return None;
        }
        let self_check = Arc::new(ListenerCheck::new(self.provider.clone(), self.https_addr));
        let mut scheduler = RenewalScheduler::new(
            config.acme.clone(),
            &config.storage,
            &sites,
            self.certs.clone(),
            self.challenges.clone(),
        )
        .with_self_check(self_check);
        if let Some(shared) = &self.shared {
            scheduler = scheduler.with_shared_storage(shared.clone());
        }
        if on_demand {
            let (orders, added) = tokio::sync::mpsc::unbounded_channel();
            scheduler = scheduler.with_added_sites(added);
            self.on_demand.attach(orders);
        }
        // Stored certificates are served before any CA request (and, at start, before the
        // listeners answer).
        let served = scheduler.publish_stored();
        info!(
            stored = served,
            sites = sites.len(),
            "published stored ACME certificates"
        );
        let token = self.stop.child_token();
        self.tasks.spawn(scheduler.run(token.clone()));
        Some(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Applied>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sites of `config` whose certificates come from `tls`, in file order.
fn sites_with<'c>(config: &'c Config, tls: &'c SiteTls) -> impl Iterator<Item = &'c Site> {
    config.sites.iter().filter(move |site| site.tls == *tls)
}
