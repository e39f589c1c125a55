//! The real client IP behind trusted proxies: the first step of the request path.
//!
//! Reads the connection's peer (already the PROXY protocol source, if any), the request's
//! `X-Forwarded-For` and `trusted_proxies:`; writes nothing. `proxy::service` calls it once per
//! request and hands the result to every later step (access log, `X-Real-IP`, rate limit keys,
//! `ip_hash`).
//!
//! From an untrusted peer `X-Forwarded-For` is not believed at all: the client is the peer.
//! From a trusted peer the chain is walked right to left past trusted hops; the first untrusted
//! address is the client, the leftmost if every hop is trusted. A malformed entry stops the
//! walk and the last good address (a trusted hop) is the client: anything left of garbage was
//! written by someone we cannot vouch for.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::HeaderName;

use crate::config::{IpNet, contains_ip};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What counts as one client when clients are counted (rate-limit buckets, connections per
/// client): an IPv4 address itself, an IPv6 address its /64. One IPv6 subscriber, host or VM
/// is routinely given a whole /64 and can send from any address in it: counted by address, it
/// would be 2^64 clients.
pub fn prefix(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// The client IP of a request that arrived from `peer` with `headers`, believing
/// `X-Forwarded-For` only as far as `trusted` proxies vouch for it.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !contains_ip(trusted, peer) {
        return peer;
    }
    // Several X-Forwarded-For fields form one list in order (RFC 9110 §5.3).
    let entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|value| value.to_str().unwrap_or("\u{0}"))
        .flat_map(|value| value.split(','))
        .collect();
    walk(peer, entries.iter().rev().copied(), trusted)
}

/// Walks hops right to left from the trusted `peer`; see the module doc.
fn walk<'a>(peer: IpAddr, hops: impl Iterator<Item = &'a str>, trusted: &[IpNet]) -> IpAddr {
    let mut client = peer;
    for hop in hops {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !contains_ip(trusted, ip) {
            return ip;
        }
    }
    client
}

/// One X-Forwarded-For entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = hop.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|n| n.parse().expect("test literal"))
            .collect()
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&X_FORWARDED_FOR, HeaderValue::from_static(value));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test literal")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff(&["6.6.6.6"]);
        assert_eq!(resolve(ip("1.2.3.4"), &headers, &trusted), ip("1.2.3.4"));
        assert_eq!(resolve(ip("1.2.3.4"), &headers, &[]), ip("1.2.3.4"));
    }

    #[test]
    fn a_trusted_peer_without_forwarded_for_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn walks_right_to_left_past_trusted_hops_to_the_first_untrusted() {
        let trusted = nets(&["10.0.0.0/8"]);
        // 9.9.9.9 is a spoofed entry the real client (5.5.5.5) wrote itself.
        let headers = xff(&["9.9.9.9, 5.5.5.5", "10.1.1.1"]);
        assert_eq!(resolve(ip("10.0.0.1"), &headers, &trusted), ip("5.5.5.5"));
    }

    #[test]
    fn every_hop_trusted_gives_the_leftmost() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff(&["10.3.3.3, 10.2.2.2"]);
        assert_eq!(resolve(ip("10.0.0.1"), &headers, &trusted), ip("10.3.3.3"));
    }

    #[test]
    fn a_malformed_entry_stops_the_walk_at_the_last_good_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff(&["5.5.5.5, garbage, 10.2.2.2"]);
        assert_eq!(resolve(ip("10.0.0.1"), &headers, &trusted), ip("10.2.2.2"));
        let headers = xff(&["5.5.5.5, unknown"]);
        assert_eq!(resolve(ip("10.0.0.1"), &headers, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn entries_with_ports_and_ipv6_are_understood() {
        let trusted = nets(&["127.0.0.1/32", "::1/128"]);
        let headers = xff(&["[2001:db8::7]:443, 127.0.0.1:80"]);
        assert_eq!(resolve(ip("::1"), &headers, &trusted), ip("2001:db8::7"));
        let headers = xff(&["203.0.113.9:1234"]);
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
    }
}
