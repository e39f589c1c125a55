//! The connection transport: closes connections on which no byte has moved for the idle
//! timeout or, on HTTP/1, whose request head is not complete within the header timeout; and on
//! HTTP/2 gathers the writes of one connection round into one TLS write.
//!
//! [`IdleIo`] flags every successful read and write; the connection task waits on
//! [`IdleIo::timer`], which looks at the flag every quarter of the timeout, and shuts the
//! connection down gracefully when it fires, so a request that is merely waiting on a slow origin
//! still finishes. A flag rather than a timestamp: reads and writes are the hot path, and a clock
//! read on each cost more than the quarter-timeout of slack this allows.
//!
//! The send timeout (nginx's `send_timeout`) closes a connection whose writes have been
//! refused for that long with nothing written in between: a client that stopped reading holds
//! its connection and what is queued for it no longer. A write refused sets a flag, and one
//! that passes bytes clears it, so a connection that writes freely pays one store per write.
//!
//! The header timeout runs from the first byte read between requests (no request open, see
//! [`Activity::request`]) to the head's end, as nginx's `client_header_timeout` does; the wait for
//! a keep-alive connection's next request is the idle timeout's business. (hyper's own header
//! timeout starts when it begins to wait for the next head, so it closed idle keep-alive
//! connections at the header timeout.)
//!
//! The h2 codec flushes after every DATA frame, so a round that answers 64 streams would cost 64
//! TLS records and 64 `writev`s. [`IdleIo::coalescing`] instead buffers writes and defers the
//! first flush of a round (one poll of the connection, counted by [`Activity::next_round`]) to
//! the start of the next round, waking the task so that round comes: the bytes leave in one
//! write once the streams that were ready have all answered.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes past which a coalescing transport writes through instead of gathering more.
const COALESCE_LIMIT: usize = 32 * 1024;

pin_project! {
    /// A transport that records when bytes last moved and, when coalescing, gathers writes.
    pub(crate) struct IdleIo<T> {
        #[pin]
        inner: T,
        clock: Arc<Activity>,
        gather: Option<Gather>,
    }
}

/// The activity flag and round counter shared between the transport and its task.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Set by every read or write, cleared by the idle check that sees it.
    moved: AtomicBool,
    /// Set by every write that passes bytes on, cleared by the send check that sees it.
    wrote: AtomicBool,
    /// Set when the transport refuses a write (the peer is not reading), cleared by one that
    /// passes bytes on.
    blocked: AtomicBool,
    /// Set by the first read that returns bytes.
    read_any: AtomicBool,
    /// Bumped by the connection task each time it polls the connection.
    round: AtomicU32,
    /// HTTP/1 requests from their head's end until their response ends.
    open_requests: AtomicU32,
    /// Set by a read while no request is open: a request head has begun.
    head_started: AtomicBool,
    /// Bumped as `head_started` is set, so the header check tells one head from the next.
    heads: AtomicU32,
}

/// Why [`Activity::watch`] resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Nothing moved for the idle timeout.
    Idle,
    /// A request head begun was not complete within the header timeout.
    Header,
    /// Writes were refused for the send timeout, with nothing written.
    Send,
}

/// One request open on an HTTP/1 connection; dropping it (as its response ends) closes it.
#[derive(Debug)]
pub(crate) struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes accepted but not yet passed to the inner transport.
#[derive(Debug, Default)]
struct Gather {
    buf: Vec<u8>,
    /// How much of `buf` the inner transport has taken.
    sent: usize,
    /// The round whose flush was deferred, while one is owed.
    owed: Option<u32>,
}

impl Activity {
    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Notes what the transport did with a write: bytes passed on, or refused for now.
    fn wrote<T>(&self, polled: &Poll<io::Result<T>>, passed: impl FnOnce(&T) -> bool) {
        match polled {
            Poll::Ready(Ok(n)) if passed(n) => {
                self.touch();
                self.wrote.store(true, Ordering::Relaxed);
                if self.blocked.load(Ordering::Relaxed) {
                    self.blocked.store(false, Ordering::Relaxed);
                }
            }
            Poll::Pending => self.blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Notes what the transport did with a flush: one refused means the peer is not reading;
    /// one that completes after that, that it read again. (A flush that completes at once says
    /// nothing: idle connections flush too, and must stay idle.)
    fn flushed(&self, polled: &Poll<io::Result<()>>) {
        match polled {
            Poll::Ready(Ok(())) if self.blocked.load(Ordering::Relaxed) => {
                self.blocked.store(false, Ordering::Relaxed);
                self.wrote.store(true, Ordering::Relaxed);
                self.touch();
            }
            Poll::Pending => self.blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Whether the peer has sent a byte since the transport was wrapped (after the TLS
    /// handshake): an HTTP/2 client that has not even sent its preface has nothing to finish.
    pub(crate) fn has_read(&self) -> bool {
        self.read_any.load(Ordering::Relaxed)
    }

    /// Marks the start of a poll of the connection: a flush deferred earlier is now due.
    pub(crate) fn next_round(&self) {
        self.round.fetch_add(1, Ordering::Relaxed);
    }

    fn round(&self) -> u32 {
        self.round.load(Ordering::Relaxed)
    }

    /// Notes bytes read: between requests they begin a request head.
    fn read(&self) {
        self.touch();
        self.read_any.store(true, Ordering::Relaxed);
        if self.open_requests.load(Ordering::Relaxed) == 0
            && !self.head_started.load(Ordering::Relaxed)
        {
            self.heads.fetch_add(1, Ordering::Relaxed);
            self.head_started.store(true, Ordering::Relaxed);
        }
    }

    /// Whether an HTTP/1 request is being answered (from its head's end to its response's).
    pub(crate) fn has_open_request(&self) -> bool {
        self.open_requests.load(Ordering::Relaxed) > 0
    }

    /// Marks a request head complete: the header clock stops until the returned guard, which
    /// the response holds, is dropped.
    pub(crate) fn request(self: &Arc<Self>) -> OpenRequest {
        self.head_started.store(false, Ordering::Relaxed);
        self.open_requests.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self.clone())
    }

    /// Resolves once nothing has moved for `timeouts.idle`; with `timeouts.header`, also once
    /// a request head begun (see the module doc) is not complete after it, and with
    /// `timeouts.send`, once writes have been refused that long with nothing written: each
    /// between its timeout and one check more, checks coming every quarter of the shortest.
    ///
    /// # Cancel safety
    /// Safe: it only sleeps and reads the flags (a new call starts every period afresh).
    pub(crate) async fn watch(&self, timeouts: Timeouts) -> Expiry {
        let Timeouts { idle, header, send } = timeouts;
        let shortest = [header, send]
            .into_iter()
            .flatten()
            .fold(idle, Duration::min);
        let step = (shortest / CHECKS).max(Duration::from_millis(1));
        let mut quiet = Duration::ZERO;
        // How long writes have been refused with none passing.
        let mut refused = Duration::ZERO;
        // The head being timed (its number) and how long it has been seen incomplete.
        let mut head: Option<u32> = None;
        let mut heading = Duration::ZERO;
        loop {
            tokio::time::sleep(step).await;
            if self.moved.swap(false, Ordering::Relaxed) {
                quiet = Duration::ZERO;
            } else {
                quiet += step;
                if quiet >= idle {
                    return Expiry::Idle;
                }
            }
            if let Some(send) = send {
                if self.wrote.swap(false, Ordering::Relaxed)
                    || !self.blocked.load(Ordering::Relaxed)
                {
                    refused = Duration::ZERO;
                } else {
                    refused += step;
                    if refused >= send {
                        return Expiry::Send;
                    }
                }
            }
            let Some(header) = header else { continue };
            let started = self.head_started.load(Ordering::Relaxed);
            let number = self.heads.load(Ordering::Relaxed);
            if started && head == Some(number) {
                heading += step;
                if heading >= header {
                    return Expiry::Header;
                }
            } else {
                // Begun at most one check ago, or none begun.
                head = started.then_some(number);
                heading = Duration::ZERO;
            }
        }
    }
}

/// Idle checks per timeout: the slack past the timeout is one check's interval.
const CHECKS: u32 = 4;

/// What [`Activity::watch`] times.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// Nothing moved either way.
    pub(crate) idle: Duration,
    /// A request head begun and not complete (HTTP/1).
    pub(crate) header: Option<Duration>,
    /// Writes refused with nothing written.
    pub(crate) send: Option<Duration>,
}

impl<T> IdleIo<T> {
    /// Wraps `inner`; the quiet period starts now; writes pass straight through.
    pub(crate) fn new(inner: T) -> Self {
        Self::with(inner, None)
    }

    /// Like [`IdleIo::new`], but gathers the writes of a round (see the module doc). The task
    /// must call [`Activity::next_round`] before each poll of the connection.
    pub(crate) fn coalescing(inner: T) -> Self {
        Self::with(inner, Some(Gather::default()))
    }

    fn with(inner: T, gather: Option<Gather>) -> Self {
        let clock = Arc::new(Activity {
            moved: AtomicBool::new(false),
            wrote: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            read_any: AtomicBool::new(false),
            round: AtomicU32::new(0),
            open_requests: AtomicU32::new(0),
            head_started: AtomicBool::new(false),
            heads: AtomicU32::new(0),
        });
        Self {
            inner,
            clock,
            gather,
        }
    }

    /// The activity stamp, to wait on.
    pub(crate) fn timer(&self) -> Arc<Activity> {
        self.clock.clone()
    }
}

impl Gather {
    fn pending(&self) -> bool {
        self.sent < self.buf.len()
    }

    /// Whether a flush was deferred in an earlier round than `round`.
    fn overdue(&self, round: u32) -> bool {
        self.owed.is_some_and(|owed| owed != round)
    }

    /// Passes every gathered byte to `inner`.
    fn drain<T: AsyncWrite>(
        &mut self,
        mut inner: Pin<&mut T>,
        cx: &mut Context<'_>,
        clock: &Activity,
    ) -> Poll<io::Result<()>> {
        while self.pending() {
            let polled = inner.as_mut().poll_write(cx, &self.buf[self.sent..]);
            clock.wrote(&polled, |&n| n > 0);
            let n = ready!(polled)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        self.owed = None;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: drains when they would not fit or a flush is overdue.
    /// `Ready(false)` means the write is too large to gather and should go straight through.
    fn reserve<T: AsyncWrite>(
        &mut self,
        inner: Pin<&mut T>,
        cx: &mut Context<'_>,
        len: usize,
        clock: &Activity,
    ) -> Poll<io::Result<bool>> {
        if self.overdue(clock.round()) || self.buf.len() + len > COALESCE_LIMIT {
            ready!(self.drain(inner, cx, clock))?;
        }
        Poll::Ready(Ok(len <= COALESCE_LIMIT))
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some(gather) = this.gather.as_mut() {
            // A flush owed from an earlier round goes out before the peer is read; if the socket
            // is full, the flush that follows the read reports it.
            if gather.overdue(this.clock.round())
                && let Poll::Ready(Err(err)) = gather.drain(this.inner.as_mut(), cx, this.clock)
            {
                return Poll::Ready(Err(err));
            }
        }
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.read();
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        if let Some(gather) = this.gather.as_mut()
            && ready!(gather.reserve(this.inner.as_mut(), cx, data.len(), this.clock))?
        {
            gather.buf.extend_from_slice(data);
            this.clock.touch();
            return Poll::Ready(Ok(data.len()));
        }
        let polled = this.inner.poll_write(cx, data);
        this.clock.wrote(&polled, |&n| n > 0);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        if let Some(gather) = this.gather.as_mut() {
            let len = bufs.iter().map(|b| b.len()).sum();
            if ready!(gather.reserve(this.inner.as_mut(), cx, len, this.clock))? {
                for b in bufs {
                    gather.buf.extend_from_slice(b);
                }
                this.clock.touch();
                return Poll::Ready(Ok(len));
            }
        }
        let polled = this.inner.poll_write_vectored(cx, bufs);
        this.clock.wrote(&polled, |&n| n > 0);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.gather.is_some() || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some(gather) = this.gather.as_mut()
            && gather.pending()
        {
            let round = this.clock.round();
            if !gather.overdue(round) {
                // The first flush of this round: come back for it next round, after the
                // other streams that are ready have queued their frames behind these.
                gather.owed = Some(round);
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            ready!(gather.drain(this.inner.as_mut(), cx, this.clock))?;
        }
        let polled = this.inner.poll_flush(cx);
        this.clock.flushed(&polled);
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some(gather) = this.gather.as_mut() {
            ready!(gather.drain(this.inner.as_mut(), cx, this.clock))?;
        }
        this.inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_a_quiet_period() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a);
        let timer = io.timer();
        let started = tokio::time::Instant::now();
        let expired = tokio::spawn(async move {
            let idle = Timeouts {
                idle: Duration::from_secs(4),
                header: None,
                send: None,
            };
            timer.watch(idle).await;
            tokio::time::Instant::now()
        });
        // A byte at t=3.5s, before the 4s timeout was up, starts the quiet period again.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        b.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await.unwrap();
        let fired = expired.await.unwrap() - started;
        // Expiry comes 4s to 5s (one check interval of slack) after the read.
        assert!(fired >= Duration::from_millis(7500), "fired at {fired:?}");
        assert!(fired <= Duration::from_millis(8500), "fired at {fired:?}");
    }

    #[tokio::test]
    async fn coalescing_defers_the_first_flush_of_a_round_to_the_next() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut io = IdleIo::coalescing(a);
        let activity = io.timer();
        activity.next_round();
        io.write_all(b"one").await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"two").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 6];
        let early = tokio::time::timeout(Duration::from_millis(20), b.read(&mut got)).await;
        assert!(early.is_err(), "nothing is written within the round");
        activity.next_round();
        io.flush().await.unwrap();
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"onetwo");
    }

    #[tokio::test]
    async fn coalescing_writes_large_buffers_through_and_in_order() {
        let (a, mut b) = tokio::io::duplex(4 * COALESCE_LIMIT);
        let mut io = IdleIo::coalescing(a);
        let big = vec![7u8; COALESCE_LIMIT + 1];
        io.write_all(b"head").await.unwrap();
        io.write_all(&big).await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &big[..]);
    }
}
