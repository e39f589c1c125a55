//! Binding the listeners and the accept loops of `:443` and `:80`.
//!
//! One task per accept loop and one per connection, all on the server's [`TaskTracker`]; each
//! stops taking connections when the stop token fires and lets open ones finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::{Downstream, Listen, ProxyProtocol};
use crate::observe::Chain;
use crate::observe::logging::Throttle;
use crate::observe::metrics::{self, OpenConnection};
use crate::proxy::{ConnInfo, Proxy};
use crate::server::ServerError;
use crate::server::calm::Calm;
use crate::server::hangup::{Hangup, SharedTcp};
use crate::server::idle::{Expiry, IdleIo, Timeouts};
use crate::server::open_requests::OpenRequests;
use crate::server::per_ip::{Held, PerIp};
use crate::server::proxy_protocol;
use crate::server::streams::{StreamExec, Streams};
use crate::tls::TlsAcceptor;

/// Pending connections the kernel may queue per listener.
const BACKLOG: i32 = 4096;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// TCP keep-alive on client connections: a peer that vanished (power off, a NAT forgetting the
/// flow) is found after 30 s of silence and three unanswered probes 10 s apart.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// The bound sockets, handed to the server (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    /// TLS listener.
    pub https: TcpListener,
    /// Plain HTTP listener (ACME HTTP-01 and redirects).
    pub http: TcpListener,
    /// Admin listener (health, readiness, metrics), when `listen.admin` is set.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses. `[::]` also accepts IPv4.
    ///
    /// # Errors
    /// `Bind` naming the address that failed.
    pub fn bind(listen: &Listen) -> Result<Self, ServerError> {
        Ok(Self {
            https: bind(listen.https)?,
            http: bind(listen.http)?,
            admin: listen.admin.map(bind).transpose()?,
        })
    }

    /// Adds an admin listener on `admin` (for sockets that came from elsewhere, e.g. systemd).
    ///
    /// # Errors
    /// `Bind` naming the address that failed.
    pub fn with_admin(mut self, admin: Option<SocketAddr>) -> Result<Self, ServerError> {
        self.admin = admin.map(bind).transpose()?;
        Ok(self)
    }

    /// Both on ephemeral loopback ports, no admin listener: for tests and benchmarks.
    ///
    /// # Errors
    /// `Bind` when loopback is unavailable.
    pub fn loopback() -> Result<Self, ServerError> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(Self {
            https: bind(any)?,
            http: bind(any)?,
            admin: None,
        })
    }

    /// As [`Listeners::loopback`], plus an admin listener on an ephemeral loopback port.
    ///
    /// # Errors
    /// `Bind` when loopback is unavailable.
    pub fn loopback_with_admin() -> Result<Self, ServerError> {
        Self::loopback()?.with_admin(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The TLS listener's address.
    pub fn https_addr(&self) -> SocketAddr {
        self.https
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The plain HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    // A restart must not wait for old connections in TIME_WAIT.
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// HTTP server settings per protocol, built once.
#[derive(Clone)]
pub(crate) struct HttpServers {
    h1: Arc<auto::Builder<TokioExecutor>>,
    h2: H2Settings,
    idle_timeout: Duration,
    /// HTTP/1 request heads must be complete this long after their first byte (see
    /// `server::idle`; hyper's own header timeout would also cut idle keep-alive connections).
    header_timeout: Duration,
    /// Writes refused this long, with nothing written, close the connection.
    send_timeout: Duration,
    /// Connections open at once per listener.
    max_connections: usize,
    /// Connections open at once per client and listener, if capped.
    max_connections_per_ip: Option<usize>,
}

/// HTTP/2 settings; the server is built per connection, around that connection's executor.
#[derive(Clone, Copy)]
struct H2Settings {
    max_streams: u32,
    max_header_list: u32,
}

impl H2Settings {
    fn server(self, exec: StreamExec) -> hyper::server::conn::http2::Builder<StreamExec> {
        let mut h2 = hyper::server::conn::http2::Builder::new(exec);
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(self.max_streams)
            .max_header_list_size(self.max_header_list);
        // No PINGs (`keep_alive_interval`): dead peers are found by TCP keep-alive (see
        // `keep_alive`), idle ones by the idle timer.
        h2
    }
}

impl HttpServers {
    /// What a connection's watch times: once it is closing gracefully, only a stalled send
    /// (the answers it finishes must still be read).
    fn timeouts(&self, closing: bool, http1: bool) -> Timeouts {
        Timeouts {
            idle: if closing {
                Duration::MAX
            } else {
                self.idle_timeout
            },
            header: (http1 && !closing).then_some(self.header_timeout),
            send: Some(self.send_timeout),
        }
    }

    pub(crate) fn new(limits: &Downstream) -> Self {
        // hyper-util's wrapper, though ALPN already chose the protocol: it builds hyper's
        // connection (and its 8 KiB read buffer) only once the first bytes arrive, which keeps
        // connections that never send a request small (17 KB less each, measured).
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        // No hyper timer: hyper's header read timeout (30 s by default once a timer is set)
        // also times the wait between keep-alive requests; ours runs from a head's first byte
        // (see `serve_connection`).
        h1.http1()
            .header_read_timeout(None)
            // hyper's watch for a client hanging up mid-request costs a read buffer per
            // request; `server::hangup` watches instead.
            .half_close(true)
            .keep_alive(true)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers);
        let h2 = H2Settings {
            max_streams: limits.h2_max_streams,
            max_header_list: u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
        };
        Self {
            h1: Arc::new(h1),
            h2,
            idle_timeout: limits.idle_timeout,
            header_timeout: limits.header_timeout,
            send_timeout: limits.send_timeout,
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
        }
    }
}

/// What happens on a TLS connection before its handshake.
#[derive(Clone, Debug)]
pub(crate) struct PreTls {
    /// `listen.proxy_protocol`, if set.
    pub(crate) proxy_protocol: Option<Arc<ProxyProtocol>>,
    /// The PROXY header must arrive within this (the handshake timeout), the handshake then
    /// gets its own.
    pub(crate) timeout: Duration,
}

/// Accepts TLS connections until `stop`, serving each on its own task.
pub(crate) async fn accept_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    pre_tls: PreTls,
    proxy: Proxy,
    servers: HttpServers,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let open = metrics::open_connections("https");
    let mut slots = Slots::new("https", &servers);
    while let Some((tcp, peer, slot)) = accept(&listener, &mut slots, &stop).await {
        let (acceptor, pre_tls, proxy, servers, stop) = (
            acceptor.clone(),
            pre_tls.clone(),
            proxy.clone(),
            servers.clone(),
            stop.clone(),
        );
        let open = Admitted {
            _open: OpenConnection::enter(&open),
            _slot: slot,
        };
        // No `async` block around it: one would hold the arguments a second time, in every
        // connection's task (see `serve_tls`).
        tasks.spawn(
            serve_tls(tcp, peer, acceptor, pre_tls, proxy, servers, stop, open)
                .instrument(info_span!("conn", %peer)),
        );
    }
}

/// Accepts plain HTTP connections until `stop`; `answer` is the `:80` role.
pub(crate) async fn accept_http(
    listener: TcpListener,
    answer: crate::server::http01::Http01,
    servers: HttpServers,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let open = metrics::open_connections("http");
    let mut slots = Slots::new("http", &servers);
    while let Some((tcp, peer, slot)) = accept(&listener, &mut slots, &stop).await {
        let (answer, servers, stop) = (answer.clone(), servers.clone(), stop.clone());
        let open = Admitted {
            _open: OpenConnection::enter(&open),
            _slot: slot,
        };
        tasks.spawn(
            async move {
                let _open = open;
                let service = service_fn(move |request| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer.respond(&request)) }
                });
                let io = IdleIo::new(tcp);
                // Answers here never wait: nothing to abandon when a client hangs up.
                serve_connection(io, &servers, service, None, stop).await;
            }
            .instrument(info_span!("http", %peer)),
        );
    }
}

/// Turns on TCP keep-alive for the connections `listener` accepts: the kernel copies it to each
/// one, so it costs no system call per connection, and finds dead peers without the HTTP/2
/// PINGs (a clock read on every frame) or anything at all on HTTP/1.1. Set before the accept
/// loops start, since the kernel makes the connection's socket when its handshake completes,
/// before `accept`; not at bind, so that sockets passed by systemd get it too.
pub(crate) fn keep_alive(listener: &TcpListener) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(error) = socket2::SockRef::from(listener).set_tcp_keepalive(&keepalive) {
        warn!(%error, "cannot turn on TCP keep-alive; dead clients are found by the idle timeout");
    }
}

/// A connection let in: counted among the open ones and holding one of the listener's slots
/// (and its place in its client's count) until dropped.
struct Admitted {
    _open: OpenConnection,
    _slot: Slot,
}

/// A listener's slot and, where clients are counted, the client's place.
struct Slot {
    _listener: OwnedSemaphorePermit,
    _client: Option<Box<Held>>,
}

/// A listener's connection slots, `downstream.max_connections` of them. With none free it
/// stops accepting, so the kernel's backlog, not Rampart's memory, holds the next clients;
/// each time, a counter goes up and (at most once a minute) a warning says so.
struct Slots {
    free: Arc<Semaphore>,
    max: usize,
    listener: &'static str,
    full: Counter,
    warnings: Throttle,
    per_ip: Option<PerIp>,
}

impl Slots {
    fn new(listener: &'static str, servers: &HttpServers) -> Self {
        let max = servers.max_connections;
        Self {
            free: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            listener,
            full: metrics::listener_full(listener),
            warnings: Throttle::default(),
            per_ip: PerIp::new(listener, servers.max_connections_per_ip),
        }
    }

    /// A free slot, waiting for one if need be; `None` once `stop` fires.
    async fn take(&mut self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.free.clone().try_acquire_owned() {
            return Some(slot);
        }
        self.full.inc();
        if self.warnings.ready() {
            warn!(
                listener = self.listener,
                max_connections = self.max,
                "listener full: not accepting until a connection closes"
            );
        }
        tokio::select! {
            () = stop.cancelled() => None,
            slot = self.free.clone().acquire_owned() => slot.ok(),
        }
    }
}

/// Waits for a free slot, then for the next connection whose client is under its cap (the
/// others are closed); `None` once `stop` fires (dropping the listener refuses new ones).
async fn accept(
    listener: &TcpListener,
    slots: &mut Slots,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, Slot)> {
    let slot = slots.take(stop).await?;
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Small responses must not wait for Nagle; failure only costs latency.
                    let _ = tcp.set_nodelay(true);
                    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; logs and
                    // X-Forwarded-For want a.b.c.d.
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    let client = match &mut slots.per_ip {
                        None => None,
                        Some(per_ip) => match per_ip.admit(peer.ip()) {
                            Some(held) => Some(held),
                            // Dropped unread: the client's kernel sees it closed.
                            None => continue,
                        },
                    };
                    return Some((tcp, peer, Slot { _listener: slot, _client: client }));
                }
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Serves one accepted connection: PROXY header, handshake, then HTTP until it ends; `open`
/// counts it among the listener's open connections until then.
///
/// Its future is every connection's memory beside the TLS and HTTP state it holds, idle or not
/// (`benches/bench.sh` measures bytes per idle connection), so what it holds across an await
/// is watched: a local once borrowed is kept to the end of its scope, which is why the
/// transport goes into its wrapper in a plain function.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn serve_tls(
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    acceptor: TlsAcceptor,
    pre_tls: PreTls,
    proxy: Proxy,
    servers: HttpServers,
    stop: CancellationToken,
    _open: Admitted,
) {
    if let Some(settings) = &pre_tls.proxy_protocol {
        let read = proxy_protocol::read_peer(&mut tcp, peer, settings);
        peer = tokio::select! {
            () = stop.cancelled() => return,
            read = tokio::time::timeout(pre_tls.timeout, read) => match read {
                Ok(Ok(source)) => source,
                Ok(Err(err)) => return debug!(error = %Chain(&err), "connection refused"),
                Err(_) => return debug!("no PROXY header in time"),
            },
        };
    }
    let tcp = SharedTcp::new(tcp);
    let (tls, handshake) = tokio::select! {
        () = stop.cancelled() => return,
        accepted = acceptor.accept(tcp) => match accepted {
            Ok(accepted) => accepted,
            Err(err) => return debug!(error = %Chain(&err), "handshake failed"),
        },
    };
    let conn = Arc::new(ConnInfo::new(peer, handshake.sni, handshake.is_h2));
    let service = service_fn(move |request| {
        // Boxed: the request future is a few KiB, and hyper moves it into its h1 dispatcher or
        // h2 stream; a box makes those moves a pointer's.
        built_in_a_box(|| proxy.clone().serve(request, conn.clone()))
    });
    if handshake.is_h2 {
        // h2 multiplexes streams whose answers are best sent together.
        let io = IdleIo::coalescing(tls);
        serve_h2(io, &servers, service, stop).await;
    } else {
        let (io, hangup) = http1_io(tls);
        serve_connection(io, &servers, service, Some(hangup), stop).await;
    }
}

/// The HTTP/1 transport and its hang-up watch. A plain function: borrowed in `serve_tls`, the
/// TLS stream (1.2 KiB) would stay in its future beside the wrapper it moved into.
fn http1_io(tls: TlsStream<SharedTcp>) -> (IdleIo<TlsStream<SharedTcp>>, Hangup) {
    let hangup = tls.get_ref().0.hangup();
    (IdleIo::new(tls), hangup)
}

/// Serves HTTP/2 on one connection, its streams on this task (see `server::streams`), until
/// it closes, going idle or `stop` ending it gracefully (streams in flight finish, no new ones
/// start), or the client reading nothing for the send timeout, which drops it.
async fn serve_h2<T, S, B>(
    io: IdleIo<T>,
    servers: &HttpServers,
    service: S,
    stop: CancellationToken,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = io.timer();
    let mut streams = Streams::default();
    let conn = servers
        .h2
        .server(streams.exec())
        .serve_connection(TokioIo::new(Calm::new(io)), service);
    // Dropped as soon as it ends: that is what tells the streams still running that their
    // connection is gone, so they end too.
    let conn = Some(conn);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            () = std::future::poll_fn(|cx| {
                activity.next_round();
                if let Some(open) = conn.as_mut().as_pin_mut()
                    && let Poll::Ready(result) = open.poll(cx)
                {
                    if let Err(err) = result {
                        debug!(error = %err, "connection ended with an error");
                    }
                    conn.set(None);
                }
                streams.poll(cx);
                if conn.is_none() && streams.is_empty() { Poll::Ready(()) } else { Poll::Pending }
            }) => return,
            expiry = async {
                tokio::select! {
                    () = stop.cancelled(), if !closing => Expiry::Idle,
                    expiry = activity.watch(servers.timeouts(closing, false)) => expiry,
                }
            } => {
                if expiry == Expiry::Send {
                    return debug!("the client read nothing for the send timeout");
                }
                // hyper's h2 server finishes its handshake before it closes; a client that never
                // sent the preface would hold the connection until it went away.
                if !activity.has_read() {
                    return;
                }
                if let Some(open) = conn.as_mut().as_pin_mut() {
                    open.graceful_shutdown();
                }
                closing = true;
            }
        }
    }
}

/// `make()`'s value in a box, allocated first so that it can be built there: `Box::pin(value)`
/// builds it on the stack and then copies it, which for a request's future (4 KiB, of which
/// only the arguments are set when it starts) measured about 1% of the CPU under HTTP/2 load.
fn built_in_a_box<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Serves HTTP/1.1 on one connection until it closes, going idle or `stop` ending it
/// gracefully (requests in flight finish, no new ones start), a request head not arriving
/// within the header timeout, the client reading nothing for the send timeout, or the client
/// hanging up while a request is answered (`hangup`, when the transport allows watching for
/// it), which drop it.
async fn serve_connection<T, S, B>(
    io: IdleIo<T>,
    servers: &HttpServers,
    service: S,
    mut hangup: Option<Hangup>,
    stop: CancellationToken,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = io.timer();
    let service = OpenRequests::new(service, activity.clone());
    let conn = servers
        .h1
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = std::future::poll_fn(|cx| {
                activity.next_round();
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                // After the connection's poll, so a request it just opened is watched. hyper
                // reads nothing while a request is open (`half_close`), so the watch has the
                // socket to itself; dropping the connection drops the answer in progress.
                match &mut hangup {
                    Some(hangup) if activity.has_open_request() => hangup.poll(cx).map(|()| None),
                    Some(hangup) => {
                        hangup.rest();
                        Poll::Pending
                    }
                    None => Poll::Pending,
                }
            }) => {
                match result {
                    Some(Err(err)) => debug!(error = %err, "connection ended with an error"),
                    Some(Ok(())) => {}
                    None => debug!("client hung up while its request was answered"),
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            expiry = activity.watch(servers.timeouts(closing, true)) => match expiry {
                Expiry::Header => {
                    return debug!("request head not complete within the header timeout");
                }
                Expiry::Send => return debug!("the client read nothing for the send timeout"),
                Expiry::Idle => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            },
        }
    }
}
