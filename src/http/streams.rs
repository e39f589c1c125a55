//! The streams of one HTTP/2 connection, run on that connection's own task.
//!
//! hyper hands every new h2 stream to an executor. Tokio's would spawn a task per stream, so
//! each request would pay a spawn, and its answer a wake of a second task before the
//! connection task could write it. [`StreamExec`] queues the streams instead and
//! [`Streams::poll`] runs them right after each poll of the connection, as nginx runs a
//! connection's streams in its event loop: answers that are ready leave in the same round.
//! The cost is that one connection's streams share one core, which an edge proxy with many
//! connections does not miss. A stream that panics ends alone, as a task of its own would.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tracing::error;

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: collects the streams it starts.
#[derive(Clone, Default)]
pub(crate) struct StreamExec {
    started: Arc<Mutex<Vec<StreamFuture>>>,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let isolated = std::panic::AssertUnwindSafe(stream)
            .catch_unwind()
            .map(|ended| {
                if ended.is_err() {
                    error!("an HTTP/2 stream panicked; the connection's other streams go on");
                }
            });
        lock(&self.started).push(Box::pin(isolated));
    }
}

/// The running streams of one connection.
#[derive(Default)]
pub(crate) struct Streams {
    exec: StreamExec,
    running: FuturesUnordered<StreamFuture>,
}

impl Streams {
    /// The executor to build the connection with.
    pub(crate) fn exec(&self) -> StreamExec {
        self.exec.clone()
    }

    /// Takes in the streams started since the last call and polls those that were woken.
    /// Call it after every poll of the connection, with the same context.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) {
        self.running.extend(lock(&self.exec.started).drain(..));
        // Each `Ready(Some)` is one finished stream; `Pending` means none is ready now (and
        // the waker is registered for those that are not).
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
    }

    /// Whether no stream is running or waiting to start.
    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty() && lock(&self.exec.started).is_empty()
    }
}

fn lock(started: &Mutex<Vec<StreamFuture>>) -> std::sync::MutexGuard<'_, Vec<StreamFuture>> {
    // Push and drain only: a panic cannot leave the list half-changed.
    started
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use hyper::rt::Executor as _;

    use super::*;

    #[tokio::test]
    async fn streams_run_when_polled_and_a_panic_ends_only_its_own() {
        let mut streams = Streams::default();
        let exec = streams.exec();
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        exec.execute(async { panic!("a broken stream") });
        exec.execute({
            let finished = finished.clone();
            async move {
                answered.await.unwrap();
                finished.store(true, Ordering::SeqCst);
            }
        });
        assert!(!streams.is_empty(), "started, not yet taken in");
        std::future::poll_fn(|cx| {
            streams.poll(cx);
            Poll::Ready(())
        })
        .await;
        assert!(!streams.is_empty(), "the waiting stream is still running");
        assert!(!finished.load(Ordering::SeqCst));
        answer.send(()).unwrap();
        // Woken by the answer, through the task that polls the streams.
        std::future::poll_fn(|cx| {
            streams.poll(cx);
            if streams.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert!(finished.load(Ordering::SeqCst));
    }
}
