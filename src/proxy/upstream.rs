//! Origin servers: one pooled HTTP/1.1 client per upstream, and round-robin choice among them.
//!
//! Pools are created with the route table and live as long as it does; requests borrow
//! connections from them on the request's own task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{UpstreamDefaults, UpstreamUrl, Upstreams};
use crate::observe::metrics::{UpstreamFailure, UpstreamMetrics};
use crate::proxy::ProxyError;
use crate::proxy::body::Counted;

/// The request body type sent to origins: the client's body, streamed and counted.
pub(crate) type UpstreamBody = Counted<Incoming>;

/// The origins of one route.
#[derive(Debug)]
pub struct UpstreamPool {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    response_header_timeout: Duration,
    settings: Upstreams,
}

/// One origin and its connection pool.
#[derive(Debug)]
pub struct Upstream {
    /// Where it is.
    pub url: UpstreamUrl,
    /// `url` as text, for the access log.
    label: String,
    client: Client<HttpConnector, UpstreamBody>,
    metrics: UpstreamMetrics,
}

impl UpstreamPool {
    /// One pooled client per origin of `settings`, configured from `defaults`.
    pub fn new(settings: &Upstreams, defaults: &UpstreamDefaults) -> Self {
        let upstreams = settings
            .targets
            .iter()
            .map(|target| Upstream::new(target.url.clone(), defaults))
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

impl Upstream {
    fn new(url: UpstreamUrl, defaults: &UpstreamDefaults) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(defaults.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(defaults.pool_idle_timeout)
            .pool_max_idle_per_host(defaults.pool_max_idle)
            .build(connector);
        let label = url.to_string();
        let metrics = UpstreamMetrics::new(&label);
        Self {
            url,
            label,
            client,
            metrics,
        }
    }

    /// `url` as text, formatted once.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends `request` and waits up to `timeout` for the response head.
    ///
    /// # Errors
    /// `Upstream` when the origin cannot be reached or breaks the exchange (502),
    /// `UpstreamTimeout` when no head arrives in time (504).
    ///
    /// # Cancel safety
    /// Dropping the future drops the request and its pooled connection; nothing leaks.
    pub(crate) async fn send(
        &self,
        request: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<hyper::Response<Incoming>, ProxyError> {
        self.metrics.request();
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(source)) => {
                self.metrics.failure(if source.is_connect() {
                    UpstreamFailure::Connect
                } else {
                    UpstreamFailure::Exchange
                });
                Err(ProxyError::Upstream {
                    upstream: self.url.clone(),
                    source,
                })
            }
            Err(_) => {
                self.metrics.failure(UpstreamFailure::Timeout);
                Err(ProxyError::UpstreamTimeout {
                    upstream: self.url.clone(),
                    timeout,
                })
            }
        }
    }
}
