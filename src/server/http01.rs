//! The `:80` role: ACME HTTP-01 answers, and a permanent redirect to https for everything else.
//!
//! Runs on the plain-HTTP connection tasks; reads the [`ChallengeStore`] (in a cluster, every
//! node's answers), writes nothing.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use crate::acme::ChallengeStore;

/// RFC 8555 §8.3: the path the CA fetches.
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Answers requests on the plain HTTP listener.
#[derive(Clone, Debug)]
pub(crate) struct Http01 {
    challenges: ChallengeStore,
    /// Port of the https listener, added to redirects unless it is 443.
    https_port: u16,
}

impl Http01 {
    pub(crate) fn new(challenges: ChallengeStore, https_port: u16) -> Self {
        Self {
            challenges,
            https_port,
        }
    }

    pub(crate) async fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if let Some(token) = request.uri().path().strip_prefix(CHALLENGE_PREFIX) {
            // In a cluster a token not seen yet is looked up in the store (bounded wait).
            return match self.challenges.find(token).await {
                // RFC 8555 §8.3: the body is the key authorization, nothing else.
                Some(key_authorization) => {
                    let mut response = Response::new(Full::new(Bytes::from(key_authorization)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    response
                }
                None => text(StatusCode::NOT_FOUND, "no such challenge token\n"),
            };
        }
        let Some(host) = request_host(request) else {
            return text(StatusCode::BAD_REQUEST, "a Host header is required\n");
        };
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{host}{port}{target}");
        match HeaderValue::try_from(location) {
            Ok(location) => {
                let mut response = text(StatusCode::PERMANENT_REDIRECT, "redirecting to https\n");
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "bad request target\n"),
        }
    }
}

fn request_host<B>(request: &Request<B>) -> Option<String> {
    let value = request.headers().get(header::HOST)?.to_str().ok()?;
    let authority = value.parse::<http::uri::Authority>().ok()?;
    Some(authority.host().to_ascii_lowercase())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::get(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap()
    }

    #[tokio::test]
    async fn redirects_with_path_query_and_non_default_port() {
        let http01 = Http01::new(ChallengeStore::default(), 8443);
        let response = http01
            .respond(&get("/a/b?c=d", Some("Example.COM:8080")))
            .await;
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://example.com:8443/a/b?c=d"
        );
        let on_443 = Http01::new(ChallengeStore::default(), 443)
            .respond(&get("/", Some("example.com")))
            .await;
        assert_eq!(on_443.headers()[header::LOCATION], "https://example.com/");
    }

    #[tokio::test]
    async fn serves_known_tokens_only() {
        let store = ChallengeStore::default();
        store.insert("tok", "tok.thumbprint");
        let http01 = Http01::new(store, 443);
        assert_eq!(
            http01
                .respond(&get("/.well-known/acme-challenge/tok", None))
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            http01
                .respond(&get("/.well-known/acme-challenge/nope", None))
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            http01.respond(&get("/", None)).await.status(),
            StatusCode::BAD_REQUEST
        );
    }
}
