//! On-demand TLS: a certificate ordered at the first handshake for a name no site lists but an
//! on-demand site's pattern (`*`, or `*.parent` for one label) covers, once the operator's
//! `ask` endpoint allows it.
//!
//! Called by the TLS acceptor, through [`OnDemandCerts`], before it picks a certificate. The
//! cheap refusals come first and cost no I/O: a name that is not a valid DNS identifier, outside
//! every pattern, refused within `refusal_ttl`, or over `max_certificates`; then the name must
//! resolve to an address of this host, then the ask endpoint must answer 200, then the global
//! order rate must allow it. An admitted name becomes a one-host site handed to the renewal
//! scheduler, which orders it (or serves the certificate stored by an earlier run) and renews
//! it; the handshake waits for it at most `timeout`. Concurrent handshakes for one name share
//! one admission; other handshakes never wait for any of this.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hickory_resolver::TokioResolver;
use http::{StatusCode, Uri};
use http_body_util::Empty;
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{Config, OnDemand, Site, SiteTls};
use crate::pki::HostName;
use crate::proxy::upstream::resolve::resolver;
use crate::tls::client::{HttpsClient, PlainHttp, https_client};
use crate::tls::{CertStore, OnDemandCerts};

/// How long the ask endpoint may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a DNS answer is reused for the "resolves to this host" check.
const DNS_CACHE: Duration = Duration::from_secs(60);
/// How often a waiting handshake looks for its certificate.
const POLL: Duration = Duration::from_millis(50);
/// Refused names remembered at most; past it the expired ones go, then all (the order rate
/// still holds).
const MAX_REFUSED: usize = 100_000;

/// The on-demand certificates of a server: cheap to clone, kept across reloads.
#[derive(Clone, Debug)]
pub struct OnDemandService(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    certs: CertStore,
    /// What the current configuration allows; `None` without on-demand sites.
    state: ArcSwap<Option<State>>,
    /// Names the ask endpoint or the DNS check refused, and when.
    refused: Mutex<HashMap<String, Instant>>,
    /// Admissions in progress, one per name.
    flights: Mutex<HashMap<String, Arc<OnceCell<bool>>>>,
    /// The one-host sites admitted, by name.
    known: Mutex<HashMap<String, Arc<Site>>>,
    /// The running scheduler's inbox for admitted sites.
    orders: Mutex<Option<mpsc::UnboundedSender<Arc<Site>>>>,
}

struct State {
    settings: OnDemand,
    /// The on-demand sites, each with its pattern.
    patterns: Vec<(HostName, Arc<Site>)>,
    limiter: DefaultDirectRateLimiter,
    resolver: Option<TokioResolver>,
    client: HttpsClient<Empty<Bytes>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a name gets no certificate, for the log.
enum Refusal {
    /// Cached: the ask endpoint or the DNS check said no within `refusal_ttl`.
    Remembered,
    /// `max_certificates` reached.
    Full,
    /// The name resolves to no address of this host.
    NotHere,
    /// The ask endpoint answered something else than 200.
    Denied(StatusCode),
    /// The ask endpoint could not be asked; not remembered.
    AskFailed(String),
    /// The order rate is spent; not remembered.
    Rate,
}

impl OnDemandService {
    /// A service publishing into `certs`, configured by [`OnDemandService::configure`].
    pub fn new(certs: CertStore) -> Self {
        Self(Arc::new(Inner {
            certs,
            state: ArcSwap::from_pointee(None),
            refused: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            orders: Mutex::new(None),
        }))
    }

    /// Takes the on-demand sites and limits of `config` (at start and on every reload).
    pub fn configure(&self, config: &Config) {
        let state = config.on_demand.as_ref().map(|settings| {
            let patterns = config
                .sites
                .iter()
                .filter(|site| site.tls == SiteTls::OnDemand)
                .flat_map(|site| {
                    let site = Arc::new(site.clone());
                    site.hosts
                        .iter()
                        .map(|host| (host.clone(), site.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            let per_order = settings.per / settings.rate.max(1);
            let quota = Quota::with_period(per_order)
                .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MIN))
                .allow_burst(
                    std::num::NonZeroU32::new(settings.burst).unwrap_or(std::num::NonZeroU32::MIN),
                );
            State {
                settings: settings.clone(),
                patterns,
                limiter: RateLimiter::direct(quota),
                resolver: settings
                    .check_dns
                    .then(|| resolver(&settings.nameservers, DNS_CACHE)),
                client: https_client(None, ASK_TIMEOUT, PlainHttp::Allowed)
                    .expect("no bundle to read"),
            }
        });
        self.0.state.store(Arc::new(state));
    }

    /// Gives admitted names to a (new) scheduler: every name known so far, then each new one.
    pub fn attach(&self, orders: mpsc::UnboundedSender<Arc<Site>>) {
        for site in lock(&self.0.known).values() {
            let _ = orders.send(site.clone());
        }
        *lock(&self.0.orders) = Some(orders);
    }

    /// The names admitted so far (kept served across reloads).
    pub fn names(&self) -> HashSet<HostName> {
        lock(&self.0.known)
            .values()
            .flat_map(|site| site.hosts.iter().cloned())
            .collect()
    }

    /// `name` checked, and the on-demand site whose pattern covers it, if `name` is a name a CA
    /// could issue for.
    fn covering(state: &State, name: &str) -> Option<(HostName, Arc<Site>)> {
        // The CA's identifier rules, as far as they can be checked here: a DNS name of at least
        // two labels, not an IP address, no wildcard.
        let host = HostName::parse(name).ok()?;
        if host.as_str().starts_with("*.") || !host.as_str().contains('.') {
            return None;
        }
        state
            .patterns
            .iter()
            .find_map(|(pattern, site)| {
                let covered = pattern.is_any()
                    || pattern
                        .as_str()
                        .strip_prefix("*.")
                        .zip(host.as_str().split_once('.'))
                        .is_some_and(|(parent, (_, rest))| parent == rest);
                covered.then(|| site.clone())
            })
            .map(|site| (host, site))
    }

    async fn obtain_name(&self, sni: &str) {
        let name = sni.to_ascii_lowercase();
        if self.0.certs.lookup_named(&name).is_some() {
            return;
        }
        let current = self.0.state.load_full();
        let Some(state) = current.as_ref() else {
            return;
        };
        let Some((host, site)) = Self::covering(state, &name) else {
            return;
        };
        let flight = lock(&self.0.flights)
            .entry(name.clone())
            .or_default()
            .clone();
        let admitted = *flight
            .get_or_init(|| async {
                match self.admit(state, &host, &site).await {
                    Ok(()) => true,
                    Err(refusal) => {
                        self.log(&name, refusal);
                        false
                    }
                }
            })
            .await;
        lock(&self.0.flights).remove(&name);
        if !admitted {
            return;
        }
        // The scheduler publishes it; the acceptor bounds this wait.
        while self.0.certs.lookup_named(&name).is_none() {
            tokio::time::sleep(POLL).await;
        }
    }

    async fn admit(&self, state: &State, host: &HostName, site: &Site) -> Result<(), Refusal> {
        let settings = &state.settings;
        let name = host.as_str();
        if lock(&self.0.known).contains_key(name) {
            return Ok(()); // ordered already; its certificate is on its way (or failing)
        }
        if lock(&self.0.refused)
            .get(name)
            .is_some_and(|at| at.elapsed() < settings.refusal_ttl)
        {
            return Err(Refusal::Remembered);
        }
        if lock(&self.0.known).len() >= settings.max_certificates {
            return Err(Refusal::Full);
        }
        if let Some(resolver) = &state.resolver
            && !resolves_here(resolver, name).await
        {
            self.refuse(name);
            return Err(Refusal::NotHere);
        }
        match ask(state, name).await {
            Ok(StatusCode::OK) => {}
            Ok(status) => {
                self.refuse(name);
                return Err(Refusal::Denied(status));
            }
            Err(reason) => return Err(Refusal::AskFailed(reason)),
        }
        if state.limiter.check().is_err() {
            return Err(Refusal::Rate);
        }
        let admitted = Arc::new(Site {
            name: name.to_owned(),
            hosts: vec![host.clone()],
            tls: SiteTls::Acme,
            challenges: site.challenges.clone(),
            dns: site.dns.clone(),
            default: false,
            routes: Vec::new(),
            policy: Default::default(),
        });
        lock(&self.0.known).insert(name.to_owned(), admitted.clone());
        if let Some(orders) = lock(&self.0.orders).as_ref() {
            let _ = orders.send(admitted);
        }
        info!(host = name, site = %site.name, "on-demand certificate allowed; ordering");
        Ok(())
    }

    fn refuse(&self, name: &str) {
        let mut refused = lock(&self.0.refused);
        if refused.len() >= MAX_REFUSED {
            let ttl = self
                .0
                .state
                .load()
                .as_ref()
                .as_ref()
                .map_or(Duration::ZERO, |state| state.settings.refusal_ttl);
            refused.retain(|_, at| at.elapsed() < ttl);
            if refused.len() >= MAX_REFUSED {
                refused.clear();
            }
        }
        refused.insert(name.to_owned(), Instant::now());
    }

    fn log(&self, name: &str, refusal: Refusal) {
        match refusal {
            Refusal::Remembered => {}
            Refusal::Full => warn!(
                host = name,
                "on-demand certificate refused: max_certificates reached"
            ),
            Refusal::NotHere => info!(
                host = name,
                "on-demand certificate refused: the name does not resolve to this host"
            ),
            Refusal::Denied(status) => {
                info!(host = name, %status, "on-demand certificate refused by the ask endpoint")
            }
            Refusal::AskFailed(reason) => warn!(
                host = name,
                reason, "on-demand certificate refused: the ask endpoint did not answer"
            ),
            Refusal::Rate => warn!(
                host = name,
                "on-demand certificate refused: the order rate is spent"
            ),
        }
    }
}

impl OnDemandCerts for OnDemandService {
    fn covers(&self, name: &str) -> bool {
        let state = self.0.state.load();
        (**state)
            .as_ref()
            .is_some_and(|state| Self::covering(state, name).is_some())
    }

    fn timeout(&self) -> Duration {
        (**self.0.state.load())
            .as_ref()
            .map_or(Duration::ZERO, |state| state.settings.timeout)
    }

    fn obtain<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.obtain_name(name))
    }
}

/// `GET ask?domain=NAME`: the status the endpoint answers.
async fn ask(state: &State, name: &str) -> Result<StatusCode, String> {
    let base = &state.settings.ask;
    let separator = if base.query().is_some() { '&' } else { '?' };
    let url: Uri = format!("{base}{separator}domain={name}")
        .parse()
        .map_err(|error| format!("{error}"))?;
    let response = tokio::time::timeout(ASK_TIMEOUT, state.client.get(url))
        .await
        .map_err(|_| format!("no answer within {} s", ASK_TIMEOUT.as_secs()))?
        .map_err(|error| error.to_string())?;
    Ok(response.status())
}

/// Whether `name` has an address that belongs to this host (one a socket can bind to).
async fn resolves_here(resolver: &TokioResolver, name: &str) -> bool {
    let Ok(addresses) = resolver.lookup_ip(format!("{name}.")).await else {
        return false;
    };
    addresses.iter().any(is_local)
}

fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
