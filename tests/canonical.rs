//! One canonical request end to end: each class of ambiguity an attacker could use to make an
//! origin see another request than the one routed, against real origins that echo what they
//! received. The router and the origin must agree on the path and the host of every request
//! that is forwarded; refused requests get their status and reach no origin.
//!
//! The raw probe sets at the bottom speak HTTP/1.1 as bytes over TLS and HTTP/2 through the
//! `h2` crate, so they can send what well-behaved clients never do.

mod common;

use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, StatusCode, Version};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::KeyPair;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Echoed, Env, Rampart, Upstream, WAIT, empty, within};

/// The origins behind `a.test` and `b.test`, each an echo named after its route.
struct Origins {
    admin: Upstream,
    api: Upstream,
    files: Upstream,
    debug: Upstream,
    main: Upstream,
    b: Upstream,
}

impl Origins {
    async fn new() -> Self {
        Self {
            admin: Upstream::echo("admin").await,
            api: Upstream::echo("api").await,
            files: Upstream::echo("files").await,
            debug: Upstream::echo("debug").await,
            main: Upstream::echo("main").await,
            b: Upstream::echo("b").await,
        }
    }

    /// Requests that reached any origin so far.
    fn requests(&self) -> usize {
        [
            &self.admin,
            &self.api,
            &self.files,
            &self.debug,
            &self.main,
            &self.b,
        ]
        .iter()
        .map(|o| o.requests())
        .sum()
    }
}

/// `a.test` (routes `/admin/`, `/api/` stripped, `/files/` keeping encoded slashes, `/debug/`
/// serving TRACE, and `/`) and `b.test`, each with its own certificate. `extra` is added at
/// the top level (e.g. `trusted_proxies`).
async fn hardened(env: &Env, origins: &Origins, extra: &str) -> Rampart {
    env.leaf("a", &["a.test"]);
    env.leaf("b", &["b.test"]);
    env.start(&format!(
        "{extra}sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    routes:
      - {{ path: /admin/, upstreams: [{admin}] }}
      - {{ path: /api/, strip_prefix: true, upstreams: [{api}] }}
      - {{ path: /files/, escaped_slashes: keep, upstreams: [{files}] }}
      - {{ path: /debug/, methods: [GET, TRACE], upstreams: [{debug}] }}
      - {{ path: /, upstreams: [{main}] }}
  - hosts: [b.test]
    tls: {{ cert: b.pem, key: b.key }}
    upstreams: [{b}]
",
        admin = origins.admin.url(),
        api = origins.api.url(),
        files = origins.files.url(),
        debug = origins.debug.url(),
        main = origins.main.url(),
        b = origins.b.url(),
    ))
    .await
}

/// What came back for one probe: the status, and the origin's echo when one answered.
#[derive(Debug)]
struct Outcome {
    status: u16,
    echoed: Option<Echoed>,
}

impl Outcome {
    /// The origin and the target it saw, or the status when none answered.
    fn reached(&self) -> Result<(&str, &str), u16> {
        match &self.echoed {
            Some(echoed) => Ok((&echoed.name, &echoed.target)),
            None => Err(self.status),
        }
    }

    fn echoed(&self) -> &Echoed {
        self.echoed.as_ref().expect("an origin answered")
    }
}

fn outcome(status: u16, body: &[u8]) -> Outcome {
    Outcome {
        status,
        echoed: serde_json::from_slice(body).ok(),
    }
}

/// Sends `raw` (an HTTP/1.x request head, CRLF line ends) on a new TLS connection for `sni`
/// and reads the response until the server closes (requests say `Connection: close`).
async fn raw_h1(rampart: &Rampart, sni: &str, raw: &str) -> Outcome {
    let mut stream = rampart.connect_offering(sni, &["http/1.1"]).await.stream;
    stream.write_all(raw.as_bytes()).await.expect("write");
    // TLS buffers what the socket did not take at once; reading would not send it.
    stream.flush().await.expect("flush");
    let mut response = Vec::new();
    // The server may reset after answering a request it refused: what arrived is enough.
    let _ = within(WAIT, "the response", stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?} for {raw:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    outcome(status, body.as_bytes())
}

/// Sends `request` over HTTP/2 on a new connection for `sni`; `Err` when the stream or the
/// connection was reset instead of answered.
async fn raw_h2(rampart: &Rampart, sni: &str, request: Request<()>) -> Result<Outcome, h2::Error> {
    let tls = rampart.connect_offering(sni, &["h2"]).await;
    let (sender, conn) = within(WAIT, "the h2 handshake", h2::client::handshake(tls.stream))
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let exchange = async {
        let mut sender = sender.ready().await?;
        let (response, _) = sender.send_request(request, true)?;
        let response = response.await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok(outcome(status, &bytes))
    };
    let result = within(WAIT, "the h2 exchange", exchange).await;
    conn.abort();
    result
}

/// An HTTP/1.1 request head for `a.test` asking the server to close after answering.
fn get(target: &str, fields: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n{fields}Connection: close\r\n\r\n")
}

/// An HTTP/2 request for `https://a.test{path}` with extra `fields`.
fn h2_get(path: &str, fields: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::get(format!("https://a.test{path}")).version(Version::HTTP_2);
    for (name, value) in fields {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("valid request")
}

#[tokio::test]
async fn every_spelling_of_a_guarded_path_reaches_its_route_or_is_refused() {
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    for path in [
        "//admin/x",
        "/%61dmin/x",
        "/%61%64%6D%69%6E/x",
        "/x/../admin/x",
        "/./admin/x",
        "/admin//x",
        "/admin/./x",
        "/x/%2e%2e/admin/x",
    ] {
        for mut client in [
            rampart.client_h1("a.test").await,
            rampart.client("a.test").await,
        ] {
            let version = client.version();
            let reply = client.get("a.test", path).await;
            assert_eq!(reply.status, StatusCode::OK, "{version:?} {path}");
            let echoed = reply.echo();
            assert_eq!(
                (echoed.name.as_str(), echoed.target.as_str()),
                ("admin", "/admin/x"),
                "{version:?} {path}: the guarded route, and the path it matched"
            );
        }
    }
    // `/admin%2fx` is one segment here and two for an origin that decodes it: refused.
    let before = origins.requests();
    let mut client = rampart.client("a.test").await;
    assert_eq!(client.get("a.test", "/admin%2fx").await.status, 400);
    assert_eq!(client.get("a.test", "/x/../../admin/x").await.status, 400);
    assert_eq!(
        origins.requests(),
        before,
        "refused requests reach no origin"
    );
    assert_eq!(origins.main.requests(), 0, "nothing fell to the catch-all");
    rampart.stop().await;
}

#[tokio::test]
async fn strip_prefix_cannot_be_escaped_with_dot_segments() {
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    let mut client = rampart.client("a.test").await;
    let reply = client.get("a.test", "/api/../internal").await.echo();
    assert_eq!(
        (reply.name.as_str(), reply.target.as_str()),
        ("main", "/internal"),
        "routed as /internal, not /api/ with /../internal left after the strip"
    );
    let reply = client.get("a.test", "/api/v1/../users?id=1").await.echo();
    assert_eq!(
        (reply.name.as_str(), reply.target.as_str()),
        ("api", "/users?id=1")
    );
    assert_eq!(origins.api.requests(), 1);
    rampart.stop().await;
}

#[tokio::test]
async fn encoded_slashes_are_refused_unless_the_route_keeps_them() {
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    let mut client = rampart.client("a.test").await;
    let kept = client.get("a.test", "/files/a%2fb%5cc").await.echo();
    assert_eq!(
        (kept.name.as_str(), kept.target.as_str()),
        ("files", "/files/a%2Fb%5Cc")
    );
    for path in ["/docs/a%2Fb", "/docs/a%5Cb", "/admin%2Fx"] {
        assert_eq!(client.get("a.test", path).await.status, 400, "{path}");
    }
    assert_eq!(origins.main.requests() + origins.admin.requests(), 0);
    rampart.stop().await;
}

#[tokio::test]
async fn the_origin_gets_one_host_equal_to_the_authority_routed() {
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    // HTTP/1.1: the Host as routed, lower-case and without a trailing dot.
    let reached = raw_h1(
        &rampart,
        "a.test",
        "GET /x HTTP/1.1\r\nHost: A.Test.:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    let echoed = reached.echoed();
    assert_eq!(echoed.all("host"), ["a.test:8443"]);
    assert_eq!(echoed.all("x-forwarded-host"), ["a.test:8443"]);
    // Absolute-form: its authority is the request's, and Host is rewritten to it.
    let reached = raw_h1(
        &rampart,
        "a.test",
        "GET https://a.test/admin/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reached.reached(), Ok(("admin", "/admin/x")));
    assert_eq!(reached.echoed().all("host"), ["a.test"]);
    assert_eq!(reached.echoed().all("x-forwarded-host"), ["a.test"]);
    // HTTP/2: Host made from :authority.
    let reached = raw_h2(&rampart, "a.test", h2_get("/x", &[]))
        .await
        .expect("answered");
    assert_eq!(reached.echoed().all("host"), ["a.test"]);
    assert_eq!(reached.echoed().all("x-forwarded-host"), ["a.test"]);

    let before = origins.requests();
    let two = "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_h1(&rampart, "a.test", two).await.status, 400);
    let none = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_h1(&rampart, "a.test", none).await.status, 400);
    let mismatch = h2_get("/", &[("host", "b.test")]);
    assert_eq!(
        raw_h2(&rampart, "a.test", mismatch)
            .await
            .expect("answered")
            .status,
        400
    );
    assert_eq!(
        origins.requests(),
        before,
        "refused requests reach no origin"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn another_sites_host_never_rides_on_this_connection() {
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    let cases: [(&str, u16); 4] = [
        // A duplicate Host naming site B: refused before the 421 check could be skipped.
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: b.test\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            400,
        ),
        // Absolute-form naming site B, Host naming A: the authority is B's, so 421.
        (
            "GET https://b.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            421,
        ),
        (
            "GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
            421,
        ),
    ];
    for (raw, status) in cases {
        assert_eq!(
            raw_h1(&rampart, "a.test", raw).await.status,
            status,
            "{raw:?}"
        );
    }
    let host_b = h2_get("/", &[("host", "b.test")]);
    assert_eq!(
        raw_h2(&rampart, "a.test", host_b)
            .await
            .expect("answered")
            .status,
        400
    );
    let authority_b = Request::get("https://b.test/")
        .version(Version::HTTP_2)
        .body(())
        .unwrap();
    assert_eq!(
        raw_h2(&rampart, "a.test", authority_b)
            .await
            .expect("answered")
            .status,
        421
    );
    assert_eq!(
        origins.requests(),
        0,
        "site B's origin saw nothing through site A"
    );
    rampart.stop().await;
}

#[tokio::test]
async fn client_forwarding_fields_never_reach_the_origin_from_an_untrusted_peer() {
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    let forged = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.test"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-port", "80"),
        ("x-forwarded-prefix", "/evil"),
        ("forwarded", "for=6.6.6.6;host=evil.test"),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("x-original-url", "/admin/x"),
        ("x-rewrite-url", "/admin/x"),
        ("x_forwarded_for", "6.6.6.6"),
    ];
    for mut client in [
        rampart.client_h1("a.test").await,
        rampart.client("a.test").await,
    ] {
        let mut request = client.request(Method::GET, "a.test", "/x");
        for (name, value) in forged {
            request = request.header(name, value);
        }
        let echoed = client.fetch(request.body(empty()).unwrap()).await.echo();
        assert_eq!(echoed.all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(echoed.all("x-real-ip"), ["127.0.0.1"]);
        assert_eq!(echoed.all("x-forwarded-host"), ["a.test"]);
        assert_eq!(echoed.all("x-forwarded-proto"), ["https"]);
        for (name, _) in forged.iter().skip(3).filter(|(n, _)| *n != "x-real-ip") {
            assert_eq!(
                echoed.all(name),
                Vec::<&str>::new(),
                "{name} reached the origin"
            );
        }
    }
    rampart.stop().await;
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_fields_are_kept_and_extended() {
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "trusted_proxies: [127.0.0.1/32]\n").await;
    let mut client = rampart.client("a.test").await;
    let request = client
        .request(Method::GET, "a.test", "/x")
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7;proto=http")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-prefix", "/shop")
        .header("true-client-ip", "203.0.113.7")
        .body(empty())
        .unwrap();
    let echoed = client.fetch(request).await.echo();
    assert_eq!(echoed.all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(
        echoed.all("forwarded"),
        ["for=203.0.113.7;proto=http, for=127.0.0.1;host=\"a.test\";proto=https"]
    );
    assert_eq!(
        echoed.all("x-forwarded-proto"),
        ["http"],
        "the scheme its client used"
    );
    assert_eq!(echoed.all("x-forwarded-prefix"), ["/shop"]);
    assert_eq!(echoed.all("true-client-ip"), ["203.0.113.7"]);
    assert_eq!(echoed.all("x-real-ip"), ["203.0.113.7"]);
    rampart.stop().await;
}

#[tokio::test]
async fn trace_and_connect_are_refused_unless_a_route_names_them() {
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    let mut client = rampart.client_h1("a.test").await;
    let trace = |path: &str| {
        client
            .request(Method::TRACE, "a.test", path)
            .body(empty())
            .unwrap()
    };
    let (refused, named) = (trace("/x"), trace("/debug/x"));
    let refused = client.fetch(refused).await;
    assert_eq!(refused.status, 405);
    assert_eq!(
        refused.header("allow"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
    );
    let named = client.fetch(named).await.echo();
    assert_eq!(
        (named.name.as_str(), named.method.as_str()),
        ("debug", "TRACE")
    );
    let connect = "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_h1(&rampart, "a.test", connect).await.status, 405);
    let connect = Request::connect("a.test:443").body(()).unwrap();
    assert_eq!(
        raw_h2(&rampart, "a.test", connect)
            .await
            .expect("answered")
            .status,
        405
    );
    assert_eq!(
        origins.requests(),
        1,
        "only the named TRACE reached an origin"
    );
    rampart.stop().await;
}

/// A P-256 key and a token it signs for `sub: alice`.
fn signed_token() -> (String, String) {
    let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pkcs8");
    let exp = jsonwebtoken::get_current_timestamp() + 300;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k".to_owned());
    let token = encode(&header, &json!({"sub": "alice", "exp": exp}), &private).expect("sign");
    let raw = pair.public_key_raw();
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk: Value = json!({"kty": "EC", "crv": "P-256", "kid": "k", "alg": "ES256",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..])});
    (token, json!({ "keys": [jwk] }).to_string())
}

/// `a.test` with `/me/` behind JWT auth (claim `sub` → `X-User-Id`), rate limited per client
/// IP (`burst` requests), and an open `/` route.
async fn with_auth(env: &Env, origin: &Upstream, jwks: &str, burst: u32) -> Rampart {
    env.write("jwks.json", jwks);
    env.start_a_test(
        "",
        &format!(
            "      - path: /me/
        upstreams: [{origin}]
        rate_limit: {{ rate: 1/m, burst: {burst} }}
        auth: {{ jwt: {{ keys: jwks.json, algorithms: [ES256], forward_claims: {{ sub: X-User-Id }} }} }}
      - {{ path: /, upstreams: [{origin}] }}
",
            origin = origin.url()
        ),
    )
    .await
}

#[tokio::test]
async fn identity_fields_cannot_be_forged_or_removed_by_a_client() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let (token, jwks) = signed_token();
    let rampart = with_auth(&env, &origin, &jwks, 100).await;
    let bearer = format!("Bearer {token}");
    // `Connection` names the field auth sets: hop-by-hop removal ran before auth.
    let raw = get(
        "/me/x",
        &format!("Authorization: {bearer}\r\nConnection: X-User-Id\r\nX-User-Id: mallory\r\n"),
    );
    let reached = raw_h1(&rampart, "a.test", &raw).await;
    assert_eq!(reached.echoed().all("x-user-id"), ["alice"]);
    // On a route without auth, a client's identity field is removed, in any spelling.
    let raw = get(
        "/open",
        "X-User-Id: mallory\r\nX_User_Id: mallory\r\nx-user_id: m\r\n",
    );
    let reached = raw_h1(&rampart, "a.test", &raw).await;
    let echoed = reached.echoed();
    assert_eq!(echoed.target, "/open");
    for name in ["x-user-id", "x_user_id", "x-user_id"] {
        assert_eq!(echoed.all(name), Vec::<&str>::new(), "{name}");
    }
    // Two Authorization fields: only one could be verified, so neither is.
    let before = origin.requests();
    let raw = get(
        "/me/x",
        &format!("Authorization: {bearer}\r\nAuthorization: Bearer forged\r\n"),
    );
    assert_eq!(raw_h1(&rampart, "a.test", &raw).await.status, 400);
    let raw = get(
        "/open",
        "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
    );
    assert_eq!(raw_h1(&rampart, "a.test", &raw).await.status, 400);
    assert_eq!(origin.requests(), before);
    rampart.stop().await;
}

#[tokio::test]
async fn forged_tokens_are_rate_limited_before_their_signatures_are_checked() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let (_, jwks) = signed_token();
    let (forged, _) = signed_token(); // signed by another key, with the same kid
    let rampart = with_auth(&env, &origin, &jwks, 2).await;
    let mut client = rampart.client("a.test").await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let request = client
            .request(Method::GET, "a.test", "/me/x")
            .header("authorization", format!("Bearer {forged}"))
            .body(empty())
            .unwrap();
        statuses.push(client.fetch(request).await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 429, 429],
        "the limit refuses before auth"
    );
    assert_eq!(origin.requests(), 0);
    rampart.stop().await;
}

#[tokio::test]
async fn an_http10_request_without_host_is_for_the_name_its_connection_reached() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    env.leaf("a", &["a.test"]);
    let rampart = env
        .start(&format!(
            "sites:\n  - hosts: [a.test]\n    tls: {{ cert: a.pem, key: a.key }}\n    default: true\n    upstreams: [{}]\n",
            origin.url()
        ))
        .await;
    for sni in [Some("a.test"), None] {
        let tls = (rampart.tls().alpn(&["http/1.1"]).verify_as("a.test"))
            .connect(rampart.https_addr(), sni)
            .await
            .expect("handshake");
        let mut stream = tls.stream;
        stream.write_all(b"GET /x HTTP/1.0\r\n\r\n").await.unwrap();
        stream.flush().await.unwrap();
        let mut response = Vec::new();
        let _ = within(WAIT, "the response", stream.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let echoed: Echoed = serde_json::from_str(body).unwrap_or_else(|_| panic!("{text}"));
        assert_eq!(echoed.all("host"), ["a.test"], "SNI {sni:?}");
        assert_eq!(echoed.all("x-forwarded-host"), ["a.test"], "SNI {sni:?}");
    }
    rampart.stop().await;
}

/// What a probe must come to: an origin and the target it sees, or a status and no origin.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Origin(&'static str, &'static str),
    Refused(u16),
}

/// Runs `outcome` against `expected`, checking a refused request reached no origin.
fn judge(what: &str, expected: Expect, outcome: &Outcome, reached_before: usize, reached: usize) {
    match expected {
        Expect::Origin(name, target) => {
            assert_eq!(outcome.reached(), Ok((name, target)), "{what}");
            assert_eq!(reached, reached_before + 1, "{what}");
        }
        Expect::Refused(status) => {
            assert_eq!(outcome.reached(), Err(status), "{what}");
            assert_eq!(reached, reached_before, "{what}: reached an origin");
        }
    }
}

#[tokio::test]
async fn raw_http1_probes_get_their_expected_outcome() {
    use Expect::{Origin, Refused};
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    let close = "Connection: close\r\n";
    let probes: Vec<(String, Expect)> = vec![
        // Paths (RFC 3986 §5.2.4, §6.2.2).
        (get("/", ""), Origin("main", "/")),
        (get("//admin/x", ""), Origin("admin", "/admin/x")),
        (get("/%61dmin/x", ""), Origin("admin", "/admin/x")),
        (get("/x/../admin/x", ""), Origin("admin", "/admin/x")),
        (get("/./admin/x", ""), Origin("admin", "/admin/x")),
        (get("/%2e/admin/x", ""), Origin("admin", "/admin/x")),
        (get("/admin//x", ""), Origin("admin", "/admin/x")),
        (get("/x/%2E%2E/admin/x", ""), Origin("admin", "/admin/x")),
        (get("/%7euser", ""), Origin("main", "/~user")),
        (get("/caf%c3%a9", ""), Origin("main", "/caf%C3%A9")),
        (get("/a\"b", ""), Origin("main", "/a%22b")),
        (get("/x?q=/../admin", ""), Origin("main", "/x?q=/../admin")),
        (get("/.well-known/x", ""), Origin("main", "/.well-known/x")),
        (get("/a#frag/../../x", ""), Origin("main", "/a")),
        (get("/%2e%2e/admin", ""), Refused(400)),
        (get("/..", ""), Refused(400)),
        (get("/x/..;/admin/x", ""), Refused(400)),
        (get("/admin%2fx", ""), Refused(400)),
        (get("/admin%5Cx", ""), Refused(400)),
        (get("/admin\\x", ""), Refused(400)),
        (get("/a%00b", ""), Refused(400)),
        (get("/a%0d%0ab", ""), Refused(400)),
        (get("/a%zz", ""), Refused(400)),
        (get("/a%", ""), Refused(400)),
        (get("/files/a%2fb", ""), Origin("files", "/files/a%2Fb")),
        // Target forms (RFC 9112 §3.2).
        (
            get("https://a.test/admin/x", ""),
            Origin("admin", "/admin/x"),
        ),
        (get("ftp://a.test/x", ""), Refused(400)),
        (get("https://u@a.test/x", ""), Refused(400)),
        (get("a.test:443", ""), Refused(400)),
        (get("*", ""), Refused(400)),
        (
            format!("OPTIONS * HTTP/1.1\r\nHost: a.test\r\n{close}\r\n"),
            Refused(404),
        ),
        (
            format!("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n{close}\r\n"),
            Refused(405),
        ),
        (
            format!("TRACE / HTTP/1.1\r\nHost: a.test\r\n{close}\r\n"),
            Refused(405),
        ),
        (
            format!("TRACE /debug/x HTTP/1.1\r\nHost: a.test\r\n{close}\r\n"),
            Origin("debug", "/debug/x"),
        ),
        // The authority (RFC 9112 §3.2, §3.2.2; RFC 9110 §7.2).
        (format!("GET / HTTP/1.1\r\n{close}\r\n"), Refused(400)),
        (
            format!("GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n{close}\r\n"),
            Refused(400),
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n{close}\r\n"),
            Refused(400),
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: a.test:abc\r\n{close}\r\n"),
            Refused(400),
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: u@a.test\r\n{close}\r\n"),
            Refused(400),
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: a.test/x\r\n{close}\r\n"),
            Refused(400),
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: a..test\r\n{close}\r\n"),
            Refused(400),
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: A.TEST.\r\n{close}\r\n"),
            Origin("main", "/"),
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: b.test\r\n{close}\r\n"),
            Refused(421),
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: [::1]:8443\r\n{close}\r\n"),
            Refused(421),
        ),
        (
            format!("GET https://b.test/ HTTP/1.1\r\nHost: a.test\r\n{close}\r\n"),
            Refused(421),
        ),
        ("GET / HTTP/1.0\r\n\r\n".to_owned(), Origin("main", "/")),
        // Fields.
        (
            get(
                "/",
                "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
            ),
            Refused(400),
        ),
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n".to_owned(),
            Refused(400),
        ),
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, close\r\nUpgrade: websocket, h2c\r\n\r\n".to_owned(),
            Refused(400),
        ),
        (get("/x", "Upgrade: h2c\r\n"), Origin("main", "/x")),
        // Connection may not remove the Host this hop settled (the loop checks it arrived).
        (get("/x", "Connection: host\r\n"), Origin("main", "/x")),
        (
            get("/x", "X-Original-URL: /admin/x\r\n"),
            Origin("main", "/x"),
        ),
    ];
    assert!(probes.len() >= 40, "{} probes", probes.len());
    for (raw, expected) in probes {
        let before = origins.requests();
        let outcome = raw_h1(&rampart, "a.test", &raw).await;
        judge(
            &format!("{raw:?}"),
            expected,
            &outcome,
            before,
            origins.requests(),
        );
        if let Some(echoed) = &outcome.echoed {
            // Whatever reached an origin carries one Host, the one routed, and no Upgrade.
            assert_eq!(echoed.all("host"), ["a.test"], "{raw:?}");
            assert_eq!(echoed.all("upgrade"), Vec::<&str>::new(), "{raw:?}");
            assert_eq!(echoed.all("x-original-url"), Vec::<&str>::new(), "{raw:?}");
        }
    }
    rampart.stop().await;
}

#[tokio::test]
async fn raw_http2_probes_get_their_expected_outcome() {
    use Expect::{Origin, Refused};
    let (env, origins) = (Env::new(), Origins::new().await);
    let rampart = hardened(&env, &origins, "").await;
    let at = |method: Method, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .version(Version::HTTP_2)
            .body(())
            .unwrap()
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    parts.authority = Some("a.test".parse().unwrap());
    parts.path_and_query = Some(PathAndQuery::from_static("*"));
    let asterisk = Request::get(Uri::from_parts(parts).expect("`*` target"))
        .version(Version::HTTP_2)
        .body(())
        .unwrap();
    // No `:authority`: h2 sends a URI without one only for a request not marked HTTP/2.
    let host_only = |host: &str| Request::get("/x").header("host", host).body(()).unwrap();
    let probes: Vec<(&str, Request<()>, Expect)> = vec![
        ("plain", h2_get("/", &[]), Origin("main", "/")),
        (
            "double slash",
            h2_get("//admin/x", &[]),
            Origin("admin", "/admin/x"),
        ),
        (
            "escaped a",
            h2_get("/%61dmin/x", &[]),
            Origin("admin", "/admin/x"),
        ),
        (
            "dot dot",
            h2_get("/x/../admin/x", &[]),
            Origin("admin", "/admin/x"),
        ),
        (
            "dot",
            h2_get("/./admin/x", &[]),
            Origin("admin", "/admin/x"),
        ),
        ("above root", h2_get("/../x", &[]), Refused(400)),
        ("encoded slash", h2_get("/admin%2Fx", &[]), Refused(400)),
        ("backslash", h2_get("/admin\\x", &[]), Refused(400)),
        ("nul", h2_get("/a%00", &[]), Refused(400)),
        (
            "kept slash",
            h2_get("/files/a%2fb", &[]),
            Origin("files", "/files/a%2Fb"),
        ),
        ("asterisk get", asterisk, Refused(400)),
        ("trace", at(Method::TRACE, "https://a.test/x"), Refused(405)),
        (
            "named trace",
            at(Method::TRACE, "https://a.test/debug/x"),
            Origin("debug", "/debug/x"),
        ),
        (
            "connect",
            Request::connect("a.test:443").body(()).unwrap(),
            Refused(405),
        ),
        (
            "host agrees",
            h2_get("/x", &[("host", "A.test")]),
            Origin("main", "/x"),
        ),
        (
            "host differs",
            h2_get("/x", &[("host", "b.test")]),
            Refused(400),
        ),
        (
            "host other port",
            h2_get("/x", &[("host", "a.test:444")]),
            Refused(400),
        ),
        ("host only", host_only("a.test"), Origin("main", "/x")),
        ("host only of b", host_only("b.test"), Refused(421)),
        (
            "authority of b",
            at(Method::GET, "https://b.test/"),
            Refused(421),
        ),
        (
            "userinfo",
            at(Method::GET, "https://u@a.test/"),
            Refused(400),
        ),
        (
            "port zero",
            at(Method::GET, "https://a.test:0/"),
            Refused(400),
        ),
        (
            "two authorizations",
            h2_get(
                "/",
                &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
            ),
            Refused(400),
        ),
        (
            "underscore dropped",
            h2_get("/u", &[("x_user_id", "m")]),
            Origin("main", "/u"),
        ),
    ];
    for (what, request, expected) in probes {
        let before = origins.requests();
        let outcome = raw_h2(&rampart, "a.test", request).await;
        let outcome = outcome.unwrap_or_else(|e| panic!("{what}: reset instead of answered: {e}"));
        judge(what, expected, &outcome, before, origins.requests());
        if let Some(echoed) = &outcome.echoed {
            assert_eq!(echoed.all("host"), ["a.test"], "{what}");
            assert_eq!(echoed.all("x_user_id"), Vec::<&str>::new(), "{what}");
        }
    }
    rampart.stop().await;
}

/// The probes themselves must be able to fail: an origin behind no hardening sees what was
/// sent. (Guards against a probe harness that normalises requests on its own.)
#[tokio::test]
async fn the_raw_clients_send_their_bytes_unchanged() {
    let origin = Upstream::echo("plain").await;
    let tcp = tokio::net::TcpStream::connect(origin.addr()).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    write
        .write_all(b"GET //x/../%61 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    within(WAIT, "the echo", read.read_to_end(&mut response))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains(r#""target":"//x/../%61""#), "{text}");
}
