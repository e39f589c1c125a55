//! Serving one connection's HTTP: the hyper servers, built once per configuration, and the loop
//! that runs a connection until it ends, with its timeouts, its hang-up watch and, on HTTP/2,
//! its streams on its own task.
//!
//! Called by the accept loops of `server::listener` (on the connection's task, spawned on the
//! server's tracker) once the transport is ready: after the TLS handshake on `:443`, at once on
//! `:80`. Spawns nothing: h2 streams run on the connection's task (`streams`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Downstream;
use crate::http::calm::Calm;
use crate::http::hangup::{Hangup, SharedTcp};
use crate::http::idle::{Expiry, IdleIo, Timeouts};
use crate::http::open_requests::OpenRequests;
use crate::http::streams::{StreamExec, Streams};
use crate::proxy::{ConnInfo, Proxy};
use crate::tls::Handshake;

/// HTTP server settings per protocol, built once.
#[derive(Clone)]
pub(crate) struct HttpServers {
    h1: Arc<auto::Builder<TokioExecutor>>,
    h2: H2Settings,
    idle_timeout: Duration,
    /// HTTP/1 request heads must be complete this long after their first byte (see
    /// `http::idle`; hyper's own header timeout would also cut idle keep-alive connections).
    header_timeout: Duration,
    /// Writes refused this long, with nothing written, close the connection.
    send_timeout: Duration,
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
        // (see `serve_h1`).
        h1.http1()
            .header_read_timeout(None)
            // hyper's watch for a client hanging up mid-request costs a read buffer per
            // request; `http::hangup` watches instead.
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
        }
    }
}

/// Serves HTTP on a TLS connection until it ends: HTTP/2 or HTTP/1.1 as ALPN chose, every
/// request handed to `proxy` with what the connection knows of its client.
///
/// What it holds across an await is every connection's memory (see `server::listener`): the
/// arguments move into the service or the transport, nothing is kept beside them.
pub(crate) async fn serve_https(
    tls: TlsStream<SharedTcp>,
    peer: SocketAddr,
    handshake: Handshake,
    proxy: Proxy,
    servers: HttpServers,
    stop: CancellationToken,
) {
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
        serve_h1(io, &servers, service, Some(hangup), stop).await;
    }
}

/// The HTTP/1 transport and its hang-up watch. A plain function: borrowed in `serve_https`, the
/// TLS stream (1.2 KiB) would stay in its future beside the wrapper it moved into.
fn http1_io(tls: TlsStream<SharedTcp>) -> (IdleIo<TlsStream<SharedTcp>>, Hangup) {
    let hangup = tls.get_ref().0.hangup();
    (IdleIo::new(tls), hangup)
}

/// Serves HTTP/2 on one connection, its streams on this task (see `http::streams`), until
/// it closes, going idle or `stop` ending it gracefully (streams in flight finish, no new ones
/// start), or the client reading nothing for the send timeout, which drops it.
pub(crate) async fn serve_h2<T, S, B>(
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
pub(crate) async fn serve_h1<T, S, B>(
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
