//! Origin servers for the proxy to talk to: real hyper HTTP/1.1 servers (and a real tungstenite
//! WebSocket server) on `127.0.0.1:0`, each counting its open connections and what it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{Body, full};
use super::{Sha256, WAIT, hex, within};

/// Chunk size of generated bodies.
pub const CHUNK: usize = 64 * 1024;

/// A running origin. Dropping it stops accepting.
pub struct Upstream {
    addr: SocketAddr,
    stats: Arc<Stats>,
    accept: JoinHandle<()>,
}

/// What an origin has seen, as watch channels so tests can wait for a value.
#[derive(Debug)]
struct Stats {
    /// Connections open now.
    open: watch::Sender<usize>,
    /// Request heads received (WebSocket: handshakes).
    requests: watch::Sender<usize>,
    /// Request body bytes read.
    received: watch::Sender<u64>,
    /// Opened by the test to let a gated download send its remainder.
    gate: watch::Sender<bool>,
}

type Handler =
    Arc<dyn Fn(Request<Incoming>, Arc<Stats>) -> BoxFuture<'static, Response<Body>> + Send + Sync>;

impl Upstream {
    /// Answers every request with a JSON description of it (see `Echoed`), tagged `name`.
    /// Its responses also carry hop-by-hop fields, which the proxy must not pass on.
    pub async fn echo(name: &'static str) -> Self {
        Self::http(Arc::new(move |request, stats| {
            Box::pin(echo(name, request, stats))
        }))
        .await
    }

    /// Waits `delay` after the request head arrives, then answers 200 `slow done`.
    pub async fn slow(delay: Duration) -> Self {
        Self::http(Arc::new(move |_request, _stats| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Response::new(full("slow done\n"))
            })
        }))
        .await
    }

    /// Answers with `size` bytes of [`pattern_chunk`]s (Content-Length set). With `gate_after`,
    /// sends that many bytes and then waits for [`Upstream::open_gate`] before the rest.
    pub async fn download(size: u64, gate_after: Option<u64>) -> Self {
        Self::http(Arc::new(move |_request, stats| {
            Box::pin(download(size, gate_after, stats))
        }))
        .await
    }

    /// Answers `name` at once, except `/hold`, which waits for [`Upstream::open_gate`].
    pub async fn holding(name: &'static str) -> Self {
        Self::http(Arc::new(move |request, stats| {
            Box::pin(async move {
                if request.uri().path() == "/hold" {
                    let mut gate = stats.gate.subscribe();
                    // The sender lives as long as the origin.
                    let _ = gate.wait_for(|open| *open).await;
                }
                Response::new(full(name))
            })
        }))
        .await
    }

    /// Reads the whole request body, hashing as it goes, and answers `{"len", "sha256"}`.
    pub async fn sink() -> Self {
        Self::http(Arc::new(|request, stats| Box::pin(sink(request, stats)))).await
    }

    /// A WebSocket server (tungstenite) that echoes every text and binary message.
    pub async fn ws_echo() -> Self {
        let (listener, stats) = bind().await;
        let addr = listener.local_addr().expect("bound");
        let accept = tokio::spawn(accept_loop(listener, stats.clone(), |tcp, stats| {
            Box::pin(ws_echo(tcp, stats))
        }));
        Self {
            addr,
            stats,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`, as written in `upstreams:`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        *self.stats.open.borrow()
    }

    /// Waits until the number of open connections satisfies `ok`; fails after `limit`.
    pub async fn wait_open(&self, limit: Duration, what: &str, ok: impl Fn(usize) -> bool) {
        let mut open = self.stats.open.subscribe();
        within(limit, what, open.wait_for(|n| ok(*n)))
            .await
            .expect("stats live as long as the upstream");
    }

    /// Waits until at least `n` request heads have arrived.
    pub async fn wait_requests(&self, n: usize) {
        let mut requests = self.stats.requests.subscribe();
        within(
            WAIT,
            "requests to reach the upstream",
            requests.wait_for(|got| *got >= n),
        )
        .await
        .expect("stats live as long as the upstream");
    }

    /// Request heads received so far.
    pub fn requests(&self) -> usize {
        *self.stats.requests.borrow()
    }

    /// Request body bytes read so far (by the sink: of the latest request).
    pub fn received(&self) -> u64 {
        *self.stats.received.borrow()
    }

    /// Waits until at least `n` request body bytes have been read.
    pub async fn wait_received(&self, n: u64, what: &str) {
        let mut received = self.stats.received.subscribe();
        within(WAIT, what, received.wait_for(|got| *got >= n))
            .await
            .expect("stats live as long as the upstream");
    }

    /// Lets a gated download continue, and held requests be answered.
    pub fn open_gate(&self) {
        self.stats.gate.send_replace(true);
    }

    async fn http(handler: Handler) -> Self {
        let (listener, stats) = bind().await;
        let addr = listener.local_addr().expect("bound");
        let accept = tokio::spawn(accept_loop(listener, stats.clone(), move |tcp, stats| {
            let handler = handler.clone();
            Box::pin(async move {
                let service = service_fn(move |request| {
                    stats.requests.send_modify(|n| *n += 1);
                    let response = handler(request, stats.clone());
                    async move { Ok::<_, Infallible>(response.await) }
                });
                // A connection the proxy drops mid-body ends with an error: that is expected.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            })
        }));
        Self {
            addr,
            stats,
            accept,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// An address where nothing listens: bound once, then released.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback is available");
    listener.local_addr().expect("bound")
}

/// Chunk `index` of the deterministic test pattern: a window into one pseudo-random block at
/// an offset that differs for every chunk of a body, so a lost, repeated or reordered chunk
/// changes the checksum. Zero-copy, so generating 50 MB allocates nothing.
pub fn pattern_chunk(index: u64, len: usize) -> Bytes {
    const BLOCK: usize = 2 * 1024 * 1024;
    static DATA: OnceLock<Bytes> = OnceLock::new();
    let data = DATA.get_or_init(|| {
        // xorshift64: fast and deterministic; no cryptographic quality needed.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::with_capacity(BLOCK);
        while out.len() < BLOCK {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        Bytes::from(out)
    });
    assert!(len <= CHUNK, "pattern chunks are at most {CHUNK} bytes");
    // 32,792 and the span share the factor 8 only: 245,760 distinct offsets before a repeat.
    let span = (BLOCK - CHUNK) as u64;
    let offset = usize::try_from(index.wrapping_mul(32_792) % span).expect("offset is below BLOCK");
    data.slice(offset..offset + len)
}

/// The pattern's chunks for a body of `size` bytes.
pub fn pattern_chunks(size: u64) -> impl Iterator<Item = Bytes> {
    let chunk = CHUNK as u64;
    (0..size.div_ceil(chunk)).map(move |i| {
        let len = usize::try_from(chunk.min(size - i * chunk)).expect("a chunk fits in memory");
        pattern_chunk(i, len)
    })
}

/// SHA-256 of a pattern body of `size` bytes.
pub fn pattern_sha256(size: u64) -> [u8; 32] {
    let mut hash = Sha256::new();
    for chunk in pattern_chunks(size) {
        hash.update(&chunk);
    }
    hash.finalize()
}

async fn bind() -> (TcpListener, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback is available");
    let stats = Arc::new(Stats {
        open: watch::Sender::new(0),
        requests: watch::Sender::new(0),
        received: watch::Sender::new(0),
        gate: watch::Sender::new(false),
    });
    (listener, stats)
}

/// Accepts until aborted; each connection is counted open until its task ends.
async fn accept_loop(
    listener: TcpListener,
    stats: Arc<Stats>,
    serve: impl Fn(TcpStream, Arc<Stats>) -> BoxFuture<'static, ()> + Send + 'static,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        stats.open.send_modify(|n| *n += 1);
        let guard = OpenGuard(stats.clone());
        let conn = serve(tcp, stats.clone());
        tokio::spawn(async move {
            conn.await;
            drop(guard);
        });
    }
}

/// Counts a connection closed when dropped, even if its task is cancelled.
struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

async fn echo(name: &'static str, request: Request<Incoming>, stats: Arc<Stats>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    stats.received.send_modify(|n| *n += body.len() as u64);
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let description = serde_json::json!({
        "name": name,
        "method": parts.method.as_str(),
        "target": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let mut response = Response::new(full(description.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-upstream-name", HeaderValue::from_static(name));
    // Hop-by-hop fields the proxy must remove on the way back (RFC 9110 §7.6.1).
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("x-upstream-secret"),
    );
    headers.insert("x-upstream-secret", HeaderValue::from_static("1"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    response
}

async fn download(size: u64, gate_after: Option<u64>, stats: Arc<Stats>) -> Response<Body> {
    // Each request waits for its own go-ahead.
    stats.gate.send_replace(false);
    let gate = stats.gate.subscribe();
    let chunks = futures_util::stream::iter(pattern_chunks(size)).scan(
        (0u64, gate),
        move |(sent, gate), chunk| {
            let before = *sent;
            *sent += chunk.len() as u64;
            let mut gate = gate.clone();
            async move {
                if gate_after.is_some_and(|limit| before >= limit) {
                    // Bounded: a proxy that buffers whole bodies never lets the client open the gate.
                    if tokio::time::timeout(WAIT, gate.wait_for(|open| *open))
                        .await
                        .is_err()
                    {
                        return None;
                    }
                }
                Some(Ok::<_, super::BoxError>(Frame::data(chunk)))
            }
        },
    );
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(chunks)));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    response
}

async fn sink(request: Request<Incoming>, stats: Arc<Stats>) -> Response<Body> {
    let mut body = request.into_body();
    let (mut hash, mut len) = (Sha256::new(), 0u64);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            let mut response = Response::new(full("request body broke\n"));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        };
        if let Some(data) = frame.data_ref() {
            hash.update(data);
            len += data.len() as u64;
            stats.received.send_replace(len);
        }
    }
    let digest = hash.finalize();
    Response::new(full(
        serde_json::json!({ "len": len, "sha256": hex(&digest) }).to_string(),
    ))
}

async fn ws_echo(tcp: TcpStream, stats: Arc<Stats>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    stats.requests.send_modify(|n| *n += 1);
    while let Some(Ok(message)) = ws.next().await {
        if message.is_text() || message.is_binary() {
            if ws.send(message).await.is_err() {
                return;
            }
        } else if message.is_close() {
            return;
        }
    }
}
