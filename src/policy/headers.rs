//! Header rules (`headers:`) and HSTS (`hsts:`): the last request step before forwarding and
//! the last response step before sending.
//!
//! Reads the site's and the route's [`HeaderRules`] and the site's [`Hsts`]; writes the header
//! map it is given. Called by `proxy::service` on the connection's task.
//!
//! Each rule set applies remove → set → add; the site's rules run first, then the route's, so a
//! route can refine what its site does. Request rules run after Rampart wrote its forwarding
//! fields, and they cannot touch those nor hop-by-hop fields: `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP` are what origins trust to learn who
//! the client is, so a rule (or a typo in one) must not be able to forge or drop them, and
//! hop-by-hop fields describe our own connection to the origin. `rampart check` refuses rules
//! naming them, and they are skipped here too.
//! Response rules apply to proxied and `respond` responses; HSTS is set after them, so no rule
//! can remove it.

use http::HeaderMap;
use http::header::{self, HeaderValue};

use crate::config::{HeaderOps, HeaderRules, Hsts};
use crate::request::fields::is_protected;

/// Applies the request rules of the site, then of the route, to a request about to be forwarded.
pub fn apply_request(headers: &mut HeaderMap, site: &HeaderRules, route: &HeaderRules) {
    apply(headers, &site.request);
    apply(headers, &route.request);
}

/// Applies the response rules of the site, then of the route (if one matched), then HSTS.
pub fn apply_response(
    headers: &mut HeaderMap,
    site: &HeaderRules,
    route: Option<&HeaderRules>,
    hsts: Option<&Hsts>,
) {
    apply(headers, &site.response);
    if let Some(route) = route {
        apply(headers, &route.response);
    }
    if let Some(hsts) = hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts_value(hsts));
    }
}

/// `max-age=N[; includeSubDomains][; preload]` (RFC 6797 §6.1).
pub fn hsts_value(hsts: &Hsts) -> HeaderValue {
    let mut value = format!("max-age={}", hsts.max_age.as_secs());
    if hsts.include_subdomains {
        value.push_str("; includeSubDomains");
    }
    if hsts.preload {
        value.push_str("; preload");
    }
    HeaderValue::try_from(value).expect("digits and ASCII words form a valid header value")
}

/// One rule set: remove → set → add, skipping protected fields.
fn apply(headers: &mut HeaderMap, ops: &HeaderOps) {
    if ops.is_empty() {
        return;
    }
    for name in ops.remove.iter().filter(|n| !is_protected(n)) {
        headers.remove(name);
    }
    for (name, value) in ops.set.iter().filter(|(n, _)| !is_protected(n)) {
        headers.insert(name, value.clone());
    }
    for (name, value) in ops.add.iter().filter(|(n, _)| !is_protected(n)) {
        headers.append(name, value.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header::HeaderName;

    use super::*;

    fn ops(
        set: &[(&'static str, &'static str)],
        add: &[(&'static str, &'static str)],
        remove: &[&'static str],
    ) -> HeaderOps {
        let pair = |(n, v): &(&'static str, &'static str)| {
            (HeaderName::from_static(n), HeaderValue::from_static(v))
        };
        HeaderOps {
            set: set.iter().map(pair).collect(),
            add: add.iter().map(pair).collect(),
            remove: remove.iter().map(|n| HeaderName::from_static(n)).collect(),
        }
    }

    fn request_rules(ops: HeaderOps) -> HeaderRules {
        HeaderRules {
            request: ops,
            response: HeaderOps::default(),
        }
    }

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn remove_then_set_then_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("old"));
        headers.insert("x-b", HeaderValue::from_static("old"));
        headers.insert("x-c", HeaderValue::from_static("gone"));
        // x-a is removed and then set: set wins; x-b is set then added to: both values.
        let rules = ops(
            &[("x-a", "1"), ("x-b", "2")],
            &[("x-b", "3")],
            &["x-a", "x-c"],
        );
        apply_request(&mut headers, &request_rules(rules), &HeaderRules::default());
        assert_eq!(values(&headers, "x-a"), ["1"]);
        assert_eq!(values(&headers, "x-b"), ["2", "3"]);
        assert!(headers.get("x-c").is_none());
    }

    #[test]
    fn route_rules_run_after_site_rules() {
        let mut headers = HeaderMap::new();
        let site = request_rules(ops(&[("x-tier", "site")], &[], &[]));
        let route = request_rules(ops(&[("x-tier", "route")], &[], &[]));
        apply_request(&mut headers, &site, &route);
        assert_eq!(values(&headers, "x-tier"), ["route"]);
    }

    #[test]
    fn rules_cannot_forge_or_drop_forwarding_and_hop_by_hop_fields() {
        let mut headers = HeaderMap::new();
        headers.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let rules = ops(
            &[("x-real-ip", "6.6.6.6"), ("connection", "close")],
            &[("x-forwarded-for", "6.6.6.6")],
            &["x-forwarded-for"],
        );
        let rules = request_rules(rules);
        for name in [
            "x-forwarded-for",
            "x-real-ip",
            "connection",
            "upgrade",
            "te",
        ] {
            assert!(is_protected(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["x-env", "x-forwarded-prefix"] {
            assert!(!is_protected(&HeaderName::from_static(name)), "{name}");
        }
        apply_request(&mut headers, &rules, &HeaderRules::default());
        assert_eq!(values(&headers, "x-real-ip"), ["1.2.3.4"]);
        assert_eq!(values(&headers, "x-forwarded-for"), ["1.2.3.4"]);
        assert!(headers.get("connection").is_none());
    }

    #[test]
    fn response_rules_then_hsts_which_no_rule_removes() {
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("origin"));
        let site = HeaderRules {
            request: HeaderOps::default(),
            response: ops(
                &[("x-site", "1")],
                &[],
                &["server", "strict-transport-security"],
            ),
        };
        let route = HeaderRules {
            request: HeaderOps::default(),
            response: ops(&[], &[("x-route", "1")], &[]),
        };
        let hsts = Hsts {
            max_age: Duration::from_secs(31_536_000),
            include_subdomains: true,
            preload: true,
        };
        apply_response(&mut headers, &site, Some(&route), Some(&hsts));
        assert!(headers.get("server").is_none());
        assert_eq!(values(&headers, "x-site"), ["1"]);
        assert_eq!(values(&headers, "x-route"), ["1"]);
        assert_eq!(
            values(&headers, "strict-transport-security"),
            ["max-age=31536000; includeSubDomains; preload"]
        );
    }

    #[test]
    fn hsts_without_options_is_max_age_only() {
        let hsts = Hsts {
            max_age: Duration::from_secs(600),
            include_subdomains: false,
            preload: false,
        };
        assert_eq!(hsts_value(&hsts), "max-age=600");
    }
}
