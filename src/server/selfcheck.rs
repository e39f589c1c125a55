//! The server's [`SelfCheck`]: after each ACME publish, a handshake with our own listener per
//! name confirms the new certificate is what clients get.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use tracing::{error, info};

use crate::acme::SelfCheck;
use crate::config::Site;
use crate::observe::Chain;
use crate::tls::{self, Published};

/// Confirms after each ACME publish that our own listener serves the new certificate.
pub(crate) struct ListenerCheck {
    provider: Arc<CryptoProvider>,
    addr: SocketAddr,
}

/// How long the self-check handshake may take; it runs on our own loopback listener.
const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl ListenerCheck {
    /// Checks through the listener bound at `addr`.
    pub(crate) fn new(provider: Arc<CryptoProvider>, addr: SocketAddr) -> Self {
        Self {
            provider,
            addr: loopback_of(addr),
        }
    }
}

impl SelfCheck for ListenerCheck {
    fn verify<'a>(
        &'a self,
        site: &'a Site,
        published: &'a Published,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            // A wildcard is not a name a client can ask for; its concrete names are covered by it.
            for host in site.hosts.iter().filter(|h| !h.is_wildcard()) {
                match tls::served_serial(
                    self.provider.clone(),
                    self.addr,
                    host.as_str(),
                    SELF_CHECK_TIMEOUT,
                )
                .await
                {
                    Ok(serial) if serial == published.serial => {
                        info!(site = %site.name, host = %host, serial = %serial, "listener serves the new certificate");
                    }
                    Ok(serial) => error!(
                        site = %site.name, host = %host, served = %serial, expected = %published.serial,
                        "listener serves another certificate than the one just published"
                    ),
                    Err(err) => {
                        error!(site = %site.name, host = %host, error = %Chain(&err), "cannot confirm the served certificate")
                    }
                }
            }
        })
    }
}

/// Where to reach our own listener: a wildcard bind address is reachable on loopback.
fn loopback_of(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}
