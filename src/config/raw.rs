//! The shape of the configuration file, as serde reads it. Nothing outside `config/` sees these types.
//!
//! Read by `config::load` from YAML and turned into the typed [`Config`](super::Config) by
//! `config::validate`. Every struct denies unknown keys, and each default is written here once,
//! in an `impl Default`. Values that validation may have to point at are [`Spanned`], so a
//! problem can name its line and column; everything is a string or plain integer here so that
//! validation, not serde, reports bad values, all at once.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::defaults;

mod gateway;

pub(super) use gateway::*;

/// A string value with its position in the file.
pub(super) type Text = Spanned<String>;

/// A list with its position, of elements with theirs.
pub(super) type List<T> = Spanned<Vec<Spanned<T>>>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) listen: RawListen,
    pub(super) storage: Text,
    pub(super) log: RawLog,
    pub(super) acme: RawAcme,
    pub(super) downstream: RawDownstream,
    pub(super) upstream: RawUpstream,
    pub(super) shutdown_grace: Text,
    pub(super) trusted_proxies: Option<List<String>>,
    pub(super) headers_with_underscores: Text,
    pub(super) cluster: Option<Spanned<RawCluster>>,
    pub(super) dns: Option<Spanned<BTreeMap<String, Spanned<RawDns>>>>,
    pub(super) on_demand: Option<Spanned<RawOnDemand>>,
    pub(super) sites: List<RawSite>,
}

/// One entry of `dns:`, a DNS provider for the DNS-01 challenge; which keys apply depends on
/// `provider` (validation says which are missing or out of place).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    pub(super) provider: Text,
    #[serde(default)]
    pub(super) server: Option<Text>,
    #[serde(default)]
    pub(super) zone: Option<Text>,
    #[serde(default)]
    pub(super) key_name: Option<Text>,
    #[serde(default)]
    pub(super) key_algorithm: Option<Text>,
    #[serde(default)]
    pub(super) key_secret_file: Option<Text>,
    #[serde(default)]
    pub(super) command: Option<Text>,
    #[serde(default = "dns_propagation_timeout")]
    pub(super) propagation_timeout: Text,
    #[serde(default)]
    pub(super) nameservers: Option<List<String>>,
}

fn dns_propagation_timeout() -> Text {
    text(defaults::DNS_PROPAGATION_TIMEOUT)
}

/// `cluster:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) etcd: Spanned<RawEtcd>,
    #[serde(default)]
    pub(super) node: Option<Text>,
    #[serde(default = "cluster_lock_ttl")]
    pub(super) lock_ttl: Text,
    pub(super) encryption_key_file: Text,
}

/// `cluster.etcd:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    pub(super) endpoints: List<String>,
    #[serde(default = "cluster_prefix")]
    pub(super) prefix: Text,
    #[serde(default)]
    pub(super) tls: Option<Spanned<RawEtcdTls>>,
    #[serde(default)]
    pub(super) username: Option<Text>,
    #[serde(default)]
    pub(super) password_file: Option<Text>,
}

/// `cluster.etcd.tls:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcdTls {
    pub(super) ca: Text,
    #[serde(default)]
    pub(super) cert: Option<Text>,
    #[serde(default)]
    pub(super) key: Option<Text>,
}

fn cluster_lock_ttl() -> Text {
    text(defaults::CLUSTER_LOCK_TTL)
}

fn cluster_prefix() -> Text {
    text(defaults::CLUSTER_PREFIX)
}

/// `listen:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawListen {
    pub(super) https: Text,
    pub(super) http: Text,
    pub(super) admin: Option<Text>,
    pub(super) admin_token_file: Option<Text>,
    pub(super) proxy_protocol: Option<Spanned<RawProxyProtocol>>,
}

/// `log:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) format: Text,
    pub(super) level: Text,
}

/// `acme:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAcme {
    pub(super) email: Option<Text>,
    /// `letsencrypt` when neither this nor `directories` is given.
    pub(super) directory: Option<Text>,
    pub(super) ca_bundle: Option<Text>,
    pub(super) key_type: Text,
    pub(super) profile: Option<Text>,
    pub(super) eab: Option<RawEab>,
    pub(super) challenges: Option<List<String>>,
    /// Several CAs, tried in order; instead of `directory` and its settings.
    pub(super) directories: Option<List<RawAcmeCa>>,
    pub(super) fallback_after: Option<Spanned<i64>>,
}

/// One entry of `acme.directories:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcmeCa {
    pub(super) directory: Text,
    #[serde(default)]
    pub(super) ca_bundle: Option<Text>,
    #[serde(default)]
    pub(super) profile: Option<Text>,
    #[serde(default)]
    pub(super) eab: Option<RawEab>,
}

/// A default value given as text, for validation to parse like the file's own.
pub(super) fn default_text(value: &str) -> Text {
    text(value)
}

/// The directory used when none is configured.
pub(super) fn default_directory() -> Text {
    text(defaults::ACME_DIRECTORY)
}

/// `acme.eab:` `key_id` and one of `hmac_key`, `hmac_key_file` are required when the section is
/// present.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEab {
    pub(super) key_id: Text,
    #[serde(default)]
    pub(super) hmac_key: Option<Text>,
    #[serde(default)]
    pub(super) hmac_key_file: Option<Text>,
}

/// `downstream:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDownstream {
    pub(super) handshake_timeout: Text,
    pub(super) header_timeout: Text,
    pub(super) idle_timeout: Text,
    pub(super) client_body_timeout: Text,
    pub(super) send_timeout: Text,
    pub(super) max_header_bytes: Text,
    pub(super) max_headers: Spanned<i64>,
    pub(super) h2_max_streams: Spanned<i64>,
    pub(super) max_connections: Spanned<i64>,
    pub(super) max_connections_per_ip: Option<Spanned<i64>>,
    pub(super) cipher_suites: Option<List<String>>,
}

/// `upstream:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    pub(super) connect_timeout: Text,
    pub(super) response_header_timeout: Text,
    pub(super) pool_idle_timeout: Text,
    pub(super) pool_max_idle: Spanned<i64>,
    pub(super) resolve_every: Text,
    pub(super) nameservers: Option<List<String>>,
}

/// Declares `RawSite` and `RawRoute` with the keys a route inherits from its site written
/// once, and [`Keys`], the view through which validation checks them on either. serde's
/// `flatten` would share the keys without a macro, but it loses `deny_unknown_fields` and
/// every position inside.
macro_rules! site_and_route {
    (
        $(#[$site_meta:meta])* struct RawSite { $($site_own:tt)* }
        $(#[$route_meta:meta])* struct RawRoute { $($route_own:tt)* }
        inherited { $($key:ident: $ty:ty,)* }
    ) => {
        $(#[$site_meta])*
        pub(super) struct RawSite {
            $($site_own)*
            $(pub(super) $key: Option<$ty>,)*
        }

        $(#[$route_meta])*
        pub(super) struct RawRoute {
            $($route_own)*
            $(pub(super) $key: Option<$ty>,)*
        }

        /// The inheritable keys as written on a site or a route.
        pub(super) struct Keys<'a> {
            $(pub(super) $key: &'a Option<$ty>,)*
        }

        impl RawSite {
            pub(super) fn keys(&self) -> Keys<'_> {
                Keys { $($key: &self.$key,)* }
            }
        }

        impl RawRoute {
            pub(super) fn keys(&self) -> Keys<'_> {
                Keys { $($key: &self.$key,)* }
            }
        }
    };
}

site_and_route! {
    /// One entry of `sites:`. `hosts` is optional here so that a missing list is reported with
    /// the other problems instead of stopping the parse.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawSite {
        pub(super) hosts: Option<List<String>>,
        #[serde(default = "site_tls")]
        pub(super) tls: Spanned<RawTls>,
        #[serde(default = "not_default")]
        pub(super) default: Spanned<bool>,
        pub(super) upstreams: Option<List<RawUpstreamEntry>>,
        pub(super) routes: Option<List<RawRoute>>,
        pub(super) hsts: Option<Spanned<Box<RawHsts>>>,
        pub(super) headers: Option<Spanned<Box<RawHeaderRules>>>,
        pub(super) rate_limit: Option<Spanned<Box<RawRateLimit>>>,
        pub(super) challenges: Option<List<String>>,
        pub(super) dns: Option<Text>,
    }

    /// One entry of `routes:`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct RawRoute {
        pub(super) path: Option<Text>,
        pub(super) path_exact: Option<Text>,
        pub(super) path_regex: Option<Text>,
        pub(super) methods: Option<List<String>>,
        pub(super) strip_prefix: Option<Spanned<bool>>,
        pub(super) replace_prefix: Option<Spanned<Box<RawReplacePrefix>>>,
        pub(super) upstreams: Option<List<RawUpstreamEntry>>,
        pub(super) respond: Option<Spanned<Box<RawRespond>>>,
        pub(super) headers: Option<Spanned<Box<RawHeaderRules>>>,
        pub(super) rate_limit: Option<Spanned<Box<RawRateLimit>>>,
    }

    inherited {
        max_body: Text,
        auth: Spanned<Box<RawAuth>>,
        balance: Spanned<RawBalance>,
        ca: Text,
        health: Spanned<Box<RawHealth>>,
        passive: Spanned<Box<RawPassive>>,
        retries: Spanned<i64>,
        timeouts: Spanned<Box<RawTimeouts>>,
        max_in_flight: Spanned<i64>,
        queue: Spanned<Box<RawQueue>>,
        escaped_slashes: Text,
        buffer_request_body: Text,
        buffer_response: Text,
    }
}

/// `tls:` either a word (`acme`, `internal`) or `{cert: FILE, key: FILE}`.
#[derive(Debug)]
pub(super) enum RawTls {
    /// A word, checked by validation.
    Mode(String),
    /// Operator-supplied PEM files.
    Files(Box<RawTlsFiles>),
}

/// `tls: {cert: FILE, key: FILE}`, or `tls: {acme: on_demand}`; validation says which key is
/// missing or out of place.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsFiles {
    #[serde(default)]
    pub(super) cert: Option<Text>,
    #[serde(default)]
    pub(super) key: Option<Text>,
    #[serde(default)]
    pub(super) acme: Option<Text>,
}

/// `on_demand:` certificates obtained at the first handshake for a name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOnDemand {
    pub(super) ask: Text,
    #[serde(default)]
    pub(super) rate: Option<Text>,
    #[serde(default)]
    pub(super) burst: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) max_certificates: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) timeout: Option<Text>,
    #[serde(default)]
    pub(super) refusal_ttl: Option<Text>,
    #[serde(default)]
    pub(super) check_dns: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) nameservers: Option<List<String>>,
}

/// `respond: {status, body}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRespond {
    pub(super) status: Spanned<i64>,
    pub(super) body: String,
}

/// A default value: it has no position in the file.
fn unplaced<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

/// A default string value.
fn text(value: &str) -> Text {
    unplaced(value.to_string())
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: RawListen::default(),
            storage: text(defaults::STORAGE),
            log: RawLog::default(),
            acme: RawAcme::default(),
            downstream: RawDownstream::default(),
            upstream: RawUpstream::default(),
            shutdown_grace: text(defaults::SHUTDOWN_GRACE),
            trusted_proxies: None,
            headers_with_underscores: text(defaults::HEADERS_WITH_UNDERSCORES),
            cluster: None,
            dns: None,
            on_demand: None,
            // Validation insists on at least one site.
            sites: unplaced(Vec::new()),
        }
    }
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            https: text(defaults::HTTPS),
            http: text(defaults::HTTP),
            admin: None,
            admin_token_file: None,
            proxy_protocol: None,
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: text(defaults::LOG_FORMAT),
            level: text(defaults::LOG_LEVEL),
        }
    }
}

impl Default for RawAcme {
    fn default() -> Self {
        Self {
            email: None,
            directory: None,
            ca_bundle: None,
            key_type: text(defaults::ACME_KEY_TYPE),
            profile: None,
            eab: None,
            challenges: None,
            directories: None,
            fallback_after: None,
        }
    }
}

impl Default for RawDownstream {
    fn default() -> Self {
        Self {
            handshake_timeout: text(defaults::HANDSHAKE_TIMEOUT),
            header_timeout: text(defaults::HEADER_TIMEOUT),
            idle_timeout: text(defaults::IDLE_TIMEOUT),
            client_body_timeout: text(defaults::CLIENT_BODY_TIMEOUT),
            send_timeout: text(defaults::SEND_TIMEOUT),
            max_header_bytes: text(defaults::MAX_HEADER_BYTES),
            max_headers: unplaced(defaults::MAX_HEADERS),
            h2_max_streams: unplaced(defaults::H2_MAX_STREAMS),
            max_connections: unplaced(defaults::MAX_CONNECTIONS),
            max_connections_per_ip: None,
            cipher_suites: None,
        }
    }
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            connect_timeout: text(defaults::CONNECT_TIMEOUT),
            response_header_timeout: text(defaults::RESPONSE_HEADER_TIMEOUT),
            pool_idle_timeout: text(defaults::POOL_IDLE_TIMEOUT),
            pool_max_idle: unplaced(defaults::POOL_MAX_IDLE),
            resolve_every: text(defaults::RESOLVE_EVERY),
            nameservers: None,
        }
    }
}

/// A site's `tls:` when it has none.
fn site_tls() -> Spanned<RawTls> {
    unplaced(RawTls::Mode(defaults::SITE_TLS.to_string()))
}

/// A site's `default:` when it has none.
fn not_default() -> Spanned<bool> {
    unplaced(false)
}

impl Default for RawRespond {
    fn default() -> Self {
        Self {
            status: unplaced(defaults::RESPOND_STATUS),
            body: String::new(),
        }
    }
}

impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Hand-written rather than `#[serde(untagged)]`: untagged enums buffer their input,
        // which loses both the positions inside `{cert, key}` and the unknown-key error.
        struct TlsVisitor;

        impl<'de> Visitor<'de> for TlsVisitor {
            type Value = RawTls;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("acme, internal or {cert: FILE, key: FILE}")
            }

            fn visit_str<E: de::Error>(self, word: &str) -> Result<RawTls, E> {
                Ok(RawTls::Mode(word.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTls, A::Error> {
                RawTlsFiles::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|files| RawTls::Files(Box::new(files)))
            }
        }

        deserializer.deserialize_any(TlsVisitor)
    }
}
