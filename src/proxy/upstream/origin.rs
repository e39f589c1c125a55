//! One origin server: its addresses, its pool of HTTP/1.1 connections, and the one call that
//! sends it a request.
//!
//! Created with the route table (by `balance::UpstreamPool`) and live as long as it does.
//! Requests run on the request's own task: checkout, connect if needed, send; no task or box per
//! request. A request whose body is in memory also does its connection's I/O (`h1`); a hyper
//! connection's I/O runs in a task of its own. Each upstream has one maintenance future (idle
//! expiry, DNS re-resolution), returned by [`Upstream::new`] for the server to spawn on its
//! tracker, that ends when the `Upstream` is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::Either;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::{Request, Response};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{
    Timeouts, UpstreamDefaults, UpstreamTarget, UpstreamUrl, Upstreams, is_idempotent,
};
use crate::observe::Chain;
use crate::observe::metrics::{UpstreamFailure, UpstreamMetrics};
use crate::proxy::body::{IdleTimeout, UpstreamBody};
use crate::proxy::error::{ConnectError, ExchangeError};
use crate::proxy::forward;
use crate::proxy::upstream::connect::Connector;
use crate::proxy::upstream::h1::{self, Wire};
use crate::proxy::upstream::lease::{InFlight, PooledBody};
use crate::proxy::upstream::pool::{Conn, Pool};
use crate::proxy::upstream::resolve::Addresses;
use crate::proxy::{ProxyBody, ProxyError};

/// One origin and its connection pool.
#[derive(Debug)]
pub struct Upstream {
    /// Where it is.
    pub url: UpstreamUrl,
    /// `url` as text, for the access log (shared: every request's record holds it).
    label: Arc<str>,
    pool: Arc<Pool>,
    addresses: Arc<Addresses>,
    connector: Connector,
    metrics: UpstreamMetrics,
    max_conns: Option<usize>,
    /// Stops the maintenance task when the upstream goes away (with its route table).
    _maintenance: DropGuard,
}

impl Upstream {
    /// An origin with an empty pool: `target` from the route's `upstreams`, TLS roots from its
    /// `ca:`, pool and DNS settings from `defaults`; and its maintenance (idle expiry, DNS
    /// re-resolution) for the server to spawn, which ends when the `Upstream` is dropped.
    pub(crate) fn new(
        target: &UpstreamTarget,
        upstreams: &Upstreams,
        defaults: &UpstreamDefaults,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let url = target.url.clone();
        let label: Arc<str> = url.to_string().into();
        let tasks = TaskTracker::new();
        let pool = Arc::new(Pool::new(
            defaults.pool_max_idle,
            defaults.pool_idle_timeout,
        ));
        let addresses = Arc::new(Addresses::new(&url, defaults));
        let stop = CancellationToken::new();
        let maintenance = maintain(
            Arc::downgrade(&pool),
            addresses.clone(),
            label.to_string(),
            Schedule {
                sweep_every: defaults.pool_idle_timeout.max(MIN_SWEEP),
                resolve_every: defaults.resolve_every,
            },
            stop.clone(),
        );
        let upstream = Self {
            connector: Connector::new(&url, upstreams.ca.as_deref(), tasks),
            metrics: UpstreamMetrics::new(&label),
            url,
            label,
            pool,
            addresses,
            max_conns: target.max_conns,
            _maintenance: stop.drop_guard(),
        };
        (upstream, maintenance)
    }

    /// `url` as text, formatted once.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// [`Upstream::label`], shared rather than copied.
    pub(crate) fn label_shared(&self) -> Arc<str> {
        self.label.clone()
    }

    /// Requests in flight to this origin now, each counted until its response body ends or is
    /// dropped (for `least_conn` and `max_conns`).
    pub fn in_flight(&self) -> usize {
        self.pool.in_flight()
    }

    /// Whether one more request stays within `max_conns`.
    pub fn has_capacity(&self) -> bool {
        self.max_conns.is_none_or(|max| self.in_flight() < max)
    }

    /// Sends `request` (origin-form target, written as given) on an idle connection, or a new
    /// one, and waits up to `timeouts.response_header` for the response head, which comes
    /// without hop-by-hop fields unless it is a 101 (see `service::forward`). A pooled
    /// connection found closed before the request was written is replaced transparently.
    /// A request whose body is in memory takes the lean path ([`Upstream::send_lean`]).
    ///
    /// # Errors
    /// A [`SendError`] saying what failed and, when the request was provably never sent (no
    /// connection could be made), handing the request back so it can be retried elsewhere.
    ///
    /// # Cancel safety
    /// Dropping the future drops the request and its connection; nothing leaks.
    pub(crate) fn send<'a>(
        &'a self,
        request: Request<UpstreamBody>,
        timeouts: &'a Timeouts,
    ) -> impl Future<Output = Result<Response<ProxyBody>, SendError>> + Send + 'a {
        self.send_by(request, timeouts, Instant::now() + timeouts.response_header)
    }

    /// [`Upstream::send`] with the response head due by `head_by` (at most
    /// `timeouts.response_header` from now): a caller that has just read the clock saves a
    /// second read.
    pub(crate) fn send_by<'a>(
        &'a self,
        request: Request<UpstreamBody>,
        timeouts: &'a Timeouts,
        head_by: Instant,
    ) -> impl Future<Output = Result<Response<ProxyBody>, SendError>> + Send + 'a {
        // A plain function choosing a future, not an `async fn` awaiting one: every request's
        // future carries this one, and an extra async level would add its own copy of the
        // request. The hyper path is boxed for the same reason (most requests are lean).
        if request.body().as_buffered().is_some() && h1::suits(request.method(), request.headers())
        {
            Either::Left(self.send_lean(request, timeouts, head_by))
        } else {
            Either::Right(Box::pin(self.send_hyper(request, timeouts, head_by)))
        }
    }

    /// [`Upstream::send`] through hyper's client: streamed bodies and upgrades.
    async fn send_hyper(
        &self,
        request: Request<UpstreamBody>,
        timeouts: &Timeouts,
        head_by: Instant,
    ) -> Result<Response<ProxyBody>, SendError> {
        self.metrics.request();
        let in_flight = InFlight::enter(&self.pool);
        let mut request = with_host(request, &self.url);
        let asked_to_switch = request.headers().contains_key(http::header::UPGRADE);
        // Each pass either consumes one idle connection or connects anew and returns, so the
        // loop runs at most `pool_max_idle + 1` times.
        loop {
            let (mut conn, reused) = match self.pool.checkout() {
                Some(conn) => (conn, true),
                // Boxed: the connect future is a few KiB that every request's future would
                // carry, while most requests find an idle connection.
                None => match Box::pin(self.connect(timeouts.connect)).await {
                    Ok(conn) => (conn, false),
                    Err(source) => return Err(self.connect_failed(request, source)),
                },
            };
            let head_by = head_due(reused, head_by, timeouts);
            // A connection checked in as its last response ended may still be finishing that
            // exchange; wait for it (a closed one fails at once and is replaced).
            if reused && !conn.sender.is_ready() {
                let ready = tokio::time::timeout_at(head_by, conn.sender.ready());
                if !matches!(ready.await, Ok(Ok(()))) {
                    continue;
                }
            }
            let timeout = timeouts.response_header;
            let sent =
                tokio::time::timeout_at(head_by, conn.sender.try_send_request(request)).await;
            match sent {
                Ok(Ok(mut response)) => {
                    // After a 101 the connection belongs to the tunnel, never to the pool; the
                    // caller strips its head, knowing whether the client asked to switch. A
                    // switch nobody asked for is the origin's fault, as on the lean path.
                    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    if switched && !asked_to_switch {
                        return Err(self.exchange_failed(None, h1::WireError::UnexpectedSwitch));
                    }
                    let reusable =
                        !switched && !forward::drop_overridden_length(response.headers_mut());
                    if !switched {
                        forward::strip_hop_by_hop(response.headers_mut(), false);
                    }
                    let conn = reusable.then_some(conn);
                    return Ok(response.map(|body| {
                        IdleTimeout::new(PooledBody::new(body, conn, in_flight), timeouts.idle)
                            .boxed()
                    }));
                }
                Ok(Err(mut failed)) => match failed.take_message() {
                    // hyper found the pooled connection closed before writing a byte.
                    Some(unsent) if reused => request = unsent,
                    unsent => return Err(self.exchange_failed(unsent, failed.into_error())),
                },
                Err(_) => return Err(self.timed_out(timeout)),
            }
        }
    }

    /// [`Upstream::send`] for a request whose body is in memory, over a lean connection (see
    /// `h1`). A pooled connection that the origin closed before answering is replaced when
    /// the request is idempotent; it may have reached the origin otherwise.
    async fn send_lean(
        &self,
        request: Request<UpstreamBody>,
        timeouts: &Timeouts,
        head_by: Instant,
    ) -> Result<Response<ProxyBody>, SendError> {
        self.metrics.request();
        let request = with_host(request, &self.url);
        let idempotent = is_idempotent(request.method());
        // Each pass either consumes one idle connection or connects anew and returns, so the
        // loop runs at most `pool_max_idle + 1` times.
        loop {
            // Counted before connecting, as `max_conns` and `least_conn` need; a failed pass
            // drops its count with its exchange and the next one counts again at once.
            let in_flight = InFlight::enter(&self.pool);
            let (wire, reused) = match self.pool.checkout_wire() {
                Some(wire) => (wire, true),
                // Boxed, as in `send_hyper`: most requests find an idle connection.
                None => match Box::pin(self.connect_wire(timeouts.connect)).await {
                    Ok(wire) => (wire, false),
                    Err(source) => return Err(self.connect_failed(request, source)),
                },
            };
            let head_by = head_due(reused, head_by, timeouts);
            let body = request.body().as_buffered().unwrap_or_default();
            let exchange = wire.exchange(
                request.method(),
                request.uri(),
                request.headers(),
                body,
                in_flight,
            );
            let timeout = timeouts.response_header;
            match tokio::time::timeout_at(head_by, exchange).await {
                Ok(Ok(response)) => {
                    return Ok(response.map(|body| IdleTimeout::new(body, timeouts.idle).boxed()));
                }
                Ok(Err(error)) if reused && idempotent && error.before_response() => {}
                Ok(Err(error)) => return Err(self.exchange_failed(None, error)),
                Err(_) => return Err(self.timed_out(timeout)),
            }
        }
    }

    async fn connect_wire(&self, timeout: Duration) -> Result<Wire, ConnectError> {
        let addr = self.addresses.pick().await?;
        self.connector.connect_wire(addr, timeout).await
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        let addr = self.addresses.pick().await?;
        let sender = self.connector.connect(addr, timeout).await?;
        Ok(Conn { sender, addr })
    }

    /// No connection could be made: the request was never sent and goes back to the caller.
    fn connect_failed(&self, request: Request<UpstreamBody>, source: ConnectError) -> SendError {
        let error = ProxyError::UpstreamConnect {
            upstream: self.label.clone(),
            source,
        };
        self.fail(UpstreamFailure::Connect, Some(request), error)
    }

    /// The exchange broke (`unsent`: the request, when hyper never wrote it).
    fn exchange_failed(
        &self,
        unsent: Option<Request<UpstreamBody>>,
        source: impl Into<ExchangeError>,
    ) -> SendError {
        let error = ProxyError::Upstream {
            upstream: self.label.clone(),
            source: source.into(),
        };
        self.fail(UpstreamFailure::Exchange, unsent, error)
    }

    /// No response head within `timeout`.
    fn timed_out(&self, timeout: Duration) -> SendError {
        let error = ProxyError::UpstreamTimeout {
            upstream: self.label.clone(),
            timeout,
        };
        self.fail(UpstreamFailure::Timeout, None, error)
    }

    fn fail(
        &self,
        failure: UpstreamFailure,
        request: Option<Request<UpstreamBody>>,
        error: ProxyError,
    ) -> SendError {
        SendError {
            failure,
            request,
            error,
        }
    }

    /// Counts a failure of this origin in `rampart_upstream_errors_total`; the caller decides
    /// whether it was the origin's (a client's broken body fails the exchange too).
    pub(crate) fn count_failure(&self, failure: UpstreamFailure) {
        self.metrics.failure(failure);
    }
}

/// Why [`Upstream::send`] failed.
pub(crate) struct SendError {
    /// What kind of failure (connect failures never reached the origin).
    pub(crate) failure: UpstreamFailure,
    /// The request, handed back when it was never sent.
    pub(crate) request: Option<Request<UpstreamBody>>,
    /// The error the client would see.
    pub(crate) error: ProxyError,
}

/// Sweeping more often than this would cost more than the idle sockets it frees.
const MIN_SWEEP: Duration = Duration::from_secs(1);

/// When the maintenance task wakes.
struct Schedule {
    sweep_every: Duration,
    resolve_every: Duration,
}

/// One upstream's background upkeep: expires idle connections and, for a host-name origin,
/// resolves it now and every `resolve_every`, dropping idle connections to addresses DNS no
/// longer returns. Holds the pool weakly and ends when `stop` is cancelled (the upstream's drop).
async fn maintain(
    pool: Weak<Pool>,
    addresses: Arc<Addresses>,
    label: String,
    schedule: Schedule,
    stop: CancellationToken,
) {
    let mut sweep = tokio::time::interval(schedule.sweep_every);
    let mut resolve = tokio::time::interval(schedule.resolve_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resolve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let resolving = addresses.is_name();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = sweep.tick() => match pool.upgrade() {
                Some(pool) => pool.sweep(),
                None => return,
            },
            _ = resolve.tick(), if resolving => {
                // Cancel-safe: a lookup dropped half-way changes nothing.
                let refreshed = tokio::select! {
                    () = stop.cancelled() => return,
                    refreshed = addresses.refresh() => refreshed,
                };
                match refreshed {
                    Ok(Some(now)) => {
                        info!(upstream = %label, "upstream resolves to {now:?}");
                        let Some(pool) = pool.upgrade() else { return };
                        pool.retain(|addr| now.contains(&addr));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        warn!(upstream = %label, error = %Chain(&error), "re-resolving upstream failed; keeping its addresses");
                    }
                }
            }
        }
    }
}

/// HTTP/1.1 requires a Host (RFC 9112 §3.2) and origins answer 400 without it. The caller
/// keeps the client's; a request that had none (HTTP/1.0) gets the origin's authority.
fn with_host(mut request: Request<UpstreamBody>, url: &UpstreamUrl) -> Request<UpstreamBody> {
    if !request.headers().contains_key(http::header::HOST) {
        let host = url
            .as_uri()
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
        if let Some(host) = host {
            request.headers_mut().insert(http::header::HOST, host);
        }
    }
    request
}

/// When the response head is due: by `head_by` on a pooled connection; on one made just now,
/// the wait starts once it is up, as it does for a pooled one.
fn head_due(reused: bool, head_by: Instant, timeouts: &Timeouts) -> Instant {
    if reused {
        head_by
    } else {
        Instant::now() + timeouts.response_header
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    fn defaults() -> UpstreamDefaults {
        UpstreamDefaults {
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle: 4,
            resolve_every: Duration::from_secs(30),
            nameservers: Vec::new(),
        }
    }

    fn upstream(url: &str, max_conns: Option<usize>) -> (Upstream, Timeouts) {
        let url = UpstreamUrl::parse(url).unwrap();
        let mut settings = Upstreams::with_defaults(vec![url], &defaults());
        settings.targets[0].max_conns = max_conns;
        let (upstream, _maintenance) = Upstream::new(&settings.targets[0], &settings, &defaults());
        (upstream, settings.timeouts)
    }

    fn get() -> Request<UpstreamBody> {
        Request::get("/")
            .header(http::header::HOST, "origin")
            .body(UpstreamBody::buffered(Bytes::new()))
            .unwrap()
    }

    /// An origin answering "hello" to everything, on 127.0.0.1.
    async fn origin() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(tcp),
                    service_fn(|_| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                    }),
                ));
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_request_counts_in_flight_until_its_response_body_is_dropped() {
        let (upstream, timeouts) = upstream(&origin().await, Some(1));
        assert!(upstream.has_capacity());
        let response = upstream.send(get(), &timeouts).await.ok().unwrap();
        assert_eq!(upstream.in_flight(), 1);
        assert!(!upstream.has_capacity(), "max_conns 1 is used up");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        assert_eq!(upstream.in_flight(), 0);
        assert!(upstream.has_capacity());
    }

    /// An origin whose every connection answers its first request and then, as if its
    /// keep-alive timeout struck just as the next request arrived, closes without answering.
    async fn one_answer_per_connection() -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                    tcp.write_all(answer).await.unwrap();
                    // The next request is read, then the connection closes unanswered.
                    let _ = tcp.read(&mut buf).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_idempotent_request_the_origin_closed_on_unanswered_goes_on_a_new_connection() {
        let (upstream, timeouts) = upstream(&one_answer_per_connection().await, None);
        for _ in 0..3 {
            let response = upstream.send(get(), &timeouts).await.ok().unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "hello");
        }
        // A POST may have reached the origin before it closed: it is not sent again.
        let post = Request::post("/")
            .header(http::header::HOST, "origin")
            .body(UpstreamBody::buffered(Bytes::new()))
            .unwrap();
        let Err(failed) = upstream.send(post, &timeouts).await else {
            panic!("the pooled connection closes unanswered");
        };
        assert_eq!(failed.failure, UpstreamFailure::Exchange);
    }

    #[tokio::test]
    async fn a_request_counts_in_flight_while_it_connects() {
        // Accepts TCP and never answers the TLS handshake: the connect stays pending.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (upstream, timeouts) = upstream(&format!("https://{addr}"), Some(1));
        let upstream = Arc::new(upstream);
        let sending = tokio::spawn({
            let upstream = upstream.clone();
            async move { upstream.send(get(), &timeouts).await.is_ok() }
        });
        let (_tcp, _) = listener.accept().await.unwrap();
        assert_eq!(upstream.in_flight(), 1, "counted during the handshake");
        assert!(
            !upstream.has_capacity(),
            "max_conns 1 is taken while connecting"
        );
        sending.abort();
        let _ = sending.await;
        assert_eq!(upstream.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_failed_connect_hands_the_request_back_for_another_origin() {
        // Bound and dropped at once: nothing listens there any more.
        let refused = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (upstream, timeouts) = upstream(&format!("http://{refused}"), None);
        let Err(failed) = upstream.send(get(), &timeouts).await else {
            panic!("nothing listens there");
        };
        assert_eq!(failed.failure, UpstreamFailure::Connect);
        assert!(failed.request.is_some(), "the unsent request comes back");
        assert!(matches!(failed.error, ProxyError::UpstreamConnect { .. }));
        assert_eq!(upstream.in_flight(), 0);
    }

    /// An origin that answers every request on every connection with `answer`; also how
    /// many connections it has accepted.
    async fn answering(answer: &'static [u8]) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        seen.clear();
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    #[tokio::test]
    async fn on_the_hyper_path_a_length_beside_chunked_goes_and_the_connection_is_not_reused() {
        let (url, accepted) = answering(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        let (upstream, timeouts) = upstream(&url, None);
        for _ in 0..2 {
            let head_by = Instant::now() + timeouts.response_header;
            let response = upstream
                .send_hyper(get(), &timeouts, head_by)
                .await
                .ok()
                .unwrap();
            assert!(
                !response
                    .headers()
                    .contains_key(http::header::CONTENT_LENGTH),
                "the length chunked overrides would cut the client's copy short"
            );
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "hello");
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "a connection that sent both framings is not reused"
        );
    }

    #[tokio::test]
    async fn on_the_hyper_path_a_switch_nobody_asked_for_is_the_origins_error() {
        let (url, _) =
            answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").await;
        let (upstream, timeouts) = upstream(&url, None);
        let head_by = Instant::now() + timeouts.response_header;
        let Err(failed) = upstream.send_hyper(get(), &timeouts, head_by).await else {
            panic!("a 101 to a request without Upgrade");
        };
        assert_eq!(failed.failure, UpstreamFailure::Exchange);
        assert!(matches!(
            failed.error,
            ProxyError::Upstream {
                source: ExchangeError::H1(h1::WireError::UnexpectedSwitch),
                ..
            }
        ));
    }

    #[test]
    fn a_request_without_host_gets_the_origins_authority_and_one_with_host_keeps_it() {
        let url = UpstreamUrl::parse("http://127.0.0.1:9000").unwrap();
        let bare = Request::builder()
            .uri("/1k")
            .body(UpstreamBody::buffered(bytes::Bytes::new()))
            .unwrap();
        let bare = with_host(bare, &url);
        assert_eq!(bare.headers()[http::header::HOST], "127.0.0.1:9000");
        let named = Request::builder()
            .uri("/1k")
            .header(http::header::HOST, "api.example.com")
            .body(UpstreamBody::buffered(bytes::Bytes::new()))
            .unwrap();
        assert_eq!(
            with_host(named, &url).headers()[http::header::HOST],
            "api.example.com"
        );
    }
}
