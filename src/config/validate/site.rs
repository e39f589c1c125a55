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
use crate::config::error::{closest, position};
use crate::config::raw::{List, RawRespond, RawRoute, RawSite, RawTls, RawTlsFiles};
use crate::config::{
    HostName, PathMatch, Rewrite, Route, RouteAction, RoutePolicy, Site, SitePolicy, SiteTls,
    UpstreamDefaults, UpstreamUrl, Upstreams,
};
use crate::tls::{TlsError, certified_key_from_pem};

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
            .map(|(index, site)| self.site(index, site, defaults, &mut hosts, &mut default))
            .collect();
        sites.into_iter().collect()
    }

    /// One site; `hosts` and `default` remember what earlier sites claimed.
    fn site(
        &mut self,
        index: usize,
        raw: &Spanned<RawSite>,
        defaults: Option<&UpstreamDefaults>,
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
        let is_acme = matches!(&site.tls.value, RawTls::Mode(word) if word == "acme");
        let host_names = self.hosts(site, &raw.referenced, (index, &name), is_acme, hosts);
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
        let routes = match (&site.upstreams, &site.routes) {
            (Some(upstreams), None) => {
                let urls = self.upstreams(upstreams, &format!("{at}.upstreams"));
                urls.zip(defaults).map(|(urls, defaults)| {
                    vec![Route {
                        path: PathMatch::Prefix("/".to_string()),
                        methods: Vec::new(),
                        rewrite: Rewrite::None,
                        action: RouteAction::Proxy(Upstreams::with_defaults(urls, defaults)),
                        policy: RoutePolicy::default(),
                    }]
                })
            }
            (None, Some(routes)) => self.routes(routes, &at, defaults),
            (Some(upstreams), Some(_)) => {
                self.report(
                    &upstreams.referenced,
                    format!("{at}.upstreams"),
                    "a site has `upstreams` (shorthand for one route at /) or `routes`, not both",
                );
                None
            }
            (None, None) => {
                self.report(&raw.referenced, &at, "a site needs `upstreams` or `routes`");
                None
            }
        };
        Some(Site {
            name,
            hosts: host_names?,
            tls: tls?,
            default: site.default.value,
            routes: routes?,
            policy: SitePolicy::default(),
        })
    }

    /// The hosts of site `owner` (index, name), each unique across all sites.
    fn hosts(
        &mut self,
        site: &RawSite,
        site_at: &Location,
        owner: (usize, &str),
        is_acme: bool,
        claims: &mut HashMap<HostName, Claim>,
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
            let Some(name) = self.check(&host.referenced, &path, HostName::parse(&host.value))
            else {
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
            if is_acme && name.is_wildcard() {
                self.report(
                    &host.referenced,
                    &path,
                    "wildcard names need the DNS-01 challenge, which Rampart does not support yet; \
                     use tls: internal or cert/key files",
                );
                all_valid = false;
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
            RawTls::Files(files) => self.tls_files(files, &format!("{site}.tls")),
        }
    }

    /// Operator-supplied certificate and key: readable, parsable and a matching pair.
    fn tls_files(&mut self, raw: &RawTlsFiles, at: &str) -> Option<SiteTls> {
        let (cert_at, key_at) = (format!("{at}.cert"), format!("{at}.key"));
        let cert = self.path(&raw.cert, &cert_at);
        let key = self.path(&raw.key, &key_at);
        let cert_pem = cert.as_ref().and_then(|cert| {
            let read = fs::read(cert)
                .map_err(|e| format!("cannot read certificate file {}: {e}", cert.display()));
            self.check(&raw.cert.referenced, &cert_at, read)
        });
        let key_pem = key.as_ref().and_then(|key| {
            let read =
                fs::read(key).map_err(|e| format!("cannot read key file {}: {e}", key.display()));
            self.check(&raw.key.referenced, &key_at, read)
        });
        let (cert, key, cert_pem, key_pem) = (cert?, key?, cert_pem?, key_pem?);
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let Err(error) = certified_key_from_pem(&provider, &cert_pem, &key_pem) else {
            return Some(SiteTls::Files { cert, key });
        };
        let (location, path, reason) = match &error {
            TlsError::KeyMismatch(rustls::Error::InconsistentKeys(_)) => (
                &raw.key.referenced,
                key_at,
                format!(
                    "private key {} does not match certificate {}",
                    key.display(),
                    cert.display()
                ),
            ),
            // Any other refusal is about the key itself, such as an unsupported algorithm.
            TlsError::KeyMismatch(cause) => (
                &raw.key.referenced,
                key_at,
                format!(
                    "private key {} cannot be used with certificate {}: {cause}",
                    key.display(),
                    cert.display()
                ),
            ),
            TlsError::Pem {
                what: "private key",
                ..
            } => (
                &raw.key.referenced,
                key_at,
                format!("{}: {}", key.display(), with_causes(&error)),
            ),
            _ => (
                &raw.cert.referenced,
                cert_at,
                format!("{}: {}", cert.display(), with_causes(&error)),
            ),
        };
        self.report(location, path, reason);
        None
    }

    /// A non-empty list of distinct origin URLs.
    fn upstreams(&mut self, raw: &List<String>, at: &str) -> Option<Vec<UpstreamUrl>> {
        if raw.value.is_empty() {
            self.report(
                &raw.referenced,
                at,
                "the list is empty: give at least one upstream such as http://127.0.0.1:8080",
            );
            return None;
        }
        let mut lines = HashMap::new();
        let mut urls = Vec::new();
        let mut all_valid = true;
        for (index, upstream) in raw.value.iter().enumerate() {
            let path = format!("{at}[{index}]");
            let Some(url) = self.check(
                &upstream.referenced,
                &path,
                UpstreamUrl::parse(&upstream.value),
            ) else {
                all_valid = false;
                continue;
            };
            // `http://A:80` and `http://a:80/` are the same origin: compare the normal form.
            let line = position(&upstream.referenced).0;
            if let Some(first) = lines.insert(url.to_string().to_ascii_lowercase(), line) {
                self.report(
                    &upstream.referenced,
                    &path,
                    format!("upstream {url} is listed twice (first at line {first})"),
                );
                all_valid = false;
            }
            urls.push(url);
        }
        all_valid.then_some(urls)
    }

    /// A non-empty list of routes with distinct paths.
    fn routes(
        &mut self,
        raw: &List<RawRoute>,
        site: &str,
        defaults: Option<&UpstreamDefaults>,
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
        let mut paths = HashMap::new();
        let routes: Vec<_> = raw
            .value
            .iter()
            .enumerate()
            .map(|(index, route)| {
                self.route(route, &format!("{at}[{index}]"), defaults, &mut paths)
            })
            .collect();
        routes.into_iter().collect()
    }

    /// One route; `paths` maps the site's route paths so far to their lines.
    fn route(
        &mut self,
        raw: &Spanned<RawRoute>,
        at: &str,
        defaults: Option<&UpstreamDefaults>,
        paths: &mut HashMap<String, u64>,
    ) -> Option<Route> {
        let route = &raw.value;
        let path = match &route.path {
            None => {
                self.report(
                    &raw.referenced,
                    at,
                    "a route needs `path`, a prefix such as /api/",
                );
                None
            }
            Some(path) => {
                let line = position(&path.referenced).0;
                let checked = check_route_path(&path.value).and_then(|()| {
                    match paths.insert(path.value.clone(), line) {
                        Some(first) => Err(format!(
                            "path {} is already routed in this site (line {first})",
                            path.value
                        )),
                        None => Ok(path.value.clone()),
                    }
                });
                self.check(&path.referenced, &format!("{at}.path"), checked)
            }
        };
        let action = match (&route.upstreams, &route.respond) {
            (Some(upstreams), None) => self
                .upstreams(upstreams, &format!("{at}.upstreams"))
                .zip(defaults)
                .map(|(urls, defaults)| {
                    RouteAction::Proxy(Upstreams::with_defaults(urls, defaults))
                }),
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
        Some(Route {
            path: PathMatch::Prefix(path?),
            methods: Vec::new(),
            rewrite: if route.strip_prefix {
                Rewrite::StripPrefix
            } else {
                Rewrite::None
            },
            action: action?,
            policy: RoutePolicy::default(),
        })
    }

    /// A fixed answer; the status must be a final one (200-599).
    fn respond(&mut self, raw: &Spanned<RawRespond>, at: &str) -> Option<RouteAction> {
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

/// A route prefix: starts with `/`, and is a plain path.
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
    Ok(())
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
