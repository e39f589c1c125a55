//! One origin server: its connection pool and client, and the one call that sends it a request.
//!
//! Created with the route table (by `balance::UpstreamPool`) and live as long as it does;
//! requests borrow connections on the request's own task.

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Timeouts, UpstreamDefaults, UpstreamTarget, UpstreamUrl};
use crate::observe::metrics::{UpstreamFailure, UpstreamMetrics};
use crate::proxy::body::UpstreamBody;
use crate::proxy::{ProxyBody, ProxyError};

/// One origin and its connection pool.
#[derive(Debug)]
pub struct Upstream {
    /// Where it is.
    pub url: UpstreamUrl,
    /// `url` as text, for the access log.
    label: String,
    client: Client<HttpConnector, UpstreamBody>,
    metrics: UpstreamMetrics,
    in_flight: AtomicUsize,
    max_conns: Option<usize>,
}

impl Upstream {
    /// An origin with an empty pool, configured from `target` and `defaults`.
    pub(crate) fn new(target: &UpstreamTarget, defaults: &UpstreamDefaults) -> Self {
        let url = target.url.clone();
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
            in_flight: AtomicUsize::new(0),
            max_conns: target.max_conns,
        }
    }

    /// `url` as text, formatted once.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Requests in flight to this origin now (for `least_conn` and `max_conns`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether one more request stays within `max_conns`.
    pub fn has_capacity(&self) -> bool {
        self.max_conns.is_none_or(|max| self.in_flight() < max)
    }

    /// Sends `request` and waits up to `timeouts.response_header` for the response head.
    ///
    /// # Errors
    /// A [`SendError`] saying what failed and, when the request was provably never sent (no
    /// connection could be made), handing the request back so it can be retried elsewhere.
    ///
    /// # Cancel safety
    /// Dropping the future drops the request and its pooled connection; nothing leaks.
    pub(crate) async fn send(
        &self,
        request: Request<UpstreamBody>,
        timeouts: &Timeouts,
    ) -> Result<Response<ProxyBody>, SendError> {
        self.metrics.request();
        let _in_flight = InFlight::enter(&self.in_flight);
        let timeout = timeouts.response_header;
        let failure = match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => return Ok(response.map(BodyExt::boxed)),
            Ok(Err(source)) => {
                let failure = if source.is_connect() {
                    UpstreamFailure::Connect
                } else {
                    UpstreamFailure::Exchange
                };
                (
                    failure,
                    ProxyError::Upstream {
                        upstream: self.url.clone(),
                        source,
                    },
                )
            }
            Err(_) => (
                UpstreamFailure::Timeout,
                ProxyError::UpstreamTimeout {
                    upstream: self.url.clone(),
                    timeout,
                },
            ),
        };
        self.metrics.failure(failure.0);
        Err(SendError {
            failure: failure.0,
            // The legacy client consumes the request even when it never connected.
            request: None,
            error: failure.1,
        })
    }
}

/// Why [`Upstream::send`] failed.
#[allow(dead_code)] // `failure` and `request` feed the retry step being built
pub(crate) struct SendError {
    /// What kind of failure (connect failures never reached the origin).
    pub(crate) failure: UpstreamFailure,
    /// The request, handed back when it was never sent.
    pub(crate) request: Option<Request<UpstreamBody>>,
    /// The error the client would see.
    pub(crate) error: ProxyError,
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
