use http::{HeaderMap, Request, Version};

use super::*;

const H1: Client<'static> = Client {
    is_h2: false,
    reached: Some("a.test"),
    trusted_peer: false,
};
const H2: Client<'static> = Client { is_h2: true, ..H1 };

/// A request with `target` and `fields` (name, value) in that order.
fn request(method: &str, target: &str, fields: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder().method(method).uri(target);
    for (name, value) in fields {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("test request")
}

fn make(mut request: Request<()>, client: Client<'_>) -> Result<(Canonical, Request<()>), Refusal> {
    canonicalize(&mut request, client, Underscores::Drop).map(|c| (c, request))
}

fn hosts(headers: &HeaderMap) -> Vec<&str> {
    (headers.get_all(header::HOST).iter())
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn a_canonical_request_passes_unchanged() {
    let (made, request) = make(
        request(
            "GET",
            "/api/x?q=1",
            &[("host", "a.test"), ("accept", "*/*")],
        ),
        H1,
    )
    .unwrap();
    assert_eq!(request.uri(), "/api/x?q=1");
    assert_eq!(&*made.authority.host, "a.test");
    assert_eq!(hosts(request.headers()), ["a.test"]);
    assert!(!made.upgrade && !made.escaped_slash);
    assert_eq!(request.headers().len(), 2);
}

#[test]
fn the_path_is_made_canonical_and_the_query_kept() {
    let (_, request) = make(
        request("GET", "//x/../%61dmin/?q=%2e%2E", &[("host", "a.test")]),
        H1,
    )
    .unwrap();
    assert_eq!(request.uri(), "/admin/?q=%2e%2E");
}

#[test]
fn target_forms_other_than_origin_and_absolute_are_refused() {
    let refused =
        |method: &str, target: &str| make(request(method, target, &[("host", "a.test")]), H1).err();
    assert_eq!(refused("GET", "a.test:443"), Some(Refusal::Target));
    assert_eq!(refused("GET", "*"), Some(Refusal::Target));
    assert_eq!(refused("GET", "ftp://a.test/x"), Some(Refusal::Target));
    assert_eq!(refused("CONNECT", "a.test:443"), Some(Refusal::Connect));
    assert_eq!(refused("OPTIONS", "*"), None);
    assert_eq!(
        refused("GET", "/../x"),
        Some(Refusal::Path(PathError::AboveRoot))
    );
}

#[test]
fn an_absolute_form_authority_wins_over_host_and_replaces_it() {
    let (made, request) = make(
        request("GET", "https://B.test:8443/x/./y", &[("host", "a.test")]),
        H1,
    )
    .unwrap();
    assert_eq!(&*made.authority.host, "b.test");
    assert_eq!(hosts(request.headers()), ["b.test:8443"]);
    assert_eq!(request.uri().path(), "/x/y");
}

#[test]
fn http11_needs_exactly_one_valid_host() {
    let refused = |fields: &[(&str, &str)]| make(request("GET", "/", fields), H1).err();
    assert_eq!(refused(&[]), Some(Refusal::MissingHost));
    assert_eq!(
        refused(&[("host", "a.test"), ("host", "b.test")]),
        Some(Refusal::DuplicateHost)
    );
    assert_eq!(
        refused(&[("host", "a.test"), ("host", "a.test")]),
        Some(Refusal::DuplicateHost)
    );
    assert_eq!(
        refused(&[("host", "a.test@b.test")]),
        Some(Refusal::Host(AuthorityError::UserInfo))
    );
    assert_eq!(
        refused(&[("host", "a.test:x")]),
        Some(Refusal::Host(AuthorityError::Port))
    );
    // Absolute-form does not excuse a missing Host (RFC 9112 §3.2).
    assert_eq!(
        make(request("GET", "https://a.test/", &[]), H1).err(),
        Some(Refusal::MissingHost)
    );
}

#[test]
fn http10_without_host_takes_the_name_the_connection_reached() {
    let mut bare = request("GET", "/", &[]);
    *bare.version_mut() = Version::HTTP_10;
    let (made, answered) = make(bare, H1).unwrap();
    assert_eq!(hosts(answered.headers()), ["a.test"]);
    assert_eq!(&*made.authority.host, "a.test");
    let mut bare = request("GET", "/", &[]);
    *bare.version_mut() = Version::HTTP_10;
    let no_sni = Client {
        reached: None,
        ..H1
    };
    assert_eq!(make(bare, no_sni).err(), Some(Refusal::MissingHost));
}

#[test]
fn h2_host_must_agree_with_authority() {
    let h2 = |target: &str, fields: &[(&str, &str)]| {
        let mut request = request("GET", target, fields);
        *request.version_mut() = Version::HTTP_2;
        make(request, H2)
    };
    let (made, request) = h2("https://a.test/x", &[]).unwrap();
    assert_eq!(
        hosts(request.headers()),
        ["a.test"],
        "Host comes from :authority"
    );
    assert_eq!(&*made.authority.host, "a.test");
    assert!(h2("https://a.test/x", &[("host", "A.test")]).is_ok());
    assert_eq!(
        h2("https://a.test/x", &[("host", "b.test")]).err(),
        Some(Refusal::HostMismatch)
    );
    assert_eq!(
        h2("https://a.test/x", &[("host", "a.test:444")]).err(),
        Some(Refusal::HostMismatch)
    );
    let (_, request) = h2("/x", &[("host", "a.test")]).unwrap();
    assert_eq!(hosts(request.headers()), ["a.test"]);
    assert_eq!(h2("/x", &[]).err(), Some(Refusal::MissingHost));
}

#[test]
fn connection_cannot_remove_what_comes_later_and_hop_fields_go() {
    let (_, request) = make(
        request(
            "GET",
            "/",
            &[
                ("host", "a.test"),
                ("connection", "close, X-User-Id"),
                ("x-user-id", "forged"),
                ("keep-alive", "5"),
                ("te", "trailers"),
                ("upgrade", "h2c"),
                ("proxy-authorization", "Basic x"),
                ("x-kept", "1"),
            ],
        ),
        H1,
    )
    .unwrap();
    let mut names: Vec<_> = request.headers().keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["host", "x-kept"]);
}

#[test]
fn connection_cannot_remove_the_host_or_the_framing() {
    let (made, request) = make(
        request(
            "POST",
            "/",
            &[
                ("host", "a.test"),
                ("content-length", "2"),
                ("connection", "Host, content-length"),
            ],
        ),
        H1,
    )
    .unwrap();
    assert_eq!(hosts(request.headers()), ["a.test"]);
    assert_eq!(made.authority.value, "a.test");
    assert_eq!(request.headers()[header::CONTENT_LENGTH], "2");
}

#[test]
fn only_websocket_upgrades_pass() {
    let upgrade = |protocol: &str| {
        make(
            request(
                "GET",
                "/",
                &[
                    ("host", "a.test"),
                    ("connection", "Upgrade"),
                    ("upgrade", protocol),
                ],
            ),
            H1,
        )
    };
    let (made, request) = upgrade("WebSocket").unwrap();
    assert!(made.upgrade);
    assert_eq!(request.headers()[header::UPGRADE], "WebSocket");
    assert_eq!(request.headers()[header::CONNECTION], "upgrade");
    for refused in ["h2c", "websocket, h2c", "HTTP/2.0", ""] {
        assert_eq!(
            upgrade(refused).err(),
            Some(Refusal::Upgrade),
            "{refused:?}"
        );
    }
}

#[test]
fn forwarding_fields_are_kept_from_trusted_peers_only() {
    let fields = [
        ("host", "a.test"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-prefix", "/evil"),
        ("forwarded", "for=6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-original-url", "/admin"),
        ("x-kept", "1"),
    ];
    let (_, untrusted) = make(request("GET", "/", &fields), H1).unwrap();
    let mut names: Vec<_> = untrusted.headers().keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["host", "x-kept"]);
    let trusted = Client {
        trusted_peer: true,
        ..H1
    };
    let (_, kept) = make(request("GET", "/", &fields), trusted).unwrap();
    assert_eq!(kept.headers().len(), fields.len());
}

#[test]
fn underscored_names_are_dropped_refused_or_allowed() {
    let with = |underscores| {
        let mut r = request("GET", "/", &[("host", "a.test"), ("x_user_id", "forged")]);
        canonicalize(&mut r, H1, underscores).map(|_| r.headers().contains_key("x_user_id"))
    };
    assert_eq!(with(Underscores::Drop), Ok(false));
    assert_eq!(with(Underscores::Reject), Err(Refusal::Underscore));
    assert_eq!(with(Underscores::Allow), Ok(true));
}

#[test]
fn two_authorization_fields_are_refused() {
    let fields = [
        ("host", "a.test"),
        ("authorization", "Bearer a"),
        ("authorization", "Bearer b"),
    ];
    assert_eq!(
        make(request("GET", "/", &fields), H1).err(),
        Some(Refusal::DuplicateAuthorization)
    );
}

#[test]
fn an_encoded_slash_is_reported_for_the_route_to_judge() {
    let (made, request) = make(request("GET", "/a%2fb", &[("host", "a.test")]), H1).unwrap();
    assert!(made.escaped_slash);
    assert_eq!(request.uri(), "/a%2Fb");
}
