//! What `rampart certs` (and later the admin `/certs` endpoint) reports per site.
//!
//! Reads the configuration and the storage only (the files, or the cluster store), never the
//! running process, so it works while Rampart runs: stored items are replaced atomically, so a
//! reader sees old or new.

use std::path::Path;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use serde::Serialize;

use futures_util::FutureExt as _;

use crate::acme::storage::{DiskStorage, LastError, RenewalReason, Storage, rfc3339};
use crate::config::{Config, Site, SiteTls};
use crate::observe::Chain;
use crate::tls::LeafFacts;

/// One site's certificate state.
#[derive(Clone, Debug, Serialize)]
pub struct SiteStatus {
    /// The site's name (its first host).
    pub site: String,
    /// Every host it answers for.
    pub names: Vec<String>,
    /// `acme`, `internal` or `files`.
    pub source: &'static str,
    /// The certificate on disk, when there is a valid one.
    pub certificate: Option<CertificateStatus>,
    /// Why there is no certificate to report.
    pub missing: Option<String>,
    /// When renewal is due.
    #[serde(with = "rfc3339")]
    pub renewal_due: Option<SystemTime>,
    /// Why then: `ari` (the CA's window) or `lifetime` (a fraction of the lifetime).
    pub renewal_reason: Option<RenewalReason>,
    /// When the last order started.
    #[serde(with = "rfc3339")]
    pub last_attempt: Option<SystemTime>,
    /// Earliest time of the next order (backoff, rate limits).
    #[serde(with = "rfc3339")]
    pub next_attempt: Option<SystemTime>,
    /// The last failure since the last success.
    pub last_error: Option<LastError>,
    /// In a cluster: the node that obtained the current certificate.
    pub issued_by: Option<String>,
    /// The directory URL of the CA that issued the current certificate.
    pub ca: Option<String>,
    /// While orders fail: the CA tried now, when it is not the first of `acme.directories`.
    pub trying_ca: Option<String>,
    /// In a cluster: the node holding the site's issuance lock now, if any.
    pub lock_holder: Option<String>,
}

/// The facts of a stored leaf certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateStatus {
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial, lower-case hex.
    pub serial: String,
    /// notBefore.
    #[serde(with = "rfc3339::required")]
    pub not_before: SystemTime,
    /// notAfter.
    #[serde(with = "rfc3339::required")]
    pub not_after: SystemTime,
    /// DNS names in the certificate.
    pub names: Vec<String>,
}

/// The status of every site of `config` as this node's files have it, in file order.
pub fn status(config: &Config, provider: &CryptoProvider) -> Vec<SiteStatus> {
    let files = DiskStorage::new(&config.storage);
    status_in(config, &files, provider)
        .now_or_never()
        .expect("local files never wait")
}

/// The status of every site of `config` as `storage` has it (in a cluster, the shared store).
pub async fn status_in(
    config: &Config,
    storage: &dyn Storage,
    provider: &CryptoProvider,
) -> Vec<SiteStatus> {
    let mut sites = Vec::with_capacity(config.sites.len());
    for site in &config.sites {
        sites.push(site_status(site, storage, provider).await);
    }
    sites
}

async fn site_status(site: &Site, storage: &dyn Storage, provider: &CryptoProvider) -> SiteStatus {
    let mut status = SiteStatus {
        site: site.name.clone(),
        names: site.hosts.iter().map(ToString::to_string).collect(),
        source: "acme",
        certificate: None,
        missing: None,
        renewal_due: None,
        renewal_reason: None,
        last_attempt: None,
        next_attempt: None,
        last_error: None,
        issued_by: None,
        ca: None,
        trying_ca: None,
        lock_holder: None,
    };
    match &site.tls {
        SiteTls::OnDemand => {
            status.source = "on_demand";
            status.missing =
                Some("one certificate per name, ordered at its first handshake".into());
        }
        SiteTls::Internal => {
            status.source = "internal";
            status.missing = Some("issued in memory by the internal CA at start".into());
        }
        SiteTls::Files { cert, key } => {
            status.source = "files";
            match read_files(provider, cert, key) {
                Ok(facts) => status.certificate = Some(facts.into()),
                Err(reason) => status.missing = Some(reason),
            }
        }
        SiteTls::Acme => {
            match storage.load_cert(site, provider).await {
                Ok(Some(stored)) => status.certificate = Some(stored.facts.into()),
                Ok(None) => status.missing = Some("not obtained yet".into()),
                Err(err) => status.missing = Some(Chain(&err).to_string()),
            }
            match storage.load_meta(&site.name).await {
                Ok(meta) => {
                    status.issued_by = meta.issued_by;
                    status.ca = meta.ca;
                    status.trying_ca = meta.trying_ca;
                    status.renewal_due = meta.renewal.as_ref().map(|r| r.at);
                    status.renewal_reason = meta.renewal.as_ref().map(|r| r.reason);
                    status.last_attempt = meta.last_attempt;
                    status.next_attempt = meta.next_attempt;
                    status.last_error = meta.last_error;
                }
                Err(err) => {
                    status
                        .missing
                        .get_or_insert_with(|| Chain(&err).to_string());
                }
            }
        }
    }
    status
}

fn read_files(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<LeafFacts, String> {
    let certified =
        crate::pki::load_pem_files(provider, cert, key).map_err(|e| Chain(&e).to_string())?;
    let leaf = certified.end_entity_cert().map_err(|e| e.to_string())?;
    LeafFacts::parse(leaf).map_err(|e| Chain(&e).to_string())
}

impl From<LeafFacts> for CertificateStatus {
    fn from(facts: LeafFacts) -> Self {
        Self {
            issuer: facts.issuer,
            serial: facts.serial,
            not_before: facts.not_before,
            not_after: facts.not_after,
            names: facts.names,
        }
    }
}
