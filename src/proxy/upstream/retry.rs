//! Forwarding with retries: choose an origin, send, and on failure try a different origin when
//! that cannot run a request twice against the client's intent.
//!
//! Called by `service::forward` on the request's task once the request head is ready for the
//! hop. Reads the route's `UpstreamPool` (choice, health) and reports each try's outcome to its
//! circuit breaker. A request may be sent again only when it provably never left (connect
//! failure, or the client handed it back), or when its method is idempotent and its body is
//! held in memory; never after a response head arrived.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::{Timeouts, is_idempotent};
use crate::observe::Chain;
use crate::observe::metrics::UpstreamFailure;
use crate::policy::body_limit::{self, Capped};
use crate::proxy::body::{BodyError, BodyFate, ClientBody, Fate, Spill, UpstreamBody};
use crate::proxy::linger;
use crate::proxy::upstream::UpstreamPool;
use crate::proxy::upstream::health::Outcome;
use crate::proxy::{ProxyBody, ProxyError};

/// The client's request body, as the forwarding step will send it.
pub(crate) enum Payload {
    /// Complete in memory (empty when the request has none): may be sent again.
    Buffered(Bytes),
    /// Streamed from the client: sent once, unless the origin never saw it. Its fate says,
    /// when the exchange fails, whether the client's body failed it.
    Streamed(UpstreamBody, Arc<BodyFate>),
}

/// A request head ready for the hop, the same whichever origin gets it.
pub(crate) struct Outgoing {
    /// Method.
    pub(crate) method: Method,
    /// Origin-form target.
    pub(crate) target: Uri,
    /// HTTP/1.1 towards origins.
    pub(crate) version: Version,
    /// Headers after the hop rewrite.
    pub(crate) headers: HeaderMap,
    /// The body.
    pub(crate) payload: Payload,
    /// What bounds the client's body, to name its failure.
    pub(crate) limits: BodyLimits,
}

impl Outgoing {
    /// Takes the head of `parts`, whose URI is the origin-form target.
    fn new(parts: Parts, payload: Payload, limits: BodyLimits) -> Self {
        Self {
            method: parts.method,
            target: parts.uri,
            version: parts.version,
            headers: parts.headers,
            payload,
            limits,
        }
    }
}

/// The request for the hop. A body of at most `buffer_request_body` bytes (declared, or found
/// so by reading) is read whole first: a slow uploader then holds a buffer, not an origin
/// connection, and the request can be sent again. A larger one streams, after what was read of
/// it. Body bytes are added to `counter`, which a request with a body must bring; a body may
/// pause at most `between_reads` (`client_body_timeout`) and is cut at `max_body`; what is left
/// of a body cut there is read away on `tasks`, so the 413 reaches the client.
///
/// # Errors
/// The client's failure ([`client_failure`]) when its body breaks, stalls or ends early, or
/// [`ProxyError::RequestBodyTimeout`] when a body to buffer is not complete before `deadline`.
pub(crate) async fn prepare(
    mut head: Parts,
    body: Incoming,
    counter: Option<Arc<AtomicU64>>,
    limits: BodyLimits,
    deadline: Instant,
    tasks: &TaskTracker,
) -> Result<Outgoing, ProxyError> {
    use http_body::Body as _;
    let payload = if body.is_end_stream() {
        Payload::Buffered(Bytes::new())
    } else {
        // Rampart grants the expectation itself (hyper's server sends 100 Continue when the body
        // is first read) and the origin gets the body right after the head, framed by its
        // length. Forwarded, `Expect` would let an origin answer without reading the body and
        // take the body that follows for its next request (RFC 9110 §10.1.1 lets it).
        head.headers.remove(header::EXPECT);
        let counter = counter.unwrap_or_default();
        let length = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let fate = Arc::new(BodyFate::default());
        // The declared length was checked against `max_body`; an undeclared one is cut there.
        let limited = body_limit::limit(body, limits.max_body);
        let body =
            ClientBody::new(limited, counter, limits.between_reads, fate.clone()).spilling(Spill {
                tasks: tasks.clone(),
                drain: |body, tasks| linger::drain(body.into_inner(), tasks),
            });
        // `0` streams every body: a route whose clients talk while they upload.
        if limits.buffer == 0 || length.is_some_and(|length| length > limits.buffer) {
            Payload::Streamed(UpstreamBody::streamed(None, body), fate)
        } else {
            // Boxed: only requests with a body pay for this wait's size (see
            // `a_request_future_stays_small`).
            let read = Box::pin(tokio::time::timeout_at(
                deadline,
                read_up_to(body, limits.buffer),
            ));
            match read.await {
                Ok(Ok(Read::Whole(bytes))) => Payload::Buffered(bytes),
                Ok(Ok(Read::Prefix(prefix, rest))) => {
                    Payload::Streamed(UpstreamBody::streamed(Some(prefix), rest), fate)
                }
                Ok(Err(source)) => return Err(client_failure(fate.get(), source, &limits)),
                Err(_) => {
                    return Err(ProxyError::RequestBodyTimeout {
                        timeout: deadline.saturating_duration_since(Instant::now()),
                    });
                }
            }
        }
    };
    Ok(Outgoing::new(head, payload, limits))
}

/// What [`read_up_to`] found.
enum Read {
    /// The whole body (trailers, if any, are not kept).
    Whole(Bytes),
    /// More than the limit: what was read, and the body to stream after it.
    Prefix(Bytes, ClientBody<Capped<Incoming>>),
}

/// Reads `body` until it ends or more than `limit` bytes have come.
async fn read_up_to(mut body: ClientBody<Capped<Incoming>>, limit: u64) -> Result<Read, BodyError> {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            break; // trailers: the end
        };
        read.extend_from_slice(&data);
        if read.len() as u64 > limit {
            return Ok(Read::Prefix(read.freeze(), body));
        }
    }
    Ok(Read::Whole(read.freeze()))
}

/// What bounds a client's request body: the route's `max_body` and `buffer_request_body`,
/// and the longest pause between its bytes (`downstream.client_body_timeout`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimits {
    /// `max_body:` in bytes, if any.
    pub(crate) max_body: Option<u64>,
    /// `buffer_request_body:` bodies up to this size are read whole before forwarding.
    pub(crate) buffer: u64,
    /// `client_body_timeout:`
    pub(crate) between_reads: Duration,
}

/// The client's failure, for a body that ended as `fate` with `error`: 400 for broken framing,
/// 499 for a client that left, 408 for one that stopped sending, 413 over `max_body`. None of
/// them is the origin's.
fn client_failure(fate: Fate, error: BodyError, limits: &BodyLimits) -> ProxyError {
    match fate {
        Fate::Gone => ProxyError::ClientGone,
        Fate::Stalled => ProxyError::RequestBodyTimeout {
            timeout: limits.between_reads,
        },
        Fate::TooLarge => ProxyError::BodyTooLarge {
            max: limits.max_body.unwrap_or_default(),
        },
        Fate::Broken | Fate::Streaming | Fate::Complete => {
            ProxyError::RequestBody { source: error }
        }
    }
}

/// Sends `outgoing` to an origin of `pool`, trying up to `retries` more origins as allowed,
/// all within `timeouts.total` from `start`; `upstream_label` is set to the last one tried.
///
/// # Errors
/// The last try's error, or why no origin could be chosen (503).
pub(crate) async fn forward(
    pool: &UpstreamPool,
    outgoing: Outgoing,
    client_ip: IpAddr,
    start: Instant,
    upstream_label: &mut Option<Arc<str>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let settings = pool.settings();
    let limits = outgoing.limits;
    let deadline = start + settings.timeouts.total;
    // No body was read into memory, so no time has passed worth a clock read before the
    // first try (routing takes microseconds).
    let fresh = matches!(&outgoing.payload, Payload::Buffered(bytes) if bytes.is_empty());
    let idempotent = is_idempotent(&outgoing.method);
    let (buffered, mut streamed, fate) = match outgoing.payload {
        Payload::Buffered(bytes) => (Some(bytes), None, None),
        Payload::Streamed(body, fate) => (None, Some(body), Some(fate)),
    };
    // Filled in only when a try fails: the usual single try allocates nothing here.
    let mut tried: Vec<bool> = Vec::new();
    let mut last: Option<ProxyError> = None;
    // Each try goes to a different origin: the last possible one sends the head itself, earlier
    // ones a copy (the one origin of most routes makes the first try the last).
    let origins = u32::try_from(pool.len()).unwrap_or(u32::MAX);
    let tries = settings.retries.saturating_add(1).min(origins);
    let mut head = Some((outgoing.headers, outgoing.target));
    for attempt in 0..=settings.retries {
        // Gone only after the final try, which leaves the loop.
        let Some((kept, target)) = head.as_ref() else {
            break;
        };
        let index = match pool.pick(client_ip, kept, &tried) {
            Ok(index) => index,
            // Retries ran out of origins: the client hears about the failure it got.
            Err(error) => return Err(last.unwrap_or(error)),
        };
        let upstream = pool.upstream(index);
        *upstream_label = Some(upstream.label_shared());
        let now = if attempt == 0 && fresh {
            start
        } else {
            Instant::now()
        };
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return Err(last.unwrap_or(ProxyError::UpstreamTimeout {
                upstream: upstream.label_shared(),
                timeout: settings.timeouts.total,
            }));
        }
        let body = match (&buffered, streamed.take()) {
            (Some(bytes), _) => UpstreamBody::buffered(bytes.clone()),
            (None, Some(body)) => body,
            (None, None) => break,
        };
        let mut request = Request::new(body);
        *request.method_mut() = outgoing.method.clone();
        *request.version_mut() = outgoing.version;
        let (headers, target) = if attempt + 1 >= tries {
            head.take().unwrap_or_default()
        } else {
            (kept.clone(), target.clone())
        };
        *request.headers_mut() = headers;
        *request.uri_mut() = target;
        let timeouts = try_timeouts(&settings.timeouts, remaining);
        let head_by = now + timeouts.response_header;
        match upstream.send_by(request, &timeouts, head_by).await {
            Ok(response) => {
                let failed = settings.passive.include_5xx && response.status().is_server_error();
                pool.report(
                    index,
                    if failed {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    },
                );
                if attempt > 0 {
                    debug!(upstream = upstream.label(), retries = attempt, "retried");
                }
                return Ok(response);
            }
            Err(failed) => {
                let failed_try = FailedTry {
                    failure: failed.failure,
                    fate: fate.as_ref().map(|fate| fate.get()),
                    handed_back: failed.request.is_some(),
                    buffered: buffered.is_some(),
                    idempotent,
                };
                let next = after_failure(&failed_try);
                debug!(
                    upstream = upstream.label(),
                    error = %Chain(&failed.error),
                    ?failed_try,
                    ?next,
                    "try failed"
                );
                if let Next::ClientsFault(fate) = next {
                    return Err(match (fate, failed.error) {
                        (Fate::Streaming, ProxyError::UpstreamTimeout { timeout, .. }) => {
                            ProxyError::RequestBodyTimeout { timeout }
                        }
                        (_, error) => client_failure(fate, Box::new(error), &limits),
                    });
                }
                upstream.count_failure(failed.failure);
                pool.report(index, Outcome::Failure);
                tried.resize(pool.len(), false);
                tried[index] = true;
                if let Some(request) = failed.request {
                    streamed = Some(request.into_body());
                }
                last = Some(failed.error);
                if next == Next::Stop {
                    break;
                }
            }
        }
    }
    Err(last.expect("the loop runs at least once and sets `last` before leaving it"))
}

/// A failed try, as far as deciding what comes next needs it.
#[derive(Clone, Copy, Debug)]
struct FailedTry {
    /// How the exchange failed.
    failure: UpstreamFailure,
    /// How the client's streamed body had ended by then (`None`: the body is in memory).
    fate: Option<Fate>,
    /// Whether the request came back unsent (hyper found its pooled connection closed, or no
    /// connection could be made).
    handed_back: bool,
    /// Whether the body is in memory, so it can be sent again.
    buffered: bool,
    /// Whether the method is idempotent.
    idempotent: bool,
}

/// What follows a failed try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The client's body failed the exchange (or, while the origin waited for the rest of it,
    /// had not all arrived): the client's failure, counted against no origin, never retried.
    ClientsFault(Fate),
    /// The origin's failure; the request goes to another origin.
    Retry,
    /// The origin's failure, and the client hears of it.
    Stop,
}

/// The retry rule. A request is sent again only when it provably never reached the origin
/// (it was handed back, or no connection was made), or when it is idempotent with its body
/// in memory; a streamed body handed back can be sent once more, one that left cannot.
fn after_failure(failed: &FailedTry) -> Next {
    if let Some(fate) = failed.fate.filter(|fate| {
        fate.is_failed() || (*fate == Fate::Streaming && failed.failure == UpstreamFailure::Timeout)
    }) {
        return Next::ClientsFault(fate);
    }
    let never_sent = failed.handed_back || failed.failure == UpstreamFailure::Connect;
    let resendable = failed.buffered || failed.handed_back;
    if resendable && (never_sent || (failed.idempotent && failed.buffered)) {
        Next::Retry
    } else {
        Next::Stop
    }
}

/// One try's timeouts: the response head may not wait past the total deadline.
fn try_timeouts(route: &Timeouts, remaining: Duration) -> Timeouts {
    Timeouts {
        response_header: route.response_header.min(remaining),
        ..route.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_rule_as_a_table() {
        use Fate::{Broken, Complete, Gone, Stalled, Streaming, TooLarge};
        use Next::{ClientsFault, Retry, Stop};
        use UpstreamFailure::{Connect, Exchange, Timeout};
        // (failure, fate of a streamed body, handed back, buffered, idempotent) → next
        #[rustfmt::skip]
        let table = [
            // Bodies in memory: idempotent requests go again, others only if they never left.
            (Exchange, None, false, true, true, Retry),
            (Timeout, None, false, true, true, Retry),
            (Exchange, None, false, true, false, Stop),
            (Timeout, None, false, true, false, Stop),
            (Connect, None, false, true, false, Retry),
            (Exchange, None, true, true, false, Retry),
            // Streamed bodies: only one handed back unsent goes again, whatever the method.
            (Exchange, Some(Complete), false, false, true, Stop),
            (Exchange, Some(Streaming), false, false, true, Stop),
            (Exchange, Some(Streaming), true, false, false, Retry),
            (Connect, Some(Streaming), true, false, false, Retry),
            (Timeout, Some(Complete), false, false, true, Stop),
            // The client's body failed the exchange: its fault, whatever the origin did.
            (Exchange, Some(Broken), false, false, true, ClientsFault(Broken)),
            (Exchange, Some(Gone), false, false, true, ClientsFault(Gone)),
            (Timeout, Some(Stalled), false, false, true, ClientsFault(Stalled)),
            (Exchange, Some(TooLarge), true, false, false, ClientsFault(TooLarge)),
            // No head while the body was still arriving: the origin was waiting for it.
            (Timeout, Some(Streaming), false, false, true, ClientsFault(Streaming)),
        ];
        for (failure, fate, handed_back, buffered, idempotent, next) in table {
            let failed = FailedTry {
                failure,
                fate,
                handed_back,
                buffered,
                idempotent,
            };
            assert_eq!(after_failure(&failed), next, "{failed:?}");
        }
    }

    #[test]
    fn a_try_never_waits_past_the_total_deadline() {
        let route = Timeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(60),
        };
        let capped = try_timeouts(&route, Duration::from_millis(250));
        assert_eq!(capped.response_header, Duration::from_millis(250));
        assert_eq!(
            try_timeouts(&route, Duration::from_secs(45)).response_header,
            Duration::from_secs(30)
        );
    }
}
