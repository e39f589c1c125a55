//! On-demand TLS end to end: a `tls: {acme: on_demand}` site with `hosts: ["*"]`, Pebble as the
//! CA (validating http-01 on Rampart's `:80` listener, resolving names through Knot), Knot
//! answering 127.0.0.1 for every name under `d.test` (the "resolves to this host" check), and an
//! ask endpoint on loopback that allows names starting with `ok`, refuses the others, and takes
//! two seconds to refuse names starting with `slow`.

mod common;
#[path = "common/knot.rs"]
mod knot;
#[path = "common/pebble.rs"]
mod pebble;

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rampart::tls::LeafFacts;
use rampart::{Listeners, Server};

use common::{Env, HttpClient, TlsClient};
use pebble::{Pebble, PebbleOptions};

type TestResult = Result<(), Box<dyn Error>>;

/// The ask endpoint: calls per name.
struct Ask {
    port: u16,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Ask {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the ask endpoint");
        let port = listener.local_addr().expect("bound").port();
        let calls = Arc::new(Mutex::new(HashMap::new()));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let counted = counted.clone();
                        async move {
                            let domain = request
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("domain="))
                                .unwrap_or_default()
                                .to_owned();
                            *counted
                                .lock()
                                .expect("calls")
                                .entry(domain.clone())
                                .or_insert(0) += 1;
                            if domain.starts_with("slow") {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            let status = if domain.starts_with("ok") { 200 } else { 403 };
                            let response = Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .expect("valid response");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { port, calls, task }
    }

    fn calls(&self, name: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.calls.lock().expect("calls").values().sum()
    }
}

impl Drop for Ask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Everything a test needs: the CA, the DNS, the ask endpoint and a running Rampart.
struct Bed {
    _env: Env,
    _knot: knot::Knot,
    pebble: Pebble,
    ask: Ask,
    server: Server,
    static_roots: rustls::RootCertStore,
}

impl Bed {
    async fn start() -> Self {
        Self::with("").await
    }

    /// With `limits` added to the `on_demand:` section (each line indented two spaces).
    async fn with(limits: &str) -> Self {
        let env = Env::new();
        env.leaf("s", &["static.test"]);
        let knot = knot::Knot::start(&["d.test"]);
        let listeners = Listeners::loopback().expect("loopback listeners");
        let http_port = listeners.http_addr().expect("an http listener").port();
        let mut options = PebbleOptions::new(http_port);
        options.dns_server = Some(knot.addr());
        let pebble = Pebble::start(options).await;
        let ask = Ask::start().await;
        let config = env.write(
            "rampart.yaml",
            &format!(
                "listen: {{ https: \"127.0.0.1:8443\", http: \"127.0.0.1:8080\" }}\n\
                 storage: storage\nlog: {{ format: text, level: warn }}\nshutdown_grace: 5s\n\
                 acme:\n  directory: {}\n  ca_bundle: {}\n\
                 on_demand:\n  ask: http://127.0.0.1:{}/allowed\n  nameservers: [\"{}\"]\n{limits}\
                 sites:\n\
                 \x20 - {{ hosts: [static.test], tls: {{ cert: s.pem, key: s.key }}, \
                 routes: [{{ path: /, respond: {{ body: \"s\\n\" }} }}] }}\n\
                 \x20 - {{ hosts: [\"*\"], tls: {{ acme: on_demand }}, \
                 routes: [{{ path: /, respond: {{ body: \"d\\n\" }} }}] }}\n",
                pebble.directory_url(),
                pebble.ca_bundle().display(),
                ask.port,
                knot.addr(),
            ),
        );
        let config = rampart::config::load(&config).unwrap_or_else(|e| panic!("valid config: {e}"));
        let server = Server::start(config, listeners)
            .await
            .expect("server starts");
        let static_roots = env.ca.roots();
        Self {
            _env: env,
            _knot: knot,
            pebble,
            ask,
            server,
            static_roots,
        }
    }

    /// Orders Pebble received so far.
    fn orders(&self) -> usize {
        self.pebble.log().matches("POST /order-plz").count()
    }

    /// A handshake for `name` trusting Pebble: the leaf's names, or why it failed.
    async fn handshake(&self, name: &str) -> Result<Vec<String>, String> {
        let tls = TlsClient::new(self.pebble.roots())
            .connect(self.server.https_addr(), Some(name))
            .await
            .map_err(|e| e.to_string())?;
        Ok(LeafFacts::parse(&tls.peer_cert)
            .map_err(|e| e.to_string())?
            .names)
    }

    /// How long a handshake to the configured static site takes.
    async fn static_handshake(&self) -> Duration {
        let started = Instant::now();
        TlsClient::new(self.static_roots.clone())
            .connect(self.server.https_addr(), Some("static.test"))
            .await
            .expect("the static site's handshake");
        started.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_gets_its_certificate_at_the_first_handshake() -> TestResult {
    let bed = Arc::new(Bed::start().await);
    // Five clients at once for a name no one asked for yet: one admission, one order.
    let first: Vec<_> = (0..5)
        .map(|_| {
            let bed = bed.clone();
            tokio::spawn(async move { bed.handshake("ok1.d.test").await })
        })
        .collect();
    for handshake in first {
        let names = handshake.await??;
        assert_eq!(names, ["ok1.d.test"], "pebble log:\n{}", bed.pebble.log());
    }
    assert_eq!(bed.ask.calls("ok1.d.test"), 1);
    assert_eq!(bed.orders(), 1);
    // Served from now on without asking or ordering again, by the `*` site.
    let tls = TlsClient::new(bed.pebble.roots())
        .connect(bed.server.https_addr(), Some("OK1.d.test"))
        .await?;
    let reply = HttpClient::handshake(tls)
        .await
        .get("ok1.d.test", "/")
        .await;
    assert_eq!(reply.text(), "d\n");
    assert_eq!((bed.ask.calls("ok1.d.test"), bed.orders()), (1, 1));
    let bed = Arc::try_unwrap(bed).map_err(|_| "every handshake is done")?;
    assert!(bed.server.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_name_is_never_ordered_and_not_asked_again() -> TestResult {
    let bed = Bed::start().await;
    let error = bed.handshake("no1.d.test").await.expect_err("refused");
    assert!(
        error.contains("UnrecognisedName") || error.contains("unrecognized"),
        "{error}"
    );
    assert_eq!(bed.ask.calls("no1.d.test"), 1);
    bed.handshake("no1.d.test")
        .await
        .expect_err("still refused");
    assert_eq!(
        bed.ask.calls("no1.d.test"),
        1,
        "remembered, not asked again"
    );
    // A name that does not resolve here, an IP address, a bare label: refused before asking.
    bed.handshake("ok.elsewhere.test")
        .await
        .expect_err("not here");
    bed.handshake("127.0.0.2").await.expect_err("an address");
    bed.handshake("oklabel").await.expect_err("one label");
    assert_eq!(bed.ask.total(), 1, "only no1.d.test was asked");
    assert_eq!(bed.orders(), 0);
    assert!(bed.server.shutdown().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_names_orders_nothing_and_blocks_no_one() -> TestResult {
    let bed = Arc::new(Bed::start().await);
    let mut baseline = Vec::new();
    for _ in 0..5 {
        baseline.push(bed.static_handshake().await);
    }
    // 200 names, each refused after two seconds of asking.
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let bed = bed.clone();
            let name = format!("slow{i}-{:x}.d.test", rand::random::<u32>());
            tokio::spawn(async move { bed.handshake(&name).await.is_err() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While all of them wait for the ask endpoint, other handshakes go through as before.
    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(bed.static_handshake().await);
    }
    let mut refused = 0;
    for handshake in flood {
        refused += usize::from(handshake.await?);
    }
    assert_eq!(refused, 200);
    assert_eq!(bed.ask.total(), 200, "each name asked once");
    assert_eq!(bed.orders(), 0);
    baseline.sort();
    during.sort();
    // Not a benchmark: the ask takes 2 s, so a handshake that waited on it would show.
    assert!(
        during[2] < baseline[2] + Duration::from_millis(500),
        "static handshakes: {baseline:?} before, {during:?} during the flood"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_cap_and_the_order_rate_hold() -> TestResult {
    let capped = Bed::with("  max_certificates: 1\n").await;
    capped.handshake("ok1.d.test").await?;
    capped
        .handshake("ok2.d.test")
        .await
        .expect_err("over the cap");
    assert_eq!(capped.ask.calls("ok2.d.test"), 0, "refused before asking");
    assert_eq!(capped.orders(), 1);
    assert!(capped.server.shutdown().await);

    let limited = Bed::with("  rate: 1/h\n  burst: 1\n").await;
    limited.handshake("ok1.d.test").await?;
    limited
        .handshake("ok2.d.test")
        .await
        .expect_err("over the rate");
    assert_eq!(limited.ask.calls("ok2.d.test"), 1, "allowed, then limited");
    assert_eq!(limited.orders(), 1);
    assert!(limited.server.shutdown().await);
    Ok(())
}
