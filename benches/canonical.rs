//! What making a request canonical costs, per request: `cargo bench --bench canonical`.
//!
//! Times `request::canonicalize` on the request heads a browser and an API client send (already
//! canonical, the common case) and on ones it must rewrite, over HTTP/1.1 and HTTP/2, and
//! prints the median of 9 rounds of 200,000 calls each, in nanoseconds per request. No harness
//! crate: the loop is the whole measurement, and the median damps the other core's noise. For
//! a figure that does not move with the machine's load, run it under
//! `valgrind --tool=callgrind` (instructions), or use benches/ipr.sh for whole requests.

use std::hint::black_box;
use std::time::Instant;

use http::{Request, Version};
use rampart::request::{Client, Underscores, canonicalize};

const ROUNDS: usize = 9;
/// Calls per round; `CANONICAL_CALLS` lowers it for a run under callgrind.
const CALLS: u32 = 200_000;

fn calls() -> u32 {
    std::env::var("CANONICAL_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CALLS)
}

/// Fields a browser sends with a page request.
const BROWSER: &[(&str, &str)] = &[
    ("host", "shop.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    ),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("accept-language", "en-GB,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("connection", "keep-alive"),
    ("cookie", "session=0123456789abcdef; theme=dark"),
    ("upgrade-insecure-requests", "1"),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-mode", "navigate"),
];

/// Fields an API client sends.
const API: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    ("user-agent", "okhttp/4.12.0"),
    ("accept", "application/json"),
    (
        "authorization",
        "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
    ),
    ("content-type", "application/json"),
];

fn request(version: Version, target: &str, fields: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::get(target).version(version);
    for (name, value) in fields {
        // HTTP/2 has no Connection, and browsers send the host as :authority only.
        if version == Version::HTTP_2 && matches!(*name, "connection" | "host") {
            continue;
        }
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("bench request")
}

/// Median nanoseconds per call of `canonicalize` on a fresh copy of `template`: each round
/// times copying, canonicalising and dropping `CALLS` requests, less copying and dropping them
/// alone, so the request is as warm in the cache as one hyper has just parsed.
fn time(template: &Request<()>, client: Client<'_>) -> f64 {
    let calls = calls();
    let round = |canonical: bool| {
        let start = Instant::now();
        for _ in 0..calls {
            let mut request = copy(black_box(template));
            if canonical {
                let made = canonicalize(&mut request, client, Underscores::Drop);
                black_box(made.is_ok());
            }
            black_box(&request);
        }
        start.elapsed().as_nanos() as f64 / f64::from(calls)
    };
    let mut rounds: Vec<f64> = (0..ROUNDS).map(|_| round(true) - round(false)).collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn copy(template: &Request<()>) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = template.method().clone();
    *request.uri_mut() = template.uri().clone();
    *request.version_mut() = template.version();
    *request.headers_mut() = template.headers().clone();
    request
}

fn main() {
    let h1 = Client {
        is_h2: false,
        reached: Some("shop.example.com"),
        trusted_peer: false,
    };
    let h2 = Client { is_h2: true, ..h1 };
    let cases = [
        (
            "h1 browser, canonical",
            request(
                Version::HTTP_11,
                "/products/shoes/running?size=42&sort=price",
                BROWSER,
            ),
            h1,
        ),
        (
            "h1 api, canonical",
            request(Version::HTTP_11, "/v1/users/1234/orders", API),
            h1,
        ),
        (
            "h2 browser, canonical",
            request(
                Version::HTTP_2,
                "https://shop.example.com/products/shoes/running?size=42",
                BROWSER,
            ),
            h2,
        ),
        (
            "h1 browser, rewritten path",
            request(
                Version::HTTP_11,
                "//products/./shoes/../shoes/%72unning?size=42",
                BROWSER,
            ),
            h1,
        ),
    ];
    println!(
        "request::canonicalize, median of {ROUNDS} rounds x {} calls",
        calls()
    );
    for (name, template, client) in &cases {
        println!("{name:<32} {:>7.1} ns/request", time(template, *client));
    }
}
