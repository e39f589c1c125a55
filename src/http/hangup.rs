//! Notices an HTTP/1 client that hangs up while its request is being answered, so the answer
//! and its origin request are abandoned (as nginx does, logging 499) rather than left to run
//! until the origin answers or times out.
//!
//! hyper can do this itself, by reading the connection mid-request; but every such read first
//! makes room in its read buffer, which still holds the request's header values, so it took a
//! fresh 8 KiB buffer per request (5% of HTTP/1 throughput, measured). Its watch is turned off
//! (`half_close`, see `conn`), and [`Hangup`] watches the TCP socket's readiness instead,
//! below TLS and without reading: a peek (which consumes nothing) only once the socket turns
//! readable. [`SharedTcp`] is the transport that lets it: the same socket, shared between TLS
//! and the watch.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// How long to wait before looking again when bytes the server has not read yet hide whether
/// the client also closed: a pipelined request, a request body still arriving, or a TLS
/// close_notify whose FIN has not come yet.
const RECHECK: Duration = Duration::from_millis(250);

/// A write to a connection the client reset fails with EPIPE instead of raising SIGPIPE (what
/// std's and tokio's own sockets do).
const NO_SIGPIPE: libc::c_int = libc::MSG_NOSIGNAL;

/// A client's TCP connection, readable and writable through a shared handle so that a
/// [`Hangup`] can watch the same socket.
#[derive(Debug)]
pub(crate) struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self(Arc::new(tcp))
    }

    /// A watch for the client hanging up, on the same socket.
    pub(crate) fn hangup(&self) -> Hangup {
        Hangup {
            tcp: self.0.clone(),
            recheck: None,
        }
    }

    /// Runs one non-blocking socket operation once the socket is ready for `interest`. Like
    /// tokio's own `TcpStream` I/O, a transfer shorter than asked for also clears the
    /// readiness: epoll has reported all there was, so the next call waits for the next event
    /// instead of making a system call that would only say "would block".
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
        asked: usize,
        mut op: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if interest.is_writable() {
                ready!(self.0.poll_write_ready(cx))?;
            } else {
                ready!(self.0.poll_read_ready(cx))?;
            }
            let mut short = None;
            let done = self.0.try_io(interest, || {
                let n = op(&self.0)?;
                if n > 0 && n < asked {
                    // Reported as "would block" so `try_io` clears the readiness; the count is
                    // returned below.
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (done, short) {
                (_, Some(n)) | (Ok(n), None) => return Poll::Ready(Ok(n)),
                (Err(err), None) if err.kind() == io::ErrorKind::WouldBlock => {}
                (Err(err), None) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Free when the caller's buffer is initialised already, as rustls's is.
        let dst = buf.initialize_unfilled();
        let asked = dst.len();
        let n = ready!(self.poll_io(cx, Interest::READABLE, asked, |tcp| {
            (&*SockRef::from(tcp)).read(dst)
        }))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, Interest::WRITABLE, buf.len(), |tcp| {
            SockRef::from(tcp).send_with_flags(buf, NO_SIGPIPE)
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let asked = bufs.iter().map(|b| b.len()).sum();
        self.poll_io(cx, Interest::WRITABLE, asked, |tcp| {
            SockRef::from(tcp).send_vectored_with_flags(bufs, NO_SIGPIPE)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// Watches one client socket for the client hanging up. Poll it only while the server is not
/// reading the connection itself (HTTP/1 between a request head and its response's end): both
/// wait on the socket's one reader wake-up.
#[derive(Debug)]
pub(crate) struct Hangup {
    tcp: Arc<TcpStream>,
    /// Armed while unread bytes hide whether the client also closed.
    recheck: Option<Pin<Box<Sleep>>>,
}

impl Hangup {
    /// Ready once the client has closed its side of the connection, or the connection failed.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(recheck) = &mut self.recheck {
            ready!(recheck.as_mut().poll(cx));
            self.recheck = None;
        }
        let mut byte = [0u8; 1];
        match self.tcp.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
            Poll::Pending => Poll::Pending,
            // End of stream with nothing unread: the client closed.
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
            Poll::Ready(Ok(_)) => {
                if self.read_closed(cx) {
                    return Poll::Ready(());
                }
                // Unread bytes keep the socket readable, so its readiness cannot wake us;
                // a timer does.
                let mut recheck = Box::pin(tokio::time::sleep(RECHECK));
                let _ = recheck.as_mut().poll(cx);
                self.recheck = Some(recheck);
                Poll::Pending
            }
        }
    }

    /// Between requests: a recheck armed for the last one would only wake the task for
    /// nothing and hold back the next request's first look.
    pub(crate) fn rest(&mut self) {
        self.recheck = None;
    }

    /// Whether the client's FIN has arrived (behind bytes not read yet).
    fn read_closed(&self, cx: &mut Context<'_>) -> bool {
        let ready = std::pin::pin!(self.tcp.ready(Interest::READABLE));
        match ready.poll(cx) {
            Poll::Ready(Ok(ready)) => ready.is_read_closed(),
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        }
    }
}
