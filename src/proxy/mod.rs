//! The shared reverse-proxy core: decrypted requests in, origin responses out.
//!
//! `service` is the entry point called per request by the HTTP server; `router` maps the host and
//! path to a route; `balance` chooses a route's origin and `health` says which may take requests;
//! `retry` sends with retries; `upstream` sends to one origin over its `pool` of connections,
//! opened by `connect` to addresses from `resolve`, speaking HTTP/1.1 itself (`wire`) when the
//! request body is in memory and through hyper's client otherwise; `forward` rewrites headers
//! for the hop; `trace` continues or starts the W3C trace; `body` meters bodies for the access
//! log; `ahead` reads response bodies ahead of slow clients; `linger` reads away the bodies of
//! requests answered early; `tunnel` joins upgraded connections; `error` turns failures into
//! responses. This module never imports `tls`, `acme` or `server`: it sees a [`ConnInfo`].

mod ahead;
mod balance;
mod body;
mod connect;
mod error;
mod forward;
mod health;
mod linger;
mod pool;
mod resolve;
mod retry;
mod router;
mod service;
pub mod trace;
mod tunnel;
mod upstream;
mod wire;

pub use ahead::SendStalled;
pub use balance::UpstreamPool;
pub use body::{BodyError, ClientBodyStalled, IdleElapsed, Metered, ProxyBody};
pub use error::{ConnectError, ProxyError, Side};
pub use router::{Action, Route, RouteMiss, RouteTable, SiteRoutes};
pub use service::{ConnInfo, Proxy};
pub use upstream::Upstream;
pub use wire::WireError;
