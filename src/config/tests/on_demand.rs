//! Tests of `tls: {acme: on_demand}` sites and the top-level `on_demand:` section.

use super::*;

/// An on-demand site for `hosts` (YAML list items) and the section `on_demand` (indented).
fn on_demand(hosts: &str, section: &str) -> String {
    format!(
        "{section}sites:\n  - hosts: [{hosts}]\n    tls: {{ acme: on_demand }}\n    \
         upstreams: [\"http://127.0.0.1:1\"]\n"
    )
}

const ASK: &str = "on_demand:\n  ask: http://127.0.0.1:9/allowed\n";

#[test]
fn an_on_demand_site_answers_every_name_within_limits() {
    let config = parse_ok(&on_demand("\"*\"", ASK));
    let site = &config.sites[0];
    assert_eq!(site.tls, SiteTls::OnDemand);
    assert_eq!(site.hosts, [HostName::any()]);
    // It proves names like any ACME site.
    assert_eq!(site.challenges, [Challenge::Http01, Challenge::TlsAlpn01]);
    let limits = config.on_demand.expect("the section");
    assert_eq!(limits.ask, "http://127.0.0.1:9/allowed");
    assert_eq!((limits.rate, limits.per), (10, Duration::from_secs(60)));
    assert_eq!(limits.burst, 20);
    assert_eq!(limits.max_certificates, 1000);
    assert_eq!(limits.timeout, Duration::from_secs(15));
    assert_eq!(limits.refusal_ttl, Duration::from_secs(600));
    assert!(limits.check_dns);
    // A suffix: one label under it, no DNS-01 needed (each name gets its own certificate).
    let config = parse_ok(&on_demand("\"*.customers.test\"", ASK));
    assert_eq!(config.sites[0].hosts[0].as_str(), "*.customers.test");
}

#[test]
fn on_demand_settings_are_checked() {
    let (place, reason) = only_problem(&on_demand("\"*\"", ""));
    assert_eq!(place.2, "on_demand");
    assert!(
        reason.contains("give the top-level `on_demand:`"),
        "{reason}"
    );
    let (place, reason) = only_problem(&format!("{ASK}{SITE}"));
    assert_eq!(place, at(2, 3, "on_demand"));
    assert_eq!(reason, "no site has tls: {acme: on_demand}");
    let (place, _) = only_problem(&on_demand("\"*\"", "on_demand:\n  ask: ftp://x.test/\n"));
    assert_eq!(place, at(2, 8, "on_demand.ask"));
    let (place, reason) = only_problem(&on_demand(
        "\"*\"",
        "on_demand:\n  ask: http://x.test/allow\n",
    ));
    assert_eq!(place, at(2, 8, "on_demand.ask"));
    assert!(
        reason.starts_with("plain http:// only to this host"),
        "{reason}"
    );
    parse_ok(&on_demand(
        "\"*\"",
        "on_demand:\n  ask: https://x.test/allow\n",
    ));
    let (place, _) = only_problem(&on_demand("\"*\"", &format!("{ASK}  rate: 10\n")));
    assert_eq!(place, at(3, 9, "on_demand.rate"));
    let (place, reason) = only_problem(
        "sites:\n  - hosts: [\"*\"]\n    tls: acme\n    upstreams: [\"http://127.0.0.1:1\"]\n",
    );
    assert_eq!(place, at(2, 13, "sites[0].hosts[0]"));
    assert!(reason.contains("tls: {acme: on_demand}"), "{reason}");
    let (place, reason) = only_problem(&format!(
        "{ASK}sites:\n  - hosts: [a.test]\n    tls: {{ acme: always }}\n    upstreams: [\"http://127.0.0.1:1\"]\n"
    ));
    assert_eq!(place.2, "sites[0].tls.acme");
    assert!(reason.contains("on_demand"), "{reason}");
}
