//! JWT auth end to end: tokens minted here with keys generated per run, checked by Rampart in
//! front of an echo origin; keys from a JWKS file and from a JWKS url that rotates.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::KeyPair;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use common::{Env, HttpClient, Rampart, Reply, Upstream, WAIT, empty, within};

/// A P-256 signing key, and its public half as a JWK.
struct EcKey {
    private: EncodingKey,
    pair: KeyPair,
}

impl EcKey {
    fn new() -> Self {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pkcs8");
        Self { private, pair }
    }

    fn jwk(&self, kid: &str) -> Value {
        let raw = self.pair.public_key_raw(); // 0x04 || x || y
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
               "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..])})
    }

    fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &self.private).expect("sign")
    }
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).expect("fits")
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": now() + 300})
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// `a.test` with one route `/api/` behind JWT auth whose keys are `keys_yaml`.
async fn guarded(env: &Env, origin: &Upstream, keys_yaml: &str) -> Rampart {
    env.leaf("a", &["a.test"]);
    env.start(&format!(
        "sites:
  - hosts: [a.test]
    tls: {{ cert: a.pem, key: a.key }}
    routes:
      - path: /api/
        upstreams: [{origin}]
        auth:
          jwt:
            {keys_yaml}
            issuer: https://issuer.test
            audience: [api, web]
            algorithms: [ES256]
            leeway: 5s
            forward_claims: {{ sub: X-User-Id }}
            strip_authorization: true
",
        origin = origin.url(),
    ))
    .await
}

async fn get_with(client: &mut HttpClient, token: Option<&str>) -> Reply {
    let mut request = client
        .request(Method::GET, "a.test", "/api/me")
        .header("x-user-id", "mallory");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    client
        .fetch(request.body(empty()).expect("valid request"))
        .await
}

#[tokio::test]
async fn a_valid_token_reaches_the_origin_with_its_subject_and_without_client_identity() {
    let (env, origin, key) = (Env::new(), Upstream::echo("origin").await, EcKey::new());
    env.write("jwks.json", &jwks(&[key.jwk("a")]));
    let rampart = guarded(&env, &origin, "keys: jwks.json").await;
    let mut client = rampart.client("a.test").await;

    let reply = get_with(&mut client, Some(&key.sign("a", &claims()))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echoed = reply.echo();
    assert_eq!(
        echoed.all("x-user-id"),
        ["alice"],
        "client copy removed, claim set"
    );
    assert_eq!(echoed.header("authorization"), None, "strip_authorization");
    rampart.stop().await;
}

#[tokio::test]
async fn bad_or_missing_tokens_get_401_with_a_bearer_challenge_and_never_reach_the_origin() {
    let (env, origin, key, stranger) = (
        Env::new(),
        Upstream::echo("origin").await,
        EcKey::new(),
        EcKey::new(),
    );
    env.write("jwks.json", &jwks(&[key.jwk("a")]));
    common::logs::capture(common::logs::Format::Json, "rampart::access=info");
    let rampart = guarded(&env, &origin, "keys: jwks.json").await;
    let mut client = rampart.client("a.test").await;
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims();
        change(&mut claims);
        key.sign("a", &claims)
    };
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"guess"),
    )
    .expect("sign");
    let cases = [
        ("expired", Some(with(&|c| c["exp"] = json!(now() - 3600)))),
        ("wrong audience", Some(with(&|c| c["aud"] = json!("other")))),
        (
            "wrong issuer",
            Some(with(&|c| c["iss"] = json!("https://evil.test"))),
        ),
        ("bad signature", Some(stranger.sign("a", &claims()))),
        ("algorithm not allowed", Some(hs256)),
        ("malformed", Some("not.a.jwt".to_owned())),
        ("missing", None),
    ];
    for (what, token) in cases {
        let reply = get_with(&mut client, token.as_deref()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        if token.is_some() {
            assert_eq!(challenge, "Bearer error=\"invalid_token\"", "{what}");
        } else {
            assert_eq!(challenge, "Bearer", "{what}: RFC 6750 §3.1, no error code");
        }
        assert!(reply.text().starts_with("401"), "{what}: {}", reply.text());
    }
    assert_eq!(
        origin.requests(),
        0,
        "refused requests never reach the origin"
    );
    // Each refusal's reason is on its access log line (other tests may add their own lines).
    let logged: Vec<serde_json::Value> = common::logs::captured()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line["target"] == "rampart::access")
        .collect();
    for reason in [
        "expired",
        "wrong_audience",
        "wrong_issuer",
        "bad_signature",
        "algorithm_not_allowed",
        "malformed",
        "missing",
    ] {
        assert!(
            logged.iter().any(|line| line["status"] == 401
                && line["error"] == "unauthorized"
                && line["auth"] == reason),
            "no access line with auth={reason}"
        );
    }
    rampart.stop().await;
}

/// A JWKS endpoint on 127.0.0.1 serving whatever `document` holds, counting fetches.
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<String>>,
    fetches: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let document = Arc::new(Mutex::new(document));
        let (count, fetches) = watch::channel(0);
        let (count, served) = (Arc::new(count), document.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (count, served) = (count.clone(), served.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_request: Request<Incoming>| {
                        let body = served.lock().expect("not poisoned").clone();
                        count.send_modify(|n| *n += 1);
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    // A connection error only ends that connection.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            document,
            fetches,
            task,
        }
    }

    fn serve(&self, document: String) {
        *self.document.lock().expect("not poisoned") = document;
    }

    fn fetches(&self) -> usize {
        *self.fetches.borrow()
    }

    async fn wait_fetches(&mut self, n: usize, limit: Duration) {
        within(limit, "a JWKS fetch", self.fetches.wait_for(|f| *f >= n))
            .await
            .expect("server alive");
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `token` until it is accepted: the key set is swapped just after the fetch is served.
async fn until_accepted(client: &mut HttpClient, token: &str) -> Reply {
    for _ in 0..100 {
        let reply = get_with(client, Some(token)).await;
        if reply.status == StatusCode::OK {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("token never accepted");
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_a_bounded_number_of_times_and_accepts_rotated_keys() {
    let (env, origin) = (Env::new(), Upstream::echo("origin").await);
    let (old, new) = (EcKey::new(), EcKey::new());
    let mut server = JwksServer::start(jwks(&[old.jwk("a")])).await;
    let keys = format!(
        "jwks_url: http://{}/jwks.json\n            jwks_refresh: 1h",
        server.addr
    );
    let rampart = guarded(&env, &origin, &keys).await;
    let mut client = rampart.client("a.test").await;

    server.wait_fetches(1, WAIT).await;
    until_accepted(&mut client, &old.sign("a", &claims())).await;

    // Rotation: the issuer now signs with `b`. Tokens naming it ask for a refetch, which comes
    // at most once per 10 s however many such requests arrive.
    server.serve(jwks(&[new.jwk("b")]));
    let rotated = new.sign("b", &claims());
    for _ in 0..20 {
        let reply = get_with(&mut client, Some(&rotated)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "before the refetch");
    }
    assert_eq!(server.fetches(), 1, "unknown kids do not fetch per request");
    server.wait_fetches(2, Duration::from_secs(15)).await;
    let reply = until_accepted(&mut client, &rotated).await;
    assert_eq!(reply.echo().header("x-user-id"), Some("alice"));
    assert_eq!(server.fetches(), 2, "one refetch for all those requests");
    rampart.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_the_fetched_jwks_instead_of_starting_empty() {
    let (env, origin, key) = (Env::new(), Upstream::echo("origin").await, EcKey::new());
    let mut server = JwksServer::start(jwks(&[key.jwk("a")])).await;
    let keys = format!(
        "jwks_url: http://{}/jwks.json\n            jwks_refresh: 1h",
        server.addr
    );
    let rampart = guarded(&env, &origin, &keys).await;
    let mut client = rampart.client("a.test").await;
    server.wait_fetches(1, WAIT).await;
    let token = key.sign("a", &claims());
    until_accepted(&mut client, &token).await;

    rampart.server().reload().expect("the same file reloads");
    // Accepted at once: a table rebuilt with an empty key set would refuse it (unknown kid).
    let reply = get_with(&mut client, Some(&token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        server.fetches(),
        1,
        "the reload reused the key set and its refresh task"
    );
    rampart.stop().await;
}
