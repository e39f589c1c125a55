//! The validated configuration: what the rest of Rampart sees.
//!
//! Built only by `config::validate` from the raw YAML shape. Invalid values cannot be represented:
//! hosts are [`HostName`], addresses are [`SocketAddr`], paths are absolute [`PathBuf`]s resolved
//! against the config file's directory, durations are [`Duration`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};

pub use super::gateway::*;
use crate::pki::HostName;
pub use crate::request::Underscores;

/// A whole, valid configuration snapshot.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this snapshot was loaded from (absolute).
    pub source: PathBuf,
    /// Listener addresses; a change needs a restart.
    pub listen: Listen,
    /// Directory for certificates, keys, the ACME account and the internal CA.
    pub storage: PathBuf,
    /// Log output.
    pub log: Log,
    /// ACME settings (used by `tls: acme` sites).
    pub acme: Acme,
    /// Client-side connection limits and timeouts.
    pub downstream: Downstream,
    /// Origin-side connection pool and timeouts.
    pub upstream: UpstreamDefaults,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// `trusted_proxies:` peers whose X-Forwarded-For is believed (right to left past them).
    pub trusted_proxies: Vec<IpNet>,
    /// `headers_with_underscores:` what happens to request fields named with `_`.
    pub headers_with_underscores: Underscores,
    /// Sites in file order; host names are unique across them, at most one is `default`.
    pub sites: Vec<Site>,
    /// `cluster:` shared certificates, locks and challenge answers; `None`: this node alone.
    pub cluster: Option<Cluster>,
    /// `on_demand:` the limits of `tls: {acme: on_demand}` sites; set when one exists.
    pub on_demand: Option<OnDemand>,
}

/// `on_demand:` certificates ordered at the first handshake for a name no site lists, when
/// the operator's `ask` endpoint allows it, within global limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnDemand {
    /// Asked `GET ask?domain=NAME` before any order; only a 200 allows it.
    pub ask: http::Uri,
    /// Orders allowed per `per`, all names together.
    pub rate: u32,
    /// The period of `rate`.
    pub per: Duration,
    /// Orders allowed at once above the rate.
    pub burst: u32,
    /// Most on-demand certificates held.
    pub max_certificates: usize,
    /// How long a handshake waits for its certificate.
    pub timeout: Duration,
    /// How long a refused name is refused again without asking.
    pub refusal_ttl: Duration,
    /// Refuse names that do not resolve to an address of this host.
    pub check_dns: bool,
    /// The servers asked for that check; the system resolver when empty.
    pub nameservers: Vec<SocketAddr>,
}

/// `cluster:` nodes sharing certificates, ACME locks and challenge answers through etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The etcd cluster.
    pub etcd: Etcd,
    /// This node's name in locks, logs and `rampart certs` (default: the host name).
    pub node: String,
    /// Lease of an issuance lock: a holder that stops renewing it loses it after this.
    pub lock_ttl: Duration,
    /// Seals private keys before they are written to etcd.
    pub encryption_key: SealKey,
}

/// `cluster.etcd:`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Etcd {
    /// `http://host:port` or `https://host:port`, all of one scheme.
    pub endpoints: Vec<String>,
    /// Every key Rampart writes starts with it; starts and ends with `/`.
    pub prefix: String,
    /// For `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// etcd's own authentication: user name and password.
    pub user: Option<(String, Secret)>,
}

/// `cluster.etcd.tls:` the CA that signed etcd's certificate, and a client certificate if etcd
/// asks for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM bundle.
    pub ca: PathBuf,
    /// Client certificate chain and key (PEM).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// `cluster.encryption_key_file`: 32 random bytes, the same on every node. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; 32]);

impl SealKey {
    /// Wraps the key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key, for the cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Listener addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// TLS listener.
    pub https: SocketAddr,
    /// ACME HTTP-01 answers and redirects to https; `None` (`http: off`): no such listener,
    /// and sites use the other challenges.
    pub http: Option<SocketAddr>,
    /// Health and metrics listener, if any.
    pub admin: Option<SocketAddr>,
    /// `admin_token_file:` the bearer token every admin request must carry, if set.
    pub admin_token: Option<Secret>,
    /// `proxy_protocol:` PROXY protocol on the https listener, from these peers only.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// Log output settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// Line format.
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive such as `info` or `rampart=debug,info`.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// ACME client settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// Contact address given to the CA.
    pub email: Option<String>,
    /// Directory URL (the `letsencrypt` shorthands are expanded).
    pub directory: Uri,
    /// Extra PEM roots trusted when talking to the ACME server.
    pub ca_bundle: Option<PathBuf>,
    /// Key type of the certificates ordered.
    pub key_type: KeyType,
    /// ACME profile to request (draft-aaron-acme-profiles), if any.
    pub profile: Option<String>,
    /// External account binding, for CAs that require one.
    pub eab: Option<Eab>,
    /// `acme.challenges:` the challenge types sites use, in order of preference.
    pub challenges: Vec<Challenge>,
    /// The CAs after the first (`acme.directories`), tried in order when it keeps failing.
    pub fallbacks: Vec<AcmeCa>,
    /// Failed orders in a row at one CA before a site moves to the next.
    pub fallback_after: u32,
}

impl Acme {
    /// Every CA, the first (`directory`, `ca_bundle`, `profile`, `eab`) then the fallbacks.
    pub fn cas(&self) -> Vec<AcmeCa> {
        let first = AcmeCa {
            directory: self.directory.clone(),
            ca_bundle: self.ca_bundle.clone(),
            profile: self.profile.clone(),
            eab: self.eab.clone(),
        };
        std::iter::once(first)
            .chain(self.fallbacks.iter().cloned())
            .collect()
    }
}

/// One CA of `acme.directories`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeCa {
    /// Directory URL (the `letsencrypt` shorthands are expanded).
    pub directory: Uri,
    /// Extra PEM roots trusted when talking to it.
    pub ca_bundle: Option<PathBuf>,
    /// ACME profile to request there, if any.
    pub profile: Option<String>,
    /// External account binding, when it requires one.
    pub eab: Option<Eab>,
}

/// An ACME challenge type (RFC 8555 §8.3, §8.4; RFC 8737).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Challenge {
    /// `http-01`: a file under `/.well-known/acme-challenge/` on port 80.
    Http01,
    /// `tls-alpn-01`: a self-signed certificate on port 443 for ALPN `acme-tls/1`.
    TlsAlpn01,
    /// `dns-01`: a TXT record at `_acme-challenge.NAME`, written through a DNS provider.
    Dns01,
}

impl Challenge {
    /// The name in the configuration file and in ACME.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Dns01 => "dns-01",
        }
    }
}

/// `dns.NAME:` a DNS provider that writes DNS-01 TXT records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsProvider {
    /// Its key under `dns:`.
    pub name: String,
    /// How records are written.
    pub kind: DnsKind,
    /// How long to wait for a record to be visible on every authoritative server.
    pub propagation_timeout: Duration,
    /// The servers to ask whether a record is visible; the zone's NS (port 53) when empty.
    pub nameservers: Vec<SocketAddr>,
}

/// How a DNS provider writes records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsKind {
    /// RFC 2136 dynamic update, signed with TSIG (RFC 8945), to the zone's primary server.
    Rfc2136 {
        /// The primary server.
        server: SocketAddr,
        /// The zone to update; found by asking `server` for the SOA when `None`.
        zone: Option<String>,
        /// The TSIG key.
        key: Tsig,
    },
    /// A program run as `COMMAND present|cleanup FQDN VALUE` (lego's exec convention).
    Exec {
        /// Absolute path of the program.
        command: PathBuf,
    },
}

/// A TSIG key (RFC 8945).
#[derive(Clone, PartialEq, Eq)]
pub struct Tsig {
    /// The key's name, as the server knows it.
    pub name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub algorithm: TsigAlgorithm,
    /// The shared secret, base64-decoded.
    pub secret: Vec<u8>,
}

impl fmt::Debug for Tsig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is a credential: never print it.
        f.debug_struct("Tsig")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The TSIG MAC algorithms Rampart signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsigAlgorithm {
    /// HMAC-SHA256, what BIND's and Knot's tools make by default.
    HmacSha256,
    /// HMAC-SHA384.
    HmacSha384,
    /// HMAC-SHA512.
    HmacSha512,
}

/// Private key algorithm for ordered certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA over P-256 with SHA-256 (the default).
    #[default]
    EcdsaP256,
    /// ECDSA over P-384 with SHA-384.
    EcdsaP384,
    /// RSA 2048 with SHA-256.
    Rsa2048,
}

/// A credential read from the configuration (an admin token): compared, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The secret, for comparing with what a request presents.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// External account binding credentials (RFC 8555 §7.3.4).
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    /// Key identifier given by the CA.
    pub key_id: String,
    /// HMAC key, already base64url-decoded.
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The HMAC key is a credential: never print it.
        f.debug_struct("Eab")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Client-side (downstream) limits and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downstream {
    /// A TLS handshake that takes longer is dropped.
    pub handshake_timeout: Duration,
    /// A request head that takes longer to arrive closes the connection (HTTP/1.1).
    pub header_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// A request body that sends nothing for this long is the client's failure (408), and
    /// never holds an origin longer.
    pub client_body_timeout: Duration,
    /// A client that takes no response bytes for this long, while some wait for it, loses
    /// its connection and everything the response held (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields accepted in one request head.
    pub max_headers: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub h2_max_streams: u32,
    /// Client connections each listener holds open at most; at the cap it stops accepting
    /// (the kernel's backlog queues the next) until one closes.
    pub max_connections: usize,
    /// Client connections one client (an IPv4 address, an IPv6 /64) holds open at once on a
    /// listener, if capped; more are closed as they come.
    pub max_connections_per_ip: Option<usize>,
    /// The TLS cipher suites offered, by IANA name (`TLS_AES_128_GCM_SHA256`, ...); empty for
    /// rustls's defaults. At least one is a TLS 1.3 suite.
    pub cipher_suites: Vec<String>,
}

/// Origin-side defaults for every upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamDefaults {
    /// TCP connect timeout; on expiry the request gets 502.
    pub connect_timeout: Duration,
    /// Time to wait for the response head once the request is sent; on expiry 504.
    pub response_header_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per upstream.
    pub pool_max_idle: usize,
    /// Host-name upstreams are resolved again this often (default 30s).
    pub resolve_every: Duration,
    /// DNS servers for upstream names; the system resolver (/etc/resolv.conf) when empty.
    pub nameservers: Vec<SocketAddr>,
}

/// One site: a set of host names sharing a certificate and a route table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Stable identifier: the first host as written (used in logs, storage paths and metrics).
    pub name: String,
    /// Names this site answers for, exact or `*.parent` wildcards; at least one.
    pub hosts: Vec<HostName>,
    /// Where the certificate comes from.
    pub tls: SiteTls,
    /// With `tls: acme`: the challenge types to answer, in order of preference (those this node
    /// cannot answer already left out).
    pub challenges: Vec<Challenge>,
    /// With `dns-01` among them: the provider that writes the TXT records.
    pub dns: Option<DnsProvider>,
    /// Serves handshakes with an unknown or absent SNI.
    pub default: bool,
    /// Routes in file order; at least one.
    pub routes: Vec<Route>,
    /// Site-wide policies (HSTS, site rate limit, site header rules).
    pub policy: SitePolicy,
}

/// Certificate source of a site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteTls {
    /// Obtained and renewed through ACME.
    Acme,
    /// `{acme: on_demand}`: one ACME certificate per name, ordered at its first handshake.
    OnDemand,
    /// Issued by the local CA under `storage`.
    Internal,
    /// PEM files given by the operator (already checked: readable, parsable, key matches).
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// A path prefix and what to do with requests under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `path` (prefix), `path_exact` or `path_regex`.
    pub path: PathMatch,
    /// `methods:` the route matches only these; any method when empty.
    pub methods: Vec<http::Method>,
    /// `strip_prefix` or `replace_prefix` (the result always starts with `/`).
    pub rewrite: Rewrite,
    /// Forward or answer.
    pub action: RouteAction,
    /// The policy steps of the route, site-level defaults already applied.
    pub policy: RoutePolicy,
}

/// What a route does.
#[allow(clippy::large_enum_variant)] // built once per table, never moved per request
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward to these origins; at least one, no duplicates.
    Proxy(Upstreams),
    /// Answer directly.
    Respond {
        /// Status code.
        status: StatusCode,
        /// Body, sent as `text/plain; charset=utf-8`.
        body: Bytes,
    },
}

/// An origin base URL: `http://host:port` with no path beyond `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamUrl(Uri);

impl UpstreamUrl {
    /// Parses `http(s)://host[:port][/]`; anything else is an error message.
    ///
    /// # Errors
    /// Returns the reason, for the validator to attach a file position to.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|_| "expected a URL such as http://127.0.0.1:8080".to_string())?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            Some(other) => {
                return Err(format!(
                    "scheme `{other}` is not supported (use http:// or https://)"
                ));
            }
            None => return Err("expected a URL such as http://127.0.0.1:8080".into()),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err("URL has no host".into());
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err("upstream URL must not carry a path or query".into());
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("upstream URL must not carry credentials".into());
        }
        Ok(Self(uri))
    }

    /// The URL as a `Uri`.
    pub fn as_uri(&self) -> &Uri {
        &self.0
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.0.scheme_str().expect("checked by parse")
    }

    /// Whether the origin is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme() == "https"
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.0
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }

    /// `host:port` as sent in the request line's authority.
    pub fn authority(&self) -> &http::uri::Authority {
        self.0.authority().expect("checked by parse")
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.authority())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_plain_http_origins() {
        assert_eq!(
            UpstreamUrl::parse("http://127.0.0.1:8080")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:8080"
        );
        assert!(UpstreamUrl::parse("http://[::1]:80/").is_ok());
        for bad in [
            "127.0.0.1:8080",
            "ftp://x",
            "ws://x",
            "http://x/path",
            "http://u@x",
            "http://",
        ] {
            assert!(
                UpstreamUrl::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
