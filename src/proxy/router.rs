//! The route table: request host → site, then path and method → route.
//!
//! Built from a [`Config`] snapshot by the server at start (and on reload); read per request.
//!
//! Route precedence within a site, whatever the file order between kinds:
//! 1. every `path_exact` route, in file order;
//! 2. every `path` (prefix) route, longest prefix first, file order among equal lengths;
//! 3. every `path_regex` route, in file order.
//!
//! The first route in that order whose path matches and whose `methods` allow the request's
//! method (any, when empty) serves it. A route whose path matches but whose methods do not is
//! skipped, so a later one can take the request. When some routes matched the path but none the
//! method, the answer is 405 with `Allow` naming their methods; when none matched the path, 404.
//! TRACE (which reflects the request, cookies included, back to the client) is served only by a
//! route that names it in `methods`: "any method" does not include it.
//!
//! Paths are matched as `request::canonical` made them, case-sensitively (RFC 3986 §6.2.2.1).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, Method, StatusCode};

use crate::config::{
    Concurrency, Config, EscapedSlashes, HeaderRules, IpNet, PathMatch, RateLimit, Rewrite,
    RouteAction, SitePolicy, Underscores, UpstreamDefaults, Upstreams,
};
use crate::observe::metrics::{RouteMetrics, SiteMetrics};
use crate::pki::HostName;
use crate::policy::RouteAuth;
use crate::policy::concurrency::ConcurrencyLimit;
use crate::policy::jwks::KeyStores;
use crate::policy::rate_limit::RateLimiter;
use crate::proxy::UpstreamPool;

/// Sites and their routes, immutable once built.
#[derive(Debug)]
pub struct RouteTable {
    sites: Vec<SiteRoutes>,
    by_host: HashMap<HostName, usize>,
    /// `*.parent` hosts by their parent, so a lookup builds no key.
    by_wildcard_parent: HashMap<Box<str>, usize>,
    /// The on-demand site whose host is `*`: every name no other site lists.
    any: Option<usize>,
    default: Option<usize>,
    /// The pool settings the table's pools were built with.
    upstream: Option<UpstreamDefaults>,
    /// `trusted_proxies:` peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `headers_with_underscores:` what canonicalisation does with such request fields.
    pub underscores: Underscores,
    /// Counters for requests that matched no site (site and route `none`).
    pub unmatched: RouteMetrics,
    /// Durations of requests that matched no site.
    pub unmatched_duration: SiteMetrics,
}

/// One site's routes, in precedence order (see the module doc).
#[derive(Debug)]
pub struct SiteRoutes {
    /// The site's name (its first host).
    pub name: Arc<str>,
    /// Site-wide policies: HSTS, the site's header rules and rate limit.
    pub policy: SitePolicy,
    routes: Vec<Route>,
    /// Counters for requests of this site that matched no route.
    pub unrouted: RouteMetrics,
    /// Request durations of this site.
    pub duration: SiteMetrics,
    /// The site's `rate_limit:` buckets, shared by all its routes.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// The fields any of its routes' `auth` sets from claims (`forward_claims`): removed from
    /// every request of the site, so no route forwards a client-made identity.
    pub identity_fields: Vec<HeaderName>,
}

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// What request paths it matches.
    pub path: PathMatch,
    /// The methods it matches; any when empty.
    pub methods: Vec<http::Method>,
    /// How the path is rewritten before forwarding.
    pub rewrite: Rewrite,
    /// The route's header rules, applied after the site's.
    pub headers: HeaderRules,
    /// What it does.
    pub action: Action,
    /// Its request counters, by status class.
    pub metrics: RouteMetrics,
    /// JWT auth with its live keys (a `jwks_url` refresh task lives as long as this).
    pub auth: Option<RouteAuth>,
    /// `max_body:` in bytes (the route's, else the site's).
    pub max_body: Option<u64>,
    /// The route's `rate_limit:` buckets.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// `max_in_flight:` slots and `queue:`.
    pub concurrency: Option<Arc<ConcurrencyLimit>>,
    /// `escaped_slashes:` whether a path holding `%2F` or `%5C` is refused.
    pub escaped_slashes: EscapedSlashes,
    /// `buffer_request_body:` bodies up to this size are read whole before forwarding.
    pub buffer_request_body: u64,
    /// `buffer_response:` bytes of a response body read ahead of the client.
    pub buffer_response: u64,
}

/// A route's action, with its live upstream pool.
#[derive(Debug)]
pub enum Action {
    /// Forward to the pool.
    Proxy(Arc<UpstreamPool>),
    /// Answer directly.
    Respond {
        /// Status.
        status: StatusCode,
        /// Body.
        body: Bytes,
    },
}

/// What a new table takes over from the one a reload replaces: the pools of unchanged
/// upstream lists (idle origin connections stay open), the `jwks_url` key sets of unchanged
/// auth configs (and their refresh tasks), and the limiters of owners (a site, or a route by
/// its site, path and methods) whose `rate_limit:` or `max_in_flight:` is unchanged: a reload
/// must neither refill every client's budget nor let a second `max_in_flight` of requests in
/// beside those still running.
#[derive(Default)]
struct Carried {
    pools: HashMap<Upstreams, Arc<UpstreamPool>>,
    key_stores: KeyStores,
    rate: HashMap<String, Arc<RateLimiter>>,
    concurrency: HashMap<String, Arc<ConcurrencyLimit>>,
    /// The background work of the pools built new (maintenance, health checks).
    background: Vec<BoxFuture<'static, ()>>,
}

impl Carried {
    /// What `previous` offers to a table built from `config`.
    fn of(previous: Option<&RouteTable>, config: &Config) -> Self {
        let mut carried = Self {
            pools: previous
                .filter(|p| p.upstream.as_ref() == Some(&config.upstream))
                .map(RouteTable::pools)
                .unwrap_or_default(),
            ..Self::default()
        };
        for site in previous.iter().flat_map(|p| &p.sites) {
            if let Some(limiter) = &site.rate_limit {
                carried.rate.insert(site_owner(&site.name), limiter.clone());
            }
            for route in &site.routes {
                if let Some(auth) = &route.auth {
                    auth.keep_keys(&mut carried.key_stores);
                }
                let owner = route_owner(&site.name, &route.path, &route.methods);
                if let Some(limiter) = &route.rate_limit {
                    carried.rate.insert(owner.clone(), limiter.clone());
                }
                if let Some(limit) = &route.concurrency {
                    carried.concurrency.insert(owner, limit.clone());
                }
            }
        }
        carried
    }

    /// The pool for `upstreams`: the kept one, else new (and then shared by later routes).
    fn pool(&mut self, upstreams: &Upstreams, defaults: &UpstreamDefaults) -> Arc<UpstreamPool> {
        let background = &mut self.background;
        self.pools
            .entry(upstreams.clone())
            .or_insert_with(|| {
                let (pool, work) = UpstreamPool::new(upstreams, defaults);
                background.push(Box::pin(work));
                Arc::new(pool)
            })
            .clone()
    }

    /// `owner`'s buckets for `config`: the kept ones if built from the same config, else new.
    /// Each kept limiter goes to one owner at most.
    fn rate(&mut self, owner: &str, config: Option<&RateLimit>) -> Option<Arc<RateLimiter>> {
        let config = config?;
        match self.rate.remove(owner) {
            Some(kept) if kept.config() == config => Some(kept),
            _ => RateLimiter::new(config).map(Arc::new),
        }
    }

    /// `owner`'s slots for `config`, kept or new as for [`Carried::rate`].
    fn concurrency(
        &mut self,
        owner: &str,
        config: Option<&Concurrency>,
    ) -> Option<Arc<ConcurrencyLimit>> {
        let config = config?;
        match self.concurrency.remove(owner) {
            Some(kept) if kept.config() == config => Some(kept),
            _ => Some(Arc::new(ConcurrencyLimit::new(config))),
        }
    }
}

fn site_owner(name: &str) -> String {
    format!("site {name}")
}

fn route_owner(site: &str, path: &PathMatch, methods: &[Method]) -> String {
    format!("route {site} {path} {methods:?}")
}

impl RouteTable {
    /// Builds the table, taking over from `previous` what is unchanged (see `Carried`), and
    /// returns with it the background work of what it built new (origin maintenance, health
    /// checks, JWKS refreshes), for the server to spawn on its tracker. Each piece ends when
    /// what it serves is dropped with its table.
    pub fn from_config(
        config: &Config,
        previous: Option<&RouteTable>,
    ) -> (Self, Vec<BoxFuture<'static, ()>>) {
        let mut carried = Carried::of(previous, config);
        let mut table = Self {
            upstream: Some(config.upstream.clone()),
            trusted_proxies: config.trusted_proxies.clone(),
            underscores: config.headers_with_underscores,
            ..Self::default()
        };
        // Metric handles are looked up here, once per snapshot, never per request.
        for (index, site) in config.sites.iter().enumerate() {
            for host in &site.hosts {
                if host.is_any() {
                    table.any = Some(index);
                    continue;
                }
                match host.as_str().strip_prefix("*.") {
                    Some(parent) => table.by_wildcard_parent.insert(parent.into(), index),
                    None => table.by_host.insert(host.clone(), index),
                };
            }
            if site.default {
                table.default = Some(index);
            }
            let mut routes: Vec<Route> = site
                .routes
                .iter()
                .map(|r| Route::from_config(&site.name, r, &config.upstream, &mut carried))
                .collect();
            // A stable sort keeps file order within a kind and among equal prefix lengths.
            routes.sort_by_key(|r| precedence(&r.path));
            let mut identity_fields: Vec<HeaderName> = Vec::new();
            let claim_fields = (site.routes.iter())
                .filter_map(|r| r.policy.auth.as_ref())
                .flat_map(|auth| auth.forward_claims.iter().map(|(_, field)| field));
            for field in claim_fields {
                if !identity_fields.contains(field) {
                    identity_fields.push(field.clone());
                }
            }
            table.sites.push(SiteRoutes {
                name: Arc::from(site.name.as_str()),
                policy: site.policy.clone(),
                routes,
                unrouted: RouteMetrics::unrouted(&site.name),
                duration: SiteMetrics::new(&site.name),
                rate_limit: carried.rate(&site_owner(&site.name), site.policy.rate_limit.as_ref()),
                identity_fields,
            });
        }
        let mut background = carried.background;
        background.extend(carried.key_stores.take_started());
        (table, background)
    }

    /// The site serving `name` (an SNI or a request host, lower-case, no port): exact, then the
    /// `*.parent` wildcard, then a `*` site, then the default site. `None` means "absent", which
    /// is the default.
    pub fn site_for(&self, name: Option<&str>) -> Option<usize> {
        let Some(name) = name else {
            return self.default;
        };
        // Per request, so neither lookup allocates (clients that send an IP address as the
        // host miss both every time).
        self.by_host
            .get(name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.by_wildcard_parent.get(parent)
            })
            .copied()
            .or(self.any)
            .or(self.default)
    }

    /// The name of the `default` site (its first host), which serves connections without SNI.
    pub fn default_name(&self) -> Option<&str> {
        Some(&self.sites.get(self.default?)?.name)
    }

    /// Every pool, by its upstream list.
    fn pools(&self) -> HashMap<Upstreams, Arc<UpstreamPool>> {
        let proxied = self
            .sites
            .iter()
            .flat_map(|s| &s.routes)
            .filter_map(|r| match &r.action {
                Action::Proxy(pool) => Some((pool.settings().clone(), pool.clone())),
                Action::Respond { .. } => None,
            });
        proxied.collect()
    }

    /// The site at `index`.
    pub fn site(&self, index: usize) -> Option<&SiteRoutes> {
        self.sites.get(index)
    }
}

impl Default for RouteTable {
    /// No sites: every request is unmatched.
    fn default() -> Self {
        Self {
            sites: Vec::new(),
            by_host: HashMap::new(),
            by_wildcard_parent: HashMap::new(),
            any: None,
            default: None,
            upstream: None,
            trusted_proxies: Vec::new(),
            underscores: Underscores::default(),
            unmatched: RouteMetrics::unrouted("none"),
            unmatched_duration: SiteMetrics::new("none"),
        }
    }
}

impl SiteRoutes {
    /// The route serving `method` on `path`, by the precedence of the module doc.
    ///
    /// # Errors
    /// [`RouteMiss::NotFound`] when no route matches the path; [`RouteMiss::MethodNotAllowed`]
    /// with the methods those that match it allow, when none allows `method`.
    pub fn route(&self, method: &Method, path: &str) -> Result<&Route, RouteMiss> {
        let mut allowed: Vec<Method> = Vec::new();
        let named_only = method == Method::TRACE;
        for route in self.routes.iter().filter(|r| r.matches_path(path)) {
            let methods: &[Method] = if route.methods.is_empty() {
                if !named_only {
                    return Ok(route);
                }
                &ANY_METHOD
            } else if route.methods.contains(method) {
                return Ok(route);
            } else {
                &route.methods
            };
            for m in methods {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
            }
        }
        if allowed.is_empty() {
            Err(RouteMiss::NotFound)
        } else {
            Err(RouteMiss::MethodNotAllowed(allowed))
        }
    }
}

/// Why no route serves a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteMiss {
    /// No route matches the path (404).
    NotFound,
    /// Routes match the path, none the method; these are their methods (405 with `Allow`).
    MethodNotAllowed(Vec<Method>),
}

/// What a route without `methods` serves, as its 405 answers name it in `Allow`: every method
/// but TRACE (and CONNECT, never served).
pub(crate) const ANY_METHOD: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Sort key of a route: exact, then prefixes longest first, then regexes.
fn precedence(path: &PathMatch) -> (u8, std::cmp::Reverse<usize>) {
    match path {
        PathMatch::Exact(_) => (0, std::cmp::Reverse(0)),
        PathMatch::Prefix(prefix) => (1, std::cmp::Reverse(prefix.len())),
        PathMatch::Regex(_) => (2, std::cmp::Reverse(0)),
    }
}

impl Route {
    /// Whether the route's path matches `path`, ignoring methods.
    pub fn matches_path(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }

    /// The route `route` of `site`, reusing what `carried` holds from the table it replaces.
    fn from_config(
        site: &str,
        route: &crate::config::Route,
        defaults: &UpstreamDefaults,
        carried: &mut Carried,
    ) -> Self {
        let owner = route_owner(site, &route.path, &route.methods);
        let action = match &route.action {
            RouteAction::Proxy(upstreams) => Action::Proxy(carried.pool(upstreams, defaults)),
            RouteAction::Respond { status, body } => Action::Respond {
                status: *status,
                body: body.clone(),
            },
        };
        Self {
            path: route.path.clone(),
            methods: route.methods.clone(),
            rewrite: route.rewrite.clone(),
            headers: route.policy.headers.clone(),
            action,
            metrics: RouteMetrics::new(site, &route.path.to_string()),
            auth: (route.policy.auth.as_ref())
                .map(|a| RouteAuth::from_config(a, &mut carried.key_stores)),
            max_body: route.policy.max_body,
            rate_limit: carried.rate(&owner, route.policy.rate_limit.as_ref()),
            concurrency: carried.concurrency(&owner, route.policy.concurrency.as_ref()),
            escaped_slashes: route.policy.escaped_slashes,
            buffer_request_body: route.policy.buffer_request_body,
            buffer_response: route.policy.buffer_response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: PathMatch, methods: &[Method], body: &'static str) -> Route {
        Route {
            metrics: RouteMetrics::new("t.test", &path.to_string()),
            path,
            methods: methods.to_vec(),
            rewrite: Rewrite::None,
            headers: HeaderRules::default(),
            action: Action::Respond {
                status: StatusCode::OK,
                body: Bytes::from_static(body.as_bytes()),
            },
            auth: None,
            max_body: None,
            rate_limit: None,
            concurrency: None,
            escaped_slashes: EscapedSlashes::Reject,
            buffer_request_body: 64 * 1024,
            buffer_response: 64 * 1024,
        }
    }

    /// A site whose routes are given in file order and sorted as `from_config` does.
    fn site(mut routes: Vec<Route>) -> SiteRoutes {
        routes.sort_by_key(|r| precedence(&r.path));
        SiteRoutes {
            name: Arc::from("t.test"),
            policy: SitePolicy::default(),
            rate_limit: None,
            routes,
            unrouted: RouteMetrics::unrouted("t.test"),
            duration: SiteMetrics::new("t.test"),
            identity_fields: Vec::new(),
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_owned())
    }

    /// The body of the respond route serving the request: each test route's label.
    fn served(site: &SiteRoutes, method: Method, path: &str) -> Result<String, RouteMiss> {
        match &site.route(&method, path)?.action {
            Action::Respond { body, .. } => Ok(String::from_utf8_lossy(body).into_owned()),
            Action::Proxy(_) => unreachable!("tests build respond routes only"),
        }
    }

    #[test]
    fn exact_beats_longest_prefix_beats_regex_whatever_the_file_order() {
        let regex = |r: &str| PathMatch::Regex(regex::Regex::new(r).unwrap());
        let site = site(vec![
            route(regex("^/api/"), &[], "regex"),
            route(regex("^/api/v1/x$"), &[], "regex2"),
            route(prefix("/api/"), &[], "short"),
            route(prefix("/api/v1/"), &[], "long"),
            route(PathMatch::Exact("/api/v1/login".to_owned()), &[], "exact"),
        ]);
        assert_eq!(
            served(&site, Method::GET, "/api/v1/login"),
            Ok("exact".to_owned())
        );
        assert_eq!(
            served(&site, Method::GET, "/api/v1/x"),
            Ok("long".to_owned())
        );
        assert_eq!(
            served(&site, Method::GET, "/api/other"),
            Ok("short".to_owned())
        );
        assert_eq!(
            served(&site, Method::GET, "/nothing"),
            Err(RouteMiss::NotFound)
        );
        let regexes = self::site(vec![
            route(regex("^/u/"), &[], "regex"),
            route(regex("^/u/[0-9]+$"), &[], "regex2"),
        ]);
        assert_eq!(
            served(&regexes, Method::GET, "/u/7"),
            Ok("regex".to_owned()),
            "file order"
        );
    }

    #[test]
    fn a_route_with_other_methods_is_skipped_for_the_next_candidate() {
        let site = site(vec![
            route(prefix("/"), &[], "other"),
            route(prefix("/api/"), &[Method::POST], "post"),
            route(PathMatch::Exact("/api/x".to_owned()), &[Method::GET], "get"),
        ]);
        assert_eq!(served(&site, Method::GET, "/api/x"), Ok("get".to_owned()));
        assert_eq!(served(&site, Method::POST, "/api/x"), Ok("post".to_owned()));
        assert_eq!(
            served(&site, Method::DELETE, "/api/x"),
            Ok("other".to_owned())
        );
    }

    #[test]
    fn path_matched_but_no_method_gives_the_allowed_methods() {
        let site = site(vec![
            route(prefix("/api/"), &[Method::POST, Method::PUT], "post"),
            route(PathMatch::Exact("/api/x".to_owned()), &[Method::GET], "get"),
        ]);
        assert_eq!(
            served(&site, Method::DELETE, "/api/x"),
            Err(RouteMiss::MethodNotAllowed(vec![
                Method::GET,
                Method::POST,
                Method::PUT
            ]))
        );
        assert_eq!(
            served(&site, Method::DELETE, "/other"),
            Err(RouteMiss::NotFound)
        );
    }

    #[test]
    fn trace_is_served_only_by_a_route_that_names_it() {
        let site = site(vec![
            route(prefix("/"), &[], "any"),
            route(prefix("/debug/"), &[Method::TRACE, Method::GET], "debug"),
        ]);
        assert_eq!(
            served(&site, Method::TRACE, "/debug/x"),
            Ok("debug".to_owned())
        );
        assert_eq!(
            served(&site, Method::TRACE, "/x"),
            Err(RouteMiss::MethodNotAllowed(ANY_METHOD.to_vec()))
        );
        assert_eq!(served(&site, Method::GET, "/x"), Ok("any".to_owned()));
    }

    /// Building a table starts nothing: a pool's health checks run only once the work the
    /// table returns is spawned (by the server, on its tracker), and stop with the table.
    #[tokio::test]
    async fn a_table_returns_its_background_work_instead_of_spawning_it() {
        let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let yaml = format!(
            "sites:\n  - hosts: [t.test]\n    tls: internal\n    upstreams: [\"http://{}\"]\n    \
             health: {{ path: /healthz, every: 10ms, timeout: 100ms }}\n",
            origin.local_addr().unwrap()
        );
        let config = crate::config::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
        let probed =
            || tokio::time::timeout(std::time::Duration::from_millis(300), origin.accept());

        let (table, background) = RouteTable::from_config(&config, None);
        assert_eq!(background.len(), 1, "one pool, one piece of work");
        assert!(
            probed().await.is_err(),
            "a health check ran before anything was spawned"
        );

        let running = tokio::spawn(futures_util::future::join_all(background));
        assert!(probed().await.is_ok(), "the spawned work checks the origin");
        drop(table);
        tokio::time::timeout(std::time::Duration::from_secs(5), running)
            .await
            .expect("the work ends with its table")
            .unwrap();
    }
}
