//! Early answers reach their client: a request answered before its body was read (413, 401,
//! 403, 404, 429, 503, ...) has the rest of its body read and thrown away, for a bounded time,
//! rather than dropped unread.
//!
//! Dropped unread, the body costs the answer: over HTTP/1.1 hyper closes a connection whose
//! request body it did not finish, and a close with unread bytes in the socket is a TCP reset,
//! which can destroy the response before the client read it (nginx's `lingering_close` exists
//! for this); over HTTP/2 the stream's reset, though `NO_ERROR` after the whole response as
//! RFC 9113 §8.1 allows, makes some clients drop the response they were still handed (curl
//! before 8.3 does, about half the time). Read to its end, the body leaves an HTTP/1.1
//! connection fit for its next request and an HTTP/2 stream closed cleanly.
//!
//! A client that asked to `Expect: 100-continue` has sent no body and will not, once it has
//! its final answer: nothing is read (that would grant the continuation).

use std::time::Duration;

use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

/// The longest a refused body is read, and the longest pause in it (nginx's
/// `lingering_time` and `lingering_timeout`, with their defaults): a client still sending after
/// that is not waiting for its answer.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(30);
pub(crate) const LINGER_PAUSE: Duration = Duration::from_secs(5);

/// Reads what is left of `body`, of a request with `headers` that was answered without it,
/// on a task of `tasks`, for at most [`LINGER_TIME`] and [`LINGER_PAUSE`] between frames.
pub(crate) fn linger(headers: &HeaderMap, body: Incoming, tasks: &TaskTracker) {
    if !expects_continue(headers) {
        drain(body, tasks);
    }
}

/// Reads what is left of `body` as [`linger`] does, whether or not its client asked to
/// continue: for a body already being read (and cut at `max_body`).
pub(crate) fn drain(body: Incoming, tasks: &TaskTracker) {
    if http_body::Body::is_end_stream(&body) {
        return;
    }
    tasks.spawn(async move {
        let mut body = body;
        let drain = async {
            while let Ok(Some(Ok(_))) = tokio::time::timeout(LINGER_PAUSE, body.frame()).await {}
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}
