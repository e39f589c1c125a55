//! rustls certificate selection by SNI over the [`CertStore`] snapshot.
//!
//! Called by rustls inside every handshake on the connection's task.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::CertStore;

/// Picks the certificate for a handshake from the current snapshot.
#[derive(Clone, Debug)]
pub struct SniResolver {
    store: CertStore,
}

impl SniResolver {
    /// A resolver reading `store`.
    pub fn new(store: CertStore) -> Self {
        Self { store }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Runs inside the handshake: no I/O, no locks. The acceptor has already refused names
        // with no certificate (unrecognized_name), so `None` here only means a racing removal.
        self.store.lookup(hello.server_name())
    }
}
