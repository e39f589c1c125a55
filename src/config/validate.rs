//! Raw configuration to typed [`Config`], collecting every problem with its position.
//!
//! Called by `config::load` once serde has produced the raw shape. It reads the certificate,
//! key and CA bundle files the configuration names (to prove they are usable before anything
//! is served) and writes nothing. A check that fails records a [`Problem`] and yields `None`;
//! the checks of one section all run before their results are combined, so one run reports
//! every problem in the file. The checks of `sites:` are in `validate/site.rs`, of `cluster:` in
//! `validate/cluster.rs`, of challenge types and `dns:` providers in `validate/dns.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::Uri;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_saphyr::{Location, Spanned};

use crate::config::error::{Problem, closest};
use crate::config::raw::{
    self, List, RawAcme, RawAcmeCa, RawConfig, RawDownstream, RawEab, RawListen, RawLog,
    RawUpstream, Text, default_directory,
};
use crate::config::{
    Acme, AcmeCa, Config, Downstream, Eab, KeyType, Listen, Log, LogFormat, OnDemand, Secret, Site,
    SiteTls, Underscores, UpstreamDefaults, defaults, humane,
};

mod cluster;
mod dns;
mod gateway;
mod site;

/// Let's Encrypt's production directory, for `directory: letsencrypt`.
const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Let's Encrypt's staging directory, for `directory: letsencrypt-staging`.
const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Smallest `max_header_bytes`, in bytes: hyper's HTTP/1 read buffer holds the request head and
/// hyper refuses (panics on) a buffer below 8 KiB.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

/// Directives `log.level` accepts, as in `tracing_subscriber::EnvFilter`.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// base64url as CAs hand out EAB keys: RFC 8555 §7.3.4 says unpadded, some CAs pad anyway.
const EAB_KEY_ENCODING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Checks `raw` and builds the typed configuration; `source` is the absolute path of the file,
/// whose directory anchors relative paths.
///
/// # Errors
/// Every problem found, at least one.
pub(super) fn validate(raw: &RawConfig, source: &Path) -> Result<Config, Vec<Problem>> {
    let base = source.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut checker = Checker {
        base,
        problems: Vec::new(),
    };
    match checker.config(raw, source) {
        Some(config) if checker.problems.is_empty() => Ok(config),
        _ => {
            debug_assert!(
                !checker.problems.is_empty(),
                "every rejected value records a problem"
            );
            Err(checker.problems)
        }
    }
}

/// Whether a zero duration makes sense for a setting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// Zero is a meaningful choice (no grace period, no idle pooling).
    Allowed,
    /// A zero timeout would fail every connection.
    Refused,
}

/// Problems found so far, and the directory relative paths resolve against.
struct Checker {
    base: PathBuf,
    problems: Vec<Problem>,
}

impl Checker {
    /// The whole configuration; every section is checked before any result is combined.
    fn config(&mut self, raw: &RawConfig, source: &Path) -> Option<Config> {
        let listen = self.listen(&raw.listen);
        let storage = self.path(&raw.storage, "storage");
        let log = self.log(&raw.log);
        let acme = self.acme(&raw.acme, source);
        let downstream = self.downstream(&raw.downstream);
        let upstream = self.upstream(&raw.upstream);
        let shutdown_grace = self.duration(&raw.shutdown_grace, "shutdown_grace", Zero::Allowed);
        let trusted_proxies = self.trusted_proxies(&raw.trusted_proxies);
        let headers_with_underscores = self.choice(
            &raw.headers_with_underscores,
            "headers_with_underscores",
            &[
                ("drop", Underscores::Drop),
                ("reject", Underscores::Reject),
                ("allow", Underscores::Allow),
            ],
        );
        let providers = self.dns_providers(&raw.dns);
        let none = BTreeMap::new();
        let answerable = dns::Answerable {
            global: acme.as_ref().map_or_else(
                || defaults::ACME_CHALLENGES.to_vec(),
                |acme| acme.challenges.clone(),
            ),
            providers: providers.as_ref().unwrap_or(&none),
            // An invalid address is reported already; judge the sites as if it were on.
            http: listen.as_ref().is_none_or(|listen| listen.http.is_some()),
        };
        let sites = self.sites(&raw.sites, upstream.as_ref(), &answerable);
        let cluster = raw
            .cluster
            .as_ref()
            .map(|cluster| self.cluster(&cluster.value));
        let on_demand = self.on_demand(raw, sites.as_deref());
        Some(Config {
            source: source.to_path_buf(),
            listen: listen?,
            storage: storage?,
            log: log?,
            acme: acme?,
            downstream: downstream?,
            upstream: upstream?,
            shutdown_grace: shutdown_grace?,
            sites: sites?,
            trusted_proxies: trusted_proxies?,
            headers_with_underscores: headers_with_underscores?,
            cluster: present(cluster)?,
            on_demand: on_demand?,
        })
        .filter(|_| providers.is_some())
    }

    fn listen(&mut self, raw: &RawListen) -> Option<Listen> {
        let https = self.socket_addr(&raw.https, "listen.https");
        // `off`: another program owns port 80, or it is closed; no http-01 then.
        let http = match raw.http.value.as_str() {
            "off" => Some(None),
            _ => self.socket_addr(&raw.http, "listen.http").map(Some),
        };
        let admin = raw
            .admin
            .as_ref()
            .map(|admin| self.socket_addr(admin, "listen.admin"));
        // The same address twice would only fail at bind time, with a vaguer message. Point at
        // the one written in the file (a default has no position).
        if https.is_some() && http == Some(https) {
            let (at, path, other) = if raw.http.referenced == Location::UNKNOWN {
                (&raw.https.referenced, "listen.https", "listen.http")
            } else {
                (&raw.http.referenced, "listen.http", "listen.https")
            };
            self.report(at, path, format!("same address as {other}"));
        }
        if let (Some(Some(address)), Some(at)) = (admin, &raw.admin) {
            for (other, name) in [(https, "listen.https"), (http.flatten(), "listen.http")] {
                if other == Some(address) {
                    self.report(
                        &at.referenced,
                        "listen.admin",
                        format!("same address as {name}"),
                    );
                }
            }
        }
        let proxy_protocol = self.proxy_protocol(&raw.proxy_protocol);
        let admin_token = raw.admin_token_file.as_ref().map(|file| {
            let at = "listen.admin_token_file";
            let token = self.secret_file(file, at)?;
            let checked = match token.trim() {
                "" => Err("the token file is empty".to_string()),
                token if token.len() < MIN_TOKEN_LEN => Err(format!(
                    "the token is shorter than {MIN_TOKEN_LEN} characters; use e.g. \
                     `openssl rand -hex 32`"
                )),
                token if !token.bytes().all(|b| b.is_ascii_graphic()) => {
                    Err("the token must be printable ASCII without spaces".to_string())
                }
                token => Ok(Secret::new(token.to_string())),
            };
            self.check(&file.referenced, at, checked)
        });
        if let (Some(file), None) = (&raw.admin_token_file, &raw.admin) {
            self.report(
                &file.referenced,
                "listen.admin_token_file",
                "there is no admin listener (listen.admin) for the token to guard",
            );
        }
        Some(Listen {
            https: https?,
            http: http?,
            admin: present(admin)?,
            admin_token: present(admin_token)?,
            proxy_protocol: proxy_protocol?,
        })
    }

    fn log(&mut self, raw: &RawLog) -> Option<Log> {
        let format = self.choice(
            &raw.format,
            "log.format",
            &[("json", LogFormat::Json), ("text", LogFormat::Text)],
        );
        let level = self.check(
            &raw.level.referenced,
            "log.level",
            check_log_level(&raw.level.value),
        );
        Some(Log {
            format: format?,
            level: level.map(|()| raw.level.value.trim().to_string())?,
        })
    }

    fn acme(&mut self, raw: &RawAcme, source: &Path) -> Option<Acme> {
        let email = raw.email.as_ref().map(|email| {
            let checked = check_email(&email.value).map(|()| email.value.clone());
            self.check(&email.referenced, "acme.email", checked)
        });
        let cas = match &raw.directories {
            None => {
                let directory = raw.directory.clone().unwrap_or_else(default_directory);
                let entry = RawAcmeCa {
                    directory,
                    ca_bundle: raw.ca_bundle.clone(),
                    profile: raw.profile.clone(),
                    eab: raw.eab.clone(),
                };
                self.acme_ca(&entry, "acme", source).map(|ca| vec![ca])
            }
            Some(list) => self.acme_directories(raw, list, source),
        };
        let fallback_after = match &raw.fallback_after {
            None => Some(defaults::ACME_FALLBACK_AFTER),
            Some(count) => self.count::<u32>(count, "acme.fallback_after"),
        };
        let key_type = self.choice(
            &raw.key_type,
            "acme.key_type",
            &[
                ("ecdsa-p256", KeyType::EcdsaP256),
                ("ecdsa-p384", KeyType::EcdsaP384),
                ("rsa2048", KeyType::Rsa2048),
            ],
        );
        let challenges = self.acme_challenges(&raw.challenges);
        let mut cas = cas?.into_iter();
        let first = cas.next()?;
        Some(Acme {
            email: present(email)?,
            directory: first.directory,
            ca_bundle: first.ca_bundle,
            key_type: key_type?,
            profile: first.profile,
            eab: first.eab,
            challenges: challenges?,
            fallbacks: cas.collect(),
            fallback_after: fallback_after?,
        })
    }

    /// `on_demand:`, required by and only with `tls: {acme: on_demand}` sites.
    fn on_demand(&mut self, raw: &RawConfig, sites: Option<&[Site]>) -> Option<Option<OnDemand>> {
        let wanted = sites.is_some_and(|sites| sites.iter().any(|s| s.tls == SiteTls::OnDemand));
        let Some(section) = &raw.on_demand else {
            if wanted {
                self.report(
                    &raw.sites.referenced,
                    "on_demand",
                    "a site has tls: {acme: on_demand}: give the top-level `on_demand:` with at \
                     least `ask:`, the URL that allows each name",
                );
                return None;
            }
            return Some(None);
        };
        let raw = &section.value;
        let ask = {
            let parsed = raw
                .ask
                .value
                .parse::<Uri>()
                .map_err(|e| e.to_string())
                .and_then(|uri| match (uri.scheme_str(), uri.host()) {
                    (Some("https"), Some(host)) if !host.is_empty() => Ok(uri),
                    // The answer allows orders: only this host may give it in clear.
                    (Some("http"), Some(host)) if is_loopback_host(host) => Ok(uri),
                    (Some("http"), Some(_)) => Err("plain http:// only to this host \
                        (localhost, 127.0.0.1, [::1]); use https:// for another"
                        .to_owned()),
                    _ => Err(
                        "expected the http:// or https:// URL of the endpoint allowing names"
                            .to_owned(),
                    ),
                });
            self.check(&raw.ask.referenced, "on_demand.ask", parsed)
        };
        let rate_text = raw
            .rate
            .clone()
            .unwrap_or_else(|| raw::default_text(defaults::ON_DEMAND_RATE));
        let rate = self.check(
            &rate_text.referenced,
            "on_demand.rate",
            gateway::parse_rate(&rate_text.value),
        );
        let burst = match &raw.burst {
            None => Some(defaults::ON_DEMAND_BURST),
            Some(count) => self.count::<u32>(count, "on_demand.burst"),
        };
        let max_certificates = match &raw.max_certificates {
            None => Some(defaults::ON_DEMAND_MAX_CERTIFICATES as usize),
            Some(count) => self.count::<usize>(count, "on_demand.max_certificates"),
        };
        let mut duration = |text: &Option<Text>, at: &str, default: &str| {
            let text = text.clone().unwrap_or_else(|| raw::default_text(default));
            self.duration(&text, at, Zero::Refused)
        };
        let timeout = duration(
            &raw.timeout,
            "on_demand.timeout",
            defaults::ON_DEMAND_TIMEOUT,
        );
        let refusal_ttl = duration(
            &raw.refusal_ttl,
            "on_demand.refusal_ttl",
            defaults::ON_DEMAND_REFUSAL_TTL,
        );
        let nameservers = self.nameservers(&raw.nameservers, "on_demand.nameservers");
        if !wanted {
            // With sites that failed to build, there is no telling.
            if sites.is_some() {
                self.report(
                    &section.referenced,
                    "on_demand",
                    "no site has tls: {acme: on_demand}",
                );
            }
            return None;
        }
        let (rate, per) = rate?;
        Some(Some(OnDemand {
            ask: ask?,
            rate,
            per,
            burst: burst?,
            max_certificates: max_certificates?,
            timeout: timeout?,
            refusal_ttl: refusal_ttl?,
            check_dns: raw.check_dns.as_ref().is_none_or(|check| check.value),
            nameservers: nameservers?,
        }))
    }

    /// `acme.directories`: at least one CA, each once, with the per-CA settings in the entries.
    fn acme_directories(
        &mut self,
        raw: &RawAcme,
        list: &List<RawAcmeCa>,
        source: &Path,
    ) -> Option<Vec<AcmeCa>> {
        let misplaced = [
            ("directory", raw.directory.as_ref().map(|t| t.referenced)),
            ("ca_bundle", raw.ca_bundle.as_ref().map(|t| t.referenced)),
            ("profile", raw.profile.as_ref().map(|t| t.referenced)),
            ("eab", raw.eab.as_ref().map(|e| e.key_id.referenced)),
        ];
        let mut fine = true;
        for (key, location) in misplaced {
            if let Some(location) = location {
                self.report(
                    &location,
                    format!("acme.{key}"),
                    format!("with `acme.directories`, give `{key}` in each entry"),
                );
                fine = false;
            }
        }
        if list.value.is_empty() {
            self.report(&list.referenced, "acme.directories", "list at least one CA");
            return None;
        }
        let mut cas: Vec<AcmeCa> = Vec::with_capacity(list.value.len());
        for (index, entry) in list.value.iter().enumerate() {
            let at = format!("acme.directories[{index}]");
            match self.acme_ca(&entry.value, &at, source) {
                Some(ca) if cas.iter().any(|seen| seen.directory == ca.directory) => {
                    self.report(
                        &entry.value.directory.referenced,
                        format!("{at}.directory"),
                        format!("{} is listed twice", ca.directory),
                    );
                    fine = false;
                }
                Some(ca) => cas.push(ca),
                None => fine = false,
            }
        }
        fine.then_some(cas)
    }

    /// One CA: `at` is `acme` (the single-CA form) or `acme.directories[N]`.
    fn acme_ca(&mut self, raw: &RawAcmeCa, at: &str, source: &Path) -> Option<AcmeCa> {
        let directory = self.check(
            &raw.directory.referenced,
            &format!("{at}.directory"),
            directory_url(&raw.directory.value),
        );
        let ca_bundle = raw
            .ca_bundle
            .as_ref()
            .map(|bundle| self.pem_certificates(bundle, &format!("{at}.ca_bundle")));
        let profile = raw
            .profile
            .as_ref()
            .map(|profile| self.non_empty(profile, &format!("{at}.profile")));
        let eab = raw.eab.as_ref().map(|eab| self.eab(eab, at, source));
        Some(AcmeCa {
            directory: directory?,
            ca_bundle: present(ca_bundle)?,
            profile: present(profile)?,
            eab: present(eab)?,
        })
    }

    /// A readable PEM file with at least one certificate (a CA bundle, a certificate chain).
    fn pem_certificates(&mut self, raw: &Text, at: &str) -> Option<PathBuf> {
        let path = self.path(raw, at)?;
        let checked = match fs::read(&path) {
            Err(error) => Err(format!("cannot read {}: {error}", path.display())),
            Ok(pem) => match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
                Err(error) => Err(format!(
                    "{} is not a PEM certificate bundle: {error}",
                    path.display()
                )),
                Ok(certs) if certs.is_empty() => {
                    Err(format!("{} holds no certificate", path.display()))
                }
                Ok(_) => Ok(path),
            },
        };
        self.check(&raw.referenced, at, checked)
    }

    /// `acme.eab`: the key id and the HMAC key, written inline (then the configuration file
    /// must not be readable by other users) or in `hmac_key_file` (which must not be either).
    fn eab(&mut self, raw: &RawEab, parent: &str, source: &Path) -> Option<Eab> {
        let key_id = self.non_empty(&raw.key_id, &format!("{parent}.eab.key_id"));
        let (text, at, location) = match (&raw.hmac_key, &raw.hmac_key_file) {
            (Some(inline), None) => {
                let at = format!("{parent}.eab.hmac_key");
                let private = private_file(source).map_err(|reason| {
                    format!(
                        "the HMAC key is a credential and {reason}; move it to hmac_key_file \
                         or make the configuration file private"
                    )
                });
                self.check(&inline.referenced, &at, private)?;
                (inline.value.clone(), at, inline.referenced)
            }
            (None, Some(file)) => {
                let at = format!("{parent}.eab.hmac_key_file");
                (self.secret_file(file, &at)?, at, file.referenced)
            }
            (Some(_), Some(file)) => {
                self.report(
                    &file.referenced,
                    format!("{parent}.eab.hmac_key_file"),
                    "give the HMAC key once: hmac_key or hmac_key_file, not both",
                );
                return None;
            }
            (None, None) => {
                self.report(
                    &raw.key_id.referenced,
                    format!("{parent}.eab"),
                    "missing key `hmac_key` (or `hmac_key_file`)",
                );
                return None;
            }
        };
        // The key is a credential: the messages never quote it.
        let hmac_key = match EAB_KEY_ENCODING.decode(text.trim()) {
            Ok(key) if !key.is_empty() => Ok(key),
            Ok(_) => Err("the HMAC key is empty".to_string()),
            Err(_) => Err(
                "expected the base64url HMAC key given by the CA (A-Z, a-z, 0-9, - and _)"
                    .to_string(),
            ),
        };
        let hmac_key = self.check(&location, &at, hmac_key);
        Some(Eab {
            key_id: key_id?,
            hmac_key: hmac_key?,
        })
    }

    /// The text of a file holding a credential, which other users must not be able to read.
    fn secret_file(&mut self, raw: &Text, at: &str) -> Option<String> {
        let path = self.path(raw, at)?;
        let checked = private_file(&path).and_then(|()| {
            fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        });
        self.check(&raw.referenced, at, checked)
    }

    fn downstream(&mut self, raw: &RawDownstream) -> Option<Downstream> {
        let handshake_timeout = self.duration(
            &raw.handshake_timeout,
            "downstream.handshake_timeout",
            Zero::Refused,
        );
        let header_timeout = self.duration(
            &raw.header_timeout,
            "downstream.header_timeout",
            Zero::Refused,
        );
        let idle_timeout =
            self.duration(&raw.idle_timeout, "downstream.idle_timeout", Zero::Refused);
        let client_body_timeout = self.duration(
            &raw.client_body_timeout,
            "downstream.client_body_timeout",
            Zero::Refused,
        );
        let send_timeout =
            self.duration(&raw.send_timeout, "downstream.send_timeout", Zero::Refused);
        let max_header_bytes = self.size(
            &raw.max_header_bytes,
            "downstream.max_header_bytes",
            MIN_HEADER_BYTES,
        );
        let max_headers = self.count(&raw.max_headers, "downstream.max_headers");
        let h2_max_streams = self.count(&raw.h2_max_streams, "downstream.h2_max_streams");
        let max_connections = self.count(&raw.max_connections, "downstream.max_connections");
        let max_connections_per_ip = match &raw.max_connections_per_ip {
            Some(cap) => self
                .count(cap, "downstream.max_connections_per_ip")
                .map(Some),
            None => Some(None),
        };
        let cipher_suites = self.cipher_suites(&raw.cipher_suites);
        Some(Downstream {
            handshake_timeout: handshake_timeout?,
            header_timeout: header_timeout?,
            idle_timeout: idle_timeout?,
            client_body_timeout: client_body_timeout?,
            send_timeout: send_timeout?,
            max_header_bytes: max_header_bytes?,
            max_headers: max_headers?,
            h2_max_streams: h2_max_streams?,
            max_connections: max_connections?,
            max_connections_per_ip: max_connections_per_ip?,
            cipher_suites: cipher_suites?,
        })
    }

    /// IANA cipher suite names rustls offers, at least one for TLS 1.3 (a TLS 1.3 client would
    /// find nothing in common otherwise); none given means all of them.
    fn cipher_suites(&mut self, raw: &Option<List<String>>) -> Option<Vec<String>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        let known: Vec<(&str, bool)> = crate::pki::cipher_suite_names().collect();
        let mut all = Some(Vec::new());
        let mut tls13 = false;
        for (index, entry) in list.value.iter().enumerate() {
            let name = entry.value.trim();
            let found = known
                .iter()
                .find(|(known, _)| *known == name)
                .ok_or_else(|| {
                    let names = known.iter().map(|(n, _)| *n);
                    let hint = closest(name, names.clone())
                        .map(|g| format!("; did you mean `{g}`?"))
                        .unwrap_or_default();
                    let names: Vec<&str> = names.collect();
                    format!("`{name}` is not one of {}{hint}", names.join(", "))
                });
            let at = format!("downstream.cipher_suites[{index}]");
            match self.check(&entry.referenced, &at, found) {
                Some((name, is_tls13)) => {
                    tls13 |= *is_tls13;
                    all.iter_mut().for_each(|a| a.push((*name).to_owned()));
                }
                None => all = None,
            }
        }
        if all.is_some() && !tls13 {
            self.report(
                &list.referenced,
                "downstream.cipher_suites",
                "name at least one TLS 1.3 suite (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384 or TLS_CHACHA20_POLY1305_SHA256)",
            );
            return None;
        }
        all
    }

    fn upstream(&mut self, raw: &RawUpstream) -> Option<UpstreamDefaults> {
        let connect_timeout = self.duration(
            &raw.connect_timeout,
            "upstream.connect_timeout",
            Zero::Refused,
        );
        let response_header_timeout = self.duration(
            &raw.response_header_timeout,
            "upstream.response_header_timeout",
            Zero::Refused,
        );
        let pool_idle_timeout = self.duration(
            &raw.pool_idle_timeout,
            "upstream.pool_idle_timeout",
            Zero::Allowed,
        );
        let pool_max_idle = self.count(&raw.pool_max_idle, "upstream.pool_max_idle");
        let resolve_every =
            self.duration(&raw.resolve_every, "upstream.resolve_every", Zero::Refused);
        let nameservers = self.nameservers(&raw.nameservers, "upstream.nameservers");
        Some(UpstreamDefaults {
            connect_timeout: connect_timeout?,
            response_header_timeout: response_header_timeout?,
            pool_idle_timeout: pool_idle_timeout?,
            pool_max_idle: pool_max_idle?,
            resolve_every: resolve_every?,
            nameservers: nameservers?,
        })
    }

    fn socket_addr(&mut self, raw: &Text, at: &str) -> Option<SocketAddr> {
        let parsed = raw.value.parse().map_err(|_| {
            format!(
                "`{}` is not an IP address and port such as [::]:443 or 127.0.0.1:9180",
                raw.value
            )
        });
        self.check(&raw.referenced, at, parsed)
    }

    /// A file or directory path, resolved against the configuration file's directory.
    fn path(&mut self, raw: &Text, at: &str) -> Option<PathBuf> {
        if raw.value.is_empty() {
            self.report(
                &raw.referenced,
                at,
                "expected a path, found an empty string",
            );
            return None;
        }
        // `join` keeps an absolute path as it is.
        Some(self.base.join(&raw.value))
    }

    fn duration(&mut self, raw: &Text, at: &str, zero: Zero) -> Option<Duration> {
        let parsed = humane::parse_duration(&raw.value).and_then(|duration| {
            if duration.is_zero() && zero == Zero::Refused {
                Err("must be longer than 0: a zero timeout fails every connection".to_string())
            } else {
                Ok(duration)
            }
        });
        self.check(&raw.referenced, at, parsed)
    }

    /// A size of at least `min` bytes.
    fn size(&mut self, raw: &Text, at: &str, min: u64) -> Option<usize> {
        let parsed = humane::parse_size(&raw.value).and_then(|bytes| {
            if bytes < min {
                return Err(format!("must be at least {} KiB", min / 1024));
            }
            usize::try_from(bytes)
                .map_err(|_| format!("`{}` is too large for this machine", raw.value))
        });
        self.check(&raw.referenced, at, parsed)
    }

    /// A count of at least one that fits `T`.
    fn count<T: TryFrom<i64>>(&mut self, raw: &Spanned<i64>, at: &str) -> Option<T> {
        let checked = match raw.value {
            ..=0 => Err(format!("must be at least 1, not {}", raw.value)),
            value => T::try_from(value).map_err(|_| format!("{value} is too large")),
        };
        self.check(&raw.referenced, at, checked)
    }

    /// One of the words in `choices`.
    fn choice<T: Copy>(&mut self, raw: &Text, at: &str, choices: &[(&str, T)]) -> Option<T> {
        let found = choices
            .iter()
            .find(|(word, _)| *word == raw.value)
            .map(|(_, value)| *value);
        if found.is_none() {
            let words: Vec<_> = choices.iter().map(|(word, _)| *word).collect();
            let hint = closest(&raw.value, words.iter().copied())
                .map(|g| format!("; did you mean `{g}`?"));
            let reason = format!(
                "`{}` is not one of {}{}",
                raw.value,
                words.join(", "),
                hint.unwrap_or_default()
            );
            self.report(&raw.referenced, at, reason);
        }
        found
    }

    fn non_empty(&mut self, raw: &Text, at: &str) -> Option<String> {
        if raw.value.trim().is_empty() {
            self.report(&raw.referenced, at, "must not be empty");
            return None;
        }
        Some(raw.value.clone())
    }

    /// Records the reason of a failed check; passes the value of a successful one on.
    fn check<T>(&mut self, location: &Location, at: &str, result: Result<T, String>) -> Option<T> {
        result
            .map_err(|reason| self.report(location, at, reason))
            .ok()
    }

    fn report(&mut self, location: &Location, at: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem::at(location, at, reason));
    }
}

/// Shortest admin token accepted: guessing one must be hopeless.
const MIN_TOKEN_LEN: usize = 16;

/// `Ok` when other users (neither owner nor group) have no access to `path`; a file that
/// cannot be looked at is not judged here (it was just read, or reading it reports why).
fn private_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(metadata) = fs::metadata(path) else {
        return Ok(());
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o007 == 0 {
        return Ok(());
    }
    Err(format!(
        "{} is open to other users (mode {mode:o}): chmod o-rwx {0}",
        path.display()
    ))
}

/// Turns "absent" into a valid `None` and "present but invalid" into a failure.
fn present<T>(checked: Option<Option<T>>) -> Option<Option<T>> {
    checked.map_or(Some(None), |value| value.map(Some))
}

/// A `tracing_subscriber::EnvFilter`-style directive list: `info`, or `rampart=debug,warn`.
fn check_log_level(text: &str) -> Result<(), String> {
    const HINT: &str = "expected a level (trace, debug, info, warn, error, off) or a list such as rampart=debug,info";
    if text.trim().is_empty() {
        return Err(HINT.to_string());
    }
    for directive in text.split(',').map(str::trim) {
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (Some(target), level),
            None => (None, directive),
        };
        if let Some(target) = target {
            let is_module_path = !target.is_empty()
                && target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
            if !is_module_path {
                return Err(format!(
                    "`{target}` is not a target such as rampart::proxy; {HINT}"
                ));
            }
        }
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            let hint = closest(level, LOG_LEVELS).map(|g| format!(" (did you mean `{g}`?)"));
            return Err(format!(
                "`{level}` is not a level{}; {HINT}",
                hint.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// A plausible email address, as ACME sends it in a `mailto:` contact URL.
fn check_email(text: &str) -> Result<(), String> {
    if text.starts_with("mailto:") {
        return Err("write the address alone, without `mailto:`".to_string());
    }
    let bad = || {
        Err(format!(
            "`{text}` does not look like an email address such as ops@example.com"
        ))
    };
    // Whitespace, commas and controls would break the contact URL or split it in two.
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return bad();
    }
    match text.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.') =>
        {
            Ok(())
        }
        _ => bad(),
    }
}

/// The ACME directory URL, expanding the Let's Encrypt shorthands; only https:// is accepted.
fn directory_url(text: &str) -> Result<Uri, String> {
    const HINT: &str =
        "expected letsencrypt, letsencrypt-staging or the https:// URL of an ACME directory";
    let url = match text {
        "letsencrypt" => LETSENCRYPT,
        "letsencrypt-staging" => LETSENCRYPT_STAGING,
        other => other,
    };
    let uri: Uri = url.parse().map_err(|_| HINT.to_string())?;
    match uri.scheme_str() {
        Some("https") if uri.host().is_some_and(|host| !host.is_empty()) => Ok(uri),
        Some("https") => Err(format!("the URL has no host; {HINT}")),
        // RFC 8555 §6.1: ACME runs over HTTPS only; the account key and orders must not travel in clear.
        Some(scheme) => Err(format!(
            "the ACME directory must be an https:// URL, not {scheme}://"
        )),
        None => match closest(text, ["letsencrypt", "letsencrypt-staging"]) {
            Some(guess) => Err(format!("`{text}` is not known; did you mean `{guess}`?")),
            None => Err(HINT.to_string()),
        },
    }
}

/// `localhost` or a loopback address, bracketed or not.
fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
