//! Validation of `sites:`: host names, certificate sources, routes and upstreams.
//!
//! Part of `config::validate`, called once per load. Checks that span sites live here too: a
//! host name belongs to one site only, and one site at most is the default. Reads the
//! certificate and key files of `tls: {cert, key}` sites to prove they parse and match.

use std::collections::HashMap;
use std::fs;

use bytes::Bytes;
use http::StatusCode;
use serde_saphyr::{Location, Spanned};

use super::Checker;
use super::dns::Answerable;
use super::gateway::Layer;
use crate::config::error::{closest, position};
use crate::config::raw::{List, RawRespond, RawRoute, RawSite, RawTls, Text};
use crate::config::{
    HeaderRules, PathMatch, Rewrite, Route, RouteAction, RoutePolicy, Site, SitePolicy, SiteTls,
    UpstreamDefaults,
};
use crate::pki::{HostName, PemError, certified_key_from_pem};
use crate::request;

/// Who already claimed a host name or the default role, for duplicate reports.
struct Claim {
    /// Index into `sites`.
    site: usize,
    /// The claiming site's name.
    name: String,
    /// Line of the claiming value.
    line: u64,
}

impl Checker {
    /// Every site, with host names unique across sites and at most one default.
    /// `defaults` is `None` when the `upstream:` section was invalid (already reported).
    pub(super) fn sites(
        &mut self,
        raw: &List<RawSite>,
        defaults: Option<&UpstreamDefaults>,
        answerable: &Answerable<'_>,
    ) -> Option<Vec<Site>> {
        if raw.value.is_empty() {
            self.report(&raw.referenced, "sites", "at least one site is required");
            return None;
        }
        let mut hosts = HashMap::new();
        let mut default = None;
        let sites: Vec<_> = raw
            .value
            .iter()
            .enumerate()
            .map(|(index, site)| {
                self.site(index, site, defaults, answerable, &mut hosts, &mut default)
            })
            .collect();
        sites.into_iter().collect()
    }

    /// One site; `hosts` and `default` remember what earlier sites claimed.
    fn site(
        &mut self,
        index: usize,
        raw: &Spanned<RawSite>,
        defaults: Option<&UpstreamDefaults>,
        answerable: &Answerable<'_>,
        hosts: &mut HashMap<HostName, Claim>,
        default: &mut Option<Claim>,
    ) -> Option<Site> {
        let at = format!("sites[{index}]");
        let site = &raw.value;
        let name = site
            .hosts
            .as_ref()
            .and_then(|list| list.value.first())
            .map_or_else(|| at.clone(), |host| host.value.to_ascii_lowercase());
        let tls = self.tls(&site.tls, &at);
        let on_demand = matches!(&site.tls.value, RawTls::Files(map) if map.acme.is_some());
        let is_acme = on_demand || matches!(&site.tls.value, RawTls::Mode(word) if word == "acme");
        let host_names = self.hosts(site, &raw.referenced, (index, &name), hosts, on_demand);
        // An on-demand site's `*.parent` is a pattern: each name gets its own certificate.
        let wildcard = site.hosts.as_ref().filter(|_| !on_demand).and_then(|list| {
            list.value
                .iter()
                .enumerate()
                .find(|(_, host)| host.value.starts_with("*."))
                .map(|(index, host)| (index, &host.referenced))
        });
        let challenges =
            self.site_challenges(site, &at, is_acme, &raw.referenced, wildcard, answerable);
        if site.default.value {
            match default {
                Some(first) => self.report(
                    &site.default.referenced,
                    format!("{at}.default"),
                    format!(
                        "site `{}` (sites[{}], line {}) is already the default; only one can be",
                        first.name, first.site, first.line
                    ),
                ),
                None => {
                    *default = Some(Claim {
                        site: index,
                        name: name.clone(),
                        line: position(&site.default.referenced).0,
                    })
                }
            }
        }
        // The site's own policy keys, and those its routes inherit, are checked once here.
        let layer = self.layer(&site.keys(), &at);
        let site_policy = self.site_policy(site, &at, layer.as_ref());
        let routes = match (&site.upstreams, &site.routes, defaults, &layer) {
            (Some(_), Some(_), ..) => {
                let upstreams = site.upstreams.as_ref().expect("matched");
                self.report(
                    &upstreams.referenced,
                    format!("{at}.upstreams"),
                    "a site has `upstreams` (shorthand for one route at /) or `routes`, not both",
                );
                None
            }
            (None, None, ..) => {
                self.report(&raw.referenced, &at, "a site needs `upstreams` or `routes`");
                None
            }
            // Reported where they were found; the site cannot be built.
            (_, _, None, _) | (_, _, _, None) => {
                if let Some(upstreams) = &site.upstreams {
                    self.upstream_targets(upstreams, &format!("{at}.upstreams"));
                }
                None
            }
            (Some(upstreams), None, Some(defaults), Some(layer)) => {
                let targets = self.upstream_targets(upstreams, &format!("{at}.upstreams"));
                targets
                    .and_then(|targets| {
                        self.upstreams_of(targets, layer, defaults, &at, &upstreams.referenced)
                    })
                    .map(|upstreams| {
                        vec![Route {
                            path: PathMatch::Prefix("/".to_string()),
                            methods: Vec::new(),
                            rewrite: Rewrite::None,
                            action: RouteAction::Proxy(upstreams),
                            policy: RoutePolicy {
                                max_body: layer.max_body,
                                auth: layer.auth.clone(),
                                rate_limit: None,
                                concurrency: layer.concurrency.clone(),
                                headers: HeaderRules::default(),
                                escaped_slashes: layer.escaped_slashes(),
                                buffer_request_body: layer.buffer_request_body(),
                                buffer_response: layer.buffer_response(),
                            },
                        }]
                    })
            }
            (None, Some(routes), Some(defaults), Some(layer)) => {
                self.routes(routes, &at, defaults, layer)
            }
        };
        Some(Site {
            name,
            hosts: host_names?,
            tls: tls?,
            challenges: challenges.clone()?.0,
            dns: challenges?.1,
            default: site.default.value,
            routes: routes?,
            policy: site_policy?,
        })
    }

    /// HSTS, the site-wide rate limit and the site's header rules.
    fn site_policy(
        &mut self,
        site: &RawSite,
        at: &str,
        layer: Option<&Layer>,
    ) -> Option<SitePolicy> {
        let hsts = self.hsts(&site.hsts, at);
        let headers = self.header_rules(&site.headers, at);
        let has_auth = layer.is_some_and(|l| l.auth.is_some());
        let rate_limit = match &site.rate_limit {
            None => Some(None),
            Some(raw) => self
                .rate_limit(raw, &format!("{at}.rate_limit"), has_auth)
                .map(Some),
        };
        Some(SitePolicy {
            hsts: hsts?,
            rate_limit: rate_limit?,
            headers: headers?,
        })
    }

    /// The hosts of site `owner` (index, name), each unique across all sites.
    fn hosts(
        &mut self,
        site: &RawSite,
        site_at: &Location,
        owner: (usize, &str),
        claims: &mut HashMap<HostName, Claim>,
        on_demand: bool,
    ) -> Option<Vec<HostName>> {
        let at = format!("sites[{}].hosts", owner.0);
        let Some(list) = &site.hosts else {
            self.report(
                site_at,
                format!("sites[{}]", owner.0),
                "a site needs `hosts`, the names it answers for",
            );
            return None;
        };
        if list.value.is_empty() {
            self.report(
                &list.referenced,
                &at,
                "the list is empty: a site needs at least one host",
            );
            return None;
        }
        let mut names = Vec::new();
        let mut all_valid = true;
        for (index, host) in list.value.iter().enumerate() {
            let path = format!("{at}[{index}]");
            let parsed = match host.value.as_str() {
                "*" if on_demand => Ok(HostName::any()),
                "*" => Err("`*` (every name) is for sites with tls: {acme: on_demand}".to_owned()),
                _ => HostName::parse(&host.value),
            };
            let Some(name) = self.check(&host.referenced, &path, parsed) else {
                all_valid = false;
                continue;
            };
            if let Some(claim) = claims.get(&name) {
                let reason = if claim.site == owner.0 {
                    format!(
                        "host `{name}` is listed twice in this site (first at line {})",
                        claim.line
                    )
                } else {
                    format!(
                        "host `{name}` already belongs to site `{}` (sites[{}], line {})",
                        claim.name, claim.site, claim.line
                    )
                };
                self.report(&host.referenced, &path, reason);
                all_valid = false;
                continue;
            }
            let line = position(&host.referenced).0;
            claims.insert(
                name.clone(),
                Claim {
                    site: owner.0,
                    name: owner.1.to_string(),
                    line,
                },
            );
            names.push(name);
        }
        all_valid.then_some(names)
    }

    /// Where the site's certificate comes from.
    fn tls(&mut self, raw: &Spanned<RawTls>, site: &str) -> Option<SiteTls> {
        match &raw.value {
            RawTls::Mode(word) => match word.as_str() {
                "acme" => Some(SiteTls::Acme),
                "internal" => Some(SiteTls::Internal),
                other => {
                    let hint = closest(other, ["acme", "internal"])
                        .map(|g| format!("; did you mean `{g}`?"));
                    let reason = format!(
                        "`{other}` is not a certificate source: expected acme, internal or {{cert: FILE, key: FILE}}{}",
                        hint.unwrap_or_default()
                    );
                    self.report(&raw.referenced, format!("{site}.tls"), reason);
                    None
                }
            },
            RawTls::Files(map) => {
                let at = format!("{site}.tls");
                match (&map.acme, &map.cert, &map.key) {
                    (Some(acme), None, None) if acme.value == "on_demand" => {
                        Some(SiteTls::OnDemand)
                    }
                    (Some(acme), None, None) => {
                        let reason = format!(
                            "`{}` is not an ACME mode: the map form is {{acme: on_demand}}",
                            acme.value
                        );
                        self.report(&acme.referenced, format!("{at}.acme"), reason);
                        None
                    }
                    (Some(acme), ..) => {
                        self.report(
                            &acme.referenced,
                            format!("{at}.acme"),
                            "give {acme: on_demand} or {cert: FILE, key: FILE}, not both",
                        );
                        None
                    }
                    (None, Some(cert), Some(key)) => self.tls_files(cert, key, &at),
                    (None, cert, _) => {
                        let missing = if cert.is_none() { "cert" } else { "key" };
                        self.report(&raw.referenced, at, format!("missing key `{missing}`"));
                        None
                    }
                }
            }
        }
    }

    /// Operator-supplied certificate and key: readable, parsable and a matching pair.
    fn tls_files(&mut self, raw_cert: &Text, raw_key: &Text, at: &str) -> Option<SiteTls> {
        let (cert_at, key_at) = (format!("{at}.cert"), format!("{at}.key"));
        let cert = self.path(raw_cert, &cert_at);
        let key = self.path(raw_key, &key_at);
        let cert_pem = cert.as_ref().and_then(|cert| {
            let read = fs::read(cert)
                .map_err(|e| format!("cannot read certificate file {}: {e}", cert.display()));
            self.check(&raw_cert.referenced, &cert_at, read)
        });
        let key_pem = key.as_ref().and_then(|key| {
            let read =
                fs::read(key).map_err(|e| format!("cannot read key file {}: {e}", key.display()));
            self.check(&raw_key.referenced, &key_at, read)
        });
        let (cert, key, cert_pem, key_pem) = (cert?, key?, cert_pem?, key_pem?);
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let Err(error) = certified_key_from_pem(&provider, &cert_pem, &key_pem) else {
            return Some(SiteTls::Files { cert, key });
        };
        let (location, path, reason) = match &error {
            PemError::KeyMismatch(rustls::Error::InconsistentKeys(_)) => (
                &raw_key.referenced,
                key_at,
                format!(
                    "private key {} does not match certificate {}",
                    key.display(),
                    cert.display()
                ),
            ),
            // Any other refusal is about the key itself, such as an unsupported algorithm.
            PemError::KeyMismatch(cause) => (
                &raw_key.referenced,
                key_at,
                format!(
                    "private key {} cannot be used with certificate {}: {cause}",
                    key.display(),
                    cert.display()
                ),
            ),
            PemError::Pem {
                what: "private key",
                ..
            } => (
                &raw_key.referenced,
                key_at,
                format!("{}: {}", key.display(), with_causes(&error)),
            ),
            _ => (
                &raw_cert.referenced,
                cert_at,
                format!("{}: {}", cert.display(), with_causes(&error)),
            ),
        };
        self.report(location, path, reason);
        None
    }

    /// A non-empty list of routes; no two match the same paths and methods.
    fn routes(
        &mut self,
        raw: &List<RawRoute>,
        site: &str,
        defaults: &UpstreamDefaults,
        site_layer: &Layer,
    ) -> Option<Vec<Route>> {
        let at = format!("{site}.routes");
        if raw.value.is_empty() {
            self.report(
                &raw.referenced,
                &at,
                "the list is empty: a site needs at least one route",
            );
            return None;
        }
        let mut seen = HashMap::new();
        let routes: Vec<_> = raw
            .value
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let at = format!("{at}[{index}]");
                self.route(route, &at, defaults, site_layer, &mut seen)
            })
            .collect();
        routes.into_iter().collect()
    }

    /// One route; `seen` maps the site's (path, methods) so far to their lines.
    fn route(
        &mut self,
        raw: &Spanned<RawRoute>,
        at: &str,
        defaults: &UpstreamDefaults,
        site_layer: &Layer,
        seen: &mut HashMap<String, u64>,
    ) -> Option<Route> {
        let route = &raw.value;
        let path = self.path_match(raw, at);
        let methods = self.methods(&route.methods, at);
        if let (Some(path), Some(methods)) = (&path, &methods) {
            let (text, location) = path;
            let mut names: Vec<_> = methods.iter().map(http::Method::as_str).collect();
            names.sort_unstable();
            let key = format!("{text} {}", names.join(","));
            let line = position(location).0;
            if let Some(first) = seen.insert(key, line) {
                self.report(
                    location,
                    format!("{at}.{}", text.key()),
                    format!("{text} is already routed in this site (line {first})"),
                );
            }
        }
        let rewrite = self.rewrite(route, at, path.as_ref().map(|p| &p.0));
        let layer = self
            .layer(&route.keys(), at)
            .map(|layer| layer.over(site_layer));
        let headers = self.header_rules(&route.headers, at);
        let has_auth = layer.as_ref().is_some_and(|l| l.auth.is_some());
        let rate_limit = match &route.rate_limit {
            None => Some(None),
            Some(limit) => self
                .rate_limit(limit, &format!("{at}.rate_limit"), has_auth)
                .map(Some),
        };
        let action = match (&route.upstreams, &route.respond) {
            (Some(upstreams), None) => {
                let targets = self.upstream_targets(upstreams, &format!("{at}.upstreams"));
                match (targets, &layer) {
                    (Some(targets), Some(layer)) => self
                        .upstreams_of(targets, layer, defaults, at, &upstreams.referenced)
                        .map(RouteAction::Proxy),
                    _ => None,
                }
            }
            (None, Some(respond)) => self.respond(respond, &format!("{at}.respond")),
            (Some(_), Some(_)) => {
                self.report(
                    &raw.referenced,
                    at,
                    "a route has `upstreams` or `respond`, not both",
                );
                None
            }
            (None, None) => {
                self.report(
                    &raw.referenced,
                    at,
                    "a route needs `upstreams` or `respond`",
                );
                None
            }
        };
        let layer = layer?;
        let escaped_slashes = layer.escaped_slashes();
        let buffer_request_body = layer.buffer_request_body();
        let buffer_response = layer.buffer_response();
        Some(Route {
            path: path?.0.into_match(),
            methods: methods?,
            rewrite: rewrite?,
            action: action?,
            policy: RoutePolicy {
                max_body: layer.max_body,
                auth: layer.auth,
                rate_limit: rate_limit?,
                concurrency: layer.concurrency,
                headers: headers?,
                escaped_slashes,
                buffer_request_body,
                buffer_response,
            },
        })
    }

    /// Exactly one of `path`, `path_exact`, `path_regex`, checked.
    fn path_match(
        &mut self,
        raw: &Spanned<RawRoute>,
        at: &str,
    ) -> Option<(CheckedPath, serde_saphyr::Location)> {
        let route = &raw.value;
        let given: Vec<(&str, &Text)> = [
            ("path", &route.path),
            ("path_exact", &route.path_exact),
            ("path_regex", &route.path_regex),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| (key, v)))
        .collect();
        let (key, text) = match given[..] {
            [one] => one,
            [] => {
                self.report(
                    &raw.referenced,
                    at,
                    "a route needs `path` (a prefix such as /api/), `path_exact` or `path_regex`",
                );
                return None;
            }
            [_, (second, text), ..] => {
                self.report(
                    &text.referenced,
                    format!("{at}.{second}"),
                    "a route has one of `path`, `path_exact` and `path_regex`",
                );
                return None;
            }
        };
        let checked = match key {
            "path_regex" => regex::Regex::new(&text.value)
                .map(CheckedPath::Regex)
                .map_err(|e| format!("not a valid regular expression: {e}")),
            "path_exact" => {
                check_route_path(&text.value).map(|()| CheckedPath::Exact(text.value.clone()))
            }
            _ => check_route_path(&text.value).map(|()| CheckedPath::Prefix(text.value.clone())),
        };
        let checked = self.check(&text.referenced, &format!("{at}.{key}"), checked)?;
        Some((checked, text.referenced))
    }

    /// `methods:` upper-case HTTP method names; empty when absent.
    fn methods(&mut self, raw: &Option<List<String>>, at: &str) -> Option<Vec<http::Method>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        if list.value.is_empty() {
            self.report(
                &list.referenced,
                format!("{at}.methods"),
                "the list is empty: leave `methods` out to match every method",
            );
            return None;
        }
        let mut all = Some(Vec::new());
        for (index, name) in list.value.iter().enumerate() {
            let parsed = http::Method::from_bytes(name.value.as_bytes())
                .ok()
                .filter(|_| name.value.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| {
                    format!(
                        "`{}` is not an upper-case HTTP method such as GET",
                        name.value
                    )
                })
                .and_then(|method| match method {
                    http::Method::CONNECT => Err("CONNECT is never served: Rampart is a reverse \
                         proxy, not a tunnel (WebSockets use Upgrade)"
                        .to_string()),
                    method => Ok(method),
                });
            match self.check(&name.referenced, &format!("{at}.methods[{index}]"), parsed) {
                Some(method) => all.iter_mut().for_each(|a| a.push(method.clone())),
                None => all = None,
            }
        }
        all
    }

    /// `strip_prefix` or `replace_prefix`.
    fn rewrite(
        &mut self,
        route: &RawRoute,
        at: &str,
        path: Option<&CheckedPath>,
    ) -> Option<Rewrite> {
        let strip = route.strip_prefix.as_ref().filter(|s| s.value);
        match (strip, &route.replace_prefix) {
            (None, None) => Some(Rewrite::None),
            (Some(strip), None) => match path {
                Some(CheckedPath::Prefix(_)) | None => Some(Rewrite::StripPrefix),
                Some(_) => {
                    self.report(
                        &strip.referenced,
                        format!("{at}.strip_prefix"),
                        "strip_prefix goes with `path` (a prefix); use replace_prefix with path_exact or path_regex",
                    );
                    None
                }
            },
            (None, Some(replace)) => {
                let (from, to) = (&replace.value.from, &replace.value.to);
                let from_ok = self.check(
                    &from.referenced,
                    &format!("{at}.replace_prefix.from"),
                    check_route_path(&from.value),
                );
                let to_ok = self.check(
                    &to.referenced,
                    &format!("{at}.replace_prefix.to"),
                    check_route_path(&to.value),
                );
                from_ok?;
                to_ok?;
                Some(Rewrite::ReplacePrefix {
                    from: from.value.clone(),
                    to: to.value.clone(),
                })
            }
            (Some(strip), Some(_)) => {
                self.report(
                    &strip.referenced,
                    format!("{at}.strip_prefix"),
                    "a route has strip_prefix or replace_prefix, not both",
                );
                None
            }
        }
    }

    /// A fixed answer; the status must be a final one (200-599).
    fn respond(&mut self, raw: &Spanned<Box<RawRespond>>, at: &str) -> Option<RouteAction> {
        let status = &raw.value.status;
        let checked = u16::try_from(status.value)
            .ok()
            .filter(|code| (200..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| format!("{} is not an HTTP status from 200 to 599", status.value));
        let status = self.check(&status.referenced, &format!("{at}.status"), checked)?;
        Some(RouteAction::Respond {
            status,
            body: Bytes::from(raw.value.body.clone()),
        })
    }
}

/// A route prefix: starts with `/`, is a plain path, and is canonical: requests are matched
/// by their canonical path (see `request::path`), so any other spelling would match nothing.
fn check_route_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with /"));
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(format!(
            "`{path}` is not a plain path prefix such as /api/ (no spaces, ? or #)"
        ));
    }
    match request::path::canonical(path) {
        Ok(canonical) if canonical.text == path => Ok(()),
        Ok(canonical) => Err(format!(
            "`{path}` is not in canonical form; requests are matched as `{}`: write that",
            canonical.text
        )),
        Err(error) => Err(format!("`{path}` can never match a request: {error}")),
    }
}

/// An error's message followed by those of its causes.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// A route's path rule, checked; becomes a [`PathMatch`].
enum CheckedPath {
    Prefix(String),
    Exact(String),
    Regex(regex::Regex),
}

impl CheckedPath {
    fn into_match(self) -> PathMatch {
        match self {
            Self::Prefix(path) => PathMatch::Prefix(path),
            Self::Exact(path) => PathMatch::Exact(path),
            Self::Regex(regex) => PathMatch::Regex(regex),
        }
    }

    /// The key it was written under.
    fn key(&self) -> &'static str {
        match self {
            Self::Prefix(_) => "path",
            Self::Exact(_) => "path_exact",
            Self::Regex(_) => "path_regex",
        }
    }
}

impl std::fmt::Display for CheckedPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Prefix(path) => write!(f, "path {path}"),
            Self::Exact(path) => write!(f, "path_exact {path}"),
            Self::Regex(regex) => write!(f, "path_regex {}", regex.as_str()),
        }
    }
}
