//! Which header fields a hop removes: the hop-by-hop fields (RFC 9110 §7.6.1) in both
//! directions, and, from a request, the client-sent fields an origin would take as Rampart's
//! word (forwarding fields from an untrusted peer, names with underscores).
//!
//! Read by [`canonical`](super::canonical) once per request, before routing, and by
//! `proxy::wire` and `proxy::forward` for responses; [`is_protected`] names the fields header
//! rules may not touch (`policy::headers`, and `rampart check` before it).

use http::HeaderMap;
use http::header::{self, HeaderName};

/// `headers_with_underscores:` what happens to a request field whose name holds `_`, which
/// CGI-style gateways (and so many origins) read as the `-` field of the same name: `X_User_Id`
/// would pass for the `X-User-Id` that auth sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Underscores {
    /// `drop` (default): the field is removed, as nginx and Envoy can be set to do.
    #[default]
    Drop,
    /// `reject`: the request gets 400.
    Reject,
    /// `allow`: forwarded as it came.
    Allow,
}

/// What a hop does with a header field, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Meant for every recipient: forwarded.
    EndToEnd,
    /// Describes one connection, never forwarded (RFC 9110 §7.6.1, plus the de-facto
    /// `Proxy-Connection` and `Keep-Alive`).
    HopByHop,
    /// `Upgrade`: hop-by-hop, but kept on a request that is tunnelled.
    Upgrade,
    /// Tells an origin who the client is or what it asked for: the `X-Forwarded-*` family and
    /// the client-IP fields of CDNs and load balancers. From a peer outside `trusted_proxies`
    /// they are the client's own claims and never reach an origin. `X-Original-URL` and
    /// `X-Rewrite-URL` make some frameworks (IIS, Symfony, Laravel) serve another path than
    /// the one routed.
    Forwarding,
}

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the de-facto `Proxy-Connection` and
/// `Keep-Alive`); `Upgrade` is the one more, classed apart.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Forwarding fields besides the `X-Forwarded-*` family (see [`Class::Forwarding`]).
const FORWARDING: [&str; 11] = [
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
];

/// The prefix of the `X-Forwarded-*` family (`-For`, `-Host`, `-Proto`, `-Port`, `-Prefix`, …).
const FORWARDED_PREFIX: &str = "x-forwarded-";

/// Bit `n` set when a name of the list has `n` bytes: most fields are ruled out by their
/// length alone, before any comparison (every message's every field is classed).
const fn lengths(names: &[&str]) -> u32 {
    let mut bits = 0;
    let mut index = 0;
    while index < names.len() {
        bits |= 1 << names[index].len();
        index += 1;
    }
    bits
}

const HOP_BY_HOP_LENGTHS: u32 = lengths(&HOP_BY_HOP) | lengths(&["upgrade"]);
const FORWARDING_LENGTHS: u32 = lengths(&FORWARDING);

/// The class of the field called `name`, which must be lower-case (as a `HeaderName` is).
pub(crate) fn class(name: &str) -> Class {
    classify(name, |a, b| a == b)
}

/// The class of the field called `name`, in any case (as an origin or a `Connection` token
/// may write it).
pub(crate) fn class_any_case(name: &str) -> Class {
    classify(name, str::eq_ignore_ascii_case)
}

fn classify(name: &str, same: impl Fn(&str, &str) -> bool) -> Class {
    let bit = 1u32
        .checked_shl(u32::try_from(name.len()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    if bit & HOP_BY_HOP_LENGTHS != 0 {
        if same(name, "upgrade") {
            return Class::Upgrade;
        }
        if HOP_BY_HOP.iter().any(|hop| same(name, hop)) {
            return Class::HopByHop;
        }
    }
    if bit & FORWARDING_LENGTHS != 0 && FORWARDING.iter().any(|field| same(name, field)) {
        return Class::Forwarding;
    }
    match name.get(..FORWARDED_PREFIX.len()) {
        Some(prefix) if name.len() > prefix.len() && same(prefix, FORWARDED_PREFIX) => {
            Class::Forwarding
        }
        _ => Class::EndToEnd,
    }
}

/// Whether a field called `name` (in any case) ends at this hop: a hop-by-hop field, one that
/// `Connection` names (`named`, its tokens), or `Upgrade` unless the message is tunnelled
/// (`keep_upgrade`).
pub(crate) fn is_hop_by_hop<'a>(
    name: &str,
    mut named: impl Iterator<Item = &'a str>,
    keep_upgrade: bool,
) -> bool {
    match class_any_case(name) {
        Class::HopByHop => true,
        Class::Upgrade => !keep_upgrade,
        Class::EndToEnd | Class::Forwarding => named.any(|token| token.eq_ignore_ascii_case(name)),
    }
}

/// Whether a request asks to switch protocols (HTTP/1.1 Upgrade, e.g. WebSocket).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Whether `name` holds `_`, eight bytes at a time: this runs on every field of every request,
/// and a byte loop (or a call to `memchr` per name) cost more than the rest of the pass.
pub(crate) fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const UNDERSCORES: u64 = u64::from_ne_bytes([b'_'; 8]);
    // A zero byte in `word` is an `_` in the chunk; the has-zero-byte test below is exact about
    // whether there is one.
    let has = |chunk: &[u8]| {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ UNDERSCORES;
        word.wrapping_sub(ONES) & !word & HIGHS != 0
    };
    if name.len() < 8 {
        return name.contains(&b'_');
    }
    // The last chunk overlaps the one before when the length is not a multiple of 8.
    name.chunks_exact(8).any(has) || has(&name[name.len() - 8..])
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

/// The forwarding fields Rampart sets itself; a rule may set the others of the family (such as
/// `X-Forwarded-Prefix` for an origin behind `strip_prefix`).
const OURS: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Whether `name` is a field Rampart owns (forwarding fields it sets, hop-by-hop fields):
/// `rampart check` refuses rules naming one, and the rules skip it regardless.
pub fn is_protected(name: &HeaderName) -> bool {
    let name = name.as_str();
    OURS.contains(&name) || matches!(class(name), Class::HopByHop | Class::Upgrade)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_fields_are_the_family_and_the_known_client_ip_fields() {
        for name in [
            "x-forwarded-for",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "forwarded",
            "true-client-ip",
            "cf-connecting-ip",
            "x-original-url",
        ] {
            assert_eq!(class(name), Class::Forwarding, "{name}");
        }
        for name in [
            "x-forwarded",
            "x-request-id",
            "forwarded-for",
            "authorization",
        ] {
            assert_eq!(class(name), Class::EndToEnd, "{name}");
        }
    }

    #[test]
    fn underscores_are_found_at_every_offset() {
        assert!(!has_underscore(b""));
        assert!(!has_underscore(b"accept-encoding-and-more"));
        for len in 1..40 {
            for at in 0..len {
                let mut name = vec![b'a'; len];
                name[at] = b'_';
                assert!(has_underscore(&name), "{len} {at}");
                name[at] = b'^'; // 0x5E: one bit from `_`
                assert!(!has_underscore(&name), "{len} {at}");
            }
        }
        // Bytes around `_` (0x5F) and with the high bit set never count as one.
        let near: Vec<u8> = (0x40u8..=0x7E)
            .chain(0x80..=0xFF)
            .filter(|b| *b != b'_')
            .collect();
        assert!(!has_underscore(&near));
    }

    #[test]
    fn any_case_is_classed_as_its_lower_case() {
        assert_eq!(class_any_case("Keep-Alive"), Class::HopByHop);
        assert_eq!(
            class_any_case("X-Original-Forwarded-For"),
            Class::Forwarding
        );
        let long = "X-Forwarded-A-Very-Long-Name";
        assert_eq!(class_any_case(long), Class::Forwarding);
        assert_eq!(
            class_any_case("X-Something-Long-Enough-To-Overflow"),
            Class::EndToEnd
        );
        assert_eq!(class_any_case("Content-Type"), Class::EndToEnd);
    }

    #[test]
    fn connection_names_fields_that_end_here() {
        let named = ["close", "X-Secret"];
        assert!(is_hop_by_hop("x-secret", named.into_iter(), false));
        assert!(is_hop_by_hop("keep-alive", named.into_iter(), false));
        assert!(is_hop_by_hop("upgrade", named.into_iter(), false));
        assert!(!is_hop_by_hop("upgrade", named.into_iter(), true));
        assert!(!is_hop_by_hop("x-kept", named.into_iter(), false));
        assert!(is_hop_by_hop("Transfer-Encoding", named.into_iter(), false));
        assert!(is_hop_by_hop("PROXY-AUTHORIZATION", [].into_iter(), false));
        assert!(!is_hop_by_hop("X-Forwarded-For", [].into_iter(), false));
        let long = "x-a-very-long-end-to-end-field-name";
        assert!(!is_hop_by_hop(long, [].into_iter(), false));
        assert!(
            is_hop_by_hop(long, [long].into_iter(), false),
            "named by Connection"
        );
        assert!(is_hop_by_hop("Transfer-Encoding", named.into_iter(), false));
        assert!(is_hop_by_hop("PROXY-AUTHORIZATION", [].into_iter(), false));
        assert!(!is_hop_by_hop("X-Forwarded-For", [].into_iter(), false));
    }
}
