//! Reads an origin's response body ahead of the client into a bounded buffer, so the origin
//! connection goes back to the pool once the response is in memory rather than once a slow
//! client has read it (nginx's `proxy_buffering`, without its temporary files).
//!
//! Most responses are whole when their head arrives: [`ReadAhead::start`] takes the frames
//! that are ready there and then, and a body that ends within the buffer is answered from
//! memory, with no task and no copy (the frames are the origin's own `Bytes`). Only a body
//! still arriving gets a pump, a task on the server's tracker that reads until the buffer is
//! full, then waits for the client to take some. A client that takes nothing for
//! `send_timeout` while the buffer is full loses the response: the pump drops the origin body
//! (its connection is closed, not pooled) and what it buffered, and the client's body ends in
//! an error. A client that goes away ends the pump the same way.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::task::TaskTracker;

use crate::proxy::{BodyError, ProxyBody};

/// How response bodies are read ahead: at most `limit` bytes per response are held, and a
/// client may leave a full buffer untouched for `send_timeout` at most.
#[derive(Clone, Debug)]
pub(crate) struct ReadAhead {
    pub(crate) send_timeout: Duration,
    /// Pumps run here, so shutdown waits for them.
    pub(crate) tasks: TaskTracker,
}

/// The client took nothing from a full response buffer for `downstream.send_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing of the response for {0:?}")]
pub struct SendStalled(pub Duration);

impl ReadAhead {
    /// The client's side of `body`, read ahead by up to `limit` bytes (`0`: passed through).
    ///
    /// Not `async`: it never waits, so the request's future (allocated whole for every
    /// connection, idle or not) holds none of its state.
    pub(crate) fn start(&self, mut body: ProxyBody, limit: usize) -> ProxyBody {
        if limit == 0 || body.is_end_stream() {
            return body;
        }
        let hint = body.size_hint();
        let mut ready = Frames::default();
        // Only what is ready now is taken here; a frame still to come wakes the pump, whose
        // first poll registers its own waker.
        let mut cx = Context::from_waker(Waker::noop());
        let end = loop {
            if ready.bytes > limit {
                break None; // more than the buffer holds: the pump goes on
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => ready.push(frame),
                Poll::Ready(Some(Err(error))) => break Some(Err(error)),
                Poll::Ready(None) => break Some(Ok(())),
                Poll::Pending => break None,
            }
        };
        if let Some(end) = end {
            // Whole (or failed) already: the origin's side is done with.
            drop(body);
            return Reader {
                hint,
                source: Source::Memory {
                    ready,
                    end: Some(end),
                },
            }
            .boxed();
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready,
                end: None,
                reader: None,
                pump: None,
                reader_gone: false,
            }),
        });
        self.tasks
            .spawn(pump(body, shared.clone(), limit, self.send_timeout));
        Reader {
            hint,
            source: Source::Pumped(shared),
        }
        .boxed()
    }
}

/// Data and trailer frames in order, and the data bytes among them. Most bodies are one
/// frame, which is kept inline: the queue allocates only for a second.
#[derive(Default)]
struct Frames {
    /// Older than every frame in `rest`.
    first: Option<Frame<Bytes>>,
    rest: VecDeque<Frame<Bytes>>,
    bytes: usize,
}

impl Frames {
    fn push(&mut self, frame: Frame<Bytes>) {
        self.bytes += frame.data_ref().map_or(0, Bytes::len);
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    fn pop(&mut self) -> Option<Frame<Bytes>> {
        let frame = self.first.take().or_else(|| self.rest.pop_front())?;
        self.bytes -= frame.data_ref().map_or(0, Bytes::len);
        Some(frame)
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
        self.bytes = 0;
    }
}

/// Between a pump and its reader.
struct Shared {
    state: Mutex<State>,
}

struct State {
    ready: Frames,
    /// How the origin's body ended, once it has: `Err` also when the pump gave up on the client.
    end: Option<Result<(), BodyError>>,
    /// The client's side, waiting for a frame.
    reader: Option<Waker>,
    /// The pump, waiting for room.
    pump: Option<Waker>,
    reader_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves nothing half-done worth refusing the rest for.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads `body` into `shared` while it holds at most `limit` bytes, until the body ends, the
/// reader goes away, or the reader leaves the buffer full for `send_timeout`.
async fn pump(mut body: ProxyBody, shared: Arc<Shared>, limit: usize, send_timeout: Duration) {
    let mut stalled: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        loop {
            let mut state = shared.lock();
            if state.reader_gone {
                return Poll::Ready(());
            }
            if state.ready.bytes > limit {
                register(&mut state.pump, cx);
                drop(state);
                let timer =
                    stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let mut state = shared.lock();
                state.ready.clear();
                state.end = Some(Err(SendStalled(send_timeout).into()));
                wake(state.reader.take());
                return Poll::Ready(());
            }
            drop(state);
            // Room again: the client is reading.
            stalled = None;
            let polled = Pin::new(&mut body).poll_frame(cx);
            let mut state = shared.lock();
            match polled {
                Poll::Ready(Some(Ok(frame))) => state.ready.push(frame),
                Poll::Ready(Some(Err(error))) => state.end = Some(Err(error)),
                Poll::Ready(None) => state.end = Some(Ok(())),
                Poll::Pending => {
                    // The reader's going away must end the wait too.
                    register(&mut state.pump, cx);
                    return Poll::Pending;
                }
            }
            wake(state.reader.take());
            if state.end.is_some() {
                return Poll::Ready(());
            }
        }
    })
    .await;
}

/// Keeps `cx`'s waker in `slot`, cloning it only when it changed.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot
        .as_ref()
        .is_some_and(|waker| waker.will_wake(cx.waker()))
    {
        *slot = Some(cx.waker().clone());
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The client's side of a response read ahead.
struct Reader {
    /// The origin body's, less what was taken.
    hint: SizeHint,
    source: Source,
}

enum Source {
    /// The whole body was ready at once.
    Memory {
        ready: Frames,
        end: Option<Result<(), BodyError>>,
    },
    /// A pump is (or was) reading it.
    Pumped(Arc<Shared>),
}

impl Reader {
    fn boxed(self) -> ProxyBody {
        http_body_util::BodyExt::boxed(self)
    }

    fn took(&mut self, frame: &Frame<Bytes>) {
        let Some(data) = frame.data_ref() else { return };
        let len = data.len() as u64;
        let lower = self.hint.lower().saturating_sub(len);
        let upper = self.hint.upper().map(|upper| upper.saturating_sub(len));
        self.hint.set_lower(lower);
        if let Some(upper) = upper {
            self.hint.set_upper(upper);
        }
    }
}

impl Body for Reader {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let next = match &mut this.source {
            Source::Memory { ready, end } => match ready.pop() {
                Some(frame) => Some(Ok(frame)),
                None => end.take().and_then(Result::err).map(Err),
            },
            Source::Pumped(shared) => {
                let mut state = shared.lock();
                match state.ready.pop() {
                    Some(frame) => {
                        wake(state.pump.take());
                        Some(Ok(frame))
                    }
                    None => match &mut state.end {
                        None => {
                            register(&mut state.reader, cx);
                            return Poll::Pending;
                        }
                        Some(Ok(())) => None,
                        Some(Err(_)) => {
                            let end = state.end.replace(Ok(()));
                            end.and_then(Result::err).map(Err)
                        }
                    },
                }
            }
        };
        if let Some(Ok(frame)) = &next {
            this.took(frame);
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Memory { ready, end } => ready.is_empty() && !matches!(end, Some(Err(_))),
            Source::Pumped(shared) => {
                let state = shared.lock();
                state.ready.is_empty() && matches!(state.end, Some(Ok(())))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Source::Pumped(shared) = &self.source {
            let mut state = shared.lock();
            state.reader_gone = true;
            state.ready.clear();
            wake(state.pump.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};

    fn read_ahead() -> ReadAhead {
        ReadAhead {
            send_timeout: Duration::from_secs(60),
            tasks: TaskTracker::new(),
        }
    }

    /// A body whose frames arrive through a channel, so a test decides when each is there.
    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BodyError>>,
        ProxyBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let stream = tokio_stream_of(rx);
        (tx, StreamBody::new(stream).boxed())
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send + Sync + 'static {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    fn trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("valid"));
        trailers
    }

    #[tokio::test]
    async fn frames_arriving_later_come_through_the_pump_in_order_with_trailers() {
        let (tx, body) = channel_body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .expect("open");
        let reader = read_ahead().start(body, 1024);
        for part in [&b"two"[..], b"three"] {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(part))))
                .await
                .expect("open");
        }
        tx.send(Ok(Frame::trailers(trailers())))
            .await
            .expect("open");
        drop(tx);
        let collected = reader.collect().await.expect("whole");
        assert_eq!(collected.trailers(), Some(&trailers()));
        assert_eq!(&collected.to_bytes()[..], b"onetwothree");
    }

    #[tokio::test]
    async fn a_body_ready_at_once_is_answered_from_memory_with_its_length() {
        let body = http_body_util::Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed();
        let reader = read_ahead().start(body, 1024);
        assert_eq!(reader.size_hint().exact(), Some(5));
        assert_eq!(
            &reader.collect().await.expect("whole").to_bytes()[..],
            b"hello"
        );
    }

    #[tokio::test]
    async fn a_client_that_goes_away_ends_the_pump_waiting_on_the_origin() {
        let (tx, body) = channel_body();
        let reader = read_ahead().start(body, 1024);
        tokio::task::yield_now().await;
        assert!(!tx.is_closed(), "the pump waits for the origin");
        drop(reader);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(tx.is_closed(), "the origin body was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_left_untouched_ends_the_pump_and_the_origin_body() {
        let (tx, body) = channel_body();
        let mut reader = read_ahead().start(body, 4);
        // Never read: the pump fills the buffer, waits out the send timeout and lets go.
        for _ in 0..3 {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"xxx")))).await;
        }
        tokio::time::sleep(Duration::from_secs(61)).await;
        tokio::task::yield_now().await;
        assert!(tx.is_closed(), "the origin body was dropped");
        let error = reader.frame().await.expect("an end").expect_err("an error");
        assert!(error.is::<SendStalled>(), "{error}");
    }
}
