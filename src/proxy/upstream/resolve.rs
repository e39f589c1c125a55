//! The addresses of one origin: fixed for an IP literal, looked up with hickory-resolver for a
//! host name (through `upstream.nameservers`, or the system configuration when empty).
//!
//! Read on every new connection ([`Addresses::pick`], round robin, no lock); written by
//! [`Addresses::refresh`], which the upstream's re-resolve task calls every `resolve_every`
//! (and a connect calls once when no lookup has succeeded yet).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, GOOGLE, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::{UpstreamDefaults, UpstreamUrl};
use crate::proxy::error::ConnectError;

/// Where an origin can be reached now.
pub(crate) struct Addresses {
    current: ArcSwap<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// `None` for IP-literal origins, which never touch DNS.
    lookup: Option<Lookup>,
}

struct Lookup {
    resolver: TokioResolver,
    host: String,
    port: u16,
}

impl Addresses {
    /// The addresses of `url`: the literal itself, or none until the first lookup.
    pub(crate) fn new(url: &UpstreamUrl, defaults: &UpstreamDefaults) -> Self {
        let host = url.authority().host();
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let (current, lookup) = match literal.parse::<IpAddr>() {
            Ok(ip) => (vec![SocketAddr::new(ip, url.port())], None),
            Err(_) => (
                Vec::new(),
                Some(Lookup {
                    resolver: resolver(&defaults.nameservers, defaults.resolve_every),
                    host: host.to_owned(),
                    port: url.port(),
                }),
            ),
        };
        Self {
            current: ArcSwap::from_pointee(current),
            next: AtomicUsize::new(0),
            lookup,
        }
    }

    /// Whether the origin is named by a host name (and so is re-resolved).
    pub(crate) fn is_name(&self) -> bool {
        self.lookup.is_some()
    }

    /// The next address in round-robin order, looking the name up first if that never succeeded.
    ///
    /// # Errors
    /// [`ConnectError::Resolve`] when the name has no address.
    pub(crate) async fn pick(&self) -> Result<SocketAddr, ConnectError> {
        let mut current = self.current.load_full();
        if current.is_empty() {
            self.refresh().await?;
            current = self.current.load_full();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        current
            .get(n % current.len().max(1))
            .copied()
            .ok_or_else(|| {
                // refresh() never stores an empty set, so only a literal-less race ends here.
                ConnectError::Resolve {
                    host: self.host().to_owned(),
                    source: Box::new(NetError::from("lookup returned no addresses")),
                }
            })
    }

    /// Looks the name up again. Returns the new set when it differs from the old one; on
    /// failure the old set stays in use (a DNS outage must not take a working origin down).
    ///
    /// # Errors
    /// [`ConnectError::Resolve`] when the lookup failed or found nothing.
    pub(crate) async fn refresh(&self) -> Result<Option<Arc<Vec<SocketAddr>>>, ConnectError> {
        let Some(lookup) = &self.lookup else {
            return Ok(None);
        };
        let error = |source| ConnectError::Resolve {
            host: lookup.host.clone(),
            source: Box::new(source),
        };
        let found = lookup
            .resolver
            .lookup_ip(lookup.host.as_str())
            .await
            .map_err(error)?;
        let mut addrs: Vec<SocketAddr> = found
            .iter()
            .map(|ip| SocketAddr::new(ip, lookup.port))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(error(NetError::from("lookup returned no addresses")));
        }
        if **self.current.load() == addrs {
            return Ok(None);
        }
        let addrs = Arc::new(addrs);
        self.current.store(addrs.clone());
        Ok(Some(addrs))
    }

    fn host(&self) -> &str {
        self.lookup.as_ref().map_or("", |l| l.host.as_str())
    }
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addresses")
            .field("current", &self.current.load())
            .field("host", &self.host())
            .finish()
    }
}

/// A resolver asking `nameservers` (UDP, then TCP for truncated answers) or, when empty, the
/// servers of /etc/resolv.conf, keeping answers at most `resolve_every`. Also used by the
/// on-demand TLS check that a name resolves to this host.
pub(crate) fn resolver(nameservers: &[SocketAddr], resolve_every: Duration) -> TokioResolver {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(provider.clone()).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the system DNS configuration; using defaults");
            TokioResolver::builder_with_config(ResolverConfig::udp_and_tcp(&GOOGLE), provider)
        })
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                udp.port = addr.port();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        TokioResolver::builder_with_config(config, provider)
    };
    // Answers are cached no longer than the re-resolve interval, so each refresh sees a change
    // made since the previous one even when the record's TTL is longer.
    builder.options_mut().positive_max_ttl = Some(resolve_every);
    builder
        .build()
        .expect("a resolver without DNS-over-TLS features builds without failing")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> UpstreamDefaults {
        UpstreamDefaults {
            connect_timeout: Duration::from_secs(1),
            response_header_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
            resolve_every: Duration::from_secs(1),
            nameservers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn ip_literal_origins_never_touch_dns() {
        for (url, addr) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("https://[::1]", "[::1]:443"),
        ] {
            let addrs = Addresses::new(&UpstreamUrl::parse(url).unwrap(), &defaults());
            assert!(!addrs.is_name());
            assert_eq!(addrs.pick().await.unwrap(), addr.parse().unwrap());
            assert_eq!(addrs.refresh().await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn host_name_origins_start_with_no_address() {
        let url = UpstreamUrl::parse("http://origin.test:80").unwrap();
        let addrs = Addresses::new(&url, &defaults());
        assert!(addrs.is_name());
        assert!(addrs.current.load().is_empty());
    }
}
