//! Header rewriting for one proxy hop (RFC 9110 §7.6): hop-by-hop fields out, forwarding
//! fields in, and the request target rewritten for the origin.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};

use crate::request::fields;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Fields one hop may add to a request head: Host, the four forwarding fields, `traceparent`
/// and `X-Request-Id`. Header maps that will carry a request are made with room for them.
pub(crate) const FIELDS_ADDED: usize = 7;

/// Removes hop-by-hop fields, including every field the `Connection` header names.
/// `keep_upgrade` keeps `Upgrade` and re-adds `Connection: upgrade` for a tunnelled request.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names present: most messages carry none of these fields or only
    // `Connection`, and a lookup per candidate name would cost more than the scan.
    let named: Vec<&str> = fields::connection_tokens(headers).collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| fields::is_hop_by_hop(name.as_str(), named.iter().copied(), keep_upgrade))
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes a response's Content-Length when it also has Transfer-Encoding, and says whether
/// it did. The transfer coding frames the body (RFC 9112 §6.3) and, being hop-by-hop, is not
/// forwarded: the length would then describe a body the client never gets, and a proxy must
/// remove it. Both at once is how response smuggling starts, so the caller does not reuse
/// that origin connection either. The lean client applies the same rule (`h1::codec`).
pub(crate) fn drop_overridden_length(headers: &mut HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        && headers.remove(header::CONTENT_LENGTH).is_some()
}

/// An IP address as a field value, as `X-Forwarded-For` and `X-Real-IP` carry it.
pub(crate) fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid field value")
}

/// Sets the forwarding fields: `peer` (the hop we saw, as [`ip_value`] wrote it) ends
/// `X-Forwarded-For`, `X-Real-IP` is the resolved `client`, `X-Forwarded-Host` the request's
/// canonical authority (`host`, what its Host field says too), `X-Forwarded-Proto` is `https`.
/// Values come in formatted: the peer's once per connection.
///
/// From an untrusted peer the client's own forwarding fields are gone already (see
/// `request::canonical`), so these are the only ones. From a trusted proxy its chain is kept
/// and extended: `X-Forwarded-For` gets `peer` appended, a `Forwarded` field gets our element
/// (RFC 7239 §4; none is started where none came), and its `X-Forwarded-Proto` (the scheme its
/// client used) stays.
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    trusted_peer: bool,
    client: HeaderValue,
    host: &HeaderValue,
) {
    if trusted_peer {
        append(headers, &X_FORWARDED_FOR, peer.clone());
        if headers.contains_key(header::FORWARDED)
            && let Ok(element) = HeaderValue::try_from(forwarded_element(peer, host))
        {
            append(headers, &header::FORWARDED, element);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        }
    } else {
        headers.insert(&X_FORWARDED_FOR, peer.clone());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
    headers.insert(&X_FORWARDED_HOST, host.clone());
    headers.insert(&X_REAL_IP, client);
}

/// Joins the values of the list field `name` and `element` into one field (RFC 9110 §5.3).
fn append(headers: &mut HeaderMap, name: &HeaderName, element: HeaderValue) {
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(name) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    if joined.is_empty() {
        headers.insert(name, element);
        return;
    }
    joined.extend_from_slice(element.as_bytes());
    // Made of field values and our own element, so it is a valid value.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(name, value);
    }
}

/// Our `Forwarded` element: who connected to us (`for`, an IPv6 address quoted and bracketed),
/// the host it asked for and the scheme (RFC 7239 §5, §6).
fn forwarded_element(peer: &HeaderValue, host: &HeaderValue) -> String {
    let peer = peer.to_str().unwrap_or_default();
    let host = host.to_str().unwrap_or_default();
    if peer.contains(':') {
        format!("for=\"[{peer}]\";host=\"{host}\";proto=https")
    } else {
        format!("for={peer};host=\"{host}\";proto=https")
    }
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
        assert!(fields::is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn forwarding_from_an_untrusted_peer_replaces_the_chain() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        let peer = ip_value("127.0.0.9".parse().unwrap());
        let host = HeaderValue::from_static("a.test");
        add_forwarding(&mut h, &peer, false, peer.clone(), &host);
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        assert_eq!(h["x-real-ip"], "127.0.0.9");
        assert_eq!(h["x-forwarded-host"], "a.test");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("forwarded").is_none(), "none is started");
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
            &HeaderValue::from_static("a.test:8443"),
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.test:8443");
        assert_eq!(h["x-real-ip"], "3.3.3.3");
    }

    #[test]
    fn a_trusted_peers_forwarded_chain_and_scheme_are_kept_and_extended() {
        let mut h = HeaderMap::new();
        h.append(
            "forwarded",
            HeaderValue::from_static("for=1.1.1.1;proto=http"),
        );
        h.append("x-forwarded-proto", HeaderValue::from_static("http"));
        let host = HeaderValue::from_static("a.test:8443");
        add_forwarding(
            &mut h,
            &ip_value("::1".parse().unwrap()),
            true,
            ip_value("1.1.1.1".parse().unwrap()),
            &host,
        );
        assert_eq!(
            h["forwarded"],
            "for=1.1.1.1;proto=http, for=\"[::1]\";host=\"a.test:8443\";proto=https"
        );
        assert_eq!(h["x-forwarded-proto"], "http", "the scheme its client used");
        assert_eq!(h["x-forwarded-for"], "::1");
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
