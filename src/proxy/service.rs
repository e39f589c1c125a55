//! The per-request entry point: canonical request, host check, route, respond or forward,
//! tunnel upgrades.
//!
//! Called by the HTTP server on the connection's task for every decrypted request. Reads the
//! route table snapshot once per request; upgrade tunnels run on the server's task tracker.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::{Downstream, EscapedSlashes, HeaderRules, PathMatch, Rewrite, contains_ip};
use crate::observe::Chain;
use crate::observe::access_log::AccessRecord;
use crate::observe::metrics::{RouteMetrics, SiteMetrics};
use crate::policy::admit::{Refused, Steps, admit};
use crate::policy::concurrency::Permit;
use crate::policy::{client_ip, headers};
use crate::proxy::ahead::ReadAhead;
use crate::proxy::error::CLIENT_CLOSED;
use crate::proxy::linger;
use crate::proxy::trace::RequestIds;
use crate::proxy::tunnel::tunnel;
use crate::proxy::upstream::retry::{self, BodyLimits};
use crate::proxy::{
    Action, Metered, ProxyBody, ProxyError, Route, RouteMiss, RouteTable, Side, SiteRoutes,
    UpstreamPool, forward,
};
use crate::request::{self, Canonical, Client, Refusal};

/// What the proxy knows about the client connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The address of the hop we saw: the TCP peer, or the source a trusted PROXY protocol
    /// header named. The client IP behind trusted proxies is resolved per request from it.
    pub peer: SocketAddr,
    /// `peer`'s IP as a field value, formatted once for every request's forwarding fields.
    peer_value: HeaderValue,
    /// The TLS server name it asked for, lower-case.
    pub sni: Option<Arc<str>>,
    /// Whether the connection speaks HTTP/2.
    pub is_h2: bool,
}

impl ConnInfo {
    /// A connection from `peer` that asked for `sni` and negotiated h2 or not.
    pub fn new(peer: SocketAddr, sni: Option<Arc<str>>, is_h2: bool) -> Self {
        Self {
            peer,
            peer_value: forward::ip_value(peer.ip()),
            sni,
            is_h2,
        }
    }
}

/// The reverse proxy: a swappable route table, and the tasks of its open tunnels, of the
/// responses it reads ahead of their clients and of the refused bodies it reads away.
#[derive(Clone, Debug)]
pub struct Proxy {
    table: Arc<ArcSwap<RouteTable>>,
    tasks: TaskTracker,
    /// `downstream.client_body_timeout`: the longest pause in a client's request body.
    client_body_timeout: Duration,
    read_ahead: ReadAhead,
}

impl Proxy {
    /// A proxy serving `table` to clients limited by `downstream`; upgrade tunnels, responses
    /// read ahead and refused bodies read away are spawned on `tasks` so shutdown sees them.
    pub fn new(table: RouteTable, tasks: TaskTracker, downstream: &Downstream) -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(table)),
            read_ahead: ReadAhead {
                send_timeout: downstream.send_timeout,
                tasks: tasks.clone(),
            },
            tasks,
            client_body_timeout: downstream.client_body_timeout,
        }
    }

    /// The table requests are routed by now.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Serves later requests from `table`; requests already routed finish on the old one.
    pub fn replace(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    /// Answers one request: never fails, errors become their status response (`Infallible`
    /// makes this future hyper's service future as it is). It owns the proxy handle and the
    /// connection's info so that it is the request's whole future: a wrapping `async` block
    /// would hold it and copy all of it once more per request.
    pub async fn serve(
        self,
        mut request: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Result<Response<Metered<ProxyBody>>, Infallible> {
        let conn = &*conn;
        let table = self.table.load_full();
        let ids = RequestIds::from_headers(request.headers());
        let trusted_peer = contains_ip(&table.trusted_proxies, conn.peer.ip());
        // Step 1: every later step (log, X-Real-IP, rate keys, ip_hash) uses this, not the peer.
        // Read before canonicalisation, which keeps X-Forwarded-For from trusted peers only.
        let client_ip =
            client_ip::resolve(conn.peer.ip(), request.headers(), &table.trusted_proxies);
        // The target as the client sent it, for the log; the request is canonical after this.
        let target = request.uri().clone();
        let client = Client {
            is_h2: conn.is_h2,
            reached: conn.sni.as_deref().or_else(|| table.default_name()),
            trusted_peer,
        };
        let canonical = request::canonicalize(&mut request, client, table.underscores);
        let host = canonical.as_ref().ok().map(|c| c.authority.host.clone());
        let mut exchange = Exchange {
            record: Some(AccessRecord {
                started: Instant::now(),
                peer: client_ip,
                sni: conn.sni.clone(),
                host,
                method: request.method().clone(),
                target,
                site: None,
                upstream: None,
                status: 0,
                error: None,
                auth: None,
                bytes_in: None,
                trace_id: ids.trace_id,
                request_id: ids.request_id.clone(),
            }),
            table: &table,
            site: None,
            route: None,
        };
        // The route's concurrency slot, if it has a limit: rides on the response body.
        let mut permit = None;
        // Routing never waits, so it is a plain function: one nested future less in every
        // request's (whose whole size is moved and boxed per request).
        let routed = canonical.map_err(ProxyError::from).and_then(|canonical| {
            Self::route(&mut exchange, &mut request, conn, client_ip, canonical)
        });
        let answered = 'answer: {
            // A request answered here, its body unread, has the body read away after (see
            // `linger`): the answer must reach its client.
            let (matched, canonical) = match routed {
                Ok(routed) => routed,
                Err(err) => {
                    self.linger(request);
                    break 'answer Err(err);
                }
            };
            let record = exchange.record();
            // Forwarding's clock starts here: `total` bounds the tries, not a wait in the
            // route's concurrency queue; without one, the request's start is as good.
            let mut start = record.started;
            // Concurrency last (see `policy::admit`): a request refused by an earlier step
            // never holds a slot.
            if let Some(limit) = &matched.route.concurrency {
                match limit.acquire().await {
                    Ok(slot) => {
                        permit = Some(slot);
                        start = Instant::now();
                    }
                    Err(_) => {
                        matched.route.metrics.concurrency_limited.inc();
                        self.linger(request);
                        break 'answer Err(ProxyError::ConcurrencyLimited);
                    }
                }
            }
            match &matched.route.action {
                Action::Respond { status, body } => {
                    self.linger(request);
                    Ok(text_response(*status, body.clone()))
                }
                Action::Proxy(pool) => {
                    let hop = Hop {
                        trusted_peer,
                        client_ip,
                        host: canonical.authority.value,
                        upgrade: canonical.upgrade,
                        ids: &ids,
                        start,
                    };
                    self.forward(matched, pool, request, conn, hop, record)
                        .await
                }
            }
        };
        let response = match answered {
            Ok(mut response) => {
                if let Some(site) = exchange.site {
                    headers::apply_response(
                        response.headers_mut(),
                        &site.policy.headers,
                        exchange.route.map(|r| &r.headers),
                        site.policy.hsts.as_ref(),
                    );
                }
                response
            }
            Err(err) => exchange.refusal(&err),
        };
        Ok(exchange.answered(response, permit))
    }

    /// The site and route for the canonical `request`, noted in `exchange` as they are found,
    /// after the policy steps that answer at once; the caller takes a concurrency slot and
    /// answers.
    fn route<'t>(
        exchange: &mut Exchange<'t>,
        request: &mut Request<Incoming>,
        conn: &ConnInfo,
        client_ip: IpAddr,
        canonical: Canonical,
    ) -> Result<(Matched<'t>, Canonical), ProxyError> {
        let table = exchange.table;
        // The connection's site is the one whose certificate the handshake got; a request for a
        // host of another site must not ride on it (RFC 9110 §15.5.20). The host is the one
        // canonicalisation settled, whichever of Host, :authority or the target named it.
        let host = &*canonical.authority.host;
        let conn_site = table.site_for(conn.sni.as_deref());
        // Most requests name the host their handshake named: one lookup serves both.
        let request_site = match conn.sni.as_deref() == Some(host) {
            true => conn_site,
            false => table.site_for(Some(host)),
        };
        let Some(site) = conn_site
            .filter(|s| Some(*s) == request_site)
            .and_then(|s| table.site(s))
        else {
            return Err(ProxyError::NoSite {
                host: host.to_owned(),
            });
        };
        exchange.record().site = Some(site.name.clone());
        exchange.site = Some(site);
        // Identity fields are the site's to set: a client's copy reaches no route's origin,
        // with auth or without.
        for field in &site.identity_fields {
            request.headers_mut().remove(field);
        }
        let route =
            site.route(request.method(), request.uri().path())
                .map_err(|miss| match miss {
                    RouteMiss::NotFound => ProxyError::NoRoute,
                    RouteMiss::MethodNotAllowed(allow) => ProxyError::MethodNotAllowed { allow },
                })?;
        exchange.route = Some(route);
        if canonical.escaped_slash && route.escaped_slashes == EscapedSlashes::Reject {
            return Err(Refusal::EscapedSlash.into());
        }
        // The policy steps in their order (see `policy::admit`); the caller takes the
        // concurrency slot last.
        let steps = Steps {
            max_body: route.max_body,
            site_limit: site.rate_limit.as_deref(),
            route_limit: route.rate_limit.as_deref(),
            auth: route.auth.as_ref(),
        };
        admit(&steps, client_ip, request.headers_mut()).map_err(|refused| {
            if matches!(refused, Refused::RateLimited { .. }) {
                route.metrics.rate_limited.inc();
            }
            ProxyError::from(refused)
        })?;
        Ok((Matched { site, route }, canonical))
    }

    /// Reads away the unread body of `request`, answered without it.
    fn linger(&self, request: Request<Incoming>) {
        let (head, body) = request.into_parts();
        linger::linger(&head.headers, body, &self.tasks);
    }

    /// Sends the `matched` request to an origin of `pool` (the route's), with `hop` saying who
    /// it came from; the response as the client will get it, read ahead of the client.
    async fn forward(
        &self,
        matched: Matched<'_>,
        pool: &UpstreamPool,
        request: Request<Incoming>,
        conn: &ConnInfo,
        hop: Hop<'_>,
        record: &mut AccessRecord,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Matched { site, route } = matched;
        let (start, client_ip) = (hop.start, hop.client_ip);
        let deadline = start + pool.settings().timeouts.total;
        let (head, body, downstream_upgrade) = hop_head(site, route, request, conn, hop);
        // The head moves into each step's future rather than living beside it in this one.
        // A counter only for a request with a body (most have none).
        let counter = (!http_body::Body::is_end_stream(&body))
            .then(|| record.bytes_in.get_or_insert_default().clone());
        let limits = BodyLimits {
            max_body: route.max_body,
            buffer: route.buffer_request_body,
            between_reads: self.client_body_timeout,
        };
        let outgoing = retry::prepare(head, body, counter, limits, deadline, &self.tasks).await?;
        // An oversized body is cut at `max_body` (413): the origin saw it cut short, never
        // complete.
        let mut response =
            retry::forward(pool, outgoing, client_ip, start, &mut record.upstream).await?;
        // Other responses come without hop-by-hop fields (see `Upstream::send`); a switch
        // keeps `Upgrade` when the client asked for one, and is then tunnelled.
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let tunnelled = downstream_upgrade.is_some();
            if let Some(downstream) = downstream_upgrade {
                let upstream_side = hyper::upgrade::on(&mut response);
                self.tasks.spawn(tunnel(
                    downstream,
                    upstream_side,
                    pool.settings().timeouts.idle,
                ));
            }
            forward::strip_hop_by_hop(response.headers_mut(), tunnelled);
            return Ok(response);
        }
        // Read ahead of the client, so a slow one does not hold the origin connection.
        let limit = usize::try_from(route.buffer_response).unwrap_or(usize::MAX);
        let (head, body) = response.into_parts();
        let body = self.read_ahead.start(body, limit);
        Ok(Response::from_parts(head, body))
    }
}

/// The request head as the origin gets it: HTTP/1.1 in origin-form with the route's rewrite
/// applied (its Host and fields canonical already), our forwarding fields and trace ids, then
/// the site's and route's header rules. Also returns the body and, for an HTTP/1.1 Upgrade
/// request, the client side of the tunnel to be.
fn hop_head(
    site: &SiteRoutes,
    route: &Route,
    mut request: Request<Incoming>,
    conn: &ConnInfo,
    hop: Hop<'_>,
) -> (Parts, Incoming, Option<OnUpgrade>) {
    let downstream_upgrade = hop.upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    // Room for what this step adds in one growth of the map rather than one per insert.
    parts.headers.reserve(forward::FIELDS_ADDED);
    let replace = match (&route.rewrite, &route.path) {
        (Rewrite::StripPrefix, PathMatch::Prefix(prefix)) => Some((prefix.as_str(), "")),
        (Rewrite::ReplacePrefix { from, to }, _) => Some((from.as_str(), to.as_str())),
        _ => None,
    };
    parts.uri = forward::origin_target(&parts.uri, replace);
    parts.version = Version::HTTP_11;
    let client_value = if hop.client_ip == conn.peer.ip() {
        conn.peer_value.clone()
    } else {
        forward::ip_value(hop.client_ip)
    };
    forward::add_forwarding(
        &mut parts.headers,
        &conn.peer_value,
        hop.trusted_peer,
        client_value,
        &hop.host,
    );
    // Hop-by-hop fields went before any policy ran, so `Connection` cannot name these.
    hop.ids.insert_into(&mut parts.headers);
    // After our forwarding fields, which the rules cannot change (see policy::headers).
    headers::apply_request(&mut parts.headers, &site.policy.headers, &route.headers);
    (parts, body, downstream_upgrade)
}

/// One request from arrival to answer: its record, and the site and route it matched, which
/// say where it counts. A request abandoned before it has a response (the client closed its
/// connection or reset its stream, and hyper dropped the request's future) is logged and
/// counted as it goes: status 499, nginx's "client closed request", with `client_closed` as
/// the reason. Answered, the record rides on the response body, which logs it (see
/// [`Metered`]).
struct Exchange<'t> {
    record: Option<AccessRecord>,
    table: &'t RouteTable,
    site: Option<&'t SiteRoutes>,
    route: Option<&'t Route>,
}

/// The site and route a request matched.
#[derive(Clone, Copy)]
struct Matched<'t> {
    site: &'t SiteRoutes,
    route: &'t Route,
}

impl<'t> Exchange<'t> {
    fn record(&mut self) -> &mut AccessRecord {
        self.record
            .as_mut()
            .expect("taken only by `answered`, which consumes the exchange")
    }

    /// Where the request counts: the route's counters, else its site's for requests no route
    /// matched, else the table's for requests no site matched.
    fn metrics(&self) -> (&'t RouteMetrics, &'t SiteMetrics) {
        match (self.site, self.route) {
            (Some(site), Some(route)) => (&route.metrics, &site.duration),
            (Some(site), None) => (&site.unrouted, &site.duration),
            _ => (&self.table.unmatched, &self.table.unmatched_duration),
        }
    }

    /// The response Rampart writes for `err`, which the record notes and the log explains.
    fn refusal(&mut self, err: &ProxyError) -> Response<ProxyBody> {
        let site = self.site;
        let record = self.record();
        record.error = Some(err.kind());
        if let ProxyError::Unauthorized { failure } = err {
            record.auth = Some(failure.reason());
        }
        let name = record.site.as_deref().unwrap_or("-");
        let host = record.host.as_deref();
        match err.side() {
            Side::Upstream => warn!(site = name, host, error = %Chain(err), "upstream failed"),
            Side::Downstream => debug!(site = name, host, error = %Chain(err), "request refused"),
        }
        let mut response = text_response(err.status(), Bytes::from_static(err.body().as_bytes()));
        response.headers_mut().extend(err.headers());
        if let ProxyError::MethodNotAllowed { allow } = err {
            let allow: Vec<&str> = allow.iter().map(http::Method::as_str).collect();
            if let Ok(value) = HeaderValue::try_from(allow.join(", ")) {
                response.headers_mut().insert(header::ALLOW, value);
            }
        }
        // Our own error pages of a site carry its HSTS too (a 421 has no site).
        if let Some(site) = site {
            headers::apply_response(
                response.headers_mut(),
                &HeaderRules::default(),
                None,
                site.policy.hsts.as_ref(),
            );
        }
        response
    }

    /// Counts `response` where the request counts, and hands the record to its body, which
    /// logs it when the body ends; the body holds the route's concurrency `permit` too.
    fn answered(
        mut self,
        response: Response<ProxyBody>,
        permit: Option<Permit>,
    ) -> Response<Metered<ProxyBody>> {
        let (count, duration) = self.metrics();
        let mut record = self.record.take().expect("taken only here");
        record.status = response.status().as_u16();
        count.count(record.status);
        duration.observe(record.started.elapsed());
        response.map(|body| Metered::new(body, record).holding(permit))
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            let (count, duration) = self.metrics();
            record.status = CLIENT_CLOSED;
            record.error = Some("client_closed");
            count.count(CLIENT_CLOSED);
            duration.observe(record.started.elapsed());
            record.emit(0, false);
        }
    }
}

/// Who the request came from and what it asked for, as the forwarding fields need it.
#[derive(Clone, Debug)]
struct Hop<'a> {
    /// Whether `peer` is in `trusted_proxies`, so its forwarding fields are kept and extended.
    trusted_peer: bool,
    /// The resolved client IP.
    client_ip: IpAddr,
    /// The canonical authority, as Host carries it: `X-Forwarded-Host` is the same.
    host: HeaderValue,
    /// Whether it is a WebSocket upgrade, to be tunnelled.
    upgrade: bool,
    /// Its trace context and request id, for the origin.
    ids: &'a RequestIds,
    /// When forwarding's clock started: `timeouts.total` runs from here.
    start: Instant,
}

/// A response Rampart writes itself (a `respond:` route, an error): `body` as plain text.
fn text_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
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

    /// The size of the future `f` returns.
    fn future_size<A, B, F: std::future::Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is boxed and moved whole at each nesting level, so a large wait
    /// nested in it costs every request. Connecting (about 4 KiB: TCP, TLS and the HTTP
    /// handshake) is boxed for that reason; unboxed it took this future to about 9 KiB. The
    /// hyper origin path is boxed too and `Upstream::send` is a plain function (5.5 KiB → 4.6), and
    /// `serve` is boxed as it is, with no async block around it: 4.2 KiB. A streamed request
    /// body is boxed inside `UpstreamBody`, which the retry loop holds several times (5.3 KiB
    /// unboxed, 4.7 boxed).
    #[test]
    fn a_request_future_stays_small() {
        let size = future_size(
            |proxy: Proxy, (request, conn): (Request<Incoming>, Arc<ConnInfo>)| {
                proxy.serve(request, conn)
            },
        );
        eprintln!("request future: {size} bytes");
        assert!(size <= 5 * 1024, "a request's future is {size} bytes");
    }
}
