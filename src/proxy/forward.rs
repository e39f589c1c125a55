//! Header rewriting for one proxy hop (RFC 9110 §7.6): hop-by-hop fields out, forwarding
//! fields in, and the request target rewritten for the origin.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1, plus the
/// de-facto `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Fields one hop may add to a request head: Host, the four forwarding fields, `traceparent`
/// and `X-Request-Id`. Header maps that will carry a request are made with room for them.
pub(crate) const FIELDS_ADDED: usize = 7;

/// Whether a request asks to switch protocols (HTTP/1.1 Upgrade, e.g. WebSocket).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop fields, including every field the `Connection` header names.
/// `keep_upgrade` keeps `Upgrade` and re-adds `Connection: upgrade` for a tunnelled request.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names present: most messages carry none of these fields or only
    // `Connection`, and a lookup per candidate name would cost more than the scan.
    let named: Vec<&str> = connection_tokens(headers).collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str(), named.iter().copied(), keep_upgrade))
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// An IP address as a field value, as `X-Forwarded-For` and `X-Real-IP` carry it.
pub(crate) fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid field value")
}

/// Sets the forwarding fields: `peer` (the hop we saw, as [`ip_value`] wrote it) ends
/// `X-Forwarded-For`, `X-Real-IP` is the resolved `client`, plus `X-Forwarded-Proto` and
/// `X-Forwarded-Host`. Values come in formatted: the peer's once per connection.
///
/// The incoming `X-Forwarded-For` chain is kept only when `peer` is a trusted proxy. From an
/// untrusted peer it is replaced, so entries a client wrote itself never reach origins that
/// might believe them.
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    keep_chain: bool,
    client: HeaderValue,
    host: Option<HeaderValue>,
) {
    let chain: Vec<&str> = if keep_chain {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if chain.is_empty() {
        Some(peer.clone())
    } else {
        let peer = peer.to_str().unwrap_or_default();
        HeaderValue::try_from(format!("{}, {peer}", chain.join(", "))).ok()
    };
    if let Some(value) = xff {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    headers.insert(&X_REAL_IP, client);
}

/// The origin-form target (RFC 9112 §3.2.1) for a request to `original`: its path with a
/// leading `from` replaced by `to` (`to` empty strips it), the query kept. The result always
/// starts with `/` (or is `*`), and the seam never doubles or loses a slash: `/api` → `/v2/` on
/// `/api/x` gives `/v2/x`, and `/api/` → `/v2` on `/api/x` gives `/v2/x` too.
pub(crate) fn origin_target(original: &Uri, replace: Option<(&str, &str)>) -> Uri {
    let path = original.path();
    let replaced = replace.and_then(|(from, to)| Some((path.strip_prefix(from)?, to)));
    let mut target = match replaced {
        // Unchanged and already origin-form: the client's own target, sharing its bytes.
        None => match original.path_and_query() {
            Some(target) if target.as_str().starts_with(['/', '*']) => {
                return Uri::from(target.clone());
            }
            _ => path.to_owned(),
        },
        Some((rest, to)) => {
            let to = to.trim_end_matches('/');
            let rest = rest.trim_start_matches('/');
            // `from` ending in `/` ate the separator; a `from` without it matched a segment
            // prefix (`/api` on `/apix`), which still needs one.
            let joined = if rest.is_empty() && !to.is_empty() && !path.ends_with('/') {
                to.to_owned()
            } else {
                format!("{to}/{rest}")
            };
            if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    };
    if let Some(query) = original.query() {
        target.push('?');
        target.push_str(query);
    }
    // Built from a valid path and query, so it stays valid.
    PathAndQuery::try_from(target).map_or_else(|_| Uri::from_static("/"), Uri::from)
}

/// The tokens of the `Connection` fields (comma-separated lists), trimmed.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(tokens)
}

/// The tokens of one `Connection` field value.
pub(crate) fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Whether a field called `name` ends at this hop: a hop-by-hop field, one that `Connection`
/// names (`named`, its tokens), or `Upgrade` unless the message is tunnelled (`keep_upgrade`).
pub(crate) fn is_hop_by_hop<'a>(
    name: &str,
    mut named: impl Iterator<Item = &'a str>,
    keep_upgrade: bool,
) -> bool {
    // `HeaderName == str` compares without regard to case.
    if header::UPGRADE == name {
        return !keep_upgrade;
    }
    HOP_BY_HOP.iter().any(|hop| hop == name) || named.any(|token| token.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarding_from_an_untrusted_peer_replaces_the_chain() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let peer = ip_value("127.0.0.9".parse().unwrap());
        add_forwarding(&mut h, &peer, false, peer.clone(), None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        assert_eq!(h["x-real-ip"], "127.0.0.9");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn forwarding_from_a_trusted_peer_appends_to_existing_chain() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        add_forwarding(
            &mut h,
            &ip_value("127.0.0.9".parse().unwrap()),
            true,
            ip_value("3.3.3.3".parse().unwrap()),
            Some(HeaderValue::from_static("a.test:8443")),
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.test:8443");
        assert_eq!(h["x-real-ip"], "3.3.3.3");
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_the_query() {
        let uri: Uri = "/v1/users?id=3".parse().unwrap();
        assert_eq!(origin_target(&uri, Some(("/v1/", ""))), "/users?id=3");
        assert_eq!(origin_target(&uri, Some(("/v1", ""))), "/users?id=3");
        assert_eq!(
            origin_target(&"/v1".parse().unwrap(), Some(("/v1", ""))),
            "/"
        );
        assert_eq!(origin_target(&uri, None), "/v1/users?id=3");
    }

    #[test]
    fn absolute_and_asterisk_targets_become_origin_form() {
        let absolute: Uri = "https://a.test:8443/v1/x?q=1".parse().unwrap();
        assert_eq!(origin_target(&absolute, None), "/v1/x?q=1");
        assert_eq!(origin_target(&absolute, Some(("/v1/", "/"))), "/x?q=1");
        assert_eq!(origin_target(&"https://a.test".parse().unwrap(), None), "/");
        assert_eq!(
            origin_target(&"https://a.test?q=1".parse().unwrap(), None),
            "/?q=1"
        );
        assert_eq!(origin_target(&"*".parse().unwrap(), None), "*");
    }

    #[test]
    fn replace_prefix_never_doubles_or_drops_the_slash_at_the_seam() {
        let at = |path: &str, from, to| {
            let uri: Uri = path.parse().unwrap();
            origin_target(&uri, Some((from, to))).to_string()
        };
        assert_eq!(at("/api/x?q=1", "/api/", "/v2/"), "/v2/x?q=1");
        assert_eq!(at("/api/x", "/api", "/v2/"), "/v2/x");
        assert_eq!(at("/api/x", "/api/", "/v2"), "/v2/x");
        assert_eq!(at("/api//x", "/api/", "/v2/"), "/v2/x");
        assert_eq!(at("/api", "/api", "/v2"), "/v2");
        assert_eq!(at("/api/", "/api/", "/v2/"), "/v2/");
        assert_eq!(at("/api/", "/api/", "/"), "/");
        assert_eq!(at("/api", "/api", ""), "/");
        assert_eq!(at("/api/x", "/api/", "v2"), "/v2/x");
        // Not under `from`: unchanged.
        assert_eq!(at("/other/x", "/api/", "/v2/"), "/other/x");
    }
}
