//! Body wrappers: they count bytes as they stream, so the access log can report sizes without
//! ever buffering a body; they time out bodies that stall (the client's request body, an
//! origin's response body); and they remember how a client's body ended, for blame.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio_util::task::TaskTracker;

use crate::observe::access_log::AccessRecord;
use crate::policy::body_limit::{Capped, OverLimit};
use crate::policy::concurrency::Permit;

/// Every response body the proxy produces, origin-streamed or generated.
pub type ProxyBody = BoxBody<Bytes, BodyError>;

pin_project! {
    /// A response body that writes the access-log line when it ends or is dropped
    /// (a client that disconnects mid-response still gets a line, marked incomplete).
    pub struct Metered<B> {
        #[pin]
        inner: B,
        record: Option<AccessRecord>,
        // The route's concurrency slot: freed when the body ends or is dropped, whichever is
        // first, so no path (disconnect, error, cancelled future) can leak it.
        permit: Option<Permit>,
        bytes: u64,
        // A body with no frames is never polled: dropping it is its normal end.
        empty: bool,
    }

    impl<B> PinnedDrop for Metered<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                record.emit(*this.bytes, *this.empty);
            }
        }
    }
}

impl<B: Body> Metered<B> {
    /// Wraps `inner`; `record` is emitted once, when the body ends.
    pub fn new(inner: B, record: AccessRecord) -> Self {
        let empty = inner.is_end_stream();
        Self {
            inner,
            record: Some(record),
            permit: None,
            bytes: 0,
            empty,
        }
    }

    /// Holds `permit` until the body ends or is dropped.
    pub fn holding(mut self, permit: Option<Permit>) -> Self {
        self.permit = permit;
        self
    }
}

impl<B: Body<Data = Bytes>> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                // hyper stops polling once a body reports its end, so this may be the last call.
                if this.inner.is_end_stream() {
                    this.permit.take();
                    if let Some(record) = this.record.take() {
                        record.emit(*this.bytes, true);
                    }
                }
            }
            Poll::Ready(None) => {
                this.permit.take();
                if let Some(record) = this.record.take() {
                    record.emit(*this.bytes, true);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's request body on its way to an origin: counts the bytes it passes on (for
/// the access log), fails once no bytes have arrived for `client_body_timeout`, and records
/// in its [`BodyFate`] how it ended, so that a failed exchange is blamed on the side that
/// failed it: a client's broken, abandoned, stalled or oversized body is never the origin's.
/// A body cut at `max_body` is handed to its [`Spill`], if it has one, the moment it is cut:
/// whoever was reading it (an origin's request, the buffer) is about to drop it, and the 413
/// must still reach the client (see `proxy::linger`).
pub(crate) struct ClientBody<B> {
    /// `None` once spilled.
    inner: Option<B>,
    counter: Arc<AtomicU64>,
    fate: Arc<BodyFate>,
    stall: Stall,
    spill: Option<Spill<B>>,
}

/// Where a body cut at `max_body` goes: `drain` is given it and `tasks`.
pub(crate) struct Spill<B> {
    pub(crate) tasks: TaskTracker,
    pub(crate) drain: fn(B, &TaskTracker),
}

impl<B> ClientBody<B> {
    /// `inner` (the client's body, already limited to `max_body`), counted into `counter`,
    /// failing after `between_reads` without bytes; its end is told by `fate`.
    pub(crate) fn new(
        inner: B,
        counter: Arc<AtomicU64>,
        between_reads: Duration,
        fate: Arc<BodyFate>,
    ) -> Self {
        Self {
            inner: Some(inner),
            counter,
            fate,
            stall: Stall::new(between_reads),
            spill: None,
        }
    }

    /// Hands the body to `spill` if it is cut at `max_body`.
    pub(crate) fn spilling(mut self, spill: Spill<B>) -> Self {
        self.spill = Some(spill);
        self
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let polled = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(polled) => {
                this.stall.progressed();
                polled.map(|frame| frame.map_err(Into::into))
            }
            Poll::Pending => match this.stall.poll_elapsed(cx) {
                Poll::Ready(limit) => Some(Err(Box::new(ClientBodyStalled(limit)) as BodyError)),
                Poll::Pending => return Poll::Pending,
            },
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Some(Err(error)) => {
                let fate = Fate::of(error.as_ref());
                this.fate.set(fate);
                if fate == Fate::TooLarge
                    && let (Some(spill), Some(body)) = (this.spill.take(), this.inner.take())
                {
                    (spill.drain)(body, &spill.tasks);
                }
            }
            None => this.fate.set(Fate::Complete),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// No bytes of the client's request body for `client_body_timeout` (408).
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of its request body for {0:?}")]
pub struct ClientBodyStalled(pub Duration);

/// How a client's request body ended, written by its [`ClientBody`] as it happens and read
/// when the exchange it fed is over.
#[derive(Debug, Default)]
pub(crate) struct BodyFate(AtomicU8);

/// The states of a [`BodyFate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Still arriving (or never read).
    Streaming,
    /// Read to its end.
    Complete,
    /// The client's framing was invalid (bad chunk, more than declared, a protocol error).
    Broken,
    /// The client went away before sending it all (connection closed, stream reset).
    Gone,
    /// The client stopped sending for `client_body_timeout`.
    Stalled,
    /// Longer than the route's `max_body`.
    TooLarge,
}

impl BodyFate {
    /// How the body has ended so far.
    pub(crate) fn get(&self) -> Fate {
        match self.0.load(Ordering::Acquire) {
            1 => Fate::Complete,
            2 => Fate::Broken,
            3 => Fate::Gone,
            4 => Fate::Stalled,
            5 => Fate::TooLarge,
            _ => Fate::Streaming,
        }
    }

    fn set(&self, fate: Fate) {
        let code = match fate {
            Fate::Streaming => 0,
            Fate::Complete => 1,
            Fate::Broken => 2,
            Fate::Gone => 3,
            Fate::Stalled => 4,
            Fate::TooLarge => 5,
        };
        self.0.store(code, Ordering::Release);
    }
}

impl Fate {
    /// Why a client's body failed with `error`: its cause chain says whether the limit cut it,
    /// the timer did, the client left (end of stream, reset, `CANCEL`) or its framing broke.
    pub(crate) fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if error.is::<OverLimit>() {
                return Self::TooLarge;
            }
            if error.is::<ClientBodyStalled>() {
                return Self::Stalled;
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe => Self::Gone,
                    _ => Self::Broken,
                };
            }
            if let Some(h2) = error.downcast_ref::<h2::Error>() {
                return match h2.reason() {
                    Some(h2::Reason::CANCEL | h2::Reason::NO_ERROR) => Self::Gone,
                    _ if h2.is_io() || h2.is_go_away() => Self::Gone,
                    _ => Self::Broken,
                };
            }
            if let Some(hyper) = error.downcast_ref::<hyper::Error>()
                && (hyper.is_incomplete_message() || hyper.is_canceled() || hyper.is_closed())
            {
                return Self::Gone;
            }
            cause = error.source();
        }
        Self::Broken
    }

    /// Whether the body failed: the exchange it fed is then the client's failure.
    pub(crate) fn is_failed(self) -> bool {
        !matches!(self, Self::Streaming | Self::Complete)
    }
}

pin_project! {
    /// A request body on its way to an origin: the client's, streamed as it arrives, or bytes
    /// held in memory (a small body kept so a retry can send it again, or a health check's).
    #[project = UpstreamBodyProj]
    pub(crate) enum UpstreamBody {
        /// The client's body (see [`ClientBody`]), cut at the route's `max_body`, after what
        /// was read of it before it turned out too long to buffer. Boxed: every request's
        /// future holds this type a few times over, and most bodies are buffered or empty.
        Streamed {
            prefix: Option<Bytes>,
            body: Pin<Box<ClientBody<Capped<Incoming>>>>,
        },
        /// A complete body; cloning the `Bytes` for another try costs no copy.
        Buffered {
            data: Option<Bytes>,
        },
    }
}

impl UpstreamBody {
    /// The client's body, streamed after `prefix` (see `policy::body_limit::limit`).
    pub(crate) fn streamed(prefix: Option<Bytes>, body: ClientBody<Capped<Incoming>>) -> Self {
        Self::Streamed {
            prefix,
            body: Box::pin(body),
        }
    }

    /// A complete body (empty `data` sends no body bytes).
    pub(crate) fn buffered(data: Bytes) -> Self {
        Self::Buffered {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// The whole body when it is in memory (empty for none), else `None`.
    pub(crate) fn as_buffered(&self) -> Option<&[u8]> {
        match self {
            Self::Buffered { data } => Some(data.as_deref().unwrap_or_default()),
            Self::Streamed { .. } => None,
        }
    }
}

/// A request body's failure: the client's connection, or the body limit
/// (`policy::body_limit::OverLimit`).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            UpstreamBodyProj::Streamed { prefix, body } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => body.as_mut().poll_frame(cx),
            },
            UpstreamBodyProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed { prefix, body } => prefix.is_none() && body.is_end_stream(),
            Self::Buffered { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streamed { prefix, body } => {
                let read = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let mut hint = body.size_hint();
                // Upper first: `set_lower` refuses a lower bound above the upper one.
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + read);
                }
                hint.set_lower(hint.lower() + read);
                hint
            }
            Self::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project! {
    /// An origin's response body that fails once no frame has arrived for `idle` (the route's
    /// `timeouts.idle`), so an origin that stalls mid-body does not hold the client, the origin
    /// connection and a concurrency slot for ever.
    pub(crate) struct IdleTimeout<B> {
        #[pin]
        inner: B,
        stall: Stall,
    }
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            stall: Stall::new(idle),
        }
    }
}

/// The origin sent no body bytes for the route's `timeouts.idle`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?} in the middle of its response")]
pub struct IdleElapsed(pub Duration);

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stall.progressed();
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending => match this.stall.poll_elapsed(cx) {
                Poll::Ready(idle) => Poll::Ready(Some(Err(Box::new(IdleElapsed(idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The timer of a body that must not stall: started when a poll finds no frame ready, so a
/// body whose frames are there when asked for (most small ones) never reads the clock or
/// touches the timer wheel.
#[derive(Debug)]
struct Stall {
    // Made by the first wait.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    // Whether `deadline` counts the current wait; a frame ends the wait.
    waiting: bool,
    limit: Duration,
}

impl Stall {
    fn new(limit: Duration) -> Self {
        Self {
            deadline: None,
            waiting: false,
            limit,
        }
    }

    /// A frame (or the end) arrived: the next wait starts afresh.
    fn progressed(&mut self) {
        self.waiting = false;
    }

    /// No frame was ready: `Ready(limit)` once the wait has lasted `limit`.
    fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        let limit = self.limit;
        match &mut self.deadline {
            Some(_) if self.waiting => {}
            Some(deadline) => deadline.as_mut().reset(tokio::time::Instant::now() + limit),
            None => self.deadline = Some(Box::pin(tokio::time::sleep(limit))),
        }
        self.waiting = true;
        let deadline = self.deadline.as_mut().expect("set above");
        deadline.as_mut().poll(cx).map(|()| limit)
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    #[test]
    fn a_body_failure_is_blamed_by_its_cause() {
        let fate = |error: BodyError| Fate::of(error.as_ref());
        let stalled = ClientBodyStalled(Duration::from_secs(1));
        assert_eq!(fate(Box::new(stalled)), Fate::Stalled);
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-body");
        assert_eq!(fate(Box::new(eof)), Fate::Gone);
        let bad = io::Error::new(io::ErrorKind::InvalidData, "invalid chunk size line");
        assert_eq!(fate(Box::new(bad)), Fate::Broken);
        assert_eq!(
            fate(Box::new(h2::Error::from(h2::Reason::CANCEL))),
            Fate::Gone
        );
        assert_eq!(
            fate(Box::new(h2::Error::from(h2::Reason::PROTOCOL_ERROR))),
            Fate::Broken
        );
        assert!(!Fate::Complete.is_failed() && !Fate::Streaming.is_failed());
    }

    #[tokio::test]
    async fn a_client_body_records_its_end_and_its_bytes() {
        let (counter, fate) = (Arc::new(AtomicU64::new(0)), Arc::new(BodyFate::default()));
        let whole = Full::new(Bytes::from_static(b"12345"));
        let body = ClientBody::new(whole, counter.clone(), Duration::from_secs(1), fate.clone());
        assert_eq!(fate.get(), Fate::Streaming);
        body.collect().await.expect("whole");
        assert_eq!(
            (fate.get(), counter.load(Ordering::Relaxed)),
            (Fate::Complete, 5)
        );
        let over =
            crate::policy::body_limit::limit(Full::new(Bytes::from_static(b"12345")), Some(4));
        let fate = Arc::new(BodyFate::default());
        let body = ClientBody::new(over, counter, Duration::from_secs(1), fate.clone());
        assert!(body.collect().await.is_err());
        assert_eq!(fate.get(), Fate::TooLarge);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_body_that_stops_arriving_stalls_after_the_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        let fate = Arc::new(BodyFate::default());
        let limit = Duration::from_secs(30);
        let stream = StreamBody::new(Box::pin(stream));
        let body = ClientBody::new(stream, Arc::default(), limit, fate.clone());
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let error = body.collect().await.expect_err("it stalls");
        assert!(error.is::<ClientBodyStalled>(), "{error}");
        assert_eq!(fate.get(), Fate::Stalled);
        assert_eq!(started.elapsed(), limit, "measured from the last bytes");
        drop(tx);
    }
}
