//! The shared reverse-proxy core: decrypted requests in, origin responses out.
//!
//! `service` is the entry point called per request by the HTTP server; `router` maps the host and
//! path to a route; `forward` rewrites headers for the hop; `trace` continues or starts the W3C
//! trace; `body` meters bodies for the access log; `ahead` reads response bodies ahead of slow
//! clients; `linger` reads away the bodies of requests answered early; `tunnel` joins upgraded
//! connections; `error` turns failures into responses. `upstream` is the origin side: choosing
//! an origin, retries, health, connection pools and the HTTP/1.1 client. This module never
//! imports `tls`, `acme` or `server`: it sees a [`ConnInfo`].

mod ahead;
mod body;
mod error;
mod forward;
mod linger;
mod router;
mod service;
pub mod trace;
mod tunnel;
pub(crate) mod upstream;

pub use ahead::SendStalled;
pub use body::{BodyError, ClientBodyStalled, IdleElapsed, Metered, ProxyBody};
pub use error::{ConnectError, ExchangeError, ProxyError, Side};
pub use router::{Action, Route, RouteMiss, RouteTable, SiteRoutes};
pub use service::{ConnInfo, Proxy};
pub use upstream::h1::WireError;
pub use upstream::{Upstream, UpstreamPool};
