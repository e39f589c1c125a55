//! Validation of `cluster:`: the etcd endpoints and credentials, this node's name, the lock
//! lease and the key that seals private keys.
//!
//! Part of `config::validate`. Everything is checked here that can be without etcd: a cluster
//! store that is away at start is not a configuration error (the node serves its local mirror).

use std::fs;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::Uri;

use super::{Checker, Zero, present};
use crate::config::raw::{List, RawCluster, RawEtcd, RawEtcdTls, Text};
use crate::config::{Cluster, Etcd, EtcdTls, SealKey, Secret};

/// Shortest `lock_ttl`: etcd refuses leases much shorter than its election timeout, and a
/// holder renews at a third of it.
const MIN_LOCK_TTL: Duration = Duration::from_secs(5);

/// Longest `lock_ttl`: a dead holder blocks issuance cluster-wide for this long.
const MAX_LOCK_TTL: Duration = Duration::from_secs(600);

/// Longest node name: one DNS label.
const MAX_NODE_NAME: usize = 63;

/// How to make a key, for the messages.
const KEY_HINT: &str = "expected 32 random bytes in base64, made once and copied to every \
                        node: `head -c 32 /dev/urandom | base64 > cluster.key; chmod 600 cluster.key`";

impl Checker {
    /// `cluster:`, when present.
    pub(super) fn cluster(&mut self, raw: &RawCluster) -> Option<Cluster> {
        let etcd = self.etcd(&raw.etcd.value);
        let node = match &raw.node {
            Some(node) => {
                let checked = check_node(&node.value).map(|()| node.value.clone());
                self.check(&node.referenced, "cluster.node", checked)
            }
            None => {
                let host = host_name();
                let checked = host.clone().and_then(|host| {
                    check_node(&host).map(|()| host).map_err(|why| {
                        format!("the host name cannot be the node name ({why}); set cluster.node")
                    })
                });
                self.check(&raw.etcd.referenced, "cluster.node", checked)
            }
        };
        let lock_ttl = self
            .duration(&raw.lock_ttl, "cluster.lock_ttl", Zero::Refused)
            .and_then(|ttl| {
                let checked = if !(MIN_LOCK_TTL..=MAX_LOCK_TTL).contains(&ttl) {
                    Err(format!(
                        "must be from {}s to {}s",
                        MIN_LOCK_TTL.as_secs(),
                        MAX_LOCK_TTL.as_secs()
                    ))
                } else if ttl.subsec_nanos() != 0 {
                    Err("must be whole seconds (etcd leases count seconds)".to_string())
                } else {
                    Ok(ttl)
                };
                self.check(&raw.lock_ttl.referenced, "cluster.lock_ttl", checked)
            });
        let encryption_key = self.seal_key(&raw.encryption_key_file);
        Some(Cluster {
            etcd: etcd?,
            node: node?,
            lock_ttl: lock_ttl?,
            encryption_key: encryption_key?,
        })
    }

    fn etcd(&mut self, raw: &RawEtcd) -> Option<Etcd> {
        let endpoints = self.endpoints(&raw.endpoints);
        let prefix = self.check(
            &raw.prefix.referenced,
            "cluster.etcd.prefix",
            check_prefix(&raw.prefix.value).map(|()| raw.prefix.value.clone()),
        );
        let tls = raw.tls.as_ref().map(|tls| self.etcd_tls(&tls.value));
        if let (Some(endpoints), Some(Some(_))) = (&endpoints, &tls)
            && endpoints.iter().any(|e| e.starts_with("http://"))
        {
            self.report(
                &raw.endpoints.referenced,
                "cluster.etcd.endpoints",
                "tls is set, so the endpoints must be https:// URLs",
            );
        }
        if let (Some(endpoints), None) = (&endpoints, &raw.tls)
            && endpoints.iter().any(|e| e.starts_with("https://"))
        {
            self.report(
                &raw.endpoints.referenced,
                "cluster.etcd.endpoints",
                "https:// endpoints need cluster.etcd.tls.ca, the CA that signed etcd's certificate",
            );
        }
        let user = match (&raw.username, &raw.password_file) {
            (None, None) => Some(None),
            (Some(name), Some(file)) => {
                let name = self.non_empty(name, "cluster.etcd.username");
                let password = self
                    .secret_file(file, "cluster.etcd.password_file")
                    .and_then(|text| {
                        let password = text.trim_end_matches(['\r', '\n']).to_string();
                        let checked = if password.is_empty() {
                            Err("the password file is empty".to_string())
                        } else {
                            Ok(Secret::new(password))
                        };
                        self.check(&file.referenced, "cluster.etcd.password_file", checked)
                    });
                Some(Some((name?, password?)))
            }
            (Some(name), None) => {
                self.report(
                    &name.referenced,
                    "cluster.etcd.username",
                    "missing key `password_file` beside it",
                );
                None
            }
            (None, Some(file)) => {
                self.report(
                    &file.referenced,
                    "cluster.etcd.password_file",
                    "missing key `username` beside it",
                );
                None
            }
        };
        Some(Etcd {
            endpoints: endpoints?,
            prefix: prefix?,
            tls: present(tls)?,
            user: user?,
        })
    }

    fn endpoints(&mut self, raw: &List<String>) -> Option<Vec<String>> {
        if raw.value.is_empty() {
            self.report(
                &raw.referenced,
                "cluster.etcd.endpoints",
                "list at least one etcd endpoint, e.g. http://127.0.0.1:2379",
            );
            return None;
        }
        let mut endpoints = Some(Vec::new());
        for (i, endpoint) in raw.value.iter().enumerate() {
            let at = format!("cluster.etcd.endpoints[{i}]");
            let checked = self.check(&endpoint.referenced, &at, check_endpoint(&endpoint.value));
            match (checked, endpoints.as_mut()) {
                (Some(url), Some(list)) => list.push(url),
                _ => endpoints = None,
            }
        }
        let list = endpoints?;
        if list.iter().any(|e| e.starts_with("http://"))
            && list.iter().any(|e| e.starts_with("https://"))
        {
            self.report(
                &raw.referenced,
                "cluster.etcd.endpoints",
                "mixes http:// and https:// endpoints; use one scheme",
            );
            return None;
        }
        Some(list)
    }

    fn etcd_tls(&mut self, raw: &RawEtcdTls) -> Option<EtcdTls> {
        let ca = self.pem_certificates(&raw.ca, "cluster.etcd.tls.ca");
        let identity = match (&raw.cert, &raw.key) {
            (None, None) => Some(None),
            (Some(cert), Some(key)) => {
                let cert = self.pem_certificates(cert, "cluster.etcd.tls.cert");
                let key = self.readable_secret(key, "cluster.etcd.tls.key");
                Some(Some((cert?, key?)))
            }
            (Some(cert), None) => {
                self.report(
                    &cert.referenced,
                    "cluster.etcd.tls.cert",
                    "missing key `key` beside it",
                );
                None
            }
            (None, Some(key)) => {
                self.report(
                    &key.referenced,
                    "cluster.etcd.tls.key",
                    "missing key `cert` beside it",
                );
                None
            }
        };
        Some(EtcdTls {
            ca: ca?,
            identity: identity?,
        })
    }

    /// A private key file: readable, and not by other users.
    fn readable_secret(&mut self, raw: &Text, at: &str) -> Option<std::path::PathBuf> {
        let path = self.path(raw, at)?;
        self.secret_file(raw, at).map(|_| path)
    }

    /// `encryption_key_file`: private, and 32 bytes once decoded. The messages never quote it.
    fn seal_key(&mut self, raw: &Text) -> Option<SealKey> {
        let at = "cluster.encryption_key_file";
        let text = self.secret_file(raw, at)?;
        let checked = match STANDARD.decode(text.trim()) {
            Err(_) => Err(format!("not base64: {KEY_HINT}")),
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
                .map(SealKey::new)
                .map_err(|_| format!("holds {} bytes: {KEY_HINT}", bytes.len())),
        };
        self.check(&raw.referenced, at, checked)
    }
}

/// `http://host:port` or `https://host:port`, nothing after the authority.
fn check_endpoint(text: &str) -> Result<String, String> {
    let hint = "expected http://HOST:PORT or https://HOST:PORT";
    let uri: Uri = text.parse().map_err(|_| hint.to_string())?;
    let scheme = uri.scheme_str().ok_or_else(|| hint.to_string())?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("{hint}, not {scheme}://"));
    }
    let authority = uri.authority().ok_or_else(|| hint.to_string())?;
    if authority.port_u16().is_none() {
        return Err(format!("{hint}: give the port (etcd's is usually 2379)"));
    }
    if authority.as_str().contains('@') {
        return Err("credentials go in username and password_file, not in the URL".to_string());
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("{hint}, with no path"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// Starts and ends with `/`, printable ASCII without spaces.
fn check_prefix(text: &str) -> Result<(), String> {
    if !text.starts_with('/') || !text.ends_with('/') {
        return Err("must start and end with `/`, e.g. /rampart/".to_string());
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".to_string());
    }
    Ok(())
}

/// Letters, digits, `.`, `-` and `_`, at most one DNS label long.
fn check_node(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_NODE_NAME {
        return Err(format!("must be 1 to {MAX_NODE_NAME} characters"));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("may hold letters, digits, `.`, `-` and `_` only".to_string());
    }
    Ok(())
}

/// This machine's host name, the default node name.
fn host_name() -> Result<String, String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .map_err(|error| format!("cannot read the host name ({error}); set cluster.node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_scheme_host_and_port_only() {
        assert_eq!(
            check_endpoint("http://127.0.0.1:2379").as_deref(),
            Ok("http://127.0.0.1:2379")
        );
        assert_eq!(
            check_endpoint("https://etcd.example:2379/").as_deref(),
            Ok("https://etcd.example:2379")
        );
        for bad in [
            "127.0.0.1:2379",
            "http://127.0.0.1",
            "grpc://h:1",
            "http://u:p@h:1",
            "http://h:1/v3",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_and_node_names() {
        assert!(check_prefix("/rampart/").is_ok());
        assert!(check_prefix("/a/b/").is_ok());
        for bad in ["rampart/", "/rampart", "/ramp art/", ""] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
        assert!(check_node("edge-1").is_ok());
        for bad in ["", "edge 1", "edge/1", &"x".repeat(64)] {
            assert!(check_node(bad).is_err(), "{bad}");
        }
    }
}
