//! A lean HTTP/1.1 client for requests whose body is complete in memory (most requests: no
//! body, or a small one kept for retries).
//!
//! hyper's client runs each connection in a task of its own and passes every request and
//! response across channels between that task and the request's. Measured on loopback against
//! nginx, that hand-off costs about 2 µs of CPU per request, more than nginx spends on its whole
//! origin leg. Here the request's own task does the connection's I/O. Requests that stream a
//! body, and upgrades, still go through hyper (`connect`, `pool::Conn`).
//!
//! `codec` is the HTTP/1.1 framing without I/O (heads with httparse, hyper's parser), `conn`
//! one connection, `body` one exchange on it and the response body that gives it back.
//! `differential` (a test) holds the codec to hyper's client on generated and corpus responses.

mod body;
mod codec;
mod conn;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;

pub use codec::WireError;
pub(crate) use codec::suits;
pub(crate) use conn::{OriginIo, Wire};
