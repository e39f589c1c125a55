//! Validation of how ACME sites prove their names: `acme.challenges`, the top-level `dns:`
//! providers, and each site's `challenges:` and `dns:`.
//!
//! Part of `config::validate`. A site's list is settled here, with what this node cannot answer
//! left out (`http-01` when `listen.http` is off), so the ACME layer only picks among the types
//! the CA offers.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_saphyr::{Location, Spanned};

use super::{Checker, Zero};
use crate::config::error::closest;
use crate::config::raw::{List, RawDns, RawSite, Text};
use crate::config::{Challenge, DnsKind, DnsProvider, Tsig, TsigAlgorithm, defaults};
use crate::pki::HostName;

/// What every site's challenge list is checked against.
pub(super) struct Answerable<'a> {
    /// `acme.challenges` (its default when that was invalid: reported already).
    pub(super) global: Vec<Challenge>,
    /// `dns:` by name (those that were valid).
    pub(super) providers: &'a BTreeMap<String, DnsProvider>,
    /// Whether the `:80` listener is on (`listen.http` is not `off`).
    pub(super) http: bool,
}

/// Names no secret: a wrong file must not have its content quoted into a log.
const NOT_BASE64: &str =
    "expected the TSIG secret in base64, as `tsig-keygen` or `keymgr -t` print it";

const CHALLENGES: [(&str, Challenge); 3] = [
    ("http-01", Challenge::Http01),
    ("tls-alpn-01", Challenge::TlsAlpn01),
    ("dns-01", Challenge::Dns01),
];

impl Checker {
    /// A list of challenge types, each once.
    pub(super) fn challenge_list(
        &mut self,
        raw: &List<String>,
        at: &str,
    ) -> Option<Vec<Challenge>> {
        if raw.value.is_empty() {
            self.report(&raw.referenced, at, "name at least one challenge type");
            return None;
        }
        let mut all = Some(Vec::new());
        for (index, entry) in raw.value.iter().enumerate() {
            let item = format!("{at}[{index}]");
            let text = Spanned::new(entry.value.clone(), entry.referenced, entry.defined);
            let Some(challenge) = self.choice(&text, &item, &CHALLENGES) else {
                all = None;
                continue;
            };
            if let Some(list) = &mut all {
                if list.contains(&challenge) {
                    self.report(
                        &entry.referenced,
                        &item,
                        format!("{} is listed twice", challenge.name()),
                    );
                } else {
                    list.push(challenge);
                }
            }
        }
        all
    }

    /// `acme.challenges`, or its default.
    pub(super) fn acme_challenges(&mut self, raw: &Option<List<String>>) -> Option<Vec<Challenge>> {
        match raw {
            Some(list) => self.challenge_list(list, "acme.challenges"),
            None => Some(defaults::ACME_CHALLENGES.to_vec()),
        }
    }

    /// The top-level `dns:` providers by name.
    pub(super) fn dns_providers(
        &mut self,
        raw: &Option<Spanned<BTreeMap<String, Spanned<RawDns>>>>,
    ) -> Option<BTreeMap<String, DnsProvider>> {
        let Some(map) = raw else {
            return Some(BTreeMap::new());
        };
        let mut all = Some(BTreeMap::new());
        for (name, entry) in &map.value {
            let provider = self.dns_provider(name, &entry.value, &entry.referenced);
            match (provider, &mut all) {
                (Some(provider), Some(all)) => {
                    all.insert(name.clone(), provider);
                }
                _ => all = None,
            }
        }
        all
    }

    fn dns_provider(
        &mut self,
        name: &str,
        raw: &RawDns,
        at_entry: &Location,
    ) -> Option<DnsProvider> {
        let at = format!("dns.{name}");
        let kind = match raw.provider.value.as_str() {
            "rfc2136" => self.rfc2136(raw, &at, at_entry),
            "exec" => self.exec(raw, &at, at_entry),
            other => {
                let hint =
                    closest(other, ["rfc2136", "exec"]).map(|g| format!("; did you mean `{g}`?"));
                self.report(
                    &raw.provider.referenced,
                    format!("{at}.provider"),
                    format!(
                        "`{other}` is not a DNS provider: expected rfc2136 or exec{}",
                        hint.unwrap_or_default()
                    ),
                );
                None
            }
        };
        let propagation_timeout = self.duration(
            &raw.propagation_timeout,
            &format!("{at}.propagation_timeout"),
            Zero::Refused,
        );
        let nameservers = self.nameservers(&raw.nameservers, &format!("{at}.nameservers"));
        Some(DnsProvider {
            name: name.to_owned(),
            kind: kind?,
            propagation_timeout: propagation_timeout?,
            nameservers: nameservers?,
        })
    }

    /// `provider: rfc2136`: server, TSIG key, optional zone.
    fn rfc2136(&mut self, raw: &RawDns, at: &str, at_entry: &Location) -> Option<DnsKind> {
        self.not_for(raw.command.as_ref(), at, "command", "rfc2136");
        let server = self
            .required(raw.server.as_ref(), at, "server", at_entry)
            .and_then(|server| {
                let text = server.value.as_str();
                let parsed = text
                    .parse()
                    .or_else(|_| text.parse().map(|ip| std::net::SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        format!("`{text}` is not an IP address or IP:PORT of the primary server")
                    });
                self.check(&server.referenced, &format!("{at}.server"), parsed)
            });
        let zone = match &raw.zone {
            None => Some(None),
            Some(zone) => {
                let text = zone.value.trim_end_matches('.');
                let parsed = HostName::parse(text)
                    .ok()
                    .filter(|name| !name.is_wildcard())
                    .map(|name| Some(name.as_str().to_owned()))
                    .ok_or_else(|| {
                        format!("`{}` is not a zone name such as example.com", zone.value)
                    });
                self.check(&zone.referenced, &format!("{at}.zone"), parsed)
            }
        };
        let key_name = self
            .required(raw.key_name.as_ref(), at, "key_name", at_entry)
            .and_then(|name| self.non_empty(name, &format!("{at}.key_name")));
        let algorithm = match &raw.key_algorithm {
            None => Some(TsigAlgorithm::HmacSha256),
            Some(word) => self.choice(
                word,
                &format!("{at}.key_algorithm"),
                &[
                    ("hmac-sha256", TsigAlgorithm::HmacSha256),
                    ("hmac-sha384", TsigAlgorithm::HmacSha384),
                    ("hmac-sha512", TsigAlgorithm::HmacSha512),
                ],
            ),
        };
        let secret = self
            .required(
                raw.key_secret_file.as_ref(),
                at,
                "key_secret_file",
                at_entry,
            )
            .and_then(|file| {
                let path = format!("{at}.key_secret_file");
                let text = self.secret_file(file, &path)?;
                // The secret is a credential: the messages never quote it.
                let decoded = match STANDARD.decode(text.trim()) {
                    Ok(secret) if !secret.is_empty() => Ok(secret),
                    Ok(_) => Err("the file holds an empty secret".to_string()),
                    Err(_) => Err(NOT_BASE64.to_string()),
                };
                self.check(&file.referenced, &path, decoded)
            });
        Some(DnsKind::Rfc2136 {
            server: server?,
            zone: zone?,
            key: Tsig {
                name: key_name?,
                algorithm: algorithm?,
                secret: secret?,
            },
        })
    }

    /// `provider: exec`: an executable program.
    fn exec(&mut self, raw: &RawDns, at: &str, at_entry: &Location) -> Option<DnsKind> {
        for (value, key) in [
            (&raw.server, "server"),
            (&raw.zone, "zone"),
            (&raw.key_name, "key_name"),
            (&raw.key_algorithm, "key_algorithm"),
            (&raw.key_secret_file, "key_secret_file"),
        ] {
            self.not_for(value.as_ref(), at, key, "exec");
        }
        let command = self.required(raw.command.as_ref(), at, "command", at_entry)?;
        let at = format!("{at}.command");
        let path = self.path(command, &at)?;
        let checked = match std::fs::metadata(&path) {
            Err(error) => Err(format!("cannot use {}: {error}", path.display())),
            Ok(meta) if !meta.is_file() => Err(format!("{} is not a file", path.display())),
            Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
                Err(format!("{} is not executable (chmod +x)", path.display()))
            }
            Ok(_) => Ok(DnsKind::Exec { command: path }),
        };
        self.check(&command.referenced, &at, checked)
    }

    fn required<'r>(
        &mut self,
        value: Option<&'r Text>,
        at: &str,
        key: &str,
        entry: &Location,
    ) -> Option<&'r Text> {
        if value.is_none() {
            self.report(entry, at, format!("missing key `{key}`"));
        }
        value
    }

    fn not_for(&mut self, value: Option<&Text>, at: &str, key: &str, provider: &str) {
        if let Some(value) = value {
            self.report(
                &value.referenced,
                format!("{at}.{key}"),
                format!("`{key}` is not a setting of the {provider} provider"),
            );
        }
    }

    /// A site's challenge types in order and its DNS provider, with what this node cannot
    /// answer left out; `wildcard` is the index and place of a `*.parent` host, if any.
    pub(super) fn site_challenges(
        &mut self,
        site: &RawSite,
        at: &str,
        is_acme: bool,
        site_at: &Location,
        wildcard: Option<(usize, &Location)>,
        answerable: &Answerable<'_>,
    ) -> Option<(Vec<Challenge>, Option<DnsProvider>)> {
        if !is_acme {
            for (location, key) in [
                (
                    site.challenges.as_ref().map(|c| &c.referenced),
                    "challenges",
                ),
                (site.dns.as_ref().map(|d| &d.referenced), "dns"),
            ] {
                if let Some(location) = location {
                    self.report(
                        location,
                        format!("{at}.{key}"),
                        "only `tls: acme` sites prove their names to a CA",
                    );
                }
            }
            return Some((Vec::new(), None));
        }
        let dns = match &site.dns {
            None => Some(None),
            Some(name) => {
                let found = answerable
                    .providers
                    .get(&name.value)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| {
                        let hint =
                            closest(&name.value, answerable.providers.keys().map(String::as_str))
                                .map(|g| format!("; did you mean `{g}`?"))
                                .unwrap_or_default();
                        format!(
                            "no DNS provider `{}` in the top-level `dns:` section{hint}",
                            name.value
                        )
                    });
                self.check(&name.referenced, &format!("{at}.dns"), found)
            }
        };
        let challenges = match &site.challenges {
            Some(list) => {
                let listed = self.challenge_list(list, &format!("{at}.challenges"));
                if let Some(listed) = &listed
                    && listed.contains(&Challenge::Dns01)
                    && site.dns.is_none()
                {
                    self.report(
                        &list.referenced,
                        format!("{at}.challenges"),
                        "dns-01 needs `dns:`, the name of a provider of the top-level `dns:` \
                         section",
                    );
                }
                listed
            }
            // A site that names a provider uses it first; the global list (whose dns-01, if any,
            // applies only to sites with a provider) follows.
            None => {
                let mut list = Vec::new();
                if site.dns.is_some() {
                    list.push(Challenge::Dns01);
                }
                for challenge in &answerable.global {
                    if !list.contains(challenge)
                        && (*challenge != Challenge::Dns01 || site.dns.is_some())
                    {
                        list.push(*challenge);
                    }
                }
                Some(list)
            }
        };
        let mut challenges = challenges?;
        if !answerable.http {
            challenges.retain(|c| *c != Challenge::Http01);
        }
        let location = site.challenges.as_ref().map_or(site_at, |c| &c.referenced);
        if challenges.is_empty() {
            self.report(
                location,
                format!("{at}.challenges"),
                "listen.http is off, so http-01 cannot be answered and no other challenge type \
                 is left; add tls-alpn-01 or dns-01",
            );
            return None;
        }
        if let Some((index, host)) = wildcard
            && !challenges.contains(&Challenge::Dns01)
        {
            self.report(
                host,
                format!("{at}.hosts[{index}]"),
                "a CA validates wildcard names only through DNS-01: give this site `dns:`, a \
                 provider of the top-level `dns:` section",
            );
            return None;
        }
        Some((challenges, dns?))
    }
}
