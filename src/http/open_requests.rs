//! Marks each HTTP/1 request open from its head's end until its response ends, for the header
//! timeout of `http::idle` (which must not run while a request is being answered).
//!
//! `conn::serve_h1` wraps the connection's service in [`OpenRequests`]: hyper calls
//! it as a request head is complete, and the guard it takes rides on the response body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::http::idle::{Activity, OpenRequest};

/// A service whose every request stays open, for `activity`, until its response body ends.
pub(crate) struct OpenRequests<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> OpenRequests<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for OpenRequests<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Held<B>>;
    type Error = S::Error;
    type Future = Opening<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        Opening {
            open: Some(self.activity.request()),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future; its guard moves into the response body.
    pub(crate) struct Opening<F> {
        #[pin]
        inner: F,
        open: Option<OpenRequest>,
    }
}

impl<F, B, E> Future for Opening<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Held<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let open = this.open.take();
        Poll::Ready(Ok(response.map(|inner| Held { inner, _open: open })))
    }
}

pin_project! {
    /// A response body holding its request open until it is dropped.
    pub(crate) struct Held<B> {
        #[pin]
        inner: B,
        _open: Option<OpenRequest>,
    }
}

impl<B: Body> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
