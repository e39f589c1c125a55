//! Body wrappers that count bytes as they stream, so the access log can report sizes without
//! ever buffering a body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::observe::access_log::AccessRecord;
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

pin_project! {
    /// A request body that adds the bytes it passes on to a shared counter.
    pub(crate) struct Counted<B> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
    }
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        Self { inner, counter }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
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

pin_project! {
    /// A request body on its way to an origin: the client's, streamed as it arrives, or bytes
    /// held in memory (a small body kept so a retry can send it again, or a health check's).
    #[project = UpstreamBodyProj]
    pub(crate) enum UpstreamBody {
        /// The client's body, counted for the access log and cut at the route's `max_body`.
        Streamed {
            #[pin]
            body: Limited<Counted<Incoming>>,
        },
        /// A complete body; cloning the `Bytes` for another try costs no copy.
        Buffered {
            data: Option<Bytes>,
        },
    }
}

impl UpstreamBody {
    /// The client's body, streamed (see `policy::body_limit::limit`).
    pub(crate) fn streamed(body: Limited<Counted<Incoming>>) -> Self {
        Self::Streamed { body }
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
/// (`http_body_util::LengthLimitError`).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            UpstreamBodyProj::Streamed { body } => body.poll_frame(cx),
            UpstreamBodyProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed { body } => body.is_end_stream(),
            Self::Buffered { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streamed { body } => body.size_hint(),
            Self::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project! {
    /// An origin's response body that fails once no frame has arrived for `idle` (the route's
    /// `timeouts.idle`), so an origin that stalls mid-body does not hold the client, the origin
    /// connection and a concurrency slot for ever. The clock starts when a poll finds no frame
    /// ready: a body that is there when asked for (most small ones) never reads the clock or
    /// touches the timer wheel.
    pub(crate) struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // Made by the first wait (a body ready when polled never needs one).
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        // Whether `deadline` counts the current wait; a frame ends the wait.
        waiting: bool,
        idle: Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            deadline: None,
            waiting: false,
            idle,
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
                *this.waiting = false;
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = *this.idle;
                let deadline = match this.deadline {
                    Some(deadline) if *this.waiting => deadline,
                    Some(deadline) => {
                        deadline.as_mut().reset(tokio::time::Instant::now() + idle);
                        deadline
                    }
                    None => this.deadline.insert(Box::pin(tokio::time::sleep(idle))),
                };
                *this.waiting = true;
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleElapsed(*this.idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
