//! `max_body:` the largest request body a route accepts (413 Content Too Large, RFC 9110
//! §15.5.14).
//!
//! `proxy::service` calls [`check_length`] right after routing, so a declared oversized body is
//! refused before any origin sees the request, and wraps a body of unknown length with
//! [`limit`], which fails the upstream request (aborting it) once the limit is crossed;
//! `proxy::body` then tells that failure apart from an origin's.

use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::Limited;

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

/// `body`, failing with a [`LengthLimitError`] once more than `max` bytes have passed.
pub fn limit<B>(body: B, max: Option<u64>) -> Limited<B> {
    let max = max.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    Limited::new(body, max)
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
}
