//! TLS termination: which certificate a handshake gets, and where certificates come from.
//!
//! `store` holds the served certificates as one swappable snapshot; `resolver` picks from it by
//! SNI inside rustls; `acceptor` runs one handshake with a deadline; `challenge` holds the
//! TLS-ALPN-01 certificates a CA's validation handshake gets; `internal` is the local CA
//! for `tls: internal` sites; `selfcheck` asks our own listener what it serves; `disk` makes
//! certificate and key writes crash-safe.

mod acceptor;
mod challenge;
pub mod client;
pub mod disk;
mod error;
mod internal;
mod resolver;
mod selfcheck;
mod store;

pub use acceptor::{Handshake, TlsAcceptor};
pub use challenge::{ACME_TLS_ALPN, ChallengeCerts, MissingAnswers, OnDemandCerts};
pub use error::TlsError;
pub use internal::InternalCa;
pub use resolver::SniResolver;
pub use selfcheck::{SelfCheckError, served_serial};
pub use store::{CertStore, LeafFacts, Published};
