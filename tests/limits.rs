//! Gateway limits end to end: `max_in_flight` (and its `queue`), `rate_limit` per site and per
//! route, and `max_body`. Each test runs a real origin and counts what reached it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use common::client::{Body, BoxError, HttpClient};
use common::{Env, Rampart, Upstream, WAIT, empty, full, within};

/// The value of a `rampart_policy_*_requests_total` counter of `a.test`'s route `route`
/// (0 when absent). The registry is process-wide: tests that read one use routes of their own.
fn policy_counter(name: &str, route: &str) -> f64 {
    let series =
        format!("rampart_policy_{name}_requests_total{{site=\"a.test\",route=\"{route}\"}} ");
    rampart::observe::metrics::encode_text()
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// Sends a GET on `client` and returns the response with its body still streaming.
async fn open_get(client: &mut HttpClient, path: &str) -> http::Response<hyper::body::Incoming> {
    let request = client
        .request(Method::GET, "a.test", path)
        .body(empty())
        .expect("valid request");
    within(WAIT, "the response head", client.send(request))
        .await
        .expect("a response head")
}

#[tokio::test]
async fn over_max_in_flight_requests_are_refused_at_once_with_retry_after() {
    let env = Env::new();
    // The origin sends its head at once and holds the body until the gate opens: a request
    // stays in flight until then.
    let origin = Upstream::download(1024, Some(0)).await;
    let rampart = env
        .start_a_test(
            "",
            &format!(
                "      - {{ path: /, upstreams: [{}], max_in_flight: 2 }}\n",
                origin.url()
            ),
        )
        .await;
    let mut held = Vec::new();
    for n in 1..=2 {
        let mut client = rampart.client("a.test").await;
        let response = open_get(&mut client, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        origin.wait_requests(n).await;
        held.push((client, response));
    }
    let mut third = rampart.client("a.test").await;
    let refused = third.get("a.test", "/").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        origin.requests(),
        2,
        "the refused request never reached the origin"
    );

    origin.open_gate();
    for (_client, response) in held {
        let body = within(WAIT, "the held body", response.into_body().collect()).await;
        assert_eq!(body.expect("whole body").to_bytes().len(), 1024);
    }
    // The slots are free again (the head is enough; the origin gates each body anew).
    assert_eq!(open_get(&mut third, "/").await.status(), StatusCode::OK);
    rampart.stop().await;
}

#[tokio::test]
async fn requests_cancelled_mid_flight_never_leak_a_slot() {
    let env = Env::new();
    let body_origin = Upstream::download(1024, Some(0)).await;
    let head_origin = Upstream::slow(Duration::from_secs(600)).await;
    let rampart = env
        .start_a_test(
            "",
            &format!(
                "      - {{ path: /body/, upstreams: [{}], max_in_flight: 3 }}
      - {{ path: /head/, upstreams: [{}], max_in_flight: 3 }}
",
                body_origin.url(),
                head_origin.url()
            ),
        )
        .await;
    // HTTP/2: one connection, each stream reset by dropping its response mid-body.
    let mut h2 = rampart.client("a.test").await;
    assert_eq!(h2.version(), http::Version::HTTP_2);
    for round in 1..=100 {
        let response = open_get(&mut h2, "/body/").await;
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        body_origin.wait_requests(round).await;
        drop(response);
        // The proxy drops the origin's body, and with it the slot, when the stream resets.
        body_origin
            .wait_open(WAIT, "the origin connection to close", |n| n == 0)
            .await;
    }
    // HTTP/1.1: the connection dropped before the response head.
    for round in 1..=100 {
        let mut client = rampart.client_h1("a.test").await;
        let request = client
            .request(Method::GET, "a.test", "/head/")
            .body(empty())
            .expect("valid request");
        let pending = tokio::spawn(async move {
            // Never answers: the origin sleeps; the task is aborted below.
            let _ = client.send(request).await;
        });
        head_origin.wait_requests(round).await;
        pending.abort();
        assert!(pending.await.unwrap_err().is_cancelled());
        head_origin
            .wait_open(WAIT, "the origin connection to close", |n| n == 0)
            .await;
    }
    // The full limit is still there: three requests at once are all let through.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(rampart.client("a.test").await);
    }
    let mut heads = Vec::new();
    for client in &mut clients {
        heads.push(open_get(client, "/body/").await.status());
    }
    assert_eq!(heads, [StatusCode::OK; 3]);
    rampart.stop().await;
}

/// A route of one slot and a queue of one (plus `extra` route keys): the first request holds
/// the slot (its response open), the second is sent on a task of its own and will queue.
/// Every part lives to the end of the test that holds it.
struct Queued {
    origin: Upstream,
    rampart: Rampart,
    _first: HttpClient,
    held: http::Response<hyper::body::Incoming>,
    queued: tokio::task::JoinHandle<(HttpClient, http::Response<hyper::body::Incoming>)>,
}

async fn one_held_one_queued(env: &Env, extra: &str) -> Queued {
    let origin = Upstream::download(1024, Some(0)).await;
    let rampart = env
        .start_a_test(
            "",
            &format!(
                "      - {{ path: /, upstreams: [{}], max_in_flight: 1, queue: {{ max: 1, timeout: 10s }}{extra} }}\n",
                origin.url()
            ),
        )
        .await;
    let mut first = rampart.client("a.test").await;
    let held = open_get(&mut first, "/").await;
    origin.wait_requests(1).await;
    let mut second = rampart.client("a.test").await;
    let queued = tokio::spawn(async move {
        let response = open_get(&mut second, "/").await;
        (second, response)
    });
    Queued {
        origin,
        rampart,
        _first: first,
        held,
        queued,
    }
}

#[tokio::test]
async fn a_queued_request_goes_through_when_a_slot_frees() {
    let env = Env::new();
    let q = one_held_one_queued(&env, "").await;
    // A third finds the slot taken and the queue full: refused at once.
    let mut third = q.rampart.client("a.test").await;
    let mut refused = third.get("a.test", "/").await;
    // The queued request may not have reached the queue yet; retry a bounded number of times.
    for _ in 0..50 {
        if refused.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        refused = third.get("a.test", "/").await;
    }
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        q.origin.requests(),
        1,
        "the queued request waits in the proxy"
    );

    drop(q.held); // frees the slot
    let (_second, response) = within(WAIT, "the queued request", q.queued)
        .await
        .expect("the task finishes");
    assert_eq!(response.status(), StatusCode::OK);
    q.origin.wait_requests(2).await;
    drop(response);
    q.rampart.stop().await;
}

#[tokio::test]
async fn time_queued_for_a_slot_does_not_count_against_the_total_timeout() {
    let env = Env::new();
    let q = one_held_one_queued(&env, ", timeouts: { response_header: 1s, total: 1s }").await;
    // Longer than `total` in the queue; the tries to the origin have all of it left after.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Read to its end, so the queued request goes out on the same, pooled, connection: a
    // new one would start its own wait for the head and hide a deadline counted from before
    // the queue.
    q.origin.open_gate();
    q.held.into_body().collect().await.expect("the held body");
    let (_second, response) = within(WAIT, "the queued request", q.queued)
        .await
        .expect("the task finishes");
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    q.rampart.stop().await;
}

#[tokio::test]
async fn a_rate_limit_allows_exactly_the_burst_then_answers_429_with_ratelimit_headers() {
    let env = Env::new();
    let origin = Upstream::echo("o").await;
    let rampart = env.start_a_test(
        "",
        &format!(
            "      - {{ path: /, upstreams: [{}], rate_limit: {{ rate: 1/m, burst: 5, key: client_ip }} }}\n",
            origin.url()
        ),
    )
    .await;
    let mut client = rampart.client("a.test").await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(client.get("a.test", "/").await.status);
    }
    assert_eq!(statuses[..5], [StatusCode::OK; 5]);
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 3]);
    assert_eq!(origin.requests(), 5);

    let refused = client.get("a.test", "/").await;
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    // One token a minute: the next arrives within 60 seconds of the first request.
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"default\";q=5;w=300")
    );
    assert_eq!(
        refused.header("ratelimit"),
        Some(format!("\"default\";r=0;t={retry}").as_str())
    );
    rampart.stop().await;
}

#[tokio::test]
async fn a_header_keyed_rate_limit_gives_each_key_its_own_bucket() {
    let env = Env::new();
    let origin = Upstream::echo("o").await;
    let rampart = env.start_a_test(
        "",
        &format!(
            "      - {{ path: /, upstreams: [{}], rate_limit: {{ rate: 1/h, burst: 2, key: \"header:X-Api-Key\" }} }}\n",
            origin.url()
        ),
    )
    .await;
    let mut client = rampart.client("a.test").await;
    let mut get = async |key: Option<&str>| {
        let mut request = client.request(Method::GET, "a.test", "/");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        client
            .fetch(request.body(empty()).expect("valid"))
            .await
            .status
    };
    let (ok, limited) = (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        [
            get(Some("a")).await,
            get(Some("a")).await,
            get(Some("a")).await
        ],
        [ok, ok, limited]
    );
    assert_eq!(
        [
            get(Some("b")).await,
            get(Some("b")).await,
            get(Some("b")).await
        ],
        [ok, ok, limited]
    );
    // Requests without the header share one bucket of their own.
    assert_eq!(
        [get(None).await, get(None).await, get(None).await],
        [ok, ok, limited]
    );
    rampart.stop().await;
}

#[tokio::test]
async fn a_site_rate_limit_is_shared_by_all_routes_of_the_site() {
    let env = Env::new();
    let origin = Upstream::echo("o").await;
    let rampart = env.start_a_test(
        "    rate_limit: { rate: 1/h, burst: 3 }\n",
        &format!(
            "      - {{ path: /a/, upstreams: [{0}] }}\n      - {{ path: /b/, upstreams: [{0}] }}\n",
            origin.url()
        ),
    )
    .await;
    let mut client = rampart.client("a.test").await;
    let mut statuses = Vec::new();
    for path in ["/a/", "/b/", "/a/", "/b/", "/a/"] {
        statuses.push(client.get("a.test", path).await.status);
    }
    let (ok, limited) = (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses, [ok, ok, ok, limited, limited]);
    // Counted on the route the refused request was for.
    assert_eq!(policy_counter("rate_limited", "/a/"), 1.0);
    assert_eq!(policy_counter("rate_limited", "/b/"), 1.0);
    rampart.stop().await;
}

/// A sink origin behind a.test with `max_body: limit`.
async fn max_body(env: &Env, limit: &str) -> (Upstream, Rampart) {
    let origin = Upstream::sink().await;
    let route = format!(
        "      - {{ path: /, upstreams: [{}], max_body: {limit} }}\n",
        origin.url()
    );
    let rampart = env.start_a_test("", &route).await;
    (origin, rampart)
}

#[tokio::test]
async fn a_declared_body_over_max_body_is_refused_before_the_origin_sees_it() {
    let env = Env::new();
    let (origin, rampart) = max_body(&env, "4KiB").await;
    let mut client = rampart.client("a.test").await;
    let request = client
        .request(Method::POST, "a.test", "/")
        .body(full(vec![b'x'; 5000]))
        .expect("valid request");
    let reply = client.fetch(request).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(origin.requests(), 0);

    let mut client = rampart.client("a.test").await;
    let request = client
        .request(Method::POST, "a.test", "/")
        .body(full(vec![b'x'; 4096]))
        .expect("valid request");
    assert_eq!(client.fetch(request).await.status, StatusCode::OK);
    rampart.stop().await;
}

/// Uploads `kib` chunks of 1 KiB with no Content-Length to `rampart`'s a.test, over HTTP/1.1
/// and over HTTP/2, so only counting can find the excess: each gets 413.
async fn chunked_uploads_get_413(rampart: &Rampart, kib: usize) {
    for client in [
        rampart.client_h1("a.test").await,
        rampart.client("a.test").await,
    ] {
        let mut client = client;
        let chunks =
            (0..kib).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'y'; 1024]))));
        let body: Body = BodyExt::boxed_unsync(StreamBody::new(futures_util::stream::iter(chunks)));
        let request = client
            .request(Method::POST, "a.test", "/")
            .body(body)
            .expect("valid request");
        let reply = client.fetch(request).await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{:?}",
            client.version()
        );
    }
}

#[tokio::test]
async fn a_chunked_upload_over_max_body_is_cut_and_answered_413() {
    let env = Env::new();
    let (origin, rampart) = max_body(&env, "4KiB").await;
    chunked_uploads_get_413(&rampart, 32).await;
    // Whatever reached the origin was cut at the limit; it never answered a complete body.
    assert!(
        origin.received() <= 4096,
        "origin read {} bytes",
        origin.received()
    );
    rampart.stop().await;
}

/// A chunked body over `buffer_request_body` (64 KiB) streams to the origin and is cut there at
/// `max_body`: the client still gets its 413.
#[tokio::test]
async fn a_chunked_upload_over_max_body_while_streaming_is_cut_and_answered_413() {
    let env = Env::new();
    let (origin, rampart) = max_body(&env, "100KiB").await;
    chunked_uploads_get_413(&rampart, 200).await;
    assert!(
        origin.received() <= 2 * 100 * 1024,
        "origin read {} bytes",
        origin.received()
    );
    rampart.stop().await;
}
