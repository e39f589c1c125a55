//! The origin side of the proxy: which origin takes a request, and sending it there.
//!
//! `retry` sends a request with retries; `balance` chooses a route's origin among `origins`,
//! whose `health` says which may take requests (kept by the passive circuit breaker and by the
//! active `checker`); `origin` sends to one origin over its `pool` of connections, opened by
//! `connect` to addresses from `resolve`, speaking HTTP/1.1 itself (`h1`) when the request body
//! is in memory and through hyper's client otherwise; `lease` counts a request in flight and
//! gives its connection back.

mod balance;
mod checker;
mod connect;
pub(crate) mod h1;
mod health;
mod lease;
mod origin;
mod origins;
mod pool;
pub(crate) mod resolve;
pub(crate) mod retry;

pub use balance::UpstreamPool;
pub use origin::Upstream;
