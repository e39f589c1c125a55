//! The HTTPS client instant-acme uses to reach the CA.
//!
//! Reads `acme.ca_bundle` once (extra roots on top of the Mozilla roots from webpki-roots), bounds
//! every request with a timeout, and counts requests per issuance through a task-local tally so
//! the scheduler can log how many requests an order cost and honour a `Retry-After` header
//! (instant-acme drops that header from error responses).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::acme::AcmeError;
use crate::tls::client::{BundleError, HttpsClient, PlainHttp, https_client};

/// A CA that does not answer within this long is treated as a transient network error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP connect bound; a dead CA address fails fast and the step retry takes over.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTPS client for the ACME server, cheap to clone.
#[derive(Clone)]
pub(crate) struct AcmeHttp {
    client: HttpsClient<BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// Builds a client trusting the Mozilla roots plus every certificate in `ca_bundle`.
    ///
    /// # Errors
    /// `CaBundle` when the file cannot be read, `CaBundleEmpty` when it holds no certificate.
    pub(crate) fn new(ca_bundle: Option<&Path>) -> Result<Self, AcmeError> {
        let client =
            https_client(ca_bundle, CONNECT_TIMEOUT, PlainHttp::Refused).map_err(|error| {
                match error {
                    BundleError::Read { path, source } => AcmeError::CaBundle { path, source },
                    BundleError::Empty { path } => AcmeError::CaBundleEmpty { path },
                }
            })?;
        Ok(Self { client })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.client.request(req);
        Box::pin(async move {
            // The body is read inside the same timeout: a CA that stalls mid-body is no better
            // than one that never answers.
            let exchange = async {
                let response = response
                    .await
                    .map_err(|e| instant_acme::Error::Other(e.into()))?;
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| instant_acme::Error::Other(e.into()))?
                    .to_bytes();
                Ok::<_, instant_acme::Error>((parts, body))
            };
            let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await;
            let (parts, body) = match result {
                Ok(done) => done?,
                Err(_elapsed) => {
                    let timeout =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "ACME request timed out");
                    return Err(instant_acme::Error::Other(timeout.into()));
                }
            };
            Tally::record(parts.status, parts.headers.get(RETRY_AFTER));
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

tokio::task_local! {
    static TALLY: Arc<Tally>;
}

/// Requests made and the latest `Retry-After` seen while one issuance runs.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    requests: AtomicU32,
    retry_after: Mutex<Option<SystemTime>>,
}

impl Tally {
    /// Runs `future` with a fresh tally and returns it alongside the output.
    pub(crate) async fn scope<F: Future>(future: F) -> (F::Output, Arc<Self>) {
        let tally = Arc::new(Self::default());
        let output = TALLY.scope(tally.clone(), future).await;
        (output, tally)
    }

    /// Requests sent so far.
    pub(crate) fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The latest `Retry-After` time named by a 429 or 503 response.
    pub(crate) fn retry_after(&self) -> Option<SystemTime> {
        *self
            .retry_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn record(status: StatusCode, retry_after: Option<&http::HeaderValue>) {
        // Outside a scope (e.g. the account load at start) there is nothing to count into.
        let _outside_scope = TALLY.try_with(|tally| {
            tally.requests.fetch_add(1, Ordering::Relaxed);
            let limited = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            if let Some(at) = retry_after
                .filter(|_| limited)
                .and_then(|v| parse_retry_after(v.to_str().ok()?, SystemTime::now()))
            {
                *tally
                    .retry_after
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(at);
            }
        });
    }
}

/// The `Retry-After` time seen so far by the issuance running on this task, if any.
pub(crate) fn current_retry_after() -> Option<SystemTime> {
    TALLY.try_with(|tally| tally.retry_after()).ok().flatten()
}

/// RFC 9110 §10.2.3: `Retry-After` is either delay-seconds or an HTTP-date.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(seconds) => now.checked_add(Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(now + Duration::from_secs(120))
        );
        let date = parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now);
        assert_eq!(
            date,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
