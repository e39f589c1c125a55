//! `max_body:` the largest request body a route accepts (413 Content Too Large, RFC 9110
//! §15.5.14).
//!
//! `proxy::service` calls [`check_length`] right after routing, so a declared oversized body is
//! refused before any origin sees the request, and wraps a body of unknown length with
//! [`limit`], which fails the upstream request (aborting it) once the limit is crossed;
//! `proxy::body` then tells that failure apart from an origin's, and gives the body back
//! ([`Capped::into_inner`]) to be read away while the 413 goes out.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::{Body, Frame, SizeHint};

/// The declared body is larger than `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// The route's limit in bytes.
    pub max: u64,
}

/// Refuses a request whose `Content-Length` exceeds `max`. An unparsable length is left to
/// the HTTP server, which has already rejected it.
///
/// # Errors
/// [`TooLarge`] when the declared length is over the limit.
pub fn check_length(headers: &HeaderMap, max: Option<u64>) -> Result<(), TooLarge> {
    let Some(max) = max else { return Ok(()) };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max => Err(TooLarge { max }),
        _ => Ok(()),
    }
}

/// `body`, failing with [`OverLimit`] once more than `max` bytes have passed.
pub fn limit<B>(body: B, max: Option<u64>) -> Capped<B> {
    Capped {
        inner: body,
        left: max.unwrap_or(u64::MAX),
    }
}

/// More of the request body arrived than the route's `max_body`.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the request body is longer than max_body")]
pub struct OverLimit;

/// A body cut at a length, as `http_body_util::Limited` cuts it, that can be given back.
#[derive(Debug)]
pub struct Capped<B> {
    inner: B,
    left: u64,
}

impl<B> Capped<B> {
    /// The body, where it stopped.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for Capped<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let length = frame.data_ref().map_or(0, |data| data.remaining() as u64);
        if length > self.left {
            self.left = 0;
            return Poll::Ready(Some(Err(Box::new(OverLimit))));
        }
        self.left -= length;
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if hint.lower() >= self.left {
            hint.set_exact(self.left);
        } else {
            hint.set_upper(hint.upper().map_or(self.left, |upper| upper.min(self.left)));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with_length(length: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static(length));
        headers
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused() {
        assert_eq!(
            check_length(&with_length("1025"), Some(1024)),
            Err(TooLarge { max: 1024 })
        );
        assert_eq!(check_length(&with_length("1024"), Some(1024)), Ok(()));
        assert_eq!(check_length(&HeaderMap::new(), Some(0)), Ok(()));
        assert_eq!(check_length(&with_length("99999"), None), Ok(()));
    }

    #[tokio::test]
    async fn a_body_passes_up_to_the_limit_and_fails_past_it_keeping_the_rest() {
        use http_body_util::{BodyExt, StreamBody};
        let frames = ["1234", "5678", "9", "rest"]
            .map(|data| Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(data))));
        let mut body = limit(StreamBody::new(futures_util::stream::iter(frames)), Some(8));
        for _ in 0..2 {
            assert!(body.frame().await.expect("a frame").is_ok());
        }
        let error = body
            .frame()
            .await
            .expect("a frame")
            .expect_err("over 8 bytes");
        assert!(error.is::<OverLimit>(), "{error}");
        let mut rest = body.into_inner();
        let next = rest.frame().await.expect("a frame").expect("data");
        assert_eq!(
            next.into_data().expect("data"),
            "rest",
            "what follows is kept"
        );
    }
}
