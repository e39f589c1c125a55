//! The admin listener: plain HTTP/1.1 for operators and monitoring, on `listen.admin`.
//!
//! `/healthz` says the process is up, `/readyz` whether every configured site has a
//! certificate, `/metrics` is the Prometheus registry and `/certs` the JSON of `rampart certs`.
//! Reads the current configuration snapshot and the [`CertStore`]; writes nothing. Its accept
//! loop and connections run on the server's task tracker and stop with it. It is meant for
//! loopback (start-up warns otherwise); with `listen.admin_token_file` every endpoint but
//! `/healthz` also wants `Authorization: Bearer TOKEN` (401 without it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::acme;
use crate::config::{Secret, SiteTls};
use crate::observe::metrics;
use crate::server::reload::Reloader;
use crate::tls::CertStore;

/// A scraper or probe that sends no request head in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the admin endpoints read.
#[derive(Clone)]
pub(crate) struct Admin {
    reloader: Arc<Reloader>,
    certs: CertStore,
    provider: Arc<CryptoProvider>,
    /// The bearer token requests must carry, if one is configured.
    token: Option<Arc<Secret>>,
}

impl Admin {
    pub(crate) fn new(
        reloader: Arc<Reloader>,
        certs: CertStore,
        provider: Arc<CryptoProvider>,
        token: Option<Secret>,
    ) -> Self {
        Self {
            reloader,
            certs,
            provider,
            token: token.map(Arc::new),
        }
    }

    /// Serves `listener` until `stop`. Spawned after the `:443` and `:80` loops, so answering
    /// at all means the listeners are bound.
    pub(crate) async fn run(
        self,
        listener: TcpListener,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) {
        loop {
            let (tcp, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "admin accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let (admin, stop) = (self.clone(), stop.clone());
            tasks.spawn(
                async move {
                    let service = service_fn(move |request| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.respond(&request).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        result = conn.as_mut() => result,
                        () = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(error) = result {
                        debug!(%error, "admin connection ended with an error");
                    }
                }
                .instrument(info_span!("admin", %peer)),
            );
        }
    }

    /// Answers one admin request.
    async fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        }
        // Liveness tells nothing, and probes that cannot carry a token need it.
        let open = request.uri().path() == "/healthz";
        if let Some(token) = &self.token
            && !open
            && !presents(request, token)
        {
            let mut refused = text(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required\n".into(),
            );
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return refused;
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => self.readiness(),
            "/metrics" => reply(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                metrics::encode_text().into(),
            ),
            "/certs" => self.certs().await,
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    /// 200 when every site's hosts have a certificate, else 503 naming the sites waiting. An
    /// on-demand site has none until a client asks for a name, and never holds this up.
    fn readiness(&self) -> Response<Full<Bytes>> {
        let Some(config) = self.reloader.config() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
        };
        let waiting: Vec<&str> = config
            .sites
            .iter()
            .filter(|site| site.tls != SiteTls::OnDemand && !self.certs.covers(site))
            .map(|site| site.name.as_str())
            .collect();
        if waiting.is_empty() {
            text(StatusCode::OK, "ready\n".into())
        } else {
            let body = format!("waiting for certificates: {}\n", waiting.join(", "));
            text(StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }

    /// The JSON of `rampart certs` for the served snapshot. It reads certificate files, so it
    /// runs off the runtime's worker.
    async fn certs(&self) -> Response<Full<Bytes>> {
        let Some(config) = self.reloader.config() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
        };
        let provider = self.provider.clone();
        let report = tokio::task::spawn_blocking(move || {
            serde_json::to_vec_pretty(&acme::status(&config, &provider))
        })
        .await;
        match report {
            Ok(Ok(json)) => reply(StatusCode::OK, "application/json", json.into()),
            Ok(Err(error)) => {
                warn!(%error, "cannot encode certificate status");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n".into())
            }
            Err(error) => {
                warn!(%error, "certificate status task failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "status failed\n".into())
            }
        }
    }
}

/// The warning start-up logs for an admin listener bound to `addr`, if it is not on loopback:
/// metrics and certificate details are then reachable from the network.
pub(crate) fn exposure(addr: SocketAddr, has_token: bool) -> Option<&'static str> {
    match (addr.ip().is_loopback(), has_token) {
        (true, _) => None,
        (false, true) => Some(
            "the admin listener is not on loopback; its endpoints need the token, but keep it \
             on 127.0.0.1 or ::1 or behind a firewall",
        ),
        (false, false) => Some(
            "the admin listener is not on loopback and has no token: metrics and certificate \
             details are open to the network; keep it on 127.0.0.1 or ::1, or set \
             listen.admin_token_file",
        ),
    }
}

/// Whether `request` carries `Authorization: Bearer TOKEN` with the configured token, compared
/// in time independent of where they differ.
fn presents<B>(request: &Request<B>, token: &Secret) -> bool {
    let Some(given) = (request.headers().get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, given)| given.trim().as_bytes())
    else {
        return false;
    };
    let expected = token.expose().as_bytes();
    let differences = (given.iter().zip(expected)).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    given.len() == expected.len() && differences == 0
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listener_off_loopback_is_warned_about() {
        let at = |text: &str| text.parse::<SocketAddr>().expect("test address");
        assert_eq!(exposure(at("127.0.0.1:9180"), false), None);
        assert_eq!(exposure(at("[::1]:9180"), false), None);
        assert!(exposure(at("0.0.0.0:9180"), true).is_some_and(|w| w.contains("need the token")));
        assert!(exposure(at("[::]:9180"), false).is_some_and(|w| w.contains("no token")));
        assert!(exposure(at("10.0.0.5:9180"), false).is_some());
    }

    #[test]
    fn the_token_must_match_exactly() {
        let token = Secret::new("0123456789abcdef".to_owned());
        let with = |value: &str| {
            let request = Request::get("/metrics")
                .header(header::AUTHORIZATION, value)
                .body(())
                .expect("test request");
            presents(&request, &token)
        };
        assert!(with("Bearer 0123456789abcdef"));
        assert!(with("bearer 0123456789abcdef"));
        assert!(!with("Bearer 0123456789abcde"));
        assert!(!with("Bearer 0123456789abcdef0"));
        assert!(!with("Basic 0123456789abcdef"));
        assert!(!presents(&Request::get("/").body(()).unwrap(), &token));
    }
}
