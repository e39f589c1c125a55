//! Connection-level HTTP, between TLS and the proxy: serving HTTP/1.1 and HTTP/2 on one
//! connection until it ends.
//!
//! `conn` builds the hyper servers and runs a connection; `idle` is its transport (idle, header
//! and send timeouts, and h2 write coalescing), `hangup` notices an HTTP/1 client that leaves
//! mid-request, `open_requests` tells `idle` when a request is open, `streams` runs h2 streams
//! on the connection's task and `calm` ends control-frame floods. Nothing here spawns: the
//! connection's task is `server::listener`'s, on the server's tracker.

mod calm;
mod conn;
mod hangup;
mod idle;
mod open_requests;
mod streams;

pub(crate) use conn::{HttpServers, serve_h1, serve_https};
pub(crate) use hangup::SharedTcp;
pub(crate) use idle::IdleIo;
