//! Upgraded connections (WebSocket and other `Upgrade` protocols): once both sides have
//! switched, bytes are copied both ways until either side closes, or until none has moved
//! either way for the route's `timeouts.idle` (nginx's `proxy_read_timeout` does the same
//! for its tunnels), so a tunnel both ends forgot holds no connection for ever.
//!
//! Each side is wrapped to raise one shared flag per read or write that moves bytes; the
//! tunnel looks at it every quarter of the timeout, as `http::idle` does for connections,
//! rather than reading the clock per copy.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use crate::observe::Chain;

/// Checks of the flag per idle timeout: a tunnel closes within 1.25 × the timeout.
const CHECKS: u32 = 4;

/// Joins the client's and the origin's upgraded connections until one closes or nothing
/// moves for `idle`.
pub(crate) async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade, idle: Duration) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(err) => return debug!(error = %Chain(&err), "upgrade did not complete"),
    };
    let moved = AtomicBool::new(false);
    let mut downstream = Moved::new(TokioIo::new(downstream), &moved);
    let mut upstream = Moved::new(TokioIo::new(upstream), &moved);
    let copy = tokio::io::copy_bidirectional(&mut downstream, &mut upstream);
    tokio::pin!(copy);
    let step = (idle / CHECKS).max(Duration::from_millis(1));
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            copied = &mut copy => {
                if let Err(err) = copied {
                    debug!(error = %Chain(&err), "tunnel closed with an error");
                }
                return;
            }
            () = tokio::time::sleep(step) => {
                if moved.swap(false, Ordering::Relaxed) {
                    quiet = Duration::ZERO;
                } else {
                    quiet += step;
                    if quiet >= idle {
                        return debug!(?idle, "tunnel idle; closed");
                    }
                }
            }
        }
    }
}

/// One side of a tunnel, raising `moved` whenever bytes pass.
struct Moved<'a, T> {
    inner: T,
    moved: &'a AtomicBool,
}

impl<'a, T> Moved<'a, T> {
    fn new(inner: T, moved: &'a AtomicBool) -> Self {
        Self { inner, moved }
    }

    fn note(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Moved<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.note();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Moved<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        if n > 0 {
            this.note();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
