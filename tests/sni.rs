//! Certificate choice by SNI: exact names, `*.parent` wildcards, the `default` site, refusal of
//! unknown names with `unrecognized_name`, and ALPN (h2 and http/1.1) on the chosen site.

mod common;

use http::Version;
use rustls::{AlertDescription, CipherSuite, ProtocolVersion};

use common::{Env, HttpClient, Rampart, Upstream, tls_alert, tls_connect};

/// Site `a` (a.test and *.wild.test) and site `b` (b.test), each with its own certificate and
/// echo upstream; `b` is the default site when `b_is_default`.
struct TwoSites {
    rampart: Rampart,
    env: Env,
    cert_a: rustls::pki_types::CertificateDer<'static>,
    cert_b: rustls::pki_types::CertificateDer<'static>,
    _upstreams: (Upstream, Upstream),
}

async fn two_sites(b_is_default: bool) -> TwoSites {
    let env = Env::new();
    let cert_a = env.leaf("a", &["a.test", "*.wild.test"]);
    let cert_b = env.leaf("b", &["b.test"]);
    let (a, b) = (Upstream::echo("a").await, Upstream::echo("b").await);
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [a.test, \"*.wild.test\"]
    tls: {{ cert: a.pem, key: a.key }}
    upstreams: [{a}]
  - hosts: [b.test]
    tls: {{ cert: b.pem, key: b.key }}
    default: {b_is_default}
    upstreams: [{b}]
",
            a = a.url(),
            b = b.url(),
        ))
        .await;
    TwoSites {
        rampart,
        env,
        cert_a,
        cert_b,
        _upstreams: (a, b),
    }
}

#[tokio::test]
async fn picks_certificate_by_sni_and_routes_to_that_site() {
    let sites = two_sites(false).await;
    for (sni, cert, upstream) in [
        ("a.test", &sites.cert_a, "a"),
        ("b.test", &sites.cert_b, "b"),
    ] {
        // The client verifies the chain against the test CA for `sni`; the DER pins which leaf.
        let tls = sites
            .rampart
            .connect(sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(&tls.peer_cert, cert, "{sni} got another site's certificate");
        let reply = HttpClient::handshake(tls).await.get(sni, "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.echo().name, upstream);
    }
    sites.rampart.stop().await;
}

#[tokio::test]
async fn wildcard_covers_exactly_one_label_below_its_parent() {
    let sites = two_sites(false).await;
    let tls = sites
        .rampart
        .connect("www.wild.test")
        .await
        .expect("one label below the wildcard");
    assert_eq!(tls.peer_cert, sites.cert_a);
    let reply = HttpClient::handshake(tls)
        .await
        .get("www.wild.test", "/")
        .await;
    assert_eq!(reply.echo().name, "a");

    for outside in ["deep.www.wild.test", "wild.test"] {
        let error = sites
            .rampart
            .connect(outside)
            .await
            .err()
            .unwrap_or_else(|| panic!("{outside} must be refused"));
        assert_eq!(
            tls_alert(&error),
            Some(AlertDescription::UnrecognisedName),
            "{outside}: {error}"
        );
    }
    sites.rampart.stop().await;
}

#[tokio::test]
async fn exact_host_wins_over_a_matching_wildcard() {
    let env = Env::new();
    let wildcard = env.leaf("wild", &["*.wild.test"]);
    let exact = env.leaf("exact", &["exact.wild.test"]);
    let (w, e) = (
        Upstream::echo("wildcard").await,
        Upstream::echo("exact").await,
    );
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [\"*.wild.test\"]
    tls: {{ cert: wild.pem, key: wild.key }}
    upstreams: [{}]
  - hosts: [exact.wild.test]
    tls: {{ cert: exact.pem, key: exact.key }}
    upstreams: [{}]
",
            w.url(),
            e.url()
        ))
        .await;
    let tls = rampart.connect("exact.wild.test").await.expect("handshake");
    assert_eq!(tls.peer_cert, exact);
    assert_eq!(
        HttpClient::handshake(tls)
            .await
            .get("exact.wild.test", "/")
            .await
            .echo()
            .name,
        "exact"
    );
    let tls = rampart.connect("other.wild.test").await.expect("handshake");
    assert_eq!(tls.peer_cert, wildcard);
    assert_eq!(
        HttpClient::handshake(tls)
            .await
            .get("other.wild.test", "/")
            .await
            .echo()
            .name,
        "wildcard"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn sni_is_matched_without_regard_to_case() {
    let sites = two_sites(false).await;
    let tls = sites
        .rampart
        .tls()
        .verify_as("a.test")
        .connect(sites.rampart.https_addr(), Some("A.Test"))
        .await;
    assert_eq!(tls.expect("upper-case SNI").peer_cert, sites.cert_a);
    sites.rampart.stop().await;
}

#[tokio::test]
async fn unknown_sni_without_a_default_site_fails_with_unrecognized_name() {
    let sites = two_sites(false).await;
    let roots = sites.env.ca.roots();
    let error = tls_connect(sites.rampart.https_addr(), "unknown.test", &["h2"], &roots)
        .await
        .err()
        .expect("no site serves unknown.test");
    assert_eq!(
        tls_alert(&error),
        Some(AlertDescription::UnrecognisedName),
        "{error}"
    );
    // The refusal closes that connection only: the listener keeps serving.
    assert!(sites.rampart.connect("a.test").await.is_ok());
    sites.rampart.stop().await;
}

#[tokio::test]
async fn missing_sni_without_a_default_site_fails_with_unrecognized_name() {
    let sites = two_sites(false).await;
    let error = sites
        .rampart
        .tls()
        .verify_as("a.test")
        .connect(sites.rampart.https_addr(), None)
        .await
        .err()
        .expect("no site serves a handshake without SNI");
    assert_eq!(
        tls_alert(&error),
        Some(AlertDescription::UnrecognisedName),
        "{error}"
    );
    sites.rampart.stop().await;
}

#[tokio::test]
async fn default_site_serves_unknown_and_missing_sni() {
    let sites = two_sites(true).await;
    let addr = sites.rampart.https_addr();
    for sni in [Some("unknown.test"), None] {
        // The default site's certificate names b.test, so that is the name to verify.
        let tls = sites
            .rampart
            .tls()
            .verify_as("b.test")
            .connect(addr, sni)
            .await;
        let tls = tls.unwrap_or_else(|e| panic!("SNI {sni:?}: {e}"));
        assert_eq!(
            tls.peer_cert, sites.cert_b,
            "SNI {sni:?} did not get the default site"
        );
        let mut client = HttpClient::handshake(tls).await;
        let reply = client.get("b.test", "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.echo().name, "b");
        // The connection belongs to the default site: another site's host is misdirected.
        assert_eq!(client.get("a.test", "/").await.status, 421, "SNI {sni:?}");
    }
    // Known names still get their own site.
    assert_eq!(
        sites
            .rampart
            .connect("a.test")
            .await
            .expect("handshake")
            .peer_cert,
        sites.cert_a
    );
    sites.rampart.stop().await;
}

/// ALPN offer, the protocol the server must choose, the HTTP version then spoken.
type AlpnCase = (&'static [&'static str], Option<&'static [u8]>, Version);

#[tokio::test]
async fn negotiates_h2_and_http11_and_proxies_both() {
    let sites = two_sites(false).await;
    let addr = sites.rampart.https_addr();
    let cases: [AlpnCase; 4] = [
        (&["h2", "http/1.1"], Some(b"h2"), Version::HTTP_2),
        (&["h2"], Some(b"h2"), Version::HTTP_2),
        (&["http/1.1"], Some(b"http/1.1"), Version::HTTP_11),
        (&[], None, Version::HTTP_11),
    ];
    for (offer, chosen, version) in cases {
        let tls = sites
            .rampart
            .tls()
            .alpn(offer)
            .connect(addr, Some("a.test"))
            .await
            .expect("handshake");
        assert_eq!(tls.alpn.as_deref(), chosen, "ALPN offer {offer:?}");
        let mut client = HttpClient::handshake(tls).await;
        assert_eq!(client.version(), version);
        // Two requests: the connection is kept alive in both protocols.
        for path in ["/first", "/second?q=1"] {
            let reply = client.get("a.test", path).await;
            assert_eq!(reply.status, 200, "{offer:?} {path}");
            let echoed = reply.echo();
            assert_eq!(echoed.target, path);
            // Origins always get HTTP/1.1 with a Host header, whatever the client spoke.
            assert_eq!(echoed.version, "HTTP/1.1");
            assert_eq!(echoed.header("host"), Some("a.test"));
        }
    }
    sites.rampart.stop().await;
}

#[tokio::test]
async fn accepts_tls12_and_tls13() {
    let sites = two_sites(false).await;
    let addr = sites.rampart.https_addr();
    let tls13 = sites
        .rampart
        .connect("a.test")
        .await
        .expect("TLS 1.3 handshake");
    assert_eq!(tls13.version, ProtocolVersion::TLSv1_3);
    let tls12 = sites
        .rampart
        .tls()
        .tls12_only()
        .connect(addr, Some("b.test"))
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(tls12.version, ProtocolVersion::TLSv1_2);
    assert_eq!(tls12.peer_cert, sites.cert_b);
    assert_eq!(
        HttpClient::handshake(tls12)
            .await
            .get("b.test", "/")
            .await
            .echo()
            .name,
        "b"
    );
    sites.rampart.stop().await;
}

/// Handshakes twice with one client configuration (and so one session store); returns how the
/// second handshake went.
async fn second_handshake_kind(
    addr: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::HandshakeKind {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("version supported")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("a.test").expect("valid name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        kinds.push(
            tls.get_ref()
                .1
                .handshake_kind()
                .expect("handshake finished"),
        );
        // TLS 1.3 tickets arrive after the handshake: read a response so the client stores them.
        tls.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
            .await
            .expect("write request");
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await.expect("read response");
        assert!(
            response.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&response)
        );
    }
    assert_eq!(
        kinds[0],
        rustls::HandshakeKind::Full,
        "the first handshake is full"
    );
    kinds[1]
}

#[tokio::test]
async fn sessions_resume_with_tls13_tickets_and_tls12_session_ids() {
    let sites = two_sites(false).await;
    let addr = sites.rampart.https_addr();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let kind = second_handshake_kind(addr, sites.env.ca.roots(), version).await;
        assert_eq!(kind, rustls::HandshakeKind::Resumed, "{version:?}");
    }
    sites.rampart.stop().await;
}

#[tokio::test]
async fn cipher_suites_limit_what_handshakes_negotiate() {
    let env = Env::new();
    env.leaf("a", &["a.test"]);
    let site = "sites:\n  - hosts: [a.test]\n    tls: { cert: a.pem, key: a.key }\n    routes: [{ path: /, respond: { status: 200, body: ok } }]\n";
    let suite = |tls: &common::Tls| {
        let suite = tls.stream.get_ref().1.negotiated_cipher_suite();
        suite.expect("a finished handshake has a suite").suite()
    };
    // Our client prefers AES-256 (rustls's order), and by default Rampart follows the client.
    let rampart = env.start(site).await;
    let tls = rampart.connect("a.test").await.expect("handshake");
    assert_eq!(suite(&tls), CipherSuite::TLS13_AES_256_GCM_SHA384);
    rampart.stop().await;

    let rampart = env
        .start(&format!(
            "downstream:\n  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n{site}"
        ))
        .await;
    let tls13 = rampart.connect("a.test").await.expect("TLS 1.3 handshake");
    assert_eq!(suite(&tls13), CipherSuite::TLS13_AES_128_GCM_SHA256);
    let tls12 = rampart
        .tls()
        .tls12_only()
        .connect(rampart.https_addr(), Some("a.test"))
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        suite(&tls12),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    let mut client = HttpClient::handshake(tls13).await;
    assert_eq!(client.get("a.test", "/").await.text(), "ok");
    rampart.stop().await;
}
