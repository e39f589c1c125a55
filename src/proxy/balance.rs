//! The origins of one route and how the next one is chosen.
//!
//! Built with the route table (and carried over a reload when the route's upstream settings
//! did not change); read per request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::{UpstreamDefaults, UpstreamUrl, Upstreams};
use crate::proxy::Upstream;

/// The origins of one route.
#[derive(Debug)]
pub struct UpstreamPool {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    response_header_timeout: Duration,
    settings: Upstreams,
}

impl UpstreamPool {
    /// One pooled client per origin of `settings`, configured from `defaults`.
    pub fn new(settings: &Upstreams, defaults: &UpstreamDefaults) -> Self {
        let upstreams = settings
            .targets
            .iter()
            .map(|target| Upstream::new(target, settings, defaults))
            .collect();
        Self {
            upstreams,
            next: AtomicUsize::new(0),
            response_header_timeout: settings.timeouts.response_header,
            settings: settings.clone(),
        }
    }

    /// The settings the pool was built from.
    pub fn settings(&self) -> &Upstreams {
        &self.settings
    }

    /// The next origin in round-robin order.
    pub fn pick(&self) -> &Upstream {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.upstreams[n % self.upstreams.len()]
    }

    /// The origins, in configured order.
    pub fn urls(&self) -> Vec<UpstreamUrl> {
        self.upstreams.iter().map(|u| u.url.clone()).collect()
    }

    /// How long an origin may take to send its response head.
    pub fn response_header_timeout(&self) -> Duration {
        self.response_header_timeout
    }
}
