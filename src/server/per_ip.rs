//! `downstream.max_connections_per_ip`: connections one client holds open at once on a listener.
//!
//! The accept loop asks [`PerIp::admit`] for every connection it accepts, before the PROXY
//! header or the handshake, so the client is the TCP peer: an IPv4 address, or an IPv6 /64
//! (`policy::client_ip::prefix`). A client at its cap gets its connection closed at once; a
//! counter goes up and (at most once a minute) a warning says so. Behind an L4 balancer that
//! speaks the PROXY protocol every client has the balancer's address: leave the cap off there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::counter::Counter;
use tracing::warn;

use crate::observe::logging::Throttle;
use crate::observe::metrics;
use crate::policy::client_ip;

/// Open connections per client on one listener.
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One listener's count of open connections per client, if capped.
pub(crate) struct PerIp {
    max: usize,
    open: Counts,
    listener: &'static str,
    refused: Counter,
    warnings: Throttle,
}

/// One admitted connection's place in its client's count, given back on drop.
#[derive(Debug)]
pub(crate) struct Held {
    open: Counts,
    client: IpAddr,
}

impl PerIp {
    /// The count for `listener`; `None` when `max` is (no cap: nothing is counted).
    pub(crate) fn new(listener: &'static str, max: Option<usize>) -> Option<Self> {
        Some(Self {
            max: max?,
            open: Counts::default(),
            listener,
            refused: metrics::per_ip_refused(listener),
            warnings: Throttle::default(),
        })
    }

    /// Counts a connection from `peer`: its place (boxed: a connection's task holds it, and
    /// most listeners count nothing), or `None` when the client already holds `max`.
    pub(crate) fn admit(&mut self, peer: IpAddr) -> Option<Box<Held>> {
        let client = client_ip::prefix(peer);
        let admitted = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let count = open.entry(client).or_default();
            let admitted = *count < self.max;
            *count += usize::from(admitted);
            admitted
        };
        if admitted {
            return Some(Box::new(Held {
                open: self.open.clone(),
                client,
            }));
        }
        self.refused.inc();
        if self.warnings.ready() {
            warn!(
                listener = self.listener,
                %client,
                max_connections_per_ip = self.max,
                "client at its connection cap: closing its new connections"
            );
        }
        None
    }

    /// Clients holding a connection now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_max_and_a_closed_connection_frees_its_place() {
        // The refusal counter lives in the process-wide registry: a listener name of its own
        // keeps the other tests' refusals, run in parallel, out of this count.
        let mut per_ip = PerIp::new("per_ip_counts", Some(2)).expect("capped");
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = per_ip.admit(a).expect("first");
        let _second = per_ip.admit(a).expect("second");
        assert!(per_ip.admit(a).is_none(), "a third from the same client");
        let _other = per_ip.admit(b).expect("another client is not affected");
        drop(first);
        let _third = per_ip.admit(a).expect("a place was freed");
        assert!(per_ip.admit(a).is_none());
        assert_eq!(per_ip.refused.get(), 2);
    }

    #[test]
    fn an_ipv6_64_is_one_client_and_forgotten_once_it_holds_nothing() {
        let mut per_ip = PerIp::new("per_ip_v6", Some(1)).expect("capped");
        let held = per_ip
            .admit("2001:db8:1:2::1".parse().unwrap())
            .expect("first");
        assert!(
            per_ip
                .admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        let _next = per_ip
            .admit("2001:db8:1:3::1".parse().unwrap())
            .expect("the next /64");
        drop(held);
        assert_eq!(
            per_ip.clients(),
            1,
            "a client with nothing open is not kept"
        );
    }

    #[test]
    fn no_cap_counts_nothing() {
        assert!(PerIp::new("test", None).is_none());
    }
}
