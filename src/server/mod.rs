//! Process lifecycle: binds the listeners, runs the accept loops and connection tasks, drains
//! them on shutdown, and applies configuration reloads.
//!
//! Every long-lived task has one owner: this module, which spawns it on the server's
//! [`TaskTracker`](tokio_util::task::TaskTracker) so that shutdown waits for it. Constructors
//! elsewhere that need background work return it as a future instead of spawning it
//! (`RouteTable::from_config` for its pools' maintenance and health checks and its JWKS
//! refreshes; `acme` and `tls` expose `run(.., stop)`), and that work ends when what it serves
//! is dropped or when the stop token fires. Tasks that live only as long as one request or one
//! origin connection (an upgraded tunnel, a body read away, hyper's client connection) belong
//! to what they serve.

pub mod activation;
mod admin;
mod error;
mod http01;
mod listener;
mod per_ip;
mod proxy_protocol;
mod reload;
mod selfcheck;
mod serve;
pub mod shutdown;
pub mod systemd;

pub use error::ServerError;
pub use listener::Listeners;
pub use serve::Server;
