//! One issuance: a certificate for all hosts of one site, from new-order to downloaded chain.
//!
//! Reads the account (through [`AccountSlot`]) and writes only the [`ChallengeStore`]: each http-01
//! key authorization is served before the CA is told to validate and withdrawn once every
//! authorization is final. Run by the scheduler's issuance tasks; returns PEM text, which the
//! scheduler checks, stores and publishes.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder,
    Order, OrderStatus,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use crate::acme::error::{ALREADY_REPLACED, RATE_LIMITED, Step, problem_of};
use crate::acme::http::{Tally, current_retry_after};
use crate::acme::retry::StepRetry;
use crate::acme::storage::{SiteLock, Storage};
use crate::acme::{AccountSlot, AcmeError, ChallengeStore, HostProblem};
use crate::config::{KeyType, Site};
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
    /// In a cluster: the store and the site's lock under which every node's `:80` listener is
    /// given the challenge answers, since the CA's request may reach any of them.
    pub share: Option<(&'a dyn Storage, &'a SiteLock)>,
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
/// Dropping the future withdraws the challenge tokens it served; the CA-side order is abandoned.
pub async fn issue(
    slot: &AccountSlot,
    request: &OrderRequest<'_>,
    challenges: &ChallengeStore,
) -> Result<Issued, AcmeError> {
    let (result, tally) = Tally::scope(async {
        let account = slot.account().await?;
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
    let mut order = new_order(account, request, profile).await?;
    info!(site, host = %names, order = order.url(), "ACME order placed");

    let mut status = order.state().status;
    if status == OrderStatus::Pending {
        let mut tokens = Tokens {
            store: challenges,
            share: request.share,
            served: Vec::new(),
        };
        answer_challenges(&mut order, &mut tokens, site).await?;
        status = wait_while_pending(&mut order, site).await?;
        if status == OrderStatus::Invalid {
            // Collecting the verdicts also waits for every authorization to be final, so no
            // token disappears while a vantage point may still fetch it.
            let failures = failures(&mut order).await;
            return Err(AcmeError::Invalid {
                site: site.to_owned(),
                failures,
            });
        }
        drop(tokens); // order ready: every authorization is valid, hence final
        info!(site, host = %names, "ACME authorizations valid");
    }
    let key_pem = match status {
        OrderStatus::Ready => {
            let (csr, key_pem) = csr(request)?;
            finalize(&mut order, &csr, site).await?;
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
    let chain_pem = download(&mut order, site).await?;
    info!(site, host = %names, "ACME certificate downloaded");
    Ok((chain_pem, key_pem))
}

/// RFC 8555 §7.4 newOrder, with `replaces` dropped if the CA says it was already replaced.
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
            Err(error) if replaces.is_some() && problem_type(&error) == Some(ALREADY_REPLACED) => {
                // RFC 9773 §5: another order already replaces it; a plain order is still allowed.
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

/// Serves every pending authorization's http-01 key authorization and tells the CA to look.
async fn answer_challenges(
    order: &mut Order,
    tokens: &mut Tokens<'_>,
    site: &str,
) -> Result<(), AcmeError> {
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
            let Some(mut challenge) = authz.challenge(ChallengeType::Http01) else {
                return Err(AcmeError::NoHttp01 {
                    site: site.to_owned(),
                    host,
                });
            };
            // RFC 8555 §8.3: the token must be answerable before the CA is told to fetch it.
            tokens
                .serve(&challenge.token, challenge.key_authorization().as_str())
                .await
                .map_err(|source| AcmeError::Shared {
                    site: site.to_owned(),
                    source: Box::new(source),
                })?;
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
            info!(site, host, "ACME http-01 challenge ready");
        }
        return Ok(());
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

fn problem_type(error: &instant_acme::Error) -> Option<&str> {
    problem_of(error).and_then(|p| p.r#type.as_deref())
}

/// Tokens served for one order; withdrawn on drop, whichever way the order ends (the shared
/// copies go with the lock's lease when it is given back).
struct Tokens<'a> {
    store: &'a ChallengeStore,
    share: Option<(&'a dyn Storage, &'a SiteLock)>,
    served: Vec<String>,
}

impl Tokens<'_> {
    async fn serve(&mut self, token: &str, key_authorization: &str) -> Result<(), AcmeError> {
        self.store.insert(token, key_authorization);
        self.served.push(token.to_owned());
        if let Some((storage, lock)) = self.share {
            storage
                .share_challenge(lock, token, key_authorization)
                .await?;
        }
        Ok(())
    }
}

impl Drop for Tokens<'_> {
    fn drop(&mut self) {
        for token in &self.served {
            self.store.remove(token);
        }
    }
}
