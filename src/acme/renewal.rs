//! One site's renewal work, run by the scheduler as a short task per due site.
//!
//! Holds what the scheduler knows about a site between tasks ([`SiteState`]), loads and publishes
//! its stored certificate, fetches ARI windows, orders, stores and publishes new certificates, and
//! records failures with their backoff in the site's stored state. Each task runs under the
//! site's issuance lock ([`SiteLock`]), so the stored state has a single writer: in a cluster,
//! the task first reads again what another node may have stored meanwhile (certificate, backoff,
//! ARI window), so a site gets one order and one ARI poll cluster-wide.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use instant_acme::CertificateIdentifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::acme::error::{RATE_LIMITED, Step};
use crate::acme::order::{Issued, OrderRequest, issue};
use crate::acme::storage::{
    AriState, DiskStorage, LastError, Meta, Renewal, RenewalReason, SiteLock, Storage, StoredCert,
    meta_json,
};
use crate::acme::timing::{self, Served};
use crate::acme::{AccountSlot, AcmeError, ChallengeStore, SelfCheck, Tuning};
use crate::config::{KeyType, Site};
use crate::observe::{Chain, metrics};
use crate::pki::{PemError, certified_key_from_pem};
use crate::tls::{CertStore, LeafFacts, TlsError};

/// ARI support of the directory, learnt from the first renewal-info call.
pub(super) const ARI_UNKNOWN: u8 = 0;
const ARI_YES: u8 = 1;
const ARI_NO: u8 = 2;
/// Longest re-check: a window the CA moves forward (an incident, a mass revocation) is noticed
/// within half a day even if the CA asks for less frequent checks.
const ARI_RECHECK_MAX: Duration = Duration::from_secs(12 * 3600);
/// How long a task waits for a site's lock while another node holds it (ordering, most likely):
/// longer would tie up one of the scheduler's few task slots.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// When to try again after the lock was busy or the store unreachable (a failed connection is
/// cheap; the store coming back also wakes a waiting site at once). The certificate another
/// node obtains meanwhile arrives through the store's change stream.
const LOCK_RETRY: Duration = Duration::from_secs(10);

/// One CA of `acme.directories`.
pub(super) struct Ca {
    pub(super) slot: AccountSlot,
    /// Its directory URL: how meta.json and `rampart certs` name it.
    pub(super) directory: String,
    /// The ACME profile to ask it for.
    pub(super) profile: Option<String>,
    /// Its ARI support, learnt from the first renewal-info call.
    pub(super) ari: AtomicU8,
}

/// Handles every issuance task uses.
pub(super) struct Shared {
    /// The CAs in order of preference; never empty.
    pub(super) cas: Vec<Ca>,
    /// Failed orders in a row at one CA before a site tries the next.
    pub(super) fallback_after: u32,
    /// Where certificates and state are written.
    pub(super) storage: Arc<dyn Storage>,
    /// With a shared storage: the local copy of what it holds, read at start.
    pub(super) mirror: Option<DiskStorage>,
    pub(super) certs: CertStore,
    pub(super) challenges: ChallengeStore,
    pub(super) self_check: Arc<dyn SelfCheck>,
    pub(super) tuning: Tuning,
    pub(super) provider: Arc<CryptoProvider>,
    pub(super) key_type: KeyType,
    /// Cancelled when the scheduler stops: orders give up and remove their DNS-01 records.
    pub(super) stop: CancellationToken,
}

impl Shared {
    /// The CA that issued the certificate `meta` describes: the first one for a certificate
    /// stored before CAs were recorded; `None` when that CA is no longer configured.
    fn issuer(&self, meta: &Meta) -> Option<&Ca> {
        match &meta.ca {
            None => self.cas.first(),
            Some(directory) => self.cas.iter().find(|ca| &ca.directory == directory),
        }
    }

    /// The position of the CA a site orders from now.
    fn trying(&self, meta: &Meta) -> usize {
        meta.trying_ca
            .as_ref()
            .and_then(|directory| self.cas.iter().position(|ca| &ca.directory == directory))
            .unwrap_or(0)
    }

    /// The ARI support of the CA that issued `state`'s certificate (`ARI_NO` when unknown to
    /// the configuration: renewal by lifetime).
    pub(super) fn ari_of(&self, state: &SiteState) -> u8 {
        self.issuer(&state.meta)
            .map_or(ARI_NO, |ca| ca.ari.load(Ordering::Relaxed))
    }
}

/// What the scheduler holds for one site between tasks.
pub(super) struct SiteState {
    site: Arc<Site>,
    pub(super) served: Option<ServedCert>,
    meta: Meta,
    /// When to fetch renewal information next (in memory: a restart checks again).
    ari_check_at: SystemTime,
    /// Issued but not yet stored (the write failed); retried before any new order.
    unsaved: Option<(Issued, String)>,
    /// No task before this: the lock was busy or the store unreachable (in memory).
    wait_until: Option<SystemTime>,
}

/// The certificate currently published for a site.
pub(super) struct ServedCert {
    facts: LeafFacts,
    leaf: CertificateDer<'static>,
}

impl ServedCert {
    pub(super) fn lifetime(&self) -> Duration {
        self.facts
            .not_after
            .duration_since(self.facts.not_before)
            .unwrap_or(Duration::ZERO)
    }
}

impl SiteState {
    /// When this site next needs a task: an unsaved certificate, an ARI check, or an order.
    pub(super) fn next_action(&self, now: SystemTime, ari: u8) -> SystemTime {
        let due = if self.unsaved.is_some() {
            self.meta.next_attempt.unwrap_or(now)
        } else if ari != ARI_NO && self.served.is_some() {
            self.order_due(now).0.min(self.ari_check_at)
        } else {
            self.order_due(now).0
        };
        self.wait_until.map_or(due, |wait| due.max(wait))
    }

    /// The store is back: a task deferred for it may run now.
    pub(super) fn store_back(&mut self) {
        self.wait_until = None;
    }

    fn order_due(&self, now: SystemTime) -> (SystemTime, Option<RenewalReason>) {
        let served = self.served.as_ref().map(|cert| Served {
            not_before: cert.facts.not_before,
            not_after: cert.facts.not_after,
            covers_hosts: self
                .site
                .hosts
                .iter()
                .all(|h| cert.facts.names.iter().any(|n| n == h.as_str())),
        });
        let ari = self.current_ari().map(|ari| ari.chosen);
        timing::order_due(served, ari, self.meta.next_attempt, now)
    }

    /// The stored ARI window, if it belongs to the certificate being served.
    fn current_ari(&self) -> Option<&AriState> {
        let serial = &self.served.as_ref()?.facts.serial;
        self.meta.ari.as_ref().filter(|ari| &ari.serial == serial)
    }

    fn record_renewal(&mut self, now: SystemTime) {
        self.meta.renewal = match (self.served.is_some(), self.order_due(now)) {
            (true, (at, Some(reason))) => Some(Renewal { at, reason }),
            _ => None,
        };
        metrics::renewal_due(&self.site.name, self.meta.renewal.as_ref().map(|r| r.at));
    }
}

/// Reads a site's local files and publishes its stored certificate if it is usable.
pub(super) fn load_state(
    files: &DiskStorage,
    site: &Arc<Site>,
    certs: &CertStore,
    provider: &CryptoProvider,
) -> SiteState {
    let now = SystemTime::now();
    let meta = files.load_meta(&site.name).unwrap_or_else(|error| {
        warn!(site = %site.name, error = %Chain(&error), "ignoring unreadable ACME state");
        Meta::default()
    });
    let served = match files.load_cert(site, provider) {
        Ok(Some(stored)) => {
            let leaf = stored.key.end_entity_cert().map(|c| c.clone().into_owned());
            match (certs.publish(site, stored.key, now), leaf) {
                (Ok(published), Ok(leaf)) => {
                    info!(site = %site.name, serial = %published.serial, not_after = %humantime::format_rfc3339_seconds(published.not_after), "serving stored certificate");
                    Some(ServedCert {
                        facts: stored.facts,
                        leaf,
                    })
                }
                (Err(error), _) => {
                    warn!(site = %site.name, error = %Chain(&error), "stored certificate not served; ordering a new one");
                    None
                }
                (_, Err(error)) => {
                    warn!(site = %site.name, %error, "stored certificate not served; ordering a new one");
                    None
                }
            }
        }
        Ok(None) => {
            warn!(site = %site.name, "no certificate yet: handshakes for this site fail until one is obtained");
            None
        }
        Err(error) => {
            error!(site = %site.name, error = %Chain(&error), "stored certificate unusable and not served; ordering a new one");
            None
        }
    };
    let mut state = SiteState {
        site: site.clone(),
        served,
        meta,
        ari_check_at: now,
        unsaved: None,
        wait_until: None,
    };
    state.record_renewal(now);
    state
}

/// One scheduler task for one site, under its issuance lock: retry an unsaved write, check ARI,
/// order if due.
pub(super) async fn attempt(shared: Arc<Shared>, mut state: SiteState) -> SiteState {
    let site = state.site.name.clone();
    let (lock, mut keep) = match shared.storage.lock(&site, LOCK_WAIT).await {
        Ok(Some(held)) => held,
        Ok(None) => {
            info!(
                site,
                "another node holds the issuance lock; looking again later"
            );
            state.wait_until = Some(SystemTime::now() + LOCK_RETRY);
            return state;
        }
        Err(error) => {
            warn!(site, error = %Chain(&error), "cannot take the issuance lock; trying again later");
            state.wait_until = Some(SystemTime::now() + LOCK_RETRY);
            return state;
        }
    };
    state.wait_until = None;
    // Polled beside the work: renews the lock, and ends the work if the lock is lost anyway.
    let lost = tokio::select! {
        () = locked(&shared, &mut state, &lock) => None,
        error = &mut keep => Some(error),
    };
    if let Some(error) = lost {
        metrics::cluster_lock("lost");
        error!(site, error = %Chain(&error), "issuance lock lost; this attempt is abandoned");
        state.wait_until = Some(SystemTime::now() + LOCK_RETRY);
    }
    shared.storage.unlock(lock).await;
    state
}

/// The work of [`attempt`] once the lock is held.
async fn locked(shared: &Shared, state: &mut SiteState, lock: &SiteLock) {
    if shared.storage.is_shared() {
        refresh(shared, state).await;
    }
    let now = SystemTime::now();
    if let Some((issued, ca)) = state.unsaved.take() {
        // Storing what was already issued comes before anything else: no new order for it.
        install(shared, state, issued, &ca, now, lock).await;
    } else {
        if shared.ari_of(state) != ARI_NO && state.served.is_some() && state.ari_check_at <= now {
            check_ari(shared, state, now).await;
        }
        if state.order_due(now).0 <= now {
            order(shared, state, lock).await;
        }
    }
    state.record_renewal(SystemTime::now());
    save_meta(shared, state, lock).await;
}

/// Reads the site's shared state again: another node may have stored a certificate, a backoff
/// or a renewal window since this one last looked.
async fn refresh(shared: &Shared, state: &mut SiteState) {
    let site = state.site.clone();
    match shared.storage.load_meta(&site.name).await {
        Ok(meta) => state.meta = meta,
        Err(error) => {
            warn!(site = %site.name, error = %Chain(&error), "ignoring unreadable shared ACME state")
        }
    }
    let me = shared.storage.node();
    if let Some(other) = state
        .meta
        .ordering
        .take_if(|node| Some(node.as_str()) != me)
    {
        // Its lock lapsed mid-order (killed, cut off): the guard it stored against its own crash
        // loop does not hold others back; only real failures' backoff does.
        warn!(site = %site.name, node = other, "that node stopped while ordering; taking the order over");
        let failures = state.meta.consecutive_failures;
        state.meta.next_attempt =
            state
                .meta
                .last_error
                .as_ref()
                .filter(|_| failures > 0)
                .map(|last| {
                    timing::next_attempt_after_failure(
                        last.at,
                        failures,
                        None,
                        shared.tuning.backoff,
                        rand::random(),
                    )
                });
    }
    match shared.storage.load_cert(&site, &shared.provider).await {
        Ok(Some(stored)) => {
            if adopt(shared, state, stored) {
                record_lag(shared, &state.meta);
            }
        }
        Ok(None) => {}
        Err(error) => {
            warn!(site = %site.name, error = %Chain(&error), "shared certificate unusable; keeping what is served")
        }
    }
    // The window another node fetched for this certificate: no second poll until it says so.
    if let Some(ari) = state.current_ari() {
        state.ari_check_at = ari.next_check;
    }
}

/// Serves the certificate another node just stored for the site (the store's change stream).
pub(super) async fn catch_up(shared: Arc<Shared>, mut state: SiteState) -> SiteState {
    match shared
        .storage
        .load_cert(&state.site, &shared.provider)
        .await
    {
        Ok(Some(stored)) => {
            if adopt(&shared, &mut state, stored)
                && let Ok(meta) = shared.storage.load_meta(&state.site.name).await
            {
                state.meta = meta;
                record_lag(&shared, &state.meta);
            }
        }
        Ok(None) => {}
        Err(error) => {
            warn!(site = %state.site.name, error = %Chain(&error), "shared certificate unusable; keeping what is served")
        }
    }
    state
}

/// How long a certificate another node stored took to be served here (by its stored time).
fn record_lag(shared: &Shared, meta: &Meta) {
    if meta.issued_by.as_deref() == shared.storage.node() {
        return;
    }
    if let Some(lag) = meta
        .last_success
        .and_then(|at| SystemTime::now().duration_since(at).ok())
    {
        metrics::cluster_watch_lag(lag);
    }
}

/// Serves a certificate read from a shared store, unless it is the one already served, and
/// keeps a local copy of it; says whether it is served now.
fn adopt(shared: &Shared, state: &mut SiteState, stored: StoredCert) -> bool {
    let site = state.site.clone();
    if state
        .served
        .as_ref()
        .is_some_and(|served| served.facts.serial == stored.facts.serial)
    {
        return false;
    }
    if state.unsaved.take().is_some() {
        // Another node stored a certificate while this one could not: theirs is in the store.
        info!(site = %site.name, "dropping an unsaved certificate; the store has a newer one");
    }
    let now = SystemTime::now();
    let leaf = match stored.key.end_entity_cert() {
        Ok(leaf) => leaf.clone().into_owned(),
        Err(error) => {
            warn!(site = %site.name, %error, "shared certificate not served");
            return false;
        }
    };
    if let Some(mirror) = &shared.mirror
        && let Err(error) = mirror.mirror_pair(&site.name, &stored.chain_pem, &stored.key_pem)
    {
        warn!(site = %site.name, error = %Chain(&error), "cannot keep a local copy of the shared certificate");
    }
    match shared.certs.publish(&site, stored.key, now) {
        Ok(published) => {
            info!(site = %site.name, serial = %published.serial, not_after = %humantime::format_rfc3339_seconds(published.not_after), "serving the certificate from the cluster store");
            state.served = Some(ServedCert {
                facts: stored.facts,
                leaf,
            });
            state.ari_check_at = now;
            state.record_renewal(now);
            true
        }
        Err(error) => {
            warn!(site = %site.name, error = %Chain(&error), "shared certificate not served");
            false
        }
    }
}

/// Orders a certificate and installs it, or records the failure with its backoff.
async fn order(shared: &Shared, state: &mut SiteState, lock: &SiteLock) {
    let started = SystemTime::now();
    let site = state.site.name.clone();
    // Persist the attempt before talking to the CA: if Rampart crashes mid-order, the restart
    // still waits out one backoff step instead of ordering again at once.
    let failures = state.meta.consecutive_failures;
    state.meta.last_attempt = Some(started);
    state.meta.ordering = Some(shared.storage.node().unwrap_or_default().to_owned());
    state.meta.next_attempt = Some(timing::next_attempt_after_failure(
        started,
        failures + 1,
        None,
        shared.tuning.backoff,
        rand::random(),
    ));
    save_meta(shared, state, lock).await;
    let ca = &shared.cas[shared.trying(&state.meta)];
    // RFC 9773 §5: only the CA that issued a certificate knows it, so only it is told.
    let issuer = shared.issuer(&state.meta).map(|issuer| &issuer.directory);
    let replaces = if issuer == Some(&ca.directory) && ca.ari.load(Ordering::Relaxed) == ARI_YES {
        state
            .served
            .as_ref()
            .and_then(|cert| CertificateIdentifier::try_from(&cert.leaf).ok())
            .map(|id| id.into_owned())
    } else {
        None
    };
    let renewing = state.served.is_some();
    info!(site, renewing, ca = %ca.directory, "ordering certificate");
    let request = OrderRequest {
        site: &state.site,
        key_type: shared.key_type,
        profile: ca.profile.as_deref(),
        replaces,
        share: shared
            .storage
            .is_shared()
            .then_some((shared.storage.as_ref(), lock)),
        stop: Some(&shared.stop),
    };
    let clock = tokio::time::Instant::now();
    match issue(&ca.slot, &request, &shared.challenges).await {
        Ok(issued) => {
            metrics::acme_order(&ca.directory, true, None);
            info!(
                site,
                requests = issued.requests,
                latency_ms = clock.elapsed().as_millis() as u64,
                "certificate obtained"
            );
            let directory = ca.directory.clone();
            install(shared, state, issued, &directory, SystemTime::now(), lock).await;
        }
        Err(AcmeError::Stopped { .. }) => {
            // Not the CA's failure. The guard set above stays: a restart waits one backoff
            // step before ordering again, as after a crash.
            info!(site, "order given up at shutdown");
            state.meta.ordering = None;
        }
        Err(error) => {
            metrics::acme_order(&ca.directory, false, error.problem_type());
            record_failure(shared, state, &error, SystemTime::now());
        }
    }
}

/// Checks, stores and publishes a new certificate. A failed write keeps the previous certificate
/// serving (when it is still valid) and is retried; with nothing valid served, the new one is
/// published from memory anyway.
async fn install(
    shared: &Shared,
    state: &mut SiteState,
    issued: Issued,
    ca: &str,
    now: SystemTime,
    lock: &SiteLock,
) {
    let site = state.site.clone();
    let checked = certified_key_from_pem(
        &shared.provider,
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    )
    .map_err(TlsError::from)
    .and_then(|key| {
        key.keys_match()
            .map_err(|e| TlsError::from(PemError::KeyMismatch(e)))?;
        let leaf = key
            .end_entity_cert()
            .map_err(|e| TlsError::from(PemError::KeyMismatch(e)))?
            .clone()
            .into_owned();
        let facts = LeafFacts::parse(&leaf)?;
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
        Ok((key, facts, leaf))
    });
    let (key, facts, leaf) = match checked {
        Ok(checked) => checked,
        Err(source) => {
            let error = AcmeError::Issued {
                site: site.name.clone(),
                source,
            };
            return record_failure(shared, state, &error, now);
        }
    };
    // Stored with the certificate, so a node that reads one reads the other.
    let succeeded = Meta {
        last_attempt: state.meta.last_attempt,
        last_success: Some(now),
        issued_by: shared.storage.node().map(str::to_owned),
        ca: Some(ca.to_owned()),
        ..Meta::default()
    };
    let saved = shared
        .storage
        .save_certificate(
            &site.name,
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            &meta_json(&succeeded),
            lock,
        )
        .await;
    if saved.is_ok()
        && let Some(mirror) = &shared.mirror
        && let Err(error) = mirror.mirror_pair(
            &site.name,
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
    {
        warn!(site = %site.name, error = %Chain(&error), "cannot keep a local copy of the new certificate");
    }
    if let Err(error) = &saved {
        let old_valid = state
            .served
            .as_ref()
            .is_some_and(|cert| cert.facts.not_after > now);
        error!(site = %site.name, error = %Chain(error), keep_serving_previous = old_valid, "cannot store the new certificate; retrying the write");
        state.meta.next_attempt = Some(now + shared.tuning.backoff.first);
        if old_valid {
            state.unsaved = Some((issued, ca.to_owned()));
            return;
        }
    }
    match shared.certs.publish(&site, key, now) {
        Ok(published) => {
            info!(site = %site.name, serial = %published.serial, not_after = %humantime::format_rfc3339_seconds(published.not_after), "certificate published");
            state.served = Some(ServedCert { facts, leaf });
            if saved.is_ok() {
                if let Some(node) = shared.storage.node() {
                    metrics::cluster_issued(node);
                }
                state.meta = succeeded;
            } else {
                state.unsaved = Some((issued, ca.to_owned()));
            }
            // A new certificate gets its own renewal window.
            state.ari_check_at = now;
            state.record_renewal(now);
            shared.self_check.verify(&site, &published).await;
        }
        Err(source) => {
            let error = AcmeError::Issued {
                site: site.name.clone(),
                source,
            };
            record_failure(shared, state, &error, now);
        }
    }
}

/// Fetches the renewal window (RFC 9773) from the CA that issued the certificate and picks a
/// time inside it.
async fn check_ari(shared: &Shared, state: &mut SiteState, now: SystemTime) {
    let site = state.site.name.clone();
    let Some(cert) = &state.served else { return };
    let Some(issuer) = shared.issuer(&state.meta) else {
        return;
    };
    let fetched = async {
        let account = issuer.slot.account().await?;
        let id = CertificateIdentifier::try_from(&cert.leaf)
            .map_err(|_| AcmeError::CertId { site: site.clone() })?;
        let mut retry = crate::acme::retry::StepRetry::new();
        loop {
            match account.renewal_info(&id).await {
                Ok(found) => return Ok::<_, AcmeError>(Some(found)),
                Err(instant_acme::Error::Unsupported(_)) => return Ok(None),
                Err(error) => retry
                    .again(error)
                    .await
                    .map_err(|source| AcmeError::Protocol {
                        site: site.clone(),
                        step: Step::RenewalInfo,
                        source,
                    })?,
            }
        }
    };
    match fetched.await {
        Ok(None) => {
            issuer.ari.store(ARI_NO, Ordering::Relaxed);
            info!(
                site,
                "CA offers no renewal information; renewing by certificate lifetime"
            );
        }
        Ok(Some((info, retry_after))) => {
            issuer.ari.store(ARI_YES, Ordering::Relaxed);
            let (start, end) = (
                SystemTime::from(info.suggested_window.start),
                SystemTime::from(info.suggested_window.end),
            );
            let serial = cert.facts.serial.clone();
            // Keep the earlier pick while the window is unchanged (see AriState::chosen).
            let unchanged = state
                .current_ari()
                .filter(|old| old.window_start == start && old.window_end == end);
            let chosen = match unchanged {
                Some(old) => old.chosen,
                None => timing::ari_renewal_at(start, end, now, rand::random()),
            };
            if unchanged.is_none() && end <= now {
                // A window moved into the past: the CA revoked the certificate or wants it gone
                // after an incident (RFC 9773 §4.2). That news earns one attempt now, even
                // inside a failure backoff; failing again backs off from where it was.
                let backoff = state.meta.next_attempt.take();
                warn!(
                    site,
                    waived_backoff = backoff.is_some(),
                    "the CA asks to replace this certificate now (revoked, or an incident); renewing at once"
                );
            }
            let recheck_min = shared.tuning.ari_recheck_min;
            let next_check = now + retry_after.clamp(recheck_min, ARI_RECHECK_MAX.max(recheck_min));
            info!(site, window_start = %humantime::format_rfc3339_seconds(start), window_end = %humantime::format_rfc3339_seconds(end), renew_at = %humantime::format_rfc3339_seconds(chosen), "ACME renewal window");
            state.meta.ari = Some(AriState {
                serial,
                window_start: start,
                window_end: end,
                chosen,
                next_check,
                explanation_url: info.explanation_url,
            });
            state.ari_check_at = next_check;
        }
        Err(error) => {
            warn!(site, error = %Chain(&error), "cannot fetch ACME renewal information; renewing by lifetime meanwhile");
            state.ari_check_at = now + shared.tuning.max_sleep.min(Duration::from_secs(3600));
        }
    }
}

/// Counts a failure, schedules the next attempt and records the error for operators.
fn record_failure(shared: &Shared, state: &mut SiteState, error: &AcmeError, now: SystemTime) {
    let moved = fall_back(shared, state, error);
    let meta = &mut state.meta;
    meta.ordering = None;
    meta.consecutive_failures = meta.consecutive_failures.saturating_add(1);
    let next = timing::next_attempt_after_failure(
        now,
        meta.consecutive_failures,
        // The CA that rate-limited is not the one asked next.
        if moved { None } else { error.retry_after() },
        shared.tuning.backoff,
        rand::random(),
    );
    meta.next_attempt = Some(next);
    let hosts = match error {
        AcmeError::Invalid { failures, .. } => failures.clone(),
        _ => Vec::new(),
    };
    meta.last_error = Some(LastError {
        at: now,
        message: Chain(error).to_string(),
        problem_type: error.problem_type().map(str::to_owned),
        hosts,
    });
    error!(
        site = %state.site.name,
        error = %Chain(error),
        problem_type = error.problem_type().unwrap_or("none"),
        failures = meta.consecutive_failures,
        next_attempt = %humantime::format_rfc3339_seconds(next),
        "certificate order failed"
    );
}

/// Counts a failure against the CA tried, and moves the site to the next CA (after the last,
/// the first again) once it failed `fallback_after` times in a row or rate-limited the site.
/// Whether it moved.
fn fall_back(shared: &Shared, state: &mut SiteState, error: &AcmeError) -> bool {
    let meta = &mut state.meta;
    if shared.cas.len() < 2 {
        return false;
    }
    meta.ca_failures = meta.ca_failures.saturating_add(1);
    let rate_limited = error.problem_type() == Some(RATE_LIMITED);
    if meta.ca_failures < shared.fallback_after && !rate_limited {
        return false;
    }
    let from = shared.trying(meta);
    let to = (from + 1) % shared.cas.len();
    warn!(
        site = %state.site.name,
        from = %shared.cas[from].directory,
        to = %shared.cas[to].directory,
        failures = meta.ca_failures,
        rate_limited,
        "the CA keeps failing this site; trying the next one"
    );
    meta.trying_ca = (to > 0).then(|| shared.cas[to].directory.clone());
    meta.ca_failures = 0;
    true
}

async fn save_meta(shared: &Shared, state: &SiteState, lock: &SiteLock) {
    if let Err(error) = shared
        .storage
        .save_meta(&state.site.name, &state.meta, lock)
        .await
    {
        // The in-memory state still holds the backoff; only a restart would lose it.
        error!(site = %state.site.name, error = %Chain(&error), "cannot store ACME state");
    } else if let Some(mirror) = &shared.mirror
        && let Err(error) = mirror.mirror_meta(&state.site.name, &state.meta)
    {
        warn!(site = %state.site.name, error = %Chain(&error), "cannot keep a local copy of the ACME state");
    }
}
