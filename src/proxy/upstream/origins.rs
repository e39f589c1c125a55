//! The origins of one pool and their health: shared by the balancer, which reads them per
//! request, and the pool's health checker, which writes their active state.

use crate::proxy::upstream::health::PoolHealth;
use crate::proxy::upstream::origin::Upstream;

/// The origins and their health, shared with the checker task.
#[derive(Debug)]
pub(crate) struct Origins {
    /// In configured order; indexes are shared with `health` and `ids`.
    pub(crate) upstreams: Vec<Upstream>,
    /// Active and passive state per origin.
    pub(crate) health: PoolHealth,
    /// A stable hash of each origin's URL, for rendezvous hashing.
    pub(crate) ids: Vec<u64>,
}
