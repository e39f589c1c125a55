//! Header rules and HSTS end to end: request rules (site then route) reach the origin after
//! our forwarding fields and cannot forge them; response rules apply to proxied and `respond`
//! responses; HSTS is on every response of the site, Rampart's own error pages included.

mod common;

use http::Method;

use common::{Env, Upstream, empty};

#[tokio::test]
async fn request_rules_set_add_and_remove_what_the_origin_sees_site_then_route() {
    let env = Env::new();
    env.leaf("h", &["h.test"]);
    let origin = Upstream::echo("origin").await;
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [h.test]
    tls: {{ cert: h.pem, key: h.key }}
    headers:
      request:
        set: {{ X-Tier: site, X-Site-Only: \"1\" }}
        remove: [X-Secret]
    routes:
      - path: /
        upstreams: [{}]
        headers:
          request:
            set: {{ X-Tier: route }}
            add: {{ X-Added: two }}
",
            origin.url()
        ))
        .await;
    let mut client = rampart.client_h1("h.test").await;
    let request = client
        .request(Method::GET, "h.test", "/")
        .header("x-secret", "hunter2")
        .header("x-added", "one")
        .header("x-tier", "client")
        .body(empty())
        .expect("valid request");
    let echoed = client.fetch(request).await.echo();
    assert_eq!(echoed.header("x-secret"), None);
    assert_eq!(echoed.header("x-tier"), Some("route"));
    assert_eq!(echoed.header("x-site-only"), Some("1"));
    assert_eq!(echoed.all("x-added"), ["one", "two"]);
    // Forwarding fields are ours (rules naming them are refused by `rampart check`).
    assert_eq!(echoed.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(echoed.header("x-forwarded-for"), Some("127.0.0.1"));
    rampart.stop().await;
}

#[tokio::test]
async fn response_rules_and_hsts_apply_to_proxied_respond_and_error_responses() {
    let env = Env::new();
    env.leaf("h", &["h.test"]);
    let origin = Upstream::echo("origin").await;
    let rampart = env
        .start(&format!(
            "sites:
  - hosts: [h.test]
    tls: {{ cert: h.pem, key: h.key }}
    hsts: {{ max_age: 365d, include_subdomains: true, preload: true }}
    headers:
      response:
        set: {{ X-Frame-Options: DENY }}
        add: {{ X-Served-By: rampart }}
    routes:
      - path: /app/
        upstreams: [{}]
        headers:
          response:
            remove: [X-Frame-Options]
            add: {{ X-Route: app }}
      - {{ path_exact: /ping, respond: {{ status: 200, body: \"pong\\n\" }} }}
",
            origin.url()
        ))
        .await;
    let hsts = "max-age=31536000; includeSubDomains; preload";
    let mut client = rampart.client("h.test").await;
    let proxied = client.get("h.test", "/app/x").await;
    assert_eq!(proxied.status, 200);
    assert_eq!(
        proxied.header("x-frame-options"),
        None,
        "route rule after site rule"
    );
    assert_eq!(proxied.header("x-served-by"), Some("rampart"));
    assert_eq!(proxied.header("x-route"), Some("app"));
    assert_eq!(proxied.header("strict-transport-security"), Some(hsts));
    let respond = client.get("h.test", "/ping").await;
    assert_eq!(respond.text(), "pong\n");
    assert_eq!(respond.header("x-frame-options"), Some("DENY"));
    assert_eq!(respond.header("strict-transport-security"), Some(hsts));
    let missing = client.get("h.test", "/nowhere").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("strict-transport-security"), Some(hsts));
    rampart.stop().await;
}

#[tokio::test]
async fn hsts_as_a_bare_duration_is_max_age_only() {
    let env = Env::new();
    env.leaf("h", &["h.test"]);
    let rampart = env
        .start(
            "sites:
  - hosts: [h.test]
    tls: { cert: h.pem, key: h.key }
    hsts: 1d
    routes:
      - { path: /, respond: { status: 200, body: \"ok\\n\" } }
",
        )
        .await;
    let mut client = rampart.client("h.test").await;
    let reply = client.get("h.test", "/").await;
    assert_eq!(
        reply.header("strict-transport-security"),
        Some("max-age=86400")
    );
    rampart.stop().await;
}
