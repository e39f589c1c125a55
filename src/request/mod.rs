//! The request stage between HTTP and the router: every request is made canonical once, so the
//! router, the policies and the origin all see the same request.
//!
//! `canonical` is the step (`proxy::service` calls it first for every request); `path` and
//! `authority` are its pure parts, `fields` says which header fields a hop removes. This module
//! imports nothing else of the crate: the router, the configuration and the origin side use it.

mod authority;
mod canonical;
pub mod fields;
pub mod path;

pub use authority::{Authority, AuthorityError};
pub use canonical::{Canonical, Client, Refusal, canonicalize};
pub use fields::Underscores;
pub use path::{CanonicalPath, PathError};
