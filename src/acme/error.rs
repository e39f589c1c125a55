//! Errors of the ACME layer: talking to the CA, validating names, storing what it issued.
//!
//! Built by the account, order and storage code; read by the scheduler, which logs them with
//! `observe::Chain`, persists a summary in `meta.json` and picks the backoff from them.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::acme::dns::DnsError;
use crate::tls::TlsError;

/// RFC 8555 §6.7: the account URL is unknown to the CA (Pebble forgets accounts on restart).
pub(crate) const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
/// RFC 8555 §6.7: the request hit a rate limit; the CA may say when to come back.
pub(crate) const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";
/// RFC 8555 §6.5: the nonce was stale or unknown; a fresh one fixes it.
pub(crate) const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
/// RFC 8555 §6.7: a transient failure inside the CA.
pub(crate) const SERVER_INTERNAL: &str = "urn:ietf:params:acme:error:serverInternal";
/// RFC 9773 §5: the certificate named in `replaces` was already replaced.
pub(crate) const ALREADY_REPLACED: &str = "urn:ietf:params:acme:error:alreadyReplaced";

/// What went wrong while getting or keeping a certificate through ACME.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The `acme.ca_bundle` file could not be read.
    #[error("cannot read ACME CA bundle {path}")]
    CaBundle {
        /// The bundle file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The `acme.ca_bundle` file holds no usable certificate.
    #[error("ACME CA bundle {path} holds no usable PEM certificate")]
    CaBundleEmpty {
        /// The bundle file.
        path: PathBuf,
    },
    /// The directory could not be fetched or the stored account could not be restored.
    #[error("cannot reach ACME directory {url}")]
    Directory {
        /// Directory URL.
        url: String,
        /// Cause.
        #[source]
        source: instant_acme::Error,
    },
    /// Registering the account failed.
    #[error("cannot register an ACME account at {url}")]
    Register {
        /// Directory URL.
        url: String,
        /// Cause.
        #[source]
        source: instant_acme::Error,
    },
    /// The stored account is unparsable (it is set aside and a new account registered).
    #[error("cannot parse the stored ACME account {place}")]
    AccountFile {
        /// Where it is stored.
        place: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A file or directory under `storage` could not be read or written.
    #[error("cannot write {path}")]
    Persist {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A stored file could not be read (other than "not found").
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The cluster store could not be reached, or refused a request.
    #[error("cluster store: cannot {action}")]
    Store {
        /// What was being done, naming the key.
        action: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A challenge answer could not be shared with the other nodes, so the CA's request might
    /// reach a node that cannot answer it: the order is not continued.
    #[error("site {site}: cannot share the challenge answer with the other nodes")]
    Shared {
        /// Site name.
        site: String,
        /// Cause.
        #[source]
        source: Box<AcmeError>,
    },
    /// A write under a site's issuance lock was refused because the lock is no longer held (its
    /// lease expired): another node may be ordering now, and its result wins.
    #[error("site {site}: the issuance lock was lost, so the write was refused")]
    Fenced {
        /// Site name.
        site: String,
    },
    /// A stored certificate is truncated, unparsable or does not match its key: not served.
    #[error("stored certificate {place} is unusable")]
    StoredCert {
        /// Where the chain is stored.
        place: String,
        /// What the check found.
        #[source]
        source: TlsError,
    },
    /// Only one of the chain and the key is stored.
    #[error("stored certificate for site {site} is incomplete: {missing} is missing")]
    StoredIncomplete {
        /// Site name.
        site: String,
        /// Where the absent one should be.
        missing: String,
    },
    /// The stored scheduling state is unparsable; it starts afresh.
    #[error("cannot parse {place}")]
    Meta {
        /// Where it is stored.
        place: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// One protocol step failed after its bounded retries.
    #[error("ACME {step} for site {site} failed")]
    Protocol {
        /// Site name.
        site: String,
        /// Which step.
        step: Step,
        /// Cause, holding the CA's problem document when there is one.
        #[source]
        source: instant_acme::Error,
    },
    /// The CA refused the request because of a rate limit.
    #[error("ACME {step} for site {site} was rate limited: {}", detail.as_deref().unwrap_or("no detail"))]
    RateLimited {
        /// Site name.
        site: String,
        /// Which step.
        step: Step,
        /// The CA's explanation.
        detail: Option<String>,
        /// When the CA said to come back (`Retry-After`), if it did.
        retry_after: Option<SystemTime>,
    },
    /// The CA offered none of the challenge types the site can answer for a name.
    #[error("CA offers {offered} for {host}, none of the site's {usable} (site {site})")]
    NoChallenge {
        /// Site name.
        site: String,
        /// The name (`*.parent` for a wildcard).
        host: String,
        /// The types the CA offered, comma-separated.
        offered: String,
        /// The types the site answers, comma-separated.
        usable: String,
    },
    /// The tls-alpn-01 certificate could not be made.
    #[error("site {site}: cannot make the tls-alpn-01 certificate")]
    ChallengeCert {
        /// Site name.
        site: String,
        /// Cause.
        #[source]
        source: TlsError,
    },
    /// A DNS-01 record could not be written, or did not become visible in time.
    #[error("site {site}: DNS-01 through provider {provider} failed")]
    Dns {
        /// Site name.
        site: String,
        /// The `dns:` provider's name.
        provider: String,
        /// Cause (boxed: the rare error must not grow every `Result`).
        #[source]
        source: Box<DnsError>,
    },
    /// The order ended `invalid`; the CA's problem per name is kept.
    #[error("ACME order for site {site} is invalid: {}", HostProblems(failures))]
    Invalid {
        /// Site name.
        site: String,
        /// One entry per failed name (or one without a name for an order-level problem).
        failures: Vec<HostProblem>,
    },
    /// The order was given up because Rampart is stopping.
    #[error("site {site}: order given up at shutdown")]
    Stopped {
        /// Site name.
        site: String,
    },
    /// The CA did not move the order forward in time.
    #[error("ACME {step} for site {site} did not finish within {seconds} s")]
    Stalled {
        /// Site name.
        site: String,
        /// Which step.
        step: Step,
        /// The bound that ran out.
        seconds: u64,
    },
    /// The CSR or its key could not be generated.
    #[error("cannot build the certificate request for site {site}")]
    Csr {
        /// Site name.
        site: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// What the CA issued cannot be served.
    #[error("certificate issued for site {site} is unusable")]
    Issued {
        /// Site name.
        site: String,
        /// What the check found.
        #[source]
        source: TlsError,
    },
    /// The current certificate cannot be named for ARI (no authority key identifier).
    #[error("cannot identify the certificate of site {site} for ACME renewal information")]
    CertId {
        /// Site name.
        site: String,
    },
}

impl AcmeError {
    /// The CA's problem type (`urn:ietf:params:acme:error:*`) behind this error, if any.
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            Self::Directory { source, .. }
            | Self::Register { source, .. }
            | Self::Protocol { source, .. } => problem_of(source).and_then(|p| p.r#type.as_deref()),
            Self::RateLimited { .. } => Some(RATE_LIMITED),
            Self::Invalid { failures, .. } => {
                failures.iter().find_map(|f| f.problem_type.as_deref())
            }
            _ => None,
        }
    }

    /// The earliest time the CA allows another attempt, when it named one.
    pub fn retry_after(&self) -> Option<SystemTime> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the CA said the account no longer exists (re-register with the same key).
    pub(crate) fn is_account_gone(&self) -> bool {
        self.problem_type() == Some(ACCOUNT_DOES_NOT_EXIST)
    }
}

/// A protocol step, for error messages and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Placing the order (RFC 8555 §7.4).
    NewOrder,
    /// Fetching or polling an authorization (§7.5).
    Authorization,
    /// Telling the CA a challenge is ready (§7.5.1).
    Challenge,
    /// Polling the order.
    Poll,
    /// Sending the CSR (§7.4).
    Finalize,
    /// Downloading the chain (§7.4.2).
    Download,
    /// Fetching ARI renewal information (RFC 9773).
    RenewalInfo,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NewOrder => "new-order",
            Self::Authorization => "authorization",
            Self::Challenge => "challenge",
            Self::Poll => "order poll",
            Self::Finalize => "finalize",
            Self::Download => "certificate download",
            Self::RenewalInfo => "renewal-info",
        })
    }
}

/// The CA's verdict on one name of a failed order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostProblem {
    /// The name, or `None` for an order-level problem.
    pub host: Option<String>,
    /// RFC 8555 §6.7 problem type, e.g. `urn:ietf:params:acme:error:connection`.
    pub problem_type: Option<String>,
    /// The CA's human-readable detail.
    pub detail: Option<String>,
}

impl fmt::Display for HostProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.host {
            write!(f, "{host}: ")?;
        }
        f.write_str(self.problem_type.as_deref().unwrap_or("no problem type"))?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// Formats a list of per-name problems on one line.
struct HostProblems<'a>(&'a [HostProblem]);

impl fmt::Display for HostProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The problem document inside an instant-acme error, if it carries one.
pub(crate) fn problem_of(error: &instant_acme::Error) -> Option<&instant_acme::Problem> {
    match error {
        instant_acme::Error::Api(problem) => Some(problem),
        _ => None,
    }
}
