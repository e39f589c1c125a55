//! Tests of how ACME sites prove their names: `acme.challenges`, `dns:` providers, a site's
//! `challenges:` and `dns:`, wildcards and `listen.http: off`.

use std::error::Error;

use super::*;

/// An ACME site for `host` with extra site keys (each line indented four spaces).
fn acme_site(host: &str, extra: &str) -> String {
    format!(
        "sites:\n  - hosts: [\"{host}\"]\n    tls: acme\n{extra}    upstreams: [\"http://127.0.0.1:1\"]\n"
    )
}

/// `dns:` with one rfc2136 provider `primary` whose secret is `secret_file`.
fn rfc2136(secret_file: &Path) -> String {
    format!(
        "dns:\n  primary:\n    provider: rfc2136\n    server: 127.0.0.1:5353\n    key_name: rampart\n    key_secret_file: {}\n",
        secret_file.display()
    )
}

#[test]
fn sites_default_to_http01_then_tls_alpn01() {
    let config = parse_ok(&acme_site("a.test", ""));
    assert_eq!(
        config.sites[0].challenges,
        [Challenge::Http01, Challenge::TlsAlpn01]
    );
    assert_eq!(config.sites[0].dns, None);
    assert_eq!(
        config.acme.challenges,
        [Challenge::Http01, Challenge::TlsAlpn01]
    );
    // Non-ACME sites prove nothing.
    assert!(parse_ok(SITE).sites[0].challenges.is_empty());
}

#[test]
fn a_site_list_overrides_the_global_one() {
    let config = parse_ok(&format!(
        "acme:\n  challenges: [tls-alpn-01]\n{}",
        acme_site("a.test", "    challenges: [tls-alpn-01, http-01]\n")
    ));
    assert_eq!(config.acme.challenges, [Challenge::TlsAlpn01]);
    assert_eq!(
        config.sites[0].challenges,
        [Challenge::TlsAlpn01, Challenge::Http01]
    );
    let config = parse_ok(&format!(
        "acme:\n  challenges: [tls-alpn-01]\n{}",
        acme_site("a.test", "")
    ));
    assert_eq!(config.sites[0].challenges, [Challenge::TlsAlpn01]);
}

#[test]
fn challenge_lists_are_checked() {
    let (place, reason) = only_problem(&acme_site(
        "a.test",
        "    challenges: [http-01, tls-alpn]\n",
    ));
    assert_eq!(place, at(4, 27, "sites[0].challenges[1]"));
    assert!(reason.contains("did you mean `tls-alpn-01`?"), "{reason}");
    let (place, reason) =
        only_problem(&acme_site("a.test", "    challenges: [http-01, http-01]\n"));
    assert_eq!(place, at(4, 27, "sites[0].challenges[1]"));
    assert_eq!(reason, "http-01 is listed twice");
    let (place, reason) = only_problem(&format!("acme:\n  challenges: []\n{SITE}"));
    assert_eq!(place, at(2, 15, "acme.challenges"));
    assert_eq!(reason, "name at least one challenge type");
    let (place, reason) = only_problem(&acme_site("a.test", "    challenges: [dns-01]\n"));
    assert_eq!(place, at(4, 17, "sites[0].challenges"));
    assert!(reason.starts_with("dns-01 needs `dns:`"), "{reason}");
    let (place, reason) = only_problem(
        "sites:\n  - hosts: [a.test]\n    tls: internal\n    challenges: [http-01]\n    upstreams: [\"http://127.0.0.1:1\"]\n",
    );
    assert_eq!(place, at(4, 17, "sites[0].challenges"));
    assert_eq!(reason, "only `tls: acme` sites prove their names to a CA");
}

#[test]
fn with_port_80_off_sites_use_the_other_challenges() {
    let config = parse_ok(&format!(
        "listen:\n  http: \"off\"\n{}",
        acme_site("a.test", "")
    ));
    assert_eq!(config.listen.http, None);
    assert_eq!(config.sites[0].challenges, [Challenge::TlsAlpn01]);
    let (place, reason) = only_problem(&format!(
        "listen:\n  http: \"off\"\n{}",
        acme_site("a.test", "    challenges: [http-01]\n")
    ));
    assert_eq!(place, at(6, 17, "sites[0].challenges"));
    assert!(reason.starts_with("listen.http is off"), "{reason}");
    // Sites that prove nothing do not need port 80.
    let config = parse_ok(&format!("listen:\n  http: \"off\"\n{SITE}"));
    assert_eq!(config.listen.http, None);
}

#[test]
fn wildcard_hosts_need_dns01() -> Result<(), Box<dyn Error>> {
    let (place, reason) = only_problem(
        "sites:\n  - hosts: [a.test, \"*.a.test\"]\n    upstreams: [\"http://127.0.0.1:1\"]\n",
    );
    assert_eq!(place, at(2, 21, "sites[0].hosts[1]"));
    assert_eq!(
        reason,
        "a CA validates wildcard names only through DNS-01: give this site `dns:`, a provider of \
         the top-level `dns:` section"
    );
    parse_ok(
        "sites:\n  - hosts: [\"*.a.test\"]\n    tls: internal\n    upstreams: [\"http://127.0.0.1:1\"]\n",
    );

    let dir = tempfile::tempdir()?;
    let secret = write_with_mode(dir.path(), "tsig.key", "c2VjcmV0c2VjcmV0\n", 0o600);
    let config = parse_ok(&format!(
        "{}{}",
        rfc2136(&secret),
        acme_site("*.w.test", "    dns: primary\n")
    ));
    let site = &config.sites[0];
    // The provider comes first, then the global list.
    assert_eq!(
        site.challenges,
        [Challenge::Dns01, Challenge::Http01, Challenge::TlsAlpn01]
    );
    let provider = site.dns.as_ref().expect("the site's provider");
    assert_eq!(provider.name, "primary");
    assert_eq!(provider.propagation_timeout, Duration::from_secs(120));
    match &provider.kind {
        DnsKind::Rfc2136 { server, zone, key } => {
            assert_eq!(*server, "127.0.0.1:5353".parse::<SocketAddr>()?);
            assert_eq!(*zone, None);
            assert_eq!(key.name, "rampart");
            assert_eq!(key.algorithm, TsigAlgorithm::HmacSha256);
            assert_eq!(key.secret, b"secretsecret");
            assert!(!format!("{key:?}").contains("secret\""), "{key:?}");
        }
        other => panic!("expected rfc2136, got {other:?}"),
    }
    // A site list without dns-01 leaves the wildcard unprovable.
    let (place, _) = only_problem(&format!(
        "{}{}",
        rfc2136(&secret),
        acme_site("*.w.test", "    dns: primary\n    challenges: [http-01]\n")
    ));
    assert_eq!(place, at(8, 13, "sites[0].hosts[0]"));
    Ok(())
}

#[test]
fn dns_providers_are_checked() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let secret = write_with_mode(dir.path(), "tsig.key", "c2VjcmV0\n", 0o600);
    let open = write_with_mode(dir.path(), "open.key", "c2VjcmV0\n", 0o644);
    let garbled = write_with_mode(dir.path(), "garbled.key", "not base64!\n", 0o600);
    let script = write_with_mode(dir.path(), "dns.sh", "#!/bin/sh\n", 0o755);
    let plain = write_with_mode(dir.path(), "plain.sh", "#!/bin/sh\n", 0o644);

    let (place, reason) = only_problem(&format!(
        "{}{}",
        rfc2136(&secret),
        acme_site("a.test", "    dns: primry\n")
    ));
    assert_eq!(place, at(10, 10, "sites[0].dns"));
    assert_eq!(
        reason,
        "no DNS provider `primry` in the top-level `dns:` section; did you mean `primary`?"
    );
    let problems = problems(&format!("{}{SITE}", rfc2136(&open)));
    assert!(
        problems.to_string().contains("dns.primary.key_secret_file"),
        "{problems}"
    );
    let (place, reason) = only_problem(&format!("{}{SITE}", rfc2136(&garbled)));
    assert_eq!(place, at(6, 22, "dns.primary.key_secret_file"));
    assert!(!reason.contains("not base64!"), "{reason}");
    assert!(reason.contains("base64"), "{reason}");
    let (place, reason) = only_problem(&format!(
        "dns:\n  primary:\n    provider: rfc2136\n    server: 127.0.0.1:5353\n    key_secret_file: {}\n{SITE}",
        secret.display()
    ));
    assert_eq!(place, at(3, 5, "dns.primary"));
    assert_eq!(reason, "missing key `key_name`");
    let (place, reason) = only_problem(&format!(
        "{}    command: {}\n{SITE}",
        rfc2136(&secret),
        script.display()
    ));
    assert_eq!(place, at(7, 14, "dns.primary.command"));
    assert_eq!(reason, "`command` is not a setting of the rfc2136 provider");
    let (place, reason) = only_problem(&format!(
        "{}    propagation_timeout: 0s\n{SITE}",
        rfc2136(&secret)
    ));
    assert_eq!(place, at(7, 26, "dns.primary.propagation_timeout"));
    assert!(!reason.is_empty());
    let (place, reason) = only_problem(&format!(
        "dns:\n  hook:\n    provider: exec\n    command: {}\n{SITE}",
        plain.display()
    ));
    assert_eq!(place, at(4, 14, "dns.hook.command"));
    assert!(reason.ends_with("is not executable (chmod +x)"), "{reason}");
    let (place, reason) = only_problem(&format!("dns:\n  hook:\n    provider: route53\n{SITE}"));
    assert_eq!(place, at(3, 15, "dns.hook.provider"));
    assert!(
        reason.starts_with("`route53` is not a DNS provider"),
        "{reason}"
    );

    let config = parse_ok(&format!(
        "dns:\n  hook:\n    provider: exec\n    command: {}\n    propagation_timeout: 30s\n    nameservers: [\"127.0.0.1:5300\"]\n{}",
        script.display(),
        acme_site("a.test", "    dns: hook\n    challenges: [dns-01]\n")
    ));
    let provider = config.sites[0].dns.as_ref().expect("provider");
    assert_eq!(
        provider.kind,
        DnsKind::Exec {
            command: script.clone()
        }
    );
    assert_eq!(provider.propagation_timeout, Duration::from_secs(30));
    assert_eq!(
        provider.nameservers,
        ["127.0.0.1:5300".parse::<SocketAddr>()?]
    );
    assert_eq!(config.sites[0].challenges, [Challenge::Dns01]);
    Ok(())
}
