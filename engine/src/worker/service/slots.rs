//! The worker's slots: how many calls (batches of chunks, combines) run here at once.
//!
//! The controller keeps a worker's slots busy and sends one more call ahead of them per worker
//! (pipelined slots, `controller/plan.rs`), so that the next chunks are here when a slot
//! frees and the link's latency is hidden. Such a call waits here, in [`Slots::run`], not in
//! the executor: a call waiting for a slot is in no executor's hands, so an executor's crash
//! or timeout never touches it, and its executor time starts when it runs.
//!
//! A slot is held until its work ends, even when the call that asked for it is dropped (the
//! controller cancelled it: another copy won, or the job ended): the executor goes on with what
//! it was given, so the slot is not free until it stops. A call dropped while it still waits
//! gives up its turn and runs nothing.

use std::future::Future;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Semaphore, oneshot};

use crate::rpc::TaskError;

/// The worker's slots.
pub(super) struct Slots {
    free: Arc<Semaphore>,
    /// Calls that found every slot busy and waited for one.
    waited: Counter,
}

impl Slots {
    /// `n` slots (at least one); `waited` counts the calls that had to wait for one.
    pub(super) fn new(n: usize, waited: Counter) -> Slots {
        Slots { free: Arc::new(Semaphore::new(n.max(1))), waited }
    }

    /// Runs `work` in a slot once one is free, in a task of its own that holds the slot until
    /// `work` ends, whether or not the caller still waits for the answer.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, TaskError> {
        let (answer, answered) = oneshot::channel();
        let free = Arc::clone(&self.free);
        let waited = self.waited.clone();
        tokio::spawn(async move {
            let mut answer = answer;
            let slot = match Arc::clone(&free).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    waited.inc();
                    tokio::select! {
                        slot = free.acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => return,
                        },
                        // The caller is gone: nobody wants this work any more.
                        () = answer.closed() => return,
                    }
                }
            };
            if answer.is_closed() {
                return;
            }
            let _ = answer.send(work.await);
            drop(slot);
        });
        answered.await.map_err(|_| TaskError::Interrupted("the worker stopped the call before it ran".to_owned()))
    }

    /// Slots free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.free.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Waits (a bounded number of short yields) until `ready` holds.
    async fn eventually(ready: impl Fn() -> bool) {
        for _ in 0..1000 {
            if ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the condition never held");
    }

    #[tokio::test]
    async fn a_call_beyond_the_slots_waits_for_one_and_is_counted() {
        let slots = Arc::new(Slots::new(1, Counter::default()));
        let (release, released) = oneshot::channel::<()>();
        let first = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.run(async move { released.await.map(|()| 1) }).await }
        });
        eventually(|| slots.free() == 0).await;
        let second = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.run(async { 2 }).await }
        });
        eventually(|| slots.waited.get() == 1).await;
        assert!(!second.is_finished(), "the second call waits while the first holds the only slot");
        release.send(()).expect("the first call waits");
        assert_eq!(first.await.expect("joined").expect("ran"), Ok(1));
        assert_eq!(second.await.expect("joined").expect("ran"), 2);
        assert_eq!(slots.free(), 1);
        assert_eq!(slots.waited.get(), 1, "only the second call waited");
    }

    #[tokio::test]
    async fn a_dropped_call_keeps_its_slot_until_its_work_ends_and_a_waiting_one_runs_nothing() {
        let slots = Arc::new(Slots::new(1, Counter::default()));
        let (release, released) = oneshot::channel::<()>();
        let running = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.run(async move { released.await.is_ok() }).await }
        });
        eventually(|| slots.free() == 0).await;
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = tokio::spawn({
            let (slots, ran) = (Arc::clone(&slots), Arc::clone(&ran));
            async move { slots.run(async move { ran.store(true, std::sync::atomic::Ordering::SeqCst) }).await }
        });
        eventually(|| slots.waited.get() == 1).await;
        // The controller cancels both calls.
        running.abort();
        waiting.abort();
        let _ = running.await;
        let _ = waiting.await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(slots.free(), 0, "the executor still runs the cancelled call's work: its slot is not free");
        release.send(()).expect("the work still runs");
        eventually(|| slots.free() == 1).await;
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "a call dropped while waiting runs nothing");
    }
}
