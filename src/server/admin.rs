//! The admin listener: plain HTTP/1.1 for operators and monitoring, on `listen.admin`.
//!
//! `/healthz` says the process is up, `/readyz` whether every configured site has a
//! certificate, `/metrics` is the Prometheus registry and `/certs` the JSON of `rampart certs`.
//! Reads the current configuration snapshot and the [`CertStore`]; writes nothing. Its accept
//! loop and connections run on the server's task tracker and stop with it. It is meant for
//! loopback: there is no authentication.

use std::convert::Infallible;
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
}

impl Admin {
    pub(crate) fn new(
        reloader: Arc<Reloader>,
        certs: CertStore,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            reloader,
            certs,
            provider,
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

    /// 200 when every site's hosts have a certificate, else 503 naming the sites waiting.
    fn readiness(&self) -> Response<Full<Bytes>> {
        let Some(config) = self.reloader.config() else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
        };
        let waiting: Vec<&str> = config
            .sites
            .iter()
            .filter(|site| !self.certs.covers(site))
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
