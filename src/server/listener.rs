//! Binding the listeners and the accept loops of `:443` and `:80`.
//!
//! One task per accept loop and one per connection, all on the server's [`TaskTracker`]; each
//! stops taking connections when the stop token fires and lets open ones finish. A connection's
//! task reads the PROXY header and runs the TLS handshake here, then serves HTTP through `http`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::{Downstream, Listen, ProxyProtocol};
use crate::http::{self, HttpServers, IdleIo, SharedTcp};
use crate::observe::Chain;
use crate::observe::logging::Throttle;
use crate::observe::metrics::{self, OpenConnection};
use crate::proxy::Proxy;
use crate::server::ServerError;
use crate::server::per_ip::{Held, PerIp};
use crate::server::proxy_protocol;
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
    /// Plain HTTP listener (ACME HTTP-01 and redirects), unless `listen.http` is off.
    pub http: Option<TcpListener>,
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
            http: listen.http.map(bind).transpose()?,
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
            http: Some(bind(any)?),
            admin: None,
        })
    }

    /// Closes the plain HTTP listener (as `listen.http: off` leaves it unbound).
    #[must_use]
    pub fn without_http(mut self) -> Self {
        self.http = None;
        self
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

    /// The plain HTTP listener's address, when there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
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
    mut gate: Gate,
    acceptor: TlsAcceptor,
    pre_tls: PreTls,
    proxy: Proxy,
    servers: HttpServers,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let open = metrics::open_connections(gate.slots.listener);
    while let Some((tcp, peer, slot)) = gate.accept(&stop).await {
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
    mut gate: Gate,
    answer: crate::server::http01::Http01,
    servers: HttpServers,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let open = metrics::open_connections(gate.slots.listener);
    while let Some((tcp, peer, slot)) = gate.accept(&stop).await {
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
                    async move { Ok::<_, Infallible>(answer.respond(&request).await) }
                });
                let io = IdleIo::new(tcp);
                // Answers wait at most for one cluster store read: nothing to abandon on a hang-up.
                http::serve_h1(io, &servers, service, None, stop).await;
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
    fn new(listener: &'static str, limits: &Downstream) -> Self {
        let max = limits.max_connections;
        Self {
            free: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            listener,
            full: metrics::listener_full(listener),
            warnings: Throttle::default(),
            per_ip: PerIp::new(listener, limits.max_connections_per_ip),
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

/// A bound listener and the connection slots it admits into.
pub(crate) struct Gate {
    listener: TcpListener,
    slots: Slots,
}

impl Gate {
    /// `listener`, named in metrics and logs as `name`, capped by `limits`.
    pub(crate) fn new(listener: TcpListener, name: &'static str, limits: &Downstream) -> Self {
        Self {
            listener,
            slots: Slots::new(name, limits),
        }
    }

    /// Waits for a free slot, then for the next connection whose client is under its cap (the
    /// others are closed); `None` once `stop` fires (dropping the listener refuses new ones).
    async fn accept(&mut self, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr, Slot)> {
        let slot = self.slots.take(stop).await?;
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Small responses must not wait for Nagle; failure only costs latency.
                        let _ = tcp.set_nodelay(true);
                        // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; logs and
                        // X-Forwarded-For want a.b.c.d.
                        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                        let client = match &mut self.slots.per_ip {
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
    http::serve_https(tls, peer, handshake, proxy, servers, stop).await;
}
