//! Route matching and rewriting end to end: exact routes before the longest prefix before
//! regexes whatever the file order, `methods` filters (405 with `Allow` when only the method
//! is wrong), and the path the origin sees under `strip_prefix` and `replace_prefix`.

mod common;

use http::Method;

use common::{Env, Rampart, Upstream, empty};

/// `r.test` with routes deliberately listed in the opposite order of their precedence.
async fn routed(env: &Env, urls: [&str; 5]) -> Rampart {
    env.leaf("r", &["r.test"]);
    let [exact, long, short, regex, post] = urls;
    env.start(&format!(
        "sites:
  - hosts: [r.test]
    tls: {{ cert: r.pem, key: r.key }}
    routes:
      - {{ path_regex: \"^/api/\", upstreams: [{regex}] }}
      - {{ path_regex: \"^/u/[0-9]+$\", upstreams: [{regex}] }}
      - {{ path: /api/, upstreams: [{short}] }}
      - {{ path: /api/v1/, replace_prefix: {{ from: /api/v1/, to: /v2/ }}, upstreams: [{long}] }}
      - {{ path_exact: /api/v1/login, upstreams: [{exact}] }}
      - {{ path: /submit/, methods: [POST, PUT], strip_prefix: true, upstreams: [{post}] }}
      - {{ path_exact: /submit/form, methods: [GET], upstreams: [{exact}] }}
"
    ))
    .await
}

#[tokio::test]
async fn exact_routes_win_then_the_longest_prefix_then_regexes_whatever_the_file_order() {
    let env = Env::new();
    let ups = [
        Upstream::echo("exact").await,
        Upstream::echo("long").await,
        Upstream::echo("short").await,
        Upstream::echo("regex").await,
        Upstream::echo("post").await,
    ];
    let urls = ups.each_ref().map(Upstream::url);
    let rampart = routed(&env, urls.each_ref().map(String::as_str)).await;
    let mut client = rampart.client("r.test").await;
    for (path, upstream, target) in [
        ("/api/v1/login", "exact", "/api/v1/login"),
        ("/api/v1/login/more", "long", "/v2/login/more"),
        ("/api/v1/users?id=3", "long", "/v2/users?id=3"),
        ("/api/v1", "short", "/api/v1"),
        ("/api/other", "short", "/api/other"),
        ("/u/42", "regex", "/u/42"),
    ] {
        let echoed = client.get("r.test", path).await.echo();
        assert_eq!(
            (echoed.name.as_str(), echoed.target.as_str()),
            (upstream, target),
            "GET {path}"
        );
    }
    assert_eq!(client.get("r.test", "/u/x").await.status, 404);
    rampart.stop().await;
}

#[tokio::test]
async fn methods_filter_routes_and_a_wrong_method_gets_405_with_allow() {
    let env = Env::new();
    let ups = [
        Upstream::echo("exact").await,
        Upstream::echo("long").await,
        Upstream::echo("short").await,
        Upstream::echo("regex").await,
        Upstream::echo("post").await,
    ];
    let urls = ups.each_ref().map(Upstream::url);
    let rampart = routed(&env, urls.each_ref().map(String::as_str)).await;
    let mut client = rampart.client_h1("r.test").await;
    let send = |method: Method, path: &str| {
        client
            .request(method, "r.test", path)
            .body(empty())
            .expect("valid request")
    };
    // The exact route takes GET only; POST falls through to the prefix route, stripped.
    let get = send(Method::GET, "/submit/form");
    let post = send(Method::POST, "/submit/form");
    let delete = send(Method::DELETE, "/submit/form");
    let get = client.fetch(get).await.echo();
    assert_eq!(
        (get.name.as_str(), get.target.as_str()),
        ("exact", "/submit/form")
    );
    let post = client.fetch(post).await.echo();
    assert_eq!(
        (post.name.as_str(), post.target.as_str()),
        ("post", "/form")
    );
    let refused = client.fetch(delete).await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, POST, PUT"));
    assert_eq!(
        ups[0].requests() + ups[4].requests(),
        2,
        "a 405 reaches no origin"
    );
    rampart.stop().await;
}
