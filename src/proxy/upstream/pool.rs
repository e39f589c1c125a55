//! The idle HTTP/1.1 connections of one origin, and its count of requests in flight.
//!
//! Two kinds of connection, each in its own idle list: lean ones (`h1::Wire`) for requests
//! whose body is in memory, and hyper's for streamed bodies and upgrades.
//! `origin::Upstream::send` checks a connection out ([`Pool::checkout`],
//! [`Pool::checkout_wire`]); the response body (`lease::PooledBody`, `h1::WireBody`) checks it
//! back in only when it ended cleanly. The upstream's maintenance task calls [`Pool::sweep`]
//! and [`Pool::retain`]. The idle lists share one `std::sync::Mutex`, held for a push or pop,
//! never across an `.await`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use crate::proxy::body::UpstreamBody;
use crate::proxy::upstream::h1::Wire;

/// One origin's idle connections and its count of requests in flight.
#[derive(Debug)]
pub(crate) struct Pool {
    /// Both kinds under one lock: `max_idle` bounds them together.
    idle: Mutex<IdleLists>,
    max_idle: usize,
    idle_timeout: Duration,
    pub(super) in_flight: AtomicUsize,
}

/// An open connection to one address of the origin.
#[derive(Debug)]
pub(crate) struct Conn {
    /// hyper's request half; the connection task holds the other.
    pub(crate) sender: SendRequest<UpstreamBody>,
    /// The address it is connected to (to drop it when DNS stops returning that address).
    pub(crate) addr: SocketAddr,
}

/// Each list oldest first: checkout pops the newest (LIFO keeps few connections warm), expiry
/// trims the front.
#[derive(Debug, Default)]
struct IdleLists {
    conns: VecDeque<Idle<Conn>>,
    wires: VecDeque<Idle<Wire>>,
}

impl IdleLists {
    fn len(&self) -> usize {
        self.conns.len() + self.wires.len()
    }
}

#[derive(Debug)]
struct Idle<C> {
    conn: C,
    since: Instant,
}

impl Pool {
    /// An empty pool keeping at most `max_idle` connections for up to `idle_timeout` each.
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Requests in flight now, from checkout until the response body ends or is dropped.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The most recently used idle connection that is ready for a request, else the most
    /// recently used one that is not closed (which may still be finishing its last exchange).
    ///
    /// A connection is checked in as its response body ends, a moment before its task has
    /// polled it back to ready; taking one that is already ready saves waiting for that task.
    pub(crate) fn checkout(&self) -> Option<Conn> {
        let mut lists = self.lock();
        let idle = &mut lists.conns;
        self.trim_expired(idle, Instant::now());
        if let Some(ready) = idle.iter().rposition(|entry| entry.conn.sender.is_ready()) {
            return idle.remove(ready).map(|entry| entry.conn);
        }
        while let Some(entry) = idle.pop_back() {
            if !entry.conn.sender.is_closed() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// The most recently used idle lean connection that the origin has not closed meanwhile.
    pub(crate) fn checkout_wire(&self) -> Option<Wire> {
        let mut lists = self.lock();
        let idle = &mut lists.wires;
        self.trim_expired(idle, Instant::now());
        while let Some(entry) = idle.pop_back() {
            if entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Drops idle connections past `idle_timeout` (the cheap periodic sweep).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut lists = self.lock();
        self.trim_expired(&mut lists.conns, now);
        self.trim_expired(&mut lists.wires, now);
    }

    /// Keeps only idle connections whose address passes `keep`.
    pub(crate) fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        let mut lists = self.lock();
        lists.conns.retain(|entry| keep(entry.conn.addr));
        lists.wires.retain(|entry| keep(entry.conn.addr));
    }

    /// Puts `conn` back unless it is closed; the oldest goes when more than `max_idle` wait.
    pub(super) fn checkin(&self, conn: Conn) {
        if self.max_idle == 0 || conn.sender.is_closed() {
            return;
        }
        self.push(conn, |lists| &mut lists.conns);
    }

    /// Puts a lean connection back; the oldest goes when more than `max_idle` wait.
    pub(super) fn checkin_wire(&self, wire: Wire) {
        if self.max_idle > 0 {
            self.push(wire, |lists| &mut lists.wires);
        }
    }

    /// Adds `conn` to its kind's list (`list`), keeping both within `max_idle`: the oldest of
    /// its kind makes room, or `conn` is dropped if its kind has none idle.
    fn push<C>(&self, conn: C, list: impl FnOnce(&mut IdleLists) -> &mut VecDeque<Idle<C>>) {
        let mut lists = self.lock();
        let full = lists.len() >= self.max_idle;
        let idle = list(&mut lists);
        if full && idle.pop_front().is_none() {
            return;
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleLists> {
        // A panic while holding this lock leaves the lists consistent (push/pop only).
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn trim_expired<C>(&self, idle: &mut VecDeque<Idle<C>>, now: Instant) {
        // Entries are in check-in order, so the expired ones are all at the front.
        while idle
            .front()
            .is_some_and(|entry| now.duration_since(entry.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::proxy::upstream::h1::OriginIo;
    use crate::proxy::upstream::lease::InFlight;

    #[tokio::test]
    async fn pool_max_idle_bounds_both_kinds_of_connection_together() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Arc::new(Pool::new(1, Duration::from_secs(60)));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _accepted = listener.accept().await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake::<_, UpstreamBody>(TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        pool.checkin(Conn { sender, addr });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _accepted = listener.accept().await.unwrap();
        InFlight::enter(&pool).checkin_wire(Wire::new(OriginIo::Plain(tcp), addr));
        assert!(
            pool.checkout_wire().is_none(),
            "pool_max_idle 1 is taken by the hyper connection"
        );
        assert!(pool.checkout().is_some());
    }

    #[tokio::test]
    async fn pool_max_idle_bounds_one_kind_of_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Arc::new(Pool::new(1, Duration::from_secs(60)));
        let in_flight = InFlight::enter(&pool);
        let first = TcpStream::connect(addr).await.unwrap();
        let _first = listener.accept().await.unwrap();
        let second = TcpStream::connect(addr).await.unwrap();
        let _second = listener.accept().await.unwrap();
        in_flight.checkin_wire(Wire::new(OriginIo::Plain(first), addr));
        in_flight.checkin_wire(Wire::new(OriginIo::Plain(second), addr));
        assert!(pool.checkout_wire().is_some());
        assert!(pool.checkout_wire().is_none(), "pool_max_idle 1");
    }
}
