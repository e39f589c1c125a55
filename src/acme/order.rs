//! One issuance: a certificate for all hosts of one site, from new-order to downloaded chain.
//!
//! Reads the account (through [`AccountSlot`]) and writes the [`ChallengeStore`] and, for
//! dns-01, the site's DNS provider: each authorization is answered with the first of the site's
//! challenge types the CA offers, every answer is in place (a TXT record visible on the zone's
//! servers) before the CA is told to validate, and withdrawn once every authorization is final.
//! Run by the scheduler's issuance tasks; returns PEM text, which the scheduler checks, stores
//! and publishes.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder,
    Order, OrderStatus,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::acme::dns::{self, TxtRecord};
use crate::acme::error::{
    ACCOUNT_DOES_NOT_EXIST, ALREADY_REPLACED, RATE_LIMITED, Step, problem_of,
};
use crate::acme::http::{Tally, current_retry_after};
use crate::acme::retry::{StepRetry, is_transient};
use crate::acme::storage::{SiteLock, Storage};
use crate::acme::{AccountSlot, AcmeError, ChallengeStore, HostProblem};
use crate::config::{Challenge, DnsProvider, KeyType, Site};
use crate::pki::HostName;

/// How long the CA may take to validate every name (RFC 8555 §7.5.1 leaves it open; Let's
/// Encrypt validates in seconds, Pebble with `PEBBLE_VA_NOSLEEP` in milliseconds).
const VALIDATION_DEADLINE: Duration = Duration::from_secs(180);
/// How long the CA may keep an order `processing` after finalize.
const ISSUE_DEADLINE: Duration = Duration::from_secs(180);
/// First pause between polls; doubles up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between polls.
const POLL_MAX: Duration = Duration::from_secs(4);

/// What to order for one site.
#[derive(Clone, Debug)]
pub struct OrderRequest<'a> {
    /// The site; every host becomes a DNS identifier.
    pub site: &'a Site,
    /// Key algorithm of the new certificate.
    pub key_type: KeyType,
    /// ACME profile to request; dropped with a warning when the CA does not offer it.
    pub profile: Option<&'a str>,
    /// The certificate this one replaces (RFC 9773 §5), when the CA supports ARI.
    pub replaces: Option<CertificateIdentifier<'static>>,
    /// In a cluster: the store and the site's lock under which every node's listeners are given
    /// the http-01 and tls-alpn-01 answers, since the CA's request may reach any of them.
    pub share: Option<(&'a dyn Storage, &'a SiteLock)>,
    /// Cancelled when Rampart stops: validation is given up and its DNS-01 records removed
    /// before [`issue`] returns `Stopped`.
    pub stop: Option<&'a CancellationToken>,
}

/// A freshly issued certificate and its private key, as PEM.
pub struct Issued {
    /// Leaf first, then the intermediates, as the CA sent them.
    pub chain_pem: String,
    /// PKCS#8 private key generated for this order.
    pub key_pem: String,
    /// ACME requests this issuance made (all retries included).
    pub requests: u32,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a secret: never print it.
        f.debug_struct("Issued")
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

/// Orders, validates, finalizes and downloads a certificate for `request.site`.
///
/// When the CA has forgotten the account (`accountDoesNotExist`), registers the same key again
/// and starts over once.
///
/// # Errors
/// `Invalid` with the CA's problem per host when validation fails, `RateLimited` with the time
/// the CA named, `Protocol` when a step fails after its retries, `Stalled` when the CA does not
/// move the order on in time, and the account errors of [`AccountSlot::account`].
///
/// # Cancel safety
/// Dropping the future withdraws the http-01 and tls-alpn-01 answers it served; the CA-side
/// order is abandoned, and a DNS-01 TXT record already written stays (harmless: the next
/// order's record is added beside it). Cancel `request.stop` instead to have them removed.
pub async fn issue(
    slot: &AccountSlot,
    request: &OrderRequest<'_>,
    challenges: &ChallengeStore,
) -> Result<Issued, AcmeError> {
    let (result, tally) = Tally::scope(async {
        let account = unless_stopped(request, slot.account()).await?;
        match run_order(&account, request, challenges).await {
            Err(error) if error.is_account_gone() => {
                let account = slot.reregister(&account).await?;
                run_order(&account, request, challenges).await
            }
            other => other,
        }
    })
    .await;
    let (chain_pem, key_pem) = result?;
    Ok(Issued {
        chain_pem,
        key_pem,
        requests: tally.requests(),
    })
}

/// The whole RFC 8555 §7.1 flow for one order; returns (chain PEM, key PEM).
async fn run_order(
    account: &Account,
    request: &OrderRequest<'_>,
    challenges: &ChallengeStore,
) -> Result<(String, String), AcmeError> {
    let site = request.site.name.as_str();
    let names = request
        .site
        .hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(",");
    let profile = request.profile.filter(|wanted| {
        let offered = account.profiles().any(|p| p.name == *wanted);
        if !offered {
            warn!(
                site,
                profile = wanted,
                "CA does not offer this ACME profile; ordering its default"
            );
        }
        offered
    });
    let mut order = unless_stopped(request, new_order(account, request, profile)).await?;
    info!(site, host = %names, order = order.url(), "ACME order placed");

    let mut status = order.state().status;
    if status == OrderStatus::Pending {
        let mut answers = Answers {
            site,
            store: challenges,
            share: request.share,
            dns: request.site.dns.as_ref(),
            served: Vec::new(),
            records: Vec::new(),
        };
        let validated = async {
            answer_challenges(&mut order, &mut answers, request).await?;
            let status = wait_while_pending(&mut order, site).await?;
            if status == OrderStatus::Invalid {
                // Collecting the verdicts also waits for every authorization to be final, so
                // no answer disappears while a vantage point may still look at it.
                let failures = failures(&mut order).await;
                return Err(AcmeError::Invalid {
                    site: site.to_owned(),
                    failures,
                });
            }
            Ok(status)
        };
        let validated = unless_stopped(request, validated).await;
        // Success or not, the TXT records go (RFC 8555 §8.4 leaves them to the client).
        answers.clean_up_dns().await;
        drop(answers); // every authorization is final, or the order is given up
        status = validated?;
        info!(site, host = %names, "ACME authorizations valid");
    }
    let key_pem = match status {
        OrderStatus::Ready => {
            let (csr, key_pem) = csr(request)?;
            unless_stopped(request, finalize(&mut order, &csr, site)).await?;
            info!(site, host = %names, "ACME order finalized");
            key_pem
        }
        OrderStatus::Processing | OrderStatus::Valid => {
            // A reused order finalized by an earlier run whose key is gone: unusable.
            let detail = Some(format!(
                "the CA returned an order already {status:?}; its key is lost"
            ));
            let failures = vec![HostProblem {
                host: None,
                problem_type: None,
                detail,
            }];
            return Err(AcmeError::Invalid {
                site: site.to_owned(),
                failures,
            });
        }
        _ => {
            return Err(AcmeError::Invalid {
                site: site.to_owned(),
                failures: failures(&mut order).await,
            });
        }
    };
    let chain_pem = unless_stopped(request, download(&mut order, site)).await?;
    info!(site, host = %names, "ACME certificate downloaded");
    Ok((chain_pem, key_pem))
}

/// `work`, or `Stopped` as soon as `request.stop` is cancelled (dropping `work`).
async fn unless_stopped<T>(
    request: &OrderRequest<'_>,
    work: impl Future<Output = Result<T, AcmeError>>,
) -> Result<T, AcmeError> {
    let Some(stop) = request.stop else {
        return work.await;
    };
    tokio::select! {
        done = work => done,
        () = stop.cancelled() => Err(AcmeError::Stopped { site: request.site.name.clone() }),
    }
}

/// RFC 8555 §7.4 newOrder; when the CA refuses an order carrying `replaces`, the order is
/// placed once more without it (see [`may_refuse_replaces`]).
async fn new_order(
    account: &Account,
    request: &OrderRequest<'_>,
    profile: Option<&str>,
) -> Result<Order, AcmeError> {
    let identifiers: Vec<Identifier> = request
        .site
        .hosts
        .iter()
        .map(|h| Identifier::Dns(h.as_str().to_owned()))
        .collect();
    let mut replaces = request.replaces.clone();
    let mut retry = StepRetry::new();
    loop {
        let mut new = NewOrder::new(&identifiers);
        if let Some(id) = replaces.clone() {
            new = new.replaces(id);
        }
        if let Some(profile) = profile {
            new = new.profile(profile);
        }
        match account.new_order(&new).await {
            Ok(order) => return Ok(order),
            Err(error) if replaces.is_some() && may_refuse_replaces(&error) => {
                warn!(
                    site = %request.site.name,
                    problem_type = problem_type(&error).unwrap_or("none"),
                    error = %error,
                    "the CA refused the order as a replacement; ordering once without `replaces`"
                );
                replaces = None;
            }
            Err(error) => {
                retry
                    .again(error)
                    .await
                    .map_err(|e| step_error(&request.site.name, Step::NewOrder, e))?;
            }
        }
    }
}

/// Answers every pending authorization with the first of the site's challenge types the CA
/// offers (only dns-01 for a wildcard), waits until the TXT records are visible, then tells
/// the CA to look: every answer is in place before any validation starts (RFC 8555 §7.5.1).
async fn answer_challenges(
    order: &mut Order,
    answers: &mut Answers<'_>,
    request: &OrderRequest<'_>,
) -> Result<(), AcmeError> {
    let site = request.site.name.as_str();
    // Authorization URL → (name, type chosen); instant-acme keeps each fetched state, so the
    // second pass below fetches nothing.
    let mut chosen: Vec<(String, String, Challenge)> = Vec::new();
    let mut handled = HashSet::new();
    let mut retry = StepRetry::new();
    'fetch: loop {
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authz = match next {
                Ok(authz) => authz,
                Err(error) => {
                    // Already-fetched authorizations are cached; a new pass fetches the rest.
                    retry
                        .again(error)
                        .await
                        .map_err(|e| step_error(site, Step::Authorization, e))?;
                    continue 'fetch;
                }
            };
            if !handled.insert(authz.url().to_owned()) {
                continue;
            }
            let host = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => {
                    info!(site, host, "ACME authorization already valid");
                    continue;
                }
                other => {
                    return Err(AcmeError::Invalid {
                        site: site.to_owned(),
                        failures: vec![HostProblem {
                            host: Some(host),
                            problem_type: None,
                            detail: Some(format!("authorization is {other:?}")),
                        }],
                    });
                }
            }
            let url = authz.url().to_owned();
            let identifier = authz.identifier();
            let wildcard = identifier.wildcard;
            let base = match identifier.identifier {
                Identifier::Dns(name) => name.clone(),
                other => format!("{other:?}"),
            };
            let offered =
                |kind: Challenge| authz.challenges.iter().any(|c| c.r#type == acme_type(kind));
            let Some(kind) = request
                .site
                .challenges
                .iter()
                .copied()
                // RFC 8555 §7.1.3: a wildcard is validated through dns-01 only.
                .find(|kind| (!wildcard || *kind == Challenge::Dns01) && offered(*kind))
            else {
                return Err(no_challenge(request.site, host, &authz.challenges));
            };
            let challenge = authz
                .challenge(acme_type(kind))
                .expect("offered, checked above");
            let key_authorization = challenge.key_authorization();
            match kind {
                // RFC 8555 §8.3: the token must be answerable before the CA is told to fetch it.
                Challenge::Http01 => {
                    answers
                        .serve_http(&challenge.token, key_authorization.as_str())
                        .await?
                }
                Challenge::TlsAlpn01 => {
                    answers
                        .serve_tls_alpn(&base, key_authorization.as_str())
                        .await?
                }
                Challenge::Dns01 => {
                    let record = TxtRecord {
                        fqdn: format!("_acme-challenge.{base}"),
                        value: key_authorization.dns_value(),
                    };
                    answers.present_dns(record).await?;
                }
            }
            chosen.push((url, host, kind));
        }
        break;
    }
    answers.wait_dns_visible().await?;
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| step_error(site, Step::Authorization, e))?;
        let Some((_, host, kind)) = chosen.iter().find(|(url, ..)| url == authz.url()) else {
            continue;
        };
        let mut challenge = authz
            .challenge(acme_type(*kind))
            .expect("chosen from the offer");
        let mut ready = StepRetry::new();
        loop {
            match challenge.set_ready().await {
                Ok(()) => break,
                Err(error) => ready
                    .again(error)
                    .await
                    .map_err(|e| step_error(site, Step::Challenge, e))?,
            }
        }
        info!(site, host, challenge = kind.name(), "ACME challenge ready");
    }
    Ok(())
}

fn acme_type(kind: Challenge) -> ChallengeType {
    match kind {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        Challenge::Dns01 => ChallengeType::Dns01,
    }
}

fn no_challenge(site: &Site, host: String, offered: &[instant_acme::Challenge]) -> AcmeError {
    let offered = offered
        .iter()
        .map(|c| match &c.r#type {
            ChallengeType::Unknown(name) => name.clone(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let usable = site
        .challenges
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ");
    AcmeError::NoChallenge {
        site: site.name.clone(),
        host,
        offered,
        usable,
    }
}

/// Polls the order until it leaves `pending`; returns the new status.
async fn wait_while_pending(order: &mut Order, site: &str) -> Result<OrderStatus, AcmeError> {
    let deadline = Instant::now() + VALIDATION_DEADLINE;
    let mut pause = POLL_FIRST;
    loop {
        sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
        let status = refresh(order, site, Step::Poll).await?;
        if status != OrderStatus::Pending {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(stalled(site, Step::Poll, VALIDATION_DEADLINE));
        }
    }
}

/// Sends the CSR. A retry first checks whether an earlier try already got through.
async fn finalize(order: &mut Order, csr: &[u8], site: &str) -> Result<(), AcmeError> {
    let mut retry = StepRetry::new();
    loop {
        match order.finalize_csr(csr).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                retry
                    .again(error)
                    .await
                    .map_err(|e| step_error(site, Step::Finalize, e))?;
                // A finalize whose answer was lost has moved the order on; resending is refused.
                let status = refresh(order, site, Step::Finalize).await?;
                if matches!(status, OrderStatus::Processing | OrderStatus::Valid) {
                    return Ok(());
                }
            }
        }
    }
}

/// Waits out `processing` and downloads the chain (RFC 8555 §7.4.2).
async fn download(order: &mut Order, site: &str) -> Result<String, AcmeError> {
    let deadline = Instant::now() + ISSUE_DEADLINE;
    let mut pause = POLL_FIRST;
    let mut retry = StepRetry::new();
    loop {
        match order.certificate().await {
            Ok(Some(chain)) => return Ok(chain),
            Ok(None) => {
                if Instant::now() >= deadline {
                    return Err(stalled(site, Step::Download, ISSUE_DEADLINE));
                }
                sleep(pause).await;
                pause = (pause * 2).min(POLL_MAX);
            }
            Err(error)
                if problem_of(&error).is_some() && order.state().status == OrderStatus::Invalid =>
            {
                let problem = problem_of(&error).cloned();
                return Err(AcmeError::Invalid {
                    site: site.to_owned(),
                    failures: vec![HostProblem {
                        host: None,
                        problem_type: problem.as_ref().and_then(|p| p.r#type.clone()),
                        detail: problem.and_then(|p| p.detail),
                    }],
                });
            }
            Err(error) => retry
                .again(error)
                .await
                .map_err(|e| step_error(site, Step::Download, e))?,
        }
    }
}

/// One order refresh with its own retry budget.
async fn refresh(order: &mut Order, site: &str, step: Step) -> Result<OrderStatus, AcmeError> {
    let mut retry = StepRetry::new();
    loop {
        match order.refresh().await {
            Ok(state) => return Ok(state.status),
            Err(error) => retry
                .again(error)
                .await
                .map_err(|e| step_error(site, step, e))?,
        }
    }
}

/// The CA's verdict per name of an invalid order, waiting (bounded) for pending authorizations.
async fn failures(order: &mut Order) -> Vec<HostProblem> {
    let deadline = Instant::now() + VALIDATION_DEADLINE;
    let mut found = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let Ok(mut authz) = next else {
            continue; // best effort: the order-level error below still names the failure
        };
        while authz.status == AuthorizationStatus::Pending && Instant::now() < deadline {
            sleep(POLL_FIRST * 2).await;
            if authz.refresh().await.is_err() {
                break;
            }
        }
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let problem = authz.challenges.iter().find_map(|c| c.error.as_ref());
        found.push(HostProblem {
            host: Some(authz.identifier().to_string()),
            problem_type: problem.and_then(|p| p.r#type.clone()),
            detail: problem
                .and_then(|p| p.detail.clone())
                .or_else(|| Some(format!("authorization is {:?}", authz.status))),
        });
    }
    if !found.is_empty() {
        return found;
    }
    let Some(problem) = &order.state().error else {
        return found;
    };
    found.extend(problem.subproblems.iter().map(|sub| HostProblem {
        host: match &sub.identifier {
            Some(Identifier::Dns(name)) => Some(name.clone()),
            _ => None,
        },
        problem_type: sub.r#type.clone(),
        detail: sub.detail.clone(),
    }));
    if found.is_empty() {
        found.push(HostProblem {
            host: None,
            problem_type: problem.r#type.clone(),
            detail: problem.detail.clone(),
        });
    }
    found
}

/// A fresh key of the configured type and a CSR naming every host (RFC 8555 §7.4: the CSR's
/// names must match the order's identifiers exactly).
fn csr(request: &OrderRequest<'_>) -> Result<(Vec<u8>, String), AcmeError> {
    let site = &request.site.name;
    let csr_error = |source| AcmeError::Csr {
        site: site.clone(),
        source,
    };
    let key = match request.key_type {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    }
    .map_err(csr_error)?;
    let names: Vec<String> = request
        .site
        .hosts
        .iter()
        .map(|h| h.as_str().to_owned())
        .collect();
    let mut params = CertificateParams::new(names).map_err(csr_error)?;
    // The CA ignores the subject; an empty one keeps the CSR minimal.
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(csr_error)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// Maps a step's final error, singling out rate limits (they decide the next attempt time).
fn step_error(site: &str, step: Step, source: instant_acme::Error) -> AcmeError {
    if problem_type(&source) == Some(RATE_LIMITED) {
        let detail = problem_of(&source).and_then(|p| p.detail.clone());
        return AcmeError::RateLimited {
            site: site.to_owned(),
            step,
            detail,
            retry_after: current_retry_after(),
        };
    }
    AcmeError::Protocol {
        site: site.to_owned(),
        step,
        source,
    }
}

fn stalled(site: &str, step: Step, bound: Duration) -> AcmeError {
    AcmeError::Stalled {
        site: site.to_owned(),
        step,
        seconds: bound.as_secs(),
    }
}

/// Whether an order may have been refused for its `replaces` field: `alreadyReplaced` (409), or
/// any other final client error but a rate limit or a vanished account, since CAs disagree on
/// how to say it (Boulder answers `malformed`, `unauthorized` or 404 depending on what is wrong
/// with the certificate named). RFC 9773 §5 still allows a plain order; it only loses the
/// replacement's rate-limit exemption.
fn may_refuse_replaces(error: &instant_acme::Error) -> bool {
    let instant_acme::Error::Api(problem) = error else {
        return false;
    };
    match problem.r#type.as_deref() {
        Some(ALREADY_REPLACED) => true,
        Some(RATE_LIMITED | ACCOUNT_DOES_NOT_EXIST) => false,
        _ => !is_transient(error) && problem.status.is_none_or(|s| (400..500).contains(&s)),
    }
}

fn problem_type(error: &instant_acme::Error) -> Option<&str> {
    problem_of(error).and_then(|p| p.r#type.as_deref())
}

/// The answers given for one order. http-01 tokens and tls-alpn-01 certificates are withdrawn
/// on drop, whichever way the order ends (the shared copies go with the lock's lease when it is
/// given back); TXT records through [`Answers::clean_up_dns`], which needs to await.
struct Answers<'a> {
    site: &'a str,
    store: &'a ChallengeStore,
    share: Option<(&'a dyn Storage, &'a SiteLock)>,
    dns: Option<&'a DnsProvider>,
    /// Keys in `store`.
    served: Vec<String>,
    /// TXT records written.
    records: Vec<TxtRecord>,
}

impl Answers<'_> {
    async fn serve_http(&mut self, token: &str, key_authorization: &str) -> Result<(), AcmeError> {
        self.store.insert(token, key_authorization);
        self.served.push(token.to_owned());
        self.share(token, key_authorization).await
    }

    async fn serve_tls_alpn(
        &mut self,
        host: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        let key = self
            .store
            .insert_tls_alpn(host, key_authorization)
            .map_err(|source| AcmeError::ChallengeCert {
                site: self.site.to_owned(),
                source,
            })?;
        self.served.push(key.clone());
        self.share(&key, key_authorization).await
    }

    async fn share(&self, key: &str, key_authorization: &str) -> Result<(), AcmeError> {
        let Some((storage, lock)) = self.share else {
            return Ok(());
        };
        storage
            .share_challenge(lock, key, key_authorization)
            .await
            .map_err(|source| AcmeError::Shared {
                site: self.site.to_owned(),
                source: Box::new(source),
            })
    }

    async fn present_dns(&mut self, record: TxtRecord) -> Result<(), AcmeError> {
        let provider = self.provider()?;
        dns::present(provider, &record)
            .await
            .map_err(|source| self.dns_error(provider, source))?;
        info!(
            site = self.site,
            name = record.fqdn,
            provider = provider.name,
            "DNS-01 record written"
        );
        self.records.push(record);
        Ok(())
    }

    async fn wait_dns_visible(&self) -> Result<(), AcmeError> {
        let Some(provider) = self.dns.filter(|_| !self.records.is_empty()) else {
            return Ok(());
        };
        dns::wait_visible(provider, &self.records)
            .await
            .map_err(|source| self.dns_error(provider, source))
    }

    /// Removes every TXT record written; a failure is logged (the record is harmless).
    async fn clean_up_dns(&mut self) {
        let Some(provider) = self.dns else {
            return;
        };
        for record in self.records.drain(..) {
            match dns::clean_up(provider, &record).await {
                Ok(()) => info!(
                    site = self.site,
                    name = record.fqdn,
                    "DNS-01 record removed"
                ),
                Err(error) => warn!(
                    site = self.site,
                    name = record.fqdn,
                    error = %crate::observe::Chain(&error),
                    "cannot remove the DNS-01 record"
                ),
            }
        }
    }

    fn provider(&self) -> Result<&DnsProvider, AcmeError> {
        // Validation gives every site with dns-01 a provider.
        self.dns.ok_or_else(|| AcmeError::NoChallenge {
            site: self.site.to_owned(),
            host: String::new(),
            offered: "dns-01".to_owned(),
            usable: "no DNS provider".to_owned(),
        })
    }

    fn dns_error(&self, provider: &DnsProvider, source: dns::DnsError) -> AcmeError {
        AcmeError::Dns {
            site: self.site.to_owned(),
            provider: provider.name.clone(),
            source: Box::new(source),
        }
    }
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for key in &self.served {
            self.store.remove(key);
        }
    }
}
