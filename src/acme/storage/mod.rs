//! Certificates, keys, scheduling state and the ACME account, behind one interface.
//!
//! [`Storage`] is what a backend provides: bytes by [`Item`], a site's chain and key written
//! together. [`DiskStorage`] is the embedded default (its layout in `certs/README.md`). Loading
//! checks everything the TLS layer would, here and once for every backend: a truncated,
//! unparsable or mismatched pair is reported and treated as absent, never served. Written by the
//! scheduler's issuance tasks; read at start-up and by `rampart certs` (which may run while
//! Rampart does: readers only ever see whole items).

use std::fmt;
use std::time::{Duration, SystemTime};

use futures_util::future::{self, BoxFuture};
use futures_util::stream::BoxStream;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::acme::{AcmeError, HostProblem};
use crate::config::Site;
use crate::pki::{PemError, certified_key_from_pem};
use crate::tls::LeafFacts;

mod disk;

pub use disk::{DiskStorage, account_path};

/// One stored thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A site's certificate chain (PEM).
    Chain(&'a str),
    /// A site's private key (PEM): secret.
    Key(&'a str),
    /// A site's scheduling state ([`Meta`] as JSON).
    Meta(&'a str),
    /// The ACME account of a CA (by [`ca_id`](crate::acme::ca_id)): instant-acme's credentials
    /// JSON, which holds the account's private key: secret.
    Account(&'a str),
}

impl Item<'_> {
    /// Whether the item holds a private key.
    pub fn is_secret(self) -> bool {
        matches!(self, Item::Key(_) | Item::Account(_))
    }
}

/// Where certificates and ACME state live.
///
/// Methods return boxed futures so that the scheduler can hold any backend as `dyn Storage`.
/// A site's certificate and state are written only under its [`SiteLock`]; a shared backend
/// refuses such a write once the lock is lost ([`AcmeError::Fenced`]).
pub trait Storage: Send + Sync + fmt::Debug {
    /// Where `item` lives, for messages (a path, or a key in a cluster store).
    fn place(&self, item: Item<'_>) -> String;

    /// Whether other nodes write here too: then a site's state is read again under its lock,
    /// and what is read is kept in a local mirror.
    fn is_shared(&self) -> bool {
        false
    }

    /// `item`'s bytes; `None` when it was never written.
    fn load<'a>(&'a self, item: Item<'a>) -> BoxFuture<'a, Result<Option<Vec<u8>>, AcmeError>>;

    /// Writes `item`: a site's under its `lock`, the account without one.
    fn save<'a>(
        &'a self,
        item: Item<'a>,
        bytes: &'a [u8],
        lock: Option<&'a SiteLock>,
    ) -> BoxFuture<'a, Result<(), AcmeError>>;

    /// Writes a site's new certificate under its `lock`: chain, key, and the state that goes
    /// with them ([`Meta`] as JSON: who issued it, when), so a node that reads the certificate
    /// reads its state too. A reader may at worst see a mismatched pair (the key written
    /// first), which loading rejects: never a new chain with an old key.
    fn save_certificate<'a>(
        &'a self,
        site: &'a str,
        chain: &'a [u8],
        key: &'a [u8],
        meta: &'a [u8],
        lock: &'a SiteLock,
    ) -> BoxFuture<'a, Result<(), AcmeError>>;

    /// Moves an unusable `item` out of the way (kept for inspection where the backend can).
    fn discard<'a>(&'a self, item: Item<'a>) -> BoxFuture<'a, Result<(), AcmeError>>;

    /// Takes `site`'s issuance lock, waiting at most `wait` while another node holds it
    /// (`Ok(None)` then). One node alone takes it at once. The [`Keep`] renews it.
    fn lock<'a>(
        &'a self,
        site: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<(SiteLock, Keep)>, AcmeError>> {
        let _ = (site, wait);
        Box::pin(future::ready(Ok(Some((
            SiteLock::local(),
            Box::pin(future::pending()) as Keep,
        )))))
    }

    /// Gives `lock` back, and with it the challenge answers shared under it.
    fn unlock(&self, lock: SiteLock) -> BoxFuture<'_, ()> {
        drop(lock);
        Box::pin(future::ready(()))
    }

    /// Makes an HTTP-01 answer visible to every node for as long as `lock` is held (nothing to
    /// do for one node: its own `:80` listener answers from its [`ChallengeStore`]).
    ///
    /// [`ChallengeStore`]: crate::acme::ChallengeStore
    fn share_challenge<'a>(
        &'a self,
        lock: &'a SiteLock,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        let _ = (lock, token, key_authorization);
        Box::pin(future::ready(Ok(())))
    }

    /// This node's name in a shared store, recorded with what it issues.
    fn node(&self) -> Option<&str> {
        None
    }

    /// What other nodes changed, and the store coming back after an outage; `None` when only
    /// this node writes. The stream follows the store across outages and never ends.
    fn changes(&self) -> Option<BoxStream<'static, Change>> {
        None
    }
}

/// An event of [`Storage::changes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A site's certificate was stored (by any node).
    Stored(String),
    /// The store answers again after it did not: what waited for it can go ahead.
    Back,
}

/// A site's issuance lock, held by this node from [`Storage::lock`] to [`Storage::unlock`].
#[derive(Debug)]
pub struct SiteLock {
    /// What a shared backend checks on each write under the lock; `None` for one node alone.
    pub fence: Option<Fence>,
}

/// Renews a [`SiteLock`] while it is polled; completes only when the lock is lost, saying why.
pub type Keep = BoxFuture<'static, AcmeError>;

/// Proof of holding a lock in a shared backend.
#[derive(Clone, Debug)]
pub struct Fence {
    /// The key that exists only while the lock is held (etcd's lock key).
    pub key: Vec<u8>,
    /// The lease the lock and everything shared under it are attached to.
    pub lease: i64,
}

impl SiteLock {
    /// The lock of one node alone: nothing to fence, never lost.
    pub fn local() -> Self {
        Self { fence: None }
    }
}

/// A stored certificate that passed every check.
pub struct StoredCert {
    /// Ready to publish.
    pub key: CertifiedKey,
    /// Names, serial and dates of the leaf.
    pub facts: LeafFacts,
    /// The chain as stored (PEM), for a local mirror.
    pub chain_pem: Vec<u8>,
    /// The private key as stored (PEM), for a local mirror. Never printed.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for StoredCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCert")
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// Scheduling state of one site, persisted as `meta.json`.
///
/// Times are RFC 3339 strings so operators and `rampart certs` can read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// When the last order was started.
    #[serde(with = "rfc3339")]
    pub last_attempt: Option<SystemTime>,
    /// Earliest time the next order may start: set before each attempt and after each failure
    /// (backoff, rate limit), cleared on success. Honoured across restarts.
    #[serde(with = "rfc3339")]
    pub next_attempt: Option<SystemTime>,
    /// When the current certificate was obtained.
    #[serde(with = "rfc3339")]
    pub last_success: Option<SystemTime>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The last failure, kept until a success.
    pub last_error: Option<LastError>,
    /// When the current certificate is due for renewal, and why.
    pub renewal: Option<Renewal>,
    /// The CA's renewal information (RFC 9773) for the current certificate.
    pub ari: Option<AriState>,
    /// In a cluster: the node that obtained the current certificate.
    pub issued_by: Option<String>,
    /// The node whose order is in flight: set before ordering, cleared when the order ends.
    /// A lock holder that finds another node's mark knows that node stopped mid-order.
    pub ordering: Option<String>,
    /// The directory URL of the CA that issued the current certificate: the one whose renewal
    /// information is asked and whose certificate a new order `replaces`.
    pub ca: Option<String>,
    /// While orders fail: the directory URL of the CA tried now, when not the first.
    pub trying_ca: Option<String>,
    /// Failed orders in a row at the CA tried now.
    pub ca_failures: u32,
}

/// A failure as recorded for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// When it happened.
    #[serde(with = "rfc3339::required")]
    pub at: SystemTime,
    /// The whole error chain on one line.
    pub message: String,
    /// The CA's problem type, when the CA answered with one.
    pub problem_type: Option<String>,
    /// The CA's verdict per name, for an invalid order.
    #[serde(default)]
    pub hosts: Vec<HostProblem>,
}

/// When renewal is due and the rule that chose the time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// The due time.
    #[serde(with = "rfc3339::required")]
    pub at: SystemTime,
    /// `ari` or `lifetime`.
    pub reason: RenewalReason,
}

/// Which rule set the renewal time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenewalReason {
    /// A random time inside the CA's suggested window (RFC 9773).
    Ari,
    /// 2/3 of the lifetime (1/2 for lifetimes of 10 days or less).
    Lifetime,
}

impl RenewalReason {
    /// `ari` or `lifetime`, as in `meta.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ari => "ari: a random time in the CA's suggested window",
            Self::Lifetime => "lifetime: 2/3 of it, or 1/2 for 10 days or less",
        }
    }
}

/// The last renewal information fetched for the current certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriState {
    /// Serial (hex) of the certificate this window belongs to.
    pub serial: String,
    /// Suggested window start.
    #[serde(with = "rfc3339::required")]
    pub window_start: SystemTime,
    /// Suggested window end.
    #[serde(with = "rfc3339::required")]
    pub window_end: SystemTime,
    /// The random time chosen inside the window; kept while the window is unchanged so that a
    /// restart does not roll again (re-rolling would bias renewals early).
    #[serde(with = "rfc3339::required")]
    pub chosen: SystemTime,
    /// When to fetch again (the CA's Retry-After).
    #[serde(with = "rfc3339::required")]
    pub next_check: SystemTime,
    /// The CA's explanation page, if any.
    pub explanation_url: Option<String>,
}

impl dyn Storage + '_ {
    /// The stored certificate of `site`, `Ok(None)` when there is none.
    ///
    /// # Errors
    /// As [`check_pair`], and the backend's own.
    pub async fn load_cert(
        &self,
        site: &Site,
        provider: &CryptoProvider,
    ) -> Result<Option<StoredCert>, AcmeError> {
        let chain = self.load(Item::Chain(&site.name)).await?;
        let key = self.load(Item::Key(&site.name)).await?;
        check_pair(site, chain, key, provider, |item| self.place(item))
    }

    /// The scheduling state of `site`; default when absent.
    ///
    /// # Errors
    /// `Meta` when it does not parse, the backend's own otherwise; callers log and use the
    /// default.
    pub async fn load_meta(&self, site: &str) -> Result<Meta, AcmeError> {
        let bytes = self.load(Item::Meta(site)).await?;
        parse_meta(bytes.as_deref(), || self.place(Item::Meta(site)))
    }

    /// Stores the scheduling state of `site` under its `lock`.
    ///
    /// # Errors
    /// The backend's, naming what could not be written; `Fenced` once the lock is lost.
    pub async fn save_meta(
        &self,
        site: &str,
        meta: &Meta,
        lock: &SiteLock,
    ) -> Result<(), AcmeError> {
        self.save(Item::Meta(site), &meta_json(meta), Some(lock))
            .await
    }
}

/// A stored chain and key, checked as the TLS layer would check them.
///
/// # Errors
/// `StoredCert` for a truncated, unparsable or mismatched pair, `StoredIncomplete` when only one
/// of them exists. Callers treat every error as "no certificate".
fn check_pair(
    site: &Site,
    chain: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    provider: &CryptoProvider,
    place: impl Fn(Item<'_>) -> String,
) -> Result<Option<StoredCert>, AcmeError> {
    let (chain_item, key_item) = (Item::Chain(&site.name), Item::Key(&site.name));
    let (chain, key) = match (chain, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(AcmeError::StoredIncomplete {
                site: site.name.clone(),
                missing: place(key_item),
            });
        }
        (None, Some(_)) => {
            return Err(AcmeError::StoredIncomplete {
                site: site.name.clone(),
                missing: place(chain_item),
            });
        }
        (Some(chain), Some(key)) => (chain, key),
    };
    let stored_error = |source| AcmeError::StoredCert {
        place: place(chain_item),
        source,
    };
    let certified =
        certified_key_from_pem(provider, &chain, &key).map_err(|e| stored_error(e.into()))?;
    certified
        .keys_match()
        .map_err(|e| stored_error(PemError::KeyMismatch(e).into()))?;
    let leaf = certified
        .end_entity_cert()
        .map_err(|e| stored_error(PemError::KeyMismatch(e).into()))?;
    let facts = LeafFacts::parse(leaf).map_err(stored_error)?;
    Ok(Some(StoredCert {
        key: certified,
        facts,
        chain_pem: chain,
        key_pem: key,
    }))
}

/// Stored scheduling state; default when absent.
fn parse_meta(bytes: Option<&[u8]>, place: impl FnOnce() -> String) -> Result<Meta, AcmeError> {
    match bytes {
        None => Ok(Meta::default()),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|source| AcmeError::Meta {
            place: place(),
            source,
        }),
    }
}

/// Scheduling state as stored: pretty JSON, for operators who read it.
pub(in crate::acme) fn meta_json(meta: &Meta) -> Vec<u8> {
    serde_json::to_vec_pretty(meta).expect("meta is plain data and serializes")
}

/// `Option<SystemTime>` as an RFC 3339 string (seconds precision) or null.
pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => required::serialize(time, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_rfc3339_weak(&text).map_err(de::Error::custom))
            .transpose()
    }

    /// A required `SystemTime` as an RFC 3339 string.
    pub(crate) mod required {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer, de};

        pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&humantime::format_rfc3339_seconds(*time))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
            let text = String::deserialize(d)?;
            humantime::parse_rfc3339_weak(&text).map_err(de::Error::custom)
        }
    }
}
