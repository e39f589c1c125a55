//! Start-up and shutdown of a whole Rampart instance on already-bound listeners.
//!
//! `Server::start` applies the first configuration snapshot (static files, the internal CA and
//! stored ACME certificates are published without the network), spawns the accept loops, the
//! ACME renewal task and the reload watcher, and returns once the listeners are serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::acme::ChallengeStore;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::http::HttpServers;
use crate::proxy::{Proxy, RouteTable};
use crate::server::admin::{self, Admin};
use crate::server::http01::Http01;
use crate::server::listener;
use crate::server::reload::Reloader;
use crate::server::{Listeners, ServerError, shutdown};
use crate::tls::{CertStore, TlsAcceptor};

/// A running instance: its tasks, its stop token and the shared stores.
pub struct Server {
    stop: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
    https_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    certs: CertStore,
    challenges: ChallengeStore,
    reloader: Arc<Reloader>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("https", &self.https_addr)
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Publishes stored, static and internal certificates, then serves `listeners`.
    ///
    /// # Errors
    /// When a static certificate cannot be loaded, the internal CA cannot issue, or the TLS
    /// configuration cannot be built. Nothing is left running then.
    pub async fn start(config: Config, listeners: Listeners) -> Result<Self, ServerError> {
        let (https_addr, http_addr) = (listeners.https_addr(), listeners.http_addr());
        let admin_addr = listeners.admin_addr();
        let provider = crate::pki::crypto_provider();
        let certs = CertStore::default();
        let challenges = ChallengeStore::default();
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let (grace, downstream) = (config.shutdown_grace, config.downstream.clone());
        let admin_token = config.listen.admin_token.clone();
        // Part of `listen:`, so it is fixed until restart like the listeners themselves.
        let proxy_protocol = config.listen.proxy_protocol.clone();
        let sites = config.sites.len();

        let hangup = Reloader::hangup();
        let proxy = Proxy::new(RouteTable::default(), tasks.clone(), &downstream);
        let mut reloader = Reloader::new(
            provider.clone(),
            certs.clone(),
            challenges.clone(),
            proxy.clone(),
            https_addr,
            tasks.clone(),
            stop.clone(),
        );
        // Fixed until restart, like the listeners: the client is made once.
        let cluster = match &config.cluster {
            Some(settings) => {
                let (cluster, storage) =
                    Cluster::new(settings).await.map_err(ServerError::Cluster)?;
                info!(node = cluster.node(), endpoints = ?settings.etcd.endpoints, "sharing certificates through the cluster store");
                reloader = reloader.with_shared_storage(Arc::new(storage));
                Some(cluster)
            }
            None => None,
        };
        let reloader = Arc::new(reloader);
        if let Some(cluster) = cluster {
            tasks.spawn(cluster.watch_challenges(challenges.clone(), stop.clone()));
        }
        if let Err(err) = reloader.apply(config) {
            stop.cancel(); // renewal tasks already started for part of the snapshot
            return Err(err);
        }

        let acceptor = TlsAcceptor::new(
            certs.clone(),
            challenges.certs().clone(),
            downstream.handshake_timeout,
            &downstream.cipher_suites,
        )
        .map_err(ServerError::TlsConfig)?
        .with_on_demand(Arc::new(reloader.on_demand()));
        let servers = HttpServers::new(&downstream);
        // The bound port, not the configured one: they differ when the config says port 0.
        let http01 = Http01::new(challenges.clone(), https_addr.port());
        let pre_tls = listener::PreTls {
            proxy_protocol: proxy_protocol.map(Arc::new),
            timeout: downstream.handshake_timeout,
        };
        listener::keep_alive(&listeners.https);
        tasks.spawn(listener::accept_https(
            listener::Gate::new(listeners.https, "https", &downstream),
            acceptor,
            pre_tls,
            proxy,
            servers.clone(),
            tasks.clone(),
            stop.clone(),
        ));
        if let Some(http) = listeners.http {
            listener::keep_alive(&http);
            tasks.spawn(listener::accept_http(
                listener::Gate::new(http, "http", &downstream),
                http01,
                servers,
                tasks.clone(),
                stop.clone(),
            ));
        }
        // Last, so an admin answer means the other listeners are serving.
        if let Some(admin) = listeners.admin {
            if let Some(warning) = (admin.local_addr().ok())
                .and_then(|addr| admin::exposure(addr, admin_token.is_some()))
            {
                warn!(admin = ?admin.local_addr().ok(), "{warning}");
            }
            let endpoints = Admin::new(reloader.clone(), certs.clone(), provider, admin_token);
            tasks.spawn(endpoints.run(admin, tasks.clone(), stop.clone()));
        }
        tasks.spawn(reloader.clone().watch(hangup));
        tasks.spawn(timer_floor(stop.clone()));
        info!(https = %https_addr, http = ?http_addr, sites, "serving");
        Ok(Self {
            stop,
            tasks,
            grace,
            https_addr,
            http_addr,
            admin_addr,
            certs,
            challenges,
            reloader,
        })
    }

    /// Reloads the configuration file now, as SIGHUP does.
    ///
    /// # Errors
    /// An invalid file or an unloadable certificate; the running configuration then stays.
    pub fn reload(&self) -> Result<(), ServerError> {
        self.reloader.reload()
    }

    /// The TLS listener's address.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// The plain HTTP listener's address, unless `listen.http` is off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The served certificates.
    pub fn certs(&self) -> &CertStore {
        &self.certs
    }

    /// The HTTP-01 tokens served on the plain listener.
    pub fn challenges(&self) -> &ChallengeStore {
        &self.challenges
    }

    /// Stops accepting, waits up to the grace period for open requests; `true` when all finished.
    pub async fn shutdown(self) -> bool {
        shutdown::drain(&self.stop, &self.tasks, self.grace).await
    }
}

/// How far ahead [`timer_floor`] keeps a timer.
const TIMER_FLOOR: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`TIMER_FLOOR`] until `stop`. tokio wakes its driver (an eventfd
/// write) whenever a timer is set earlier than the earliest one there was when the driver last
/// slept. With only long timers about (idle connections: minutes), each request's response-head
/// deadline (30 s by default) was such a timer: 0.4 system calls per request under HTTP/2 load
/// (`perf stat -e syscalls:sys_enter_write`). With this one set they come later, and the
/// driver is woken once a second instead.
async fn timer_floor(stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TIMER_FLOOR) => {}
        }
    }
}
