//! Validation of the gateway policy keys: upstream targets and their balancing, health,
//! retries and timeouts; limits, JWT auth, header rules, HSTS; trusted proxies and PROXY
//! protocol sources.
//!
//! Part of `config::validate`. Keys a route inherits from its site are checked once where they
//! are written (a [`Layer`]), then merged route over site, so an invalid site value is reported
//! once however many routes inherit it.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde_saphyr::Spanned;

use super::{Checker, Zero};
use crate::config::defaults;
use crate::config::error::{closest, position};
use crate::config::raw::{
    Keys, List, RawAuth, RawBalance, RawHeaderOps, RawHeaderRules, RawHealth, RawHsts, RawJwt,
    RawPairs, RawPassive, RawProxyProtocol, RawQueue, RawRateLimit, RawTimeouts, RawUpstreamEntry,
    Text,
};
use crate::config::{
    ActiveHealth, Balance, Concurrency, EscapedSlashes, ExpectStatus, HeaderOps, HeaderRules, Hsts,
    IpNet, JwtAlgorithm, JwtAuth, JwtKeys, PassiveHealth, ProxyProtocol, Queue, RateKey, RateLimit,
    Timeouts, UpstreamDefaults, UpstreamTarget, UpstreamUrl, Upstreams, humane,
};

/// Every algorithm name `algorithms:` accepts.
const ALGORITHMS: [(&str, JwtAlgorithm); 8] = [
    ("RS256", JwtAlgorithm::RS256),
    ("RS384", JwtAlgorithm::RS384),
    ("RS512", JwtAlgorithm::RS512),
    ("PS256", JwtAlgorithm::PS256),
    ("ES256", JwtAlgorithm::ES256),
    ("ES384", JwtAlgorithm::ES384),
    ("EdDSA", JwtAlgorithm::EdDSA),
    ("HS256", JwtAlgorithm::HS256),
];

/// Most retries a route may ask for: more only multiplies load on a failing backend.
const MAX_RETRIES: i64 = 10;

/// A year, the least `max-age` HSTS preload lists accept.
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The inheritable settings of one site or route, checked; `None` fields were not written.
#[derive(Clone, Debug, Default)]
pub(super) struct Layer {
    pub(super) max_body: Option<u64>,
    pub(super) auth: Option<JwtAuth>,
    balance: Option<Balance>,
    ca: Option<PathBuf>,
    health: Option<ActiveHealth>,
    passive: Option<PassiveHealth>,
    retries: Option<u32>,
    timeouts: PartialTimeouts,
    pub(super) concurrency: Option<Concurrency>,
    escaped_slashes: Option<EscapedSlashes>,
    buffer_request_body: Option<u64>,
    buffer_response: Option<u64>,
}

/// `timeouts:` fields that were written.
#[derive(Clone, Debug, Default)]
struct PartialTimeouts {
    connect: Option<Duration>,
    response_header: Option<Duration>,
    idle: Option<Duration>,
    total: Option<Duration>,
}

impl Layer {
    /// `self` (a route's) over `site`.
    pub(super) fn over(self, site: &Layer) -> Layer {
        let t = self.timeouts;
        Layer {
            max_body: self.max_body.or(site.max_body),
            auth: self.auth.or_else(|| site.auth.clone()),
            balance: self.balance.or_else(|| site.balance.clone()),
            ca: self.ca.or_else(|| site.ca.clone()),
            health: self.health.or_else(|| site.health.clone()),
            passive: self.passive.or_else(|| site.passive.clone()),
            retries: self.retries.or(site.retries),
            timeouts: PartialTimeouts {
                connect: t.connect.or(site.timeouts.connect),
                response_header: t.response_header.or(site.timeouts.response_header),
                idle: t.idle.or(site.timeouts.idle),
                total: t.total.or(site.timeouts.total),
            },
            concurrency: self.concurrency.or_else(|| site.concurrency.clone()),
            escaped_slashes: self.escaped_slashes.or(site.escaped_slashes),
            buffer_request_body: self.buffer_request_body.or(site.buffer_request_body),
            buffer_response: self.buffer_response.or(site.buffer_response),
        }
    }

    /// `buffer_request_body:` as written, else the default (64 KiB).
    pub(super) fn buffer_request_body(&self) -> u64 {
        self.buffer_request_body
            .unwrap_or(defaults::BUFFER_REQUEST_BODY)
    }

    /// `buffer_response:` as written, else the default (64 KiB).
    pub(super) fn buffer_response(&self) -> u64 {
        self.buffer_response.unwrap_or(defaults::BUFFER_RESPONSE)
    }

    /// `escaped_slashes:` as written, else the default (reject).
    pub(super) fn escaped_slashes(&self) -> EscapedSlashes {
        self.escaped_slashes.unwrap_or_default()
    }
}

impl Checker {
    /// `trusted_proxies:`
    pub(super) fn trusted_proxies(&mut self, raw: &Option<List<String>>) -> Option<Vec<IpNet>> {
        match raw {
            None => Some(Vec::new()),
            Some(list) => self.nets(list, "trusted_proxies"),
        }
    }

    /// `listen.proxy_protocol:`
    pub(super) fn proxy_protocol(
        &mut self,
        raw: &Option<Spanned<RawProxyProtocol>>,
    ) -> Option<Option<ProxyProtocol>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let at = "listen.proxy_protocol.from";
        if raw.value.from.value.is_empty() {
            self.report(
                &raw.value.from.referenced,
                at,
                "the list is empty: name the load balancers that send PROXY headers",
            );
            return None;
        }
        let from = self.nets(&raw.value.from, at)?;
        Some(Some(ProxyProtocol { from }))
    }

    /// `upstream.nameservers:` `IP:PORT` or a bare IP (port 53).
    pub(super) fn nameservers(
        &mut self,
        raw: &Option<List<String>>,
        at: &str,
    ) -> Option<Vec<SocketAddr>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        let mut all = Some(Vec::new());
        for (index, entry) in list.value.iter().enumerate() {
            let text = entry.value.as_str();
            let parsed = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| format!("`{text}` is not an IP address or IP:PORT"));
            let at = format!("{at}[{index}]");
            match self.check(&entry.referenced, &at, parsed) {
                Some(addr) => all.iter_mut().for_each(|a| a.push(addr)),
                None => all = None,
            }
        }
        all
    }

    /// CIDRs or bare addresses.
    fn nets(&mut self, raw: &List<String>, at: &str) -> Option<Vec<IpNet>> {
        let mut all = Some(Vec::new());
        for (index, entry) in raw.value.iter().enumerate() {
            let text = entry.value.trim();
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    format!("`{text}` is not an IP address or network such as 10.0.0.0/8")
                });
            match self.check(&entry.referenced, &format!("{at}[{index}]"), parsed) {
                Some(net) => all.iter_mut().for_each(|a| a.push(net)),
                None => all = None,
            }
        }
        all
    }

    /// A non-empty list of distinct origins.
    pub(super) fn upstream_targets(
        &mut self,
        raw: &List<RawUpstreamEntry>,
        at: &str,
    ) -> Option<Vec<UpstreamTarget>> {
        if raw.value.is_empty() {
            self.report(
                &raw.referenced,
                at,
                "the list is empty: give at least one upstream such as http://127.0.0.1:8080",
            );
            return None;
        }
        let mut lines = HashMap::new();
        let mut targets = Some(Vec::new());
        for (index, entry) in raw.value.iter().enumerate() {
            let path = format!("{at}[{index}]");
            let (url_text, url_at, weight, max_conns) = match &entry.value {
                RawUpstreamEntry::Url(url) => (url.as_str(), &entry.referenced, None, None),
                RawUpstreamEntry::Target(long) => (
                    long.url.value.as_str(),
                    &long.url.referenced,
                    long.weight.as_ref(),
                    long.max_conns.as_ref(),
                ),
            };
            let url = self.check(url_at, &path, UpstreamUrl::parse(url_text));
            let weight = match weight {
                None => Some(defaults::WEIGHT),
                Some(raw) => self.count::<u32>(raw, &format!("{path}.weight")),
            };
            let max_conns = match max_conns {
                None => Some(None),
                Some(raw) => self
                    .count::<usize>(raw, &format!("{path}.max_conns"))
                    .map(Some),
            };
            let (Some(url), Some(weight), Some(max_conns)) = (url, weight, max_conns) else {
                targets = None;
                continue;
            };
            // `http://A:80` and `http://a:80/` are the same origin: compare the normal form.
            let line = position(url_at).0;
            if let Some(first) = lines.insert(url.to_string().to_ascii_lowercase(), line) {
                self.report(
                    url_at,
                    &path,
                    format!("upstream {url} is listed twice (first at line {first})"),
                );
                targets = None;
                continue;
            }
            if let Some(targets) = targets.as_mut() {
                targets.push(UpstreamTarget {
                    url,
                    weight,
                    max_conns,
                });
            }
        }
        targets
    }

    /// The inheritable keys written at `at` (a site or a route).
    pub(super) fn layer(&mut self, keys: &Keys<'_>, at: &str) -> Option<Layer> {
        let max_body = self.optional(keys.max_body, |c, raw| {
            c.byte_size(raw, &format!("{at}.max_body"))
        });
        let auth = self.optional(keys.auth, |c, raw| c.auth(raw, &format!("{at}.auth")));
        let balance = self.optional(keys.balance, |c, raw| {
            c.balance(raw, &format!("{at}.balance"))
        });
        let ca = self.optional(keys.ca, |c, raw| c.readable(raw, &format!("{at}.ca")));
        let health = self.optional(keys.health, |c, raw| {
            c.health(&raw.value, &format!("{at}.health"))
        });
        let passive = self.optional(keys.passive, |c, raw| {
            c.passive(&raw.value, &format!("{at}.passive"))
        });
        let retries = self.optional(keys.retries, |c, raw| {
            let checked = u32::try_from(raw.value)
                .ok()
                .filter(|n| i64::from(*n) <= MAX_RETRIES)
                .ok_or_else(|| format!("must be from 0 to {MAX_RETRIES}, not {}", raw.value));
            c.check(&raw.referenced, &format!("{at}.retries"), checked)
        });
        let timeouts = match keys.timeouts {
            None => Some(PartialTimeouts::default()),
            Some(raw) => self.timeouts(&raw.value, &format!("{at}.timeouts")),
        };
        let concurrency = self.concurrency(keys, at);
        let escaped_slashes = self.optional(keys.escaped_slashes, |c, raw| {
            c.choice(
                raw,
                &format!("{at}.escaped_slashes"),
                &[
                    ("reject", EscapedSlashes::Reject),
                    ("keep", EscapedSlashes::Keep),
                ],
            )
        });
        let buffer_request_body = self.optional(keys.buffer_request_body, |c, raw| {
            c.byte_size(raw, &format!("{at}.buffer_request_body"))
        });
        let buffer_response = self.optional(keys.buffer_response, |c, raw| {
            c.byte_size(raw, &format!("{at}.buffer_response"))
        });
        Some(Layer {
            max_body: max_body?,
            auth: auth?,
            balance: balance?,
            ca: ca?,
            health: health?,
            passive: passive?,
            retries: retries?,
            timeouts: timeouts?,
            concurrency: concurrency?,
            escaped_slashes: escaped_slashes?,
            buffer_request_body: buffer_request_body?,
            buffer_response: buffer_response?,
        })
    }

    /// A route's origins with its (merged) layer applied.
    pub(super) fn upstreams_of(
        &mut self,
        targets: Vec<UpstreamTarget>,
        layer: &Layer,
        defaults: &UpstreamDefaults,
        at: &str,
        location: &serde_saphyr::Location,
    ) -> Option<Upstreams> {
        let balance = layer.balance.clone().unwrap_or_default();
        if balance != Balance::Weighted && targets.iter().any(|t| t.weight != defaults::WEIGHT) {
            self.report(
                location,
                format!("{at}.upstreams"),
                "`weight` is only used with `balance: weighted`",
            );
            return None;
        }
        // What is not written is the route default, but an unwritten `total` follows a
        // written `response_header`.
        let (t, unwritten) = (&layer.timeouts, Timeouts::from_defaults(defaults));
        let response_header = t.response_header.unwrap_or(unwritten.response_header);
        let timeouts = Timeouts {
            connect: t.connect.unwrap_or(unwritten.connect),
            response_header,
            idle: t.idle.unwrap_or(unwritten.idle),
            total: t
                .total
                .unwrap_or_else(|| defaults::route_total(response_header)),
        };
        if timeouts.total < timeouts.response_header {
            self.report(
                location,
                format!("{at}.timeouts.total"),
                format!(
                    "total ({:?}) is shorter than response_header ({:?}): no try could use its full time",
                    timeouts.total, timeouts.response_header
                ),
            );
            return None;
        }
        Some(Upstreams {
            targets,
            balance,
            ca: layer.ca.clone(),
            health: layer.health.clone(),
            passive: layer.passive.clone().unwrap_or_default(),
            retries: layer.retries.unwrap_or(defaults::RETRIES),
            timeouts,
        })
    }

    fn optional<R, T>(
        &mut self,
        raw: &Option<R>,
        check: impl FnOnce(&mut Self, &R) -> Option<T>,
    ) -> Option<Option<T>> {
        match raw {
            None => Some(None),
            Some(raw) => check(self, raw).map(Some),
        }
    }

    fn byte_size(&mut self, raw: &Text, at: &str) -> Option<u64> {
        self.check(&raw.referenced, at, humane::parse_size(&raw.value))
    }

    /// A file that must be readable now (its content is checked by its user).
    fn readable(&mut self, raw: &Text, at: &str) -> Option<PathBuf> {
        let path = self.path(raw, at)?;
        let read = fs::metadata(&path)
            .and_then(|meta| {
                if meta.is_file() {
                    fs::File::open(&path).map(drop)
                } else {
                    Err(std::io::Error::other("not a regular file"))
                }
            })
            .map_err(|e| format!("cannot read {}: {e}", path.display()));
        self.check(&raw.referenced, at, read)?;
        Some(path)
    }

    fn balance(&mut self, raw: &Spanned<RawBalance>, at: &str) -> Option<Balance> {
        match &raw.value {
            RawBalance::Word(word) => {
                let word = Text::new(word.clone(), raw.referenced, raw.defined);
                self.choice(
                    &word,
                    at,
                    &[
                        ("round_robin", 0),
                        ("weighted", 1),
                        ("least_conn", 2),
                        ("random_two", 3),
                        ("ip_hash", 4),
                    ],
                )
                .map(|index| match index {
                    0 => Balance::RoundRobin,
                    1 => Balance::Weighted,
                    2 => Balance::LeastConn,
                    3 => Balance::RandomTwo,
                    _ => Balance::IpHash,
                })
            }
            RawBalance::HeaderHash(hash) => self
                .header_name(&hash.header_hash, &format!("{at}.header_hash"))
                .map(Balance::HeaderHash),
        }
    }

    fn health(&mut self, raw: &RawHealth, at: &str) -> Option<ActiveHealth> {
        let path = if raw.path.value.starts_with('/') {
            Some(raw.path.value.clone())
        } else {
            self.report(
                &raw.path.referenced,
                format!("{at}.path"),
                "must start with /, as in /healthz",
            );
            None
        };
        let every = self.duration_or(&raw.every, &format!("{at}.every"), defaults::HEALTH_EVERY);
        let timeout = self.duration_or(
            &raw.timeout,
            &format!("{at}.timeout"),
            defaults::HEALTH_TIMEOUT,
        );
        let healthy_after = self.count_or(
            &raw.healthy_after,
            &format!("{at}.healthy_after"),
            defaults::HEALTH_HEALTHY_AFTER,
        );
        let unhealthy_after = self.count_or(
            &raw.unhealthy_after,
            &format!("{at}.unhealthy_after"),
            defaults::HEALTH_UNHEALTHY_AFTER,
        );
        let expect_status = match &raw.expect_status {
            None => Some(defaults::HEALTH_EXPECT_STATUS),
            Some(status) => self.check(
                &status.referenced,
                &format!("{at}.expect_status"),
                expect_status(&status.value.0),
            ),
        };
        Some(ActiveHealth {
            path: path?,
            every: every?,
            timeout: timeout?,
            healthy_after: healthy_after?,
            unhealthy_after: unhealthy_after?,
            expect_status: expect_status?,
        })
    }

    fn passive(&mut self, raw: &RawPassive, at: &str) -> Option<PassiveHealth> {
        let defaults = PassiveHealth::default();
        let unhealthy_after = match &raw.unhealthy_after {
            None => Some(defaults.unhealthy_after),
            Some(n) => {
                let checked = u32::try_from(n.value)
                    .map_err(|_| format!("must be 0 (off) or more, not {}", n.value));
                self.check(&n.referenced, &format!("{at}.unhealthy_after"), checked)
            }
        };
        let cooldown = match &raw.cooldown {
            None => Some(defaults.cooldown),
            Some(text) => self.duration(text, &format!("{at}.cooldown"), Zero::Refused),
        };
        Some(PassiveHealth {
            unhealthy_after: unhealthy_after?,
            cooldown: cooldown?,
            include_5xx: raw.include_5xx.unwrap_or(defaults.include_5xx),
        })
    }

    fn timeouts(&mut self, raw: &RawTimeouts, at: &str) -> Option<PartialTimeouts> {
        let one = |c: &mut Self, text: &Option<Text>, key: &str| match text {
            None => Some(None),
            Some(text) => c
                .duration(text, &format!("{at}.{key}"), Zero::Refused)
                .map(Some),
        };
        let connect = one(self, &raw.connect, "connect");
        let response_header = one(self, &raw.response_header, "response_header");
        let idle = one(self, &raw.idle, "idle");
        let total = one(self, &raw.total, "total");
        Some(PartialTimeouts {
            connect: connect?,
            response_header: response_header?,
            idle: idle?,
            total: total?,
        })
    }

    /// `max_in_flight` with its optional `queue`.
    fn concurrency(&mut self, keys: &Keys<'_>, at: &str) -> Option<Option<Concurrency>> {
        let max_in_flight = self.optional(keys.max_in_flight, |c, raw| {
            c.count::<usize>(raw, &format!("{at}.max_in_flight"))
        });
        let queue = self.optional(keys.queue, |c, raw| c.queue(raw, &format!("{at}.queue")));
        match (max_in_flight?, queue?) {
            (Some(max_in_flight), queue) => Some(Some(Concurrency {
                max_in_flight,
                queue,
            })),
            (None, None) => Some(None),
            (None, Some(_)) => {
                let location = keys
                    .queue
                    .as_ref()
                    .map_or(serde_saphyr::Location::UNKNOWN, |q| q.referenced);
                self.report(
                    &location,
                    format!("{at}.queue"),
                    "a queue needs `max_in_flight` beside it",
                );
                None
            }
        }
    }

    fn queue(&mut self, raw: &Spanned<Box<RawQueue>>, at: &str) -> Option<Queue> {
        let max = self.count::<usize>(&raw.value.max, &format!("{at}.max"));
        let timeout = self.duration(&raw.value.timeout, &format!("{at}.timeout"), Zero::Refused);
        Some(Queue {
            max: max?,
            timeout: timeout?,
        })
    }

    /// `rate_limit:`; `has_auth` says whether a `jwt:` key can have claims to read.
    pub(super) fn rate_limit(
        &mut self,
        raw: &Spanned<Box<RawRateLimit>>,
        at: &str,
        has_auth: bool,
    ) -> Option<RateLimit> {
        let rate = self.check(
            &raw.value.rate.referenced,
            &format!("{at}.rate"),
            parse_rate(&raw.value.rate.value),
        );
        let burst = match &raw.value.burst {
            None => rate.map(|(n, _)| n),
            Some(burst) => self.count::<u32>(burst, &format!("{at}.burst")),
        };
        let key = match &raw.value.key {
            None => Some(RateKey::ClientIp),
            Some(key) => {
                let parsed = parse_rate_key(&key.value).and_then(|parsed| match parsed {
                    RateKey::JwtClaim(_) if !has_auth => Err(format!(
                        "`{}` keys by a token claim, but no `auth` applies here",
                        key.value
                    )),
                    other => Ok(other),
                });
                self.check(&key.referenced, &format!("{at}.key"), parsed)
            }
        };
        let (rate, per) = rate?;
        Some(RateLimit {
            rate,
            per,
            burst: burst?,
            key: key?,
        })
    }

    fn auth(&mut self, raw: &Spanned<Box<RawAuth>>, at: &str) -> Option<JwtAuth> {
        let at = format!("{at}.jwt");
        let jwt: &RawJwt = &raw.value.jwt.value;
        let keys = match (&jwt.keys, &jwt.jwks_url) {
            (Some(file), None) => {
                if let Some(extra) = jwt.jwks_refresh.as_ref().or(jwt.jwks_ca.as_ref()) {
                    self.report(
                        &extra.referenced,
                        &at,
                        "jwks_refresh and jwks_ca go with jwks_url, not keys",
                    );
                }
                self.readable(file, &format!("{at}.keys"))
                    .map(JwtKeys::File)
            }
            (None, Some(url)) => {
                let parsed = url
                    .value
                    .parse::<Uri>()
                    .ok()
                    .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
                    .filter(|u| u.host().is_some())
                    .ok_or_else(|| {
                        format!("`{}` is not an http(s) URL of a JWKS document", url.value)
                    });
                let url = self.check(&url.referenced, &format!("{at}.jwks_url"), parsed);
                let refresh = self.duration_or(
                    &jwt.jwks_refresh,
                    &format!("{at}.jwks_refresh"),
                    defaults::JWKS_REFRESH,
                );
                let ca = self.optional(&jwt.jwks_ca, |c, raw| {
                    c.readable(raw, &format!("{at}.jwks_ca"))
                });
                Some(JwtKeys::Url {
                    url: url?,
                    refresh: refresh?,
                    ca: ca?,
                })
            }
            (Some(file), Some(_)) => {
                self.report(
                    &file.referenced,
                    &at,
                    "give `keys` (a file) or `jwks_url`, not both",
                );
                None
            }
            (None, None) => {
                self.report(
                    &raw.value.jwt.referenced,
                    &at,
                    "needs `keys: FILE` or `jwks_url: URL`",
                );
                None
            }
        };
        let issuer = self.optional(&jwt.issuer, |c, raw| {
            c.non_empty(raw, &format!("{at}.issuer"))
        });
        let audience = jwt
            .audience
            .as_ref()
            .map_or_else(Vec::new, |a| a.value.0.clone());
        let algorithms = match &jwt.algorithms {
            None => Some(defaults::JWT_ALGORITHMS.to_vec()),
            Some(list) if list.value.is_empty() => {
                self.report(
                    &list.referenced,
                    format!("{at}.algorithms"),
                    "the list is empty",
                );
                None
            }
            Some(list) => {
                let mut all = Some(Vec::new());
                for (index, name) in list.value.iter().enumerate() {
                    let found =
                        self.choice(name, &format!("{at}.algorithms[{index}]"), &ALGORITHMS);
                    match found {
                        Some(alg) => all.iter_mut().for_each(|a| a.push(alg)),
                        None => all = None,
                    }
                }
                all
            }
        };
        let leeway = match &jwt.leeway {
            None => Some(defaults::JWT_LEEWAY),
            Some(text) => self.duration(text, &format!("{at}.leeway"), Zero::Allowed),
        };
        let forward_claims = match &jwt.forward_claims {
            None => Some(Vec::new()),
            Some(pairs) => {
                let mut all = Some(Vec::new());
                for (claim, header) in &pairs.value.0 {
                    let name =
                        self.header_name(header, &format!("{at}.forward_claims.{}", claim.value));
                    match name {
                        Some(name) => all
                            .iter_mut()
                            .for_each(|a| a.push((claim.value.clone(), name.clone()))),
                        None => all = None,
                    }
                }
                all
            }
        };
        Some(JwtAuth {
            keys: keys?,
            issuer: issuer?,
            audience,
            algorithms: algorithms?,
            leeway: leeway?,
            forward_claims: forward_claims?,
            strip_authorization: jwt.strip_authorization,
        })
    }

    /// `headers:`
    pub(super) fn header_rules(
        &mut self,
        raw: &Option<Spanned<Box<RawHeaderRules>>>,
        at: &str,
    ) -> Option<HeaderRules> {
        let Some(raw) = raw else {
            return Some(HeaderRules::default());
        };
        let request = self.header_ops(&raw.value.request, &format!("{at}.headers.request"));
        let response = self.header_ops(&raw.value.response, &format!("{at}.headers.response"));
        Some(HeaderRules {
            request: request?,
            response: response?,
        })
    }

    fn header_ops(&mut self, raw: &Option<Spanned<RawHeaderOps>>, at: &str) -> Option<HeaderOps> {
        let Some(raw) = raw else {
            return Some(HeaderOps::default());
        };
        let set = self.header_pairs(&raw.value.set, &format!("{at}.set"));
        let add = self.header_pairs(&raw.value.add, &format!("{at}.add"));
        let remove = match &raw.value.remove {
            None => Some(Vec::new()),
            Some(list) => {
                let mut all = Some(Vec::new());
                for (index, name) in list.value.iter().enumerate() {
                    match self.rule_header_name(name, &format!("{at}.remove[{index}]")) {
                        Some(name) => all.iter_mut().for_each(|a| a.push(name.clone())),
                        None => all = None,
                    }
                }
                all
            }
        };
        Some(HeaderOps {
            set: set?,
            add: add?,
            remove: remove?,
        })
    }

    fn header_pairs(
        &mut self,
        raw: &Option<Spanned<RawPairs>>,
        at: &str,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let mut all = Some(Vec::new());
        for (name, value) in &raw.value.0 {
            let path = format!("{at}.{}", name.value);
            let name = self.rule_header_name(name, &path);
            let value = self.check(
                &value.referenced,
                &path,
                HeaderValue::from_str(&value.value)
                    .map_err(|_| format!("`{}` is not a valid header value", value.value)),
            );
            match (name, value) {
                (Some(name), Some(value)) => all
                    .iter_mut()
                    .for_each(|a| a.push((name.clone(), value.clone()))),
                _ => all = None,
            }
        }
        all
    }

    /// A header a rule may change: not one of the forwarding or hop-by-hop fields Rampart owns.
    fn rule_header_name(&mut self, raw: &Text, at: &str) -> Option<HeaderName> {
        let name = self.header_name(raw, at)?;
        if crate::request::fields::is_protected(&name) {
            self.report(
                &raw.referenced,
                at,
                format!(
                    "`{}` is set by Rampart itself (forwarding and hop-by-hop fields cannot be changed by rules)",
                    raw.value
                ),
            );
            return None;
        }
        Some(name)
    }

    fn header_name(&mut self, raw: &Text, at: &str) -> Option<HeaderName> {
        let parsed = HeaderName::from_bytes(raw.value.as_bytes())
            .map_err(|_| format!("`{}` is not a valid header name", raw.value));
        self.check(&raw.referenced, at, parsed)
    }

    /// `hsts:`
    pub(super) fn hsts(
        &mut self,
        raw: &Option<Spanned<Box<RawHsts>>>,
        at: &str,
    ) -> Option<Option<Hsts>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let at = format!("{at}.hsts");
        let (max_age, include_subdomains, preload) = match &*raw.value {
            RawHsts::MaxAge(text) => {
                let text = Text::new(text.clone(), raw.referenced, raw.defined);
                (self.duration(&text, &at, Zero::Allowed), false, false)
            }
            RawHsts::Options(options) => (
                self.duration(&options.max_age, &format!("{at}.max_age"), Zero::Allowed),
                options.include_subdomains,
                options.preload,
            ),
        };
        let max_age = max_age?;
        if preload && (!include_subdomains || max_age < YEAR) {
            self.report(
                &raw.referenced,
                format!("{at}.preload"),
                "preload lists require include_subdomains: true and max_age of at least 365d",
            );
            return None;
        }
        Some(Some(Hsts {
            max_age,
            include_subdomains,
            preload,
        }))
    }

    fn duration_or(&mut self, raw: &Option<Text>, at: &str, default: Duration) -> Option<Duration> {
        match raw {
            None => Some(default),
            Some(text) => self.duration(text, at, Zero::Refused),
        }
    }

    fn count_or(&mut self, raw: &Option<Spanned<i64>>, at: &str, default: u32) -> Option<u32> {
        match raw {
            None => Some(default),
            Some(n) => self.count::<u32>(n, at),
        }
    }
}

/// `100/s`, `20/m`, `1000/h`: requests per unit.
pub(super) fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    const HINT: &str = "expected a rate such as 100/s, 20/m or 1000/h";
    let (count, unit) = text.split_once('/').ok_or_else(|| HINT.to_string())?;
    let count: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!("`{text}`: the count must be a whole number of at least 1; {HINT}")
        })?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => return Err(format!("`{other}` is not a unit: use s, m or h; {HINT}")),
    };
    Ok((count, per))
}

/// `client_ip`, `header:NAME` or `jwt:CLAIM`.
fn parse_rate_key(text: &str) -> Result<RateKey, String> {
    if text == "client_ip" {
        return Ok(RateKey::ClientIp);
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::from_bytes(name.trim().as_bytes())
            .map(RateKey::Header)
            .map_err(|_| format!("`{name}` is not a valid header name"));
    }
    if let Some(claim) = text.strip_prefix("jwt:") {
        if claim.trim().is_empty() {
            return Err("name the claim, as in jwt:sub".into());
        }
        return Ok(RateKey::JwtClaim(claim.trim().to_string()));
    }
    let hint = closest(text, ["client_ip"]).map(|g| format!("; did you mean `{g}`?"));
    Err(format!(
        "`{text}` is not a key: expected client_ip, header:NAME or jwt:CLAIM{}",
        hint.unwrap_or_default()
    ))
}

/// `200` or `2xx`.
fn expect_status(text: &str) -> Result<ExpectStatus, String> {
    let hint = || format!("`{text}` is not a status such as 200 or a class such as 2xx");
    if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
        return match class.parse::<u8>() {
            Ok(digit @ 1..=5) => Ok(ExpectStatus::Class(digit)),
            _ => Err(hint()),
        };
    }
    text.parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .map(ExpectStatus::Exact)
        .ok_or_else(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_have_a_count_and_a_unit() {
        assert_eq!(parse_rate("100/s"), Ok((100, Duration::from_secs(1))));
        assert_eq!(parse_rate("20/m"), Ok((20, Duration::from_secs(60))));
        assert_eq!(parse_rate("5 / h"), Ok((5, Duration::from_secs(3600))));
        for bad in ["100", "0/s", "x/s", "10/d", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn rate_keys_name_their_source() {
        assert_eq!(parse_rate_key("client_ip"), Ok(RateKey::ClientIp));
        assert_eq!(
            parse_rate_key("header:X-Api-Key"),
            Ok(RateKey::Header(HeaderName::from_static("x-api-key")))
        );
        assert_eq!(
            parse_rate_key("jwt:sub"),
            Ok(RateKey::JwtClaim("sub".into()))
        );
        assert!(
            parse_rate_key("client-ip")
                .unwrap_err()
                .contains("did you mean `client_ip`")
        );
        assert!(parse_rate_key("jwt:").is_err());
    }

    #[test]
    fn expected_statuses_are_codes_or_classes() {
        assert_eq!(expect_status("2xx"), Ok(ExpectStatus::Class(2)));
        assert_eq!(
            expect_status("204"),
            Ok(ExpectStatus::Exact(StatusCode::NO_CONTENT))
        );
        assert!(expect_status("7xx").is_err());
        assert!(expect_status("ok").is_err());
    }
}
