//! DNS-01 (RFC 8555 §8.4): writing `_acme-challenge` TXT records through a site's provider,
//! waiting until the zone's servers serve them, and removing them afterwards.
//!
//! Called by the order task only. `rfc2136` sends TSIG-signed dynamic updates to the zone's
//! primary; `exec` runs the operator's program; `propagation` asks the authoritative servers
//! directly (a recursive resolver's cache could say "not there" for minutes).

mod exec;
mod propagation;
mod rfc2136;

use std::net::SocketAddr;
use std::path::PathBuf;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Name;

use crate::config::{DnsKind, DnsProvider};

/// One `_acme-challenge.NAME TXT VALUE` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxtRecord {
    /// `_acme-challenge.` and the name validated, without a trailing dot.
    pub fqdn: String,
    /// The base64url SHA-256 digest of the key authorization.
    pub value: String,
}

/// Why a record could not be written, removed, or seen.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The primary did not apply the update.
    #[error("the update of {fqdn} at {server} failed: {reason}")]
    Update {
        /// The record's name.
        fqdn: String,
        /// The primary server.
        server: SocketAddr,
        /// The response code, or what broke.
        reason: String,
    },
    /// No zone containing the name was found at the primary.
    #[error("cannot find the zone of {fqdn} at {server}: {reason}")]
    Zone {
        /// The record's name.
        fqdn: String,
        /// The primary server.
        server: SocketAddr,
        /// What the server said.
        reason: String,
    },
    /// The exec provider's program failed.
    #[error("`{} {action} {fqdn} ...` failed: {reason}", command.display())]
    Exec {
        /// The program.
        command: PathBuf,
        /// `present` or `cleanup`.
        action: &'static str,
        /// The record's name.
        fqdn: String,
        /// Exit status and the end of its stderr, or why it could not run.
        reason: String,
    },
    /// The zone's authoritative servers could not be found.
    #[error("cannot find the authoritative servers of {fqdn}: {reason}")]
    Nameservers {
        /// The record's name.
        fqdn: String,
        /// What the resolver said.
        reason: String,
    },
    /// The record was not served by every authoritative server in time.
    #[error("{fqdn} TXT was not visible on {servers} after {seconds} s")]
    NotVisible {
        /// The record's name.
        fqdn: String,
        /// The servers still without it.
        servers: String,
        /// The `propagation_timeout`.
        seconds: u64,
    },
}

/// Adds `record` (beside any other value of the name: a wildcard and its parent share one).
///
/// # Errors
/// When the provider does not confirm the write.
pub async fn present(provider: &DnsProvider, record: &TxtRecord) -> Result<(), DnsError> {
    match &provider.kind {
        DnsKind::Rfc2136 { server, zone, key } => {
            rfc2136::update(*server, zone.as_deref(), key, record, true).await
        }
        DnsKind::Exec { command } => exec::run(command, "present", record).await,
    }
}

/// Removes `record`, and only it.
///
/// # Errors
/// When the provider does not confirm the removal.
pub async fn clean_up(provider: &DnsProvider, record: &TxtRecord) -> Result<(), DnsError> {
    match &provider.kind {
        DnsKind::Rfc2136 { server, zone, key } => {
            rfc2136::update(*server, zone.as_deref(), key, record, false).await
        }
        DnsKind::Exec { command } => exec::run(command, "cleanup", record).await,
    }
}

/// Waits until every record is served by every server that answers for its zone: the
/// provider's `nameservers` if set, else the zone's NS (falling back, for rfc2136, to the
/// primary), for at most `propagation_timeout`.
///
/// # Errors
/// `NotVisible` naming the servers that still lack a record, or `Nameservers`.
pub async fn wait_visible(provider: &DnsProvider, records: &[TxtRecord]) -> Result<(), DnsError> {
    let primary = match &provider.kind {
        DnsKind::Rfc2136 { server, .. } => Some(*server),
        DnsKind::Exec { .. } => None,
    };
    for record in records {
        let servers = if provider.nameservers.is_empty() {
            propagation::authoritative(&record.fqdn, primary).await?
        } else {
            provider.nameservers.clone()
        };
        propagation::wait(record, &servers, provider.propagation_timeout).await?;
    }
    Ok(())
}

/// `text` as an absolute DNS name; `_` is allowed, as `_acme-challenge` needs.
fn name(text: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(text).map_err(|error| format!("bad name {text:?}: {error}"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// A response code as operators read it: `NotAuth (Not authorized, rcode 9)`.
fn rcode(code: ResponseCode) -> String {
    format!("{code:?} ({code}, rcode {})", u16::from(code))
}
