//! The route table: request host → site, then longest path prefix → route.
//!
//! Built from a [`Config`] snapshot by the server at start (and on reload); read per request.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;

use crate::config::{
    Config, HostName, PathMatch, Rewrite, RouteAction, UpstreamDefaults, Upstreams,
};
use crate::observe::metrics::{RouteMetrics, SiteMetrics};
use crate::policy::RouteAuth;
use crate::policy::jwks::KeyStores;
use crate::policy::concurrency::ConcurrencyLimit;
use crate::policy::rate_limit::RateLimiter;
use crate::proxy::UpstreamPool;

/// Sites and their routes, immutable once built.
#[derive(Debug)]
pub struct RouteTable {
    sites: Vec<SiteRoutes>,
    by_host: HashMap<HostName, usize>,
    default: Option<usize>,
    /// The pool settings the table's pools were built with.
    upstream: Option<UpstreamDefaults>,
    /// Counters for requests that matched no site (site and route `none`).
    pub unmatched: RouteMetrics,
    /// Durations of requests that matched no site.
    pub unmatched_duration: SiteMetrics,
}

/// One site's routes, longest prefix first.
#[derive(Debug)]
pub struct SiteRoutes {
    /// The site's name (its first host).
    pub name: Arc<str>,
    routes: Vec<Route>,
    /// Counters for requests of this site that matched no route.
    pub unrouted: RouteMetrics,
    /// Request durations of this site.
    pub duration: SiteMetrics,
    /// The site's `rate_limit:` buckets, shared by all its routes.
    pub rate_limit: Option<RateLimiter>,
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
    /// What it does.
    pub action: Action,
    /// Its request counters, by status class.
    pub metrics: RouteMetrics,
    /// JWT auth with its live keys (a `jwks_url` refresh task lives as long as this).
    pub auth: Option<RouteAuth>,
    /// `max_body:` in bytes (the route's, else the site's).
    pub max_body: Option<u64>,
    /// The route's `rate_limit:` buckets.
    pub rate_limit: Option<RateLimiter>,
    /// `max_in_flight:` slots and `queue:`.
    pub concurrency: Option<ConcurrencyLimit>,
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

impl RouteTable {
    /// Builds the table. Routes whose upstream list (and pool settings) `previous` already had
    /// keep that pool, so a reload does not drop idle origin connections.
    pub fn from_config(config: &Config, previous: Option<&RouteTable>) -> Self {
        let mut pools: HashMap<Upstreams, Arc<UpstreamPool>> = previous
            .filter(|p| p.upstream.as_ref() == Some(&config.upstream))
            .map(RouteTable::pools)
            .unwrap_or_default();
        // A reload keeps `jwks_url` key sets (and their refresh tasks) whose config is unchanged.
        let mut key_stores = KeyStores::default();
        for auth in previous
            .iter()
            .flat_map(|p| &p.sites)
            .flat_map(|s| &s.routes)
        {
            if let Some(auth) = &auth.auth {
                auth.keep_keys(&mut key_stores);
            }
        }
        let mut table = Self {
            upstream: Some(config.upstream.clone()),
            ..Self::default()
        };
        // Metric handles are looked up here, once per snapshot, never per request.
        for (index, site) in config.sites.iter().enumerate() {
            for host in &site.hosts {
                table.by_host.insert(host.clone(), index);
            }
            if site.default {
                table.default = Some(index);
            }
            let mut routes: Vec<Route> = site
                .routes
                .iter()
                .map(|r| {
                    Route::from_config(&site.name, r, &config.upstream, &mut pools, &mut key_stores)
                })
                .collect();
            // Longest prefix wins; a stable sort keeps file order among equal lengths.
            routes.sort_by_key(|r| match &r.path {
                PathMatch::Prefix(path) => std::cmp::Reverse(path.len()),
                _ => std::cmp::Reverse(0),
            });
            table.sites.push(SiteRoutes {
                name: Arc::from(site.name.as_str()),
                routes,
                unrouted: RouteMetrics::unrouted(&site.name),
                duration: SiteMetrics::new(&site.name),
                rate_limit: site.policy.rate_limit.as_ref().and_then(RateLimiter::new),
            });
        }
        table
    }

    /// The site serving `name` (an SNI or a request host, lower-case, no port): exact, then the
    /// `*.parent` wildcard, then the default site. `None` means "absent", which is the default.
    pub fn site_for(&self, name: Option<&str>) -> Option<usize> {
        let Some(name) = name else {
            return self.default;
        };
        // Per request: the exact lookup allocates nothing; only a miss builds the wildcard key.
        self.by_host
            .get(name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.by_host.get(format!("*.{parent}").as_str())
            })
            .copied()
            .or(self.default)
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
            default: None,
            upstream: None,
            unmatched: RouteMetrics::unrouted("none"),
            unmatched_duration: SiteMetrics::new("none"),
        }
    }
}

impl SiteRoutes {
    /// The route with the longest prefix of `path`.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| match &r.path {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Regex(regex) => regex.is_match(path),
        })
    }
}

impl Route {
    fn from_config(
        site: &str,
        route: &crate::config::Route,
        defaults: &UpstreamDefaults,
        pools: &mut HashMap<Upstreams, Arc<UpstreamPool>>,
        key_stores: &mut KeyStores,
    ) -> Self {
        let action = match &route.action {
            RouteAction::Proxy(upstreams) => Action::Proxy(
                pools
                    .entry(upstreams.clone())
                    .or_insert_with(|| Arc::new(UpstreamPool::new(upstreams, defaults)))
                    .clone(),
            ),
            RouteAction::Respond { status, body } => Action::Respond {
                status: *status,
                body: body.clone(),
            },
        };
        Self {
            path: route.path.clone(),
            methods: route.methods.clone(),
            rewrite: route.rewrite.clone(),
            action,
            metrics: RouteMetrics::new(site, &route.path.to_string()),
            auth: (route.policy.auth.as_ref()).map(|a| RouteAuth::from_config(a, key_stores)),
            max_body: route.policy.max_body,
            rate_limit: route.policy.rate_limit.as_ref().and_then(RateLimiter::new),
            concurrency: route.policy.concurrency.as_ref().map(ConcurrencyLimit::new),
        }
    }
}
