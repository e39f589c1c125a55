//! Gateway policy steps of the request path, each a plain function or a small state object
//! built with the route table: body limit, JWT auth, rate limits, concurrency limits, header
//! rules, and the real client IP behind trusted proxies.
//!
//! `admit` holds the order they run in, which `proxy::service` follows; none of them does I/O
//! on the request path (JWKS refreshes run in the background).

pub mod admit;
pub mod auth;
pub mod body_limit;
pub mod client_ip;
pub mod concurrency;
pub mod headers;
pub mod jwks;
pub mod rate_limit;

pub use auth::{AuthFailure, Claims, RouteAuth};
