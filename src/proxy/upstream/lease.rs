//! A request's hold on its origin's pool: counted in flight from checkout until its response
//! body is dropped ([`InFlight`]), and the way its connection goes back once that body has
//! ended cleanly ([`PooledBody`] for hyper's connections, `h1::WireBody` for lean ones).
//!
//! Apart from `pool` so that the lean client, which the pool holds idle connections of, can
//! give them back without the pool and the client importing each other.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::proxy::upstream::h1::Wire;
use crate::proxy::upstream::pool::{Conn, Pool};

/// Counts one request in flight for as long as it lives.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Pool>);

impl InFlight {
    /// Counts a request that starts now.
    pub(crate) fn enter(pool: &Arc<Pool>) -> Self {
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(pool.clone())
    }

    /// Gives a lean connection whose exchange has ended back to the pool.
    pub(crate) fn checkin_wire(&self, wire: Wire) {
        self.0.checkin_wire(wire);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// An origin's response body. Its connection goes back to the pool once the body has ended
    /// cleanly; an error or a drop mid-way closes it, since unread bytes would corrupt the
    /// next exchange. The request stays counted in flight until this is dropped.
    pub(crate) struct PooledBody {
        #[pin]
        inner: Incoming,
        conn: Option<Conn>,
        in_flight: InFlight,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body with no frames (204, HEAD, Content-Length: 0) is never polled: dropping
            // it is its normal end.
            if this.inner.is_end_stream()
                && let Some(conn) = this.conn.take()
            {
                this.in_flight.0.checkin(conn);
            }
        }
    }
}

impl PooledBody {
    /// Wraps `inner`; `conn` (if any) returns to the pool of `in_flight` when the body ends.
    pub(crate) fn new(inner: Incoming, conn: Option<Conn>, in_flight: InFlight) -> Self {
        Self {
            inner,
            conn,
            in_flight,
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            // hyper stops polling once a body reports its end, so this may be the last call.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                this.conn.take(); // dropping the sender closes the broken connection
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(conn) = this.conn.take() {
            this.in_flight.0.checkin(conn);
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
