//! Balancing end to end: `weighted` keeps its ratio, `least_conn` avoids the busy origin,
//! `ip_hash` and `header_hash` stick, `random_two` spreads.

mod common;

use std::collections::{HashMap, HashSet};

use http::Method;

use common::{Env, Rampart, Upstream, WAIT, empty, within};

/// Sends `n` GETs on one connection and counts the answering origins by name.
async fn spread(
    rampart: &Rampart,
    n: usize,
    header: Option<(&str, &str)>,
) -> HashMap<String, usize> {
    let mut client = rampart.client("a.test").await;
    let mut counts = HashMap::new();
    for _ in 0..n {
        let mut request = client.request(Method::GET, "a.test", "/");
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let reply = client.fetch(request.body(empty()).expect("valid")).await;
        *counts.entry(reply.echo().name).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_sends_three_of_four_requests_to_the_weight_three_origin() {
    let env = Env::new();
    let (heavy, light) = (Upstream::echo("heavy").await, Upstream::echo("light").await);
    let rampart = env
        .start_a_test_route(&format!(
            "        balance: weighted
        upstreams:
          - {{ url: {}, weight: 3 }}
          - {}
",
            heavy.url(),
            light.url()
        ))
        .await;
    let counts = spread(&rampart, 400, None).await;
    let heavy_share = counts.get("heavy").copied().unwrap_or(0);
    assert!(
        (280..=320).contains(&heavy_share),
        "expected about 300 of 400 on the weight-3 origin: {counts:?}"
    );
    assert_eq!(heavy_share + counts.get("light").copied().unwrap_or(0), 400);
    rampart.stop().await;
}

#[tokio::test]
async fn least_conn_sends_to_the_idle_origin_while_another_holds_a_slow_request() {
    let env = Env::new();
    let (one, two) = (
        Upstream::holding("one").await,
        Upstream::holding("two").await,
    );
    let rampart = env
        .start_a_test_route(&format!(
            "        balance: least_conn
        upstreams: [{}, {}]
",
            one.url(),
            two.url()
        ))
        .await;
    let mut slow = rampart.client("a.test").await;
    let request = slow
        .request(Method::GET, "a.test", "/hold")
        .body(empty())
        .expect("valid");
    let held = tokio::spawn(async move { slow.fetch(request).await.text() });
    // Whichever origin holds it, every other request must go to the other one.
    let holder = within(WAIT, "the slow request to arrive", async {
        loop {
            if one.requests() > 0 {
                break "one";
            }
            if two.requests() > 0 {
                break "two";
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut client = rampart.client("a.test").await;
    for _ in 0..10 {
        let name = client.get("a.test", "/").await.text();
        assert_ne!(
            name, holder,
            "least_conn chose the origin holding a request"
        );
    }
    one.open_gate();
    two.open_gate();
    assert_eq!(
        within(WAIT, "the held request", held)
            .await
            .expect("joined"),
        holder
    );
    rampart.stop().await;
}

#[tokio::test]
async fn ip_hash_sends_every_request_of_a_client_to_the_same_origin() {
    let env = Env::new();
    let origins = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    ];
    let urls: Vec<String> = origins.iter().map(Upstream::url).collect();
    let rampart = env
        .start_a_test_route(&format!(
            "        balance: ip_hash\n        upstreams: [{}]\n",
            urls.join(", ")
        ))
        .await;
    let counts = spread(&rampart, 30, None).await;
    assert_eq!(counts.len(), 1, "one client IP, one origin: {counts:?}");
    // A second connection from the same IP lands on the same origin.
    assert_eq!(
        spread(&rampart, 5, None).await.keys().collect::<Vec<_>>(),
        counts.keys().collect::<Vec<_>>()
    );
    rampart.stop().await;
}

#[tokio::test]
async fn header_hash_sticks_per_header_value_and_spreads_across_values() {
    let env = Env::new();
    let origins = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    ];
    let urls: Vec<String> = origins.iter().map(Upstream::url).collect();
    let rampart = env
        .start_a_test_route(&format!(
            "        balance: {{ header_hash: X-User }}\n        upstreams: [{}]\n",
            urls.join(", ")
        ))
        .await;
    let mut used = HashSet::new();
    for user in 0..12 {
        let value = format!("user-{user}");
        let counts = spread(&rampart, 4, Some(("x-user", &value))).await;
        assert_eq!(counts.len(), 1, "{value} moved between origins: {counts:?}");
        used.extend(counts.into_keys());
    }
    assert!(used.len() >= 2, "12 users all hashed to {used:?}");
    // Without the header: round robin.
    assert_eq!(spread(&rampart, 6, None).await.len(), 3);
    rampart.stop().await;
}

#[tokio::test]
async fn random_two_spreads_requests_over_every_origin() {
    let env = Env::new();
    let origins = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
    ];
    let urls: Vec<String> = origins.iter().map(Upstream::url).collect();
    let rampart = env
        .start_a_test_route(&format!(
            "        balance: random_two\n        upstreams: [{}]\n",
            urls.join(", ")
        ))
        .await;
    let counts = spread(&rampart, 300, None).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 50), "uneven: {counts:?}");
    rampart.stop().await;
}

#[tokio::test]
async fn max_conns_caps_an_origin_and_a_route_with_every_origin_full_answers_503() {
    let env = Env::new();
    let one = Upstream::holding("one").await;
    let rampart = env
        .start_a_test_route(&format!(
            "        upstreams: [{{ url: \"{}\", max_conns: 1 }}]\n",
            one.url()
        ))
        .await;
    let mut slow = rampart.client("a.test").await;
    let request = slow
        .request(Method::GET, "a.test", "/hold")
        .body(empty())
        .expect("valid");
    let held = tokio::spawn(async move { slow.fetch(request).await.status });
    within(WAIT, "the held request to arrive", async {
        while one.requests() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut client = rampart.client("a.test").await;
    let full = client.get("a.test", "/").await;
    assert_eq!(full.status, 503, "{}", full.text());
    assert_eq!(full.header("retry-after"), Some("1"));
    one.open_gate();
    assert_eq!(
        within(WAIT, "the held request", held)
            .await
            .expect("joined"),
        200
    );
    // The slot came back with the held response.
    assert_eq!(client.get("a.test", "/").await.status, 200);
    rampart.stop().await;
}
