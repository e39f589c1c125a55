//! `max_in_flight:` with an optional `queue:` — how many requests of one route reach its
//! origins at once.
//!
//! Built per route with the route table; `proxy::service` calls [`ConcurrencyLimit::acquire`]
//! after the rate limits. The returned [`Permit`] rides on the response body (see
//! `proxy::body::Metered`), so a slot frees when the response ends or is dropped — including
//! client disconnects, upstream errors and cancelled request futures.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Concurrency;

/// A slot of a route's concurrency limit; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit); // held only for its Drop

/// The request was refused: every slot was taken and the queue was full or the wait too long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// A route's slots and waiting room, shared by every request of the route.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    /// What it was built from (a reload keeps it when this is unchanged).
    config: Concurrency,
    slots: Arc<Semaphore>,
    queue: Option<WaitingRoom>,
}

#[derive(Debug)]
struct WaitingRoom {
    /// One permit per request allowed to wait; a full room refuses at once.
    places: Semaphore,
    timeout: Duration,
}

impl ConcurrencyLimit {
    /// The limit `config` describes.
    pub fn new(config: &Concurrency) -> Self {
        Self {
            config: config.clone(),
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            queue: config.queue.as_ref().map(|q| WaitingRoom {
                places: Semaphore::new(q.max),
                timeout: q.timeout,
            }),
        }
    }

    /// The `max_in_flight:` and `queue:` it was built from.
    pub fn config(&self) -> &Concurrency {
        &self.config
    }

    /// Takes a slot: at once if one is free; otherwise waits in the queue (if configured and
    /// not full) up to its timeout.
    ///
    /// # Errors
    /// [`Refused`] when no slot is free and the request may not wait, or waited too long.
    ///
    /// # Cancel safety
    /// Dropping the future gives back its queue place and takes no slot.
    pub async fn acquire(&self) -> Result<Permit, Refused> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit(permit));
        }
        let room = self.queue.as_ref().ok_or(Refused)?;
        let _place = room.places.try_acquire().map_err(|_| Refused)?;
        // The semaphore is never closed, so the only failure is the timeout.
        match tokio::time::timeout(room.timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Permit(permit)),
            Ok(Err(_)) | Err(_) => Err(Refused),
        }
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Queue;

    fn limit(max_in_flight: usize, queue: Option<(usize, u64)>) -> ConcurrencyLimit {
        ConcurrencyLimit::new(&Concurrency {
            max_in_flight,
            queue: queue.map(|(max, ms)| Queue {
                max,
                timeout: Duration::from_millis(ms),
            }),
        })
    }

    #[tokio::test]
    async fn refuses_at_once_over_the_limit_without_a_queue() {
        let limit = limit(2, None);
        let (a, _b) = (limit.acquire().await, limit.acquire().await);
        assert_eq!(limit.acquire().await.unwrap_err(), Refused);
        drop(a);
        assert!(limit.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gets_the_slot_freed_before_its_timeout() {
        let limit = Arc::new(limit(1, Some((1, 1000))));
        let held = limit.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The room holds one: a second waiter is refused at once.
        assert_eq!(limit.acquire().await.unwrap_err(), Refused);
        drop(held);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_is_refused_when_its_timeout_passes() {
        let limit = limit(1, Some((5, 1000)));
        let _held = limit.acquire().await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(limit.acquire().await.unwrap_err(), Refused);
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
        // The place in the room was given back.
        assert_eq!(limit.queue.as_ref().unwrap().places.available_permits(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_gives_back_its_place_and_takes_no_slot() {
        let limit = limit(1, Some((1, 60_000)));
        let held = limit.acquire().await.unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(10), limit.acquire()).await;
        assert!(cancelled.is_err());
        assert_eq!(limit.queue.as_ref().unwrap().places.available_permits(), 1);
        drop(held);
        assert_eq!(limit.available(), 1);
    }
}
