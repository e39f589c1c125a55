//! One access-log event per request, written when the response body ends or is dropped.
//!
//! Events go to the `rampart::access` target so operators can route or filter them apart. The
//! field set is fixed (absent values are `-`), so with `log.format: json` every request is one
//! JSON object per line with the same keys, `trace_id` and `request_id` included.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderValue, Method, Uri};
use tokio::time::Instant;
use tracing::info;

/// What the proxy learned about a request while serving it.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request head was received.
    pub started: Instant,
    /// Client IP.
    pub peer: IpAddr,
    /// TLS server name.
    pub sni: Option<Arc<str>>,
    /// Request host.
    pub host: Option<Arc<str>>,
    /// Request method.
    pub method: Method,
    /// Request target, shared with the request rather than copied; only its path is logged
    /// (queries often carry secrets).
    pub target: Uri,
    /// The site that served it.
    pub site: Option<Arc<str>>,
    /// The origin it went to.
    pub upstream: Option<Arc<str>>,
    /// Response status.
    pub status: u16,
    /// Why Rampart answered itself instead of the origin ([`crate::proxy::ProxyError::kind`]).
    pub error: Option<&'static str>,
    /// Why JWT auth refused the request, for an `unauthorized` error.
    pub auth: Option<&'static str>,
    /// Request body bytes read so far; none for a request without a body.
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// W3C trace id, logged as lower-case hex (continued from the client's `traceparent` or new).
    pub trace_id: TraceId,
    /// `X-Request-Id`, the client's or a generated one; always visible ASCII.
    pub request_id: HeaderValue,
}

impl AccessRecord {
    /// Writes the event; `complete` is false when the client left before the body ended.
    pub fn emit(&self, bytes_out: u64, complete: bool) {
        // Field values are computed only when the event is enabled: the clock read included.
        info!(
            target: "rampart::access",
            peer = %self.peer,
            sni = self.sni.as_deref().unwrap_or("-"),
            host = self.host.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.target.path(),
            status = self.status,
            bytes_in = self.bytes_in.as_ref().map_or(0, |n| n.load(Ordering::Relaxed)),
            bytes_out,
            latency_ms = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            site = self.site.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            complete,
            error = self.error.unwrap_or("-"),
            auth = self.auth.unwrap_or("-"),
            trace_id = %self.trace_id,
            request_id = self.request_id.to_str().unwrap_or("-"),
            "request"
        );
    }
}

/// A W3C trace id, written as the 32 lower-case hex digits `traceparent` carries. Kept as bytes
/// so a request pays for the text only when its line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
