//! Start-up and shutdown of a whole Rampart instance on already-bound listeners.
//!
//! `Server::start` loads or issues every certificate it can without the network (static files,
//! the internal CA, stored ACME certificates), builds the route table, and spawns the accept
//! loops and the ACME renewal task; it returns once the listeners are serving.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::acme::{ChallengeStore, RenewalScheduler, SelfCheck};
use crate::config::{Config, Site, SiteTls};
use crate::observe::Chain;
use crate::proxy::{Proxy, RouteTable};
use crate::server::http01::Http01;
use crate::server::listener::{self, HttpServers};
use crate::server::{Listeners, ServerError, shutdown};
use crate::tls::{self, CertStore, InternalCa, Published, TlsAcceptor, TlsError};

/// A running instance: its tasks, its stop token and the shared stores.
#[derive(Debug)]
pub struct Server {
    stop: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
    https_addr: SocketAddr,
    http_addr: SocketAddr,
    certs: CertStore,
    challenges: ChallengeStore,
}

impl Server {
    /// Publishes stored, static and internal certificates, then serves `listeners`.
    ///
    /// # Errors
    /// When a static certificate cannot be loaded, the internal CA cannot issue, or the TLS
    /// configuration cannot be built. Nothing is left running then.
    pub async fn start(config: Config, listeners: Listeners) -> Result<Self, ServerError> {
        let (https_addr, http_addr) = (listeners.https_addr(), listeners.http_addr());
        let provider = tls::crypto_provider();
        let certs = CertStore::default();
        let challenges = ChallengeStore::default();
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());

        let mut internal_sites = Vec::new();
        for site in &config.sites {
            match &site.tls {
                SiteTls::Files { cert, key } => {
                    let certified = load_files(&provider, cert, key).map_err(|source| {
                        ServerError::Certificate {
                            site: site.name.clone(),
                            source,
                        }
                    })?;
                    publish(&certs, site, certified)?;
                }
                SiteTls::Internal => internal_sites.push(site.clone()),
                SiteTls::Acme => {}
            }
        }
        if !internal_sites.is_empty() {
            let ca = InternalCa::load_or_create(&config.storage, provider.clone()).map_err(
                |source| ServerError::Certificate {
                    site: "internal CA".into(),
                    source,
                },
            )?;
            for site in &internal_sites {
                let issued = ca.issue(site, SystemTime::now()).map_err(|source| {
                    ServerError::Certificate {
                        site: site.name.clone(),
                        source,
                    }
                })?;
                publish(&certs, site, issued)?;
            }
            tasks.spawn(ca.run(certs.clone(), internal_sites, stop.clone()));
        }

        if config.sites.iter().any(|s| s.tls == SiteTls::Acme) {
            let self_check = Arc::new(ListenerCheck {
                provider: provider.clone(),
                addr: loopback_of(https_addr),
            });
            let scheduler = RenewalScheduler::new(
                config.acme.clone(),
                &config.storage,
                &config.sites,
                certs.clone(),
                challenges.clone(),
            )
            .with_self_check(self_check);
            // Stored certificates are served before the listeners answer and before any CA request.
            let served = scheduler.publish_stored();
            info!(stored = served, "published stored ACME certificates");
            tasks.spawn(scheduler.run(stop.clone()));
        }

        let acceptor = TlsAcceptor::new(certs.clone(), config.downstream.handshake_timeout)
            .map_err(ServerError::TlsConfig)?;
        let servers = HttpServers::new(&config.downstream);
        let proxy = Proxy::new(RouteTable::from_config(&config), tasks.clone());
        // The bound port, not the configured one: they differ when the config says port 0.
        let http01 = Http01::new(challenges.clone(), https_addr.port());
        tasks.spawn(listener::accept_https(
            listeners.https,
            acceptor,
            proxy,
            servers.clone(),
            tasks.clone(),
            stop.clone(),
        ));
        tasks.spawn(listener::accept_http(
            listeners.http,
            http01,
            servers,
            tasks.clone(),
            stop.clone(),
        ));
        info!(https = %https_addr, http = %http_addr, sites = config.sites.len(), "serving");
        Ok(Self {
            stop,
            tasks,
            grace: config.shutdown_grace,
            https_addr,
            http_addr,
            certs,
            challenges,
        })
    }

    /// The TLS listener's address.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// The plain HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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

/// Confirms after each ACME publish that our own listener serves the new certificate.
struct ListenerCheck {
    provider: Arc<CryptoProvider>,
    addr: SocketAddr,
}

/// How long the self-check handshake may take; it runs on our own loopback listener.
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl SelfCheck for ListenerCheck {
    fn verify<'a>(
        &'a self,
        site: &'a Site,
        published: &'a Published,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            // A wildcard is not a name a client can ask for; its concrete names are covered by it.
            for host in site.hosts.iter().filter(|h| !h.is_wildcard()) {
                match tls::served_serial(
                    self.provider.clone(),
                    self.addr,
                    host.as_str(),
                    SELF_CHECK_TIMEOUT,
                )
                .await
                {
                    Ok(serial) if serial == published.serial => {
                        info!(site = %site.name, host = %host, serial = %serial, "listener serves the new certificate");
                    }
                    Ok(serial) => error!(
                        site = %site.name, host = %host, served = %serial, expected = %published.serial,
                        "listener serves another certificate than the one just published"
                    ),
                    Err(err) => {
                        error!(site = %site.name, host = %host, error = %Chain(&err), "cannot confirm the served certificate")
                    }
                }
            }
        })
    }
}

/// Where to reach our own listener: a wildcard bind address is reachable on loopback.
fn loopback_of(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

fn load_files(
    provider: &rustls::crypto::CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    tls::certified_key_from_pem(provider, &read(cert)?, &read(key)?)
}

fn publish(
    certs: &CertStore,
    site: &Site,
    cert: rustls::sign::CertifiedKey,
) -> Result<(), ServerError> {
    let published = certs
        .publish(site, cert, SystemTime::now())
        .map_err(|source| ServerError::Certificate {
            site: site.name.clone(),
            source,
        })?;
    info!(site = %site.name, serial = %published.serial, "certificate published");
    Ok(())
}
