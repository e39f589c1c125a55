//! The certificates being served, as one immutable snapshot replaced as a whole.
//!
//! Written by start-up (stored and static certificates), the internal issuer and the ACME task,
//! always through [`CertStore::publish`]; read on every handshake by the SNI resolver.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use crate::config::Site;
use crate::observe::metrics;
use crate::pki::{HostName, PemError};
use crate::tls::TlsError;

/// Certificates by host name, replaced as a whole map. Readers never wait.
#[derive(Clone, Debug, Default)]
pub struct CertStore(Arc<ArcSwap<CertMap>>);

/// One snapshot of what is served.
#[derive(Clone, Debug, Default)]
struct CertMap {
    /// Exact names and `*.parent` wildcards, as configured. Persistent: the next snapshot
    /// shares all but the changed entries with this one, so publishing a certificate costs
    /// O(log N), not a copy of every name (a start or reload with N sites was quadratic).
    hosts: imbl::HashMap<HostName, Arc<CertifiedKey>>,
    /// The `default: true` site's certificate, for unknown or absent SNI.
    default: Option<Arc<CertifiedKey>>,
}

/// What [`CertStore::publish`] checked about a certificate, for logs and self-checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Leaf serial number, lower-case hex.
    pub serial: String,
    /// Leaf notAfter.
    pub not_after: SystemTime,
}

impl CertStore {
    /// Installs `cert` for every host of `site` (and as the default when the site is) once it
    /// names every host, matches its key and is in date at `now`, and records its notAfter in
    /// the site's certificate metric.
    ///
    /// # Errors
    /// On any failed check nothing changes: the previous certificate keeps serving.
    pub fn publish(
        &self,
        site: &Site,
        cert: CertifiedKey,
        now: SystemTime,
    ) -> Result<Published, TlsError> {
        let published = check(site, &cert, now)?;
        let cert = Arc::new(cert);
        self.0.rcu(|map| {
            let mut next = CertMap::clone(map);
            for host in &site.hosts {
                next.hosts.insert(host.clone(), cert.clone());
            }
            if site.default {
                next.default = Some(cert.clone());
            }
            next
        });
        metrics::certificate_published(&site.name, published.not_after);
        Ok(published)
    }

    /// Stops serving every name not in `hosts`, and the default certificate unless `keep_default`
    /// (for names and sites removed from the configuration on reload).
    pub fn retain(&self, hosts: &std::collections::HashSet<HostName>, keep_default: bool) {
        self.0.rcu(|map| {
            let mut next = CertMap::clone(map);
            next.hosts.retain(|host, _| hosts.contains(host));
            if !keep_default {
                next.default = None;
            }
            next
        });
    }

    /// The certificate for a handshake: exact name, then the `*.parent` wildcard, then the
    /// default site. No I/O, no lock.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let map = self.0.load();
        let Some(sni) = sni else {
            return map.default.clone();
        };
        Self::named(&map, sni).or(map.default.as_ref()).cloned()
    }

    /// The certificate named for `sni` (exact, then `*.parent`), never the default site's.
    pub fn lookup_named(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        Self::named(&self.0.load(), sni).cloned()
    }

    fn named<'m>(map: &'m CertMap, sni: &str) -> Option<&'m Arc<CertifiedKey>> {
        // Names are stored lower-case; clients may send any case (RFC 6066 §3).
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        map.hosts.get(sni).or_else(|| {
            let (_, parent) = sni.split_once('.')?;
            map.hosts.get(format!("*.{parent}").as_str())
        })
    }

    /// Whether every host of `site` has a certificate.
    pub fn covers(&self, site: &Site) -> bool {
        let map = self.0.load();
        site.hosts.iter().all(|h| map.hosts.contains_key(h))
    }
}

/// Names, key pair and dates of a certificate about to be served for `site`.
fn check(site: &Site, cert: &CertifiedKey, now: SystemTime) -> Result<Published, TlsError> {
    cert.keys_match().map_err(PemError::KeyMismatch)?;
    let leaf = cert.end_entity_cert().map_err(PemError::KeyMismatch)?;
    let facts = LeafFacts::parse(leaf)?;
    if let Some(missing) = site
        .hosts
        .iter()
        .find(|h| !facts.names.iter().any(|n| n == h.as_str()))
    {
        return Err(TlsError::NameMissing {
            site: site.name.clone(),
            host: missing.clone(),
        });
    }
    if now < facts.not_before || now >= facts.not_after {
        return Err(TlsError::OutOfDate {
            site: site.name.clone(),
        });
    }
    Ok(Published {
        serial: facts.serial,
        not_after: facts.not_after,
    })
}

/// What Rampart needs to know about a leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafFacts {
    /// DNS subjectAltNames, lower-case.
    pub names: Vec<String>,
    /// Serial number, lower-case hex without separators.
    pub serial: String,
    /// Issuer distinguished name, as text.
    pub issuer: String,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

impl LeafFacts {
    /// Reads names, serial, issuer and dates from a DER certificate.
    ///
    /// # Errors
    /// `X509` when the DER does not parse.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| TlsError::X509)?;
        let names = cert
            .subject_alternative_name()
            .map_err(|_| TlsError::X509)?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let to_system = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs.unsigned_abs())
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(Self {
            names,
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            issuer: cert.issuer().to_string(),
            not_before: to_system(cert.validity().not_before),
            not_after: to_system(cert.validity().not_after),
        })
    }
}
