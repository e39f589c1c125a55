//! Automatic certificates through ACME (RFC 8555), validated by HTTP-01, TLS-ALPN-01 or DNS-01.
//!
//! [`RenewalScheduler`] is the entry point: the server builds it from the configuration with the
//! shared [`crate::tls::CertStore`] and [`ChallengeStore`] and runs it until shutdown. It publishes
//! stored certificates, then obtains or renews the rest, one short task per due site (`renewal`),
//! each issuance going through [`order::issue`] with the account kept by [`AccountSlot`]. Time
//! decisions are pure functions in [`timing`]; what is stored, and where, in [`storage`].

mod account;
mod challenge;
pub mod dns;
mod error;
mod http;
mod on_demand;
pub mod order;
mod renewal;
mod retry;
mod scheduler;
mod status;
pub mod storage;
pub mod timing;

pub use account::{AccountSlot, ca_id};
pub use challenge::{ChallengeSource, ChallengeStore, TLS_ALPN_PREFIX, tls_alpn_key};
pub use error::{AcmeError, HostProblem, Step};
pub use on_demand::OnDemandService;
pub use order::{Issued, OrderRequest, issue};
pub use scheduler::{NoSelfCheck, RenewalScheduler, SelfCheck, Tuning};
pub use status::{CertificateStatus, SiteStatus, status, status_in};
pub use storage::{DiskStorage, Item, Meta, Storage, account_path};
