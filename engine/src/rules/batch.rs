//! Batches: how many queued chunks one call carries, in a cluster and in run-local alike.
//!
//! A call costs a few hundred microseconds whatever it carries (a round trip, reading the
//! spool, storing the answer, waking the scheduler), which is nothing beside a 4 MiB chunk and
//! everything beside a chunk of a few lines. So a free slot takes several consecutive queued
//! chunks when they are small and quick, and one chunk otherwise. A batch is bounded four ways:
//! - by count, [`MAX_BATCH_CHUNKS`], and by bytes, [`MAX_BATCH_BYTES`] (independent of the
//!   job's chunk size: with the default 4 MiB chunks a batch is one chunk);
//! - by time: at most [`BATCH_TIME`] of work at the job's recent [`Pace`] per chunk, and one
//!   chunk until a call has answered, so slow chunks travel alone and progress, retries and
//!   speculation keep their grain;
//! - by fairness: at most the queue's length over twice the job's slots, so the tail of a job
//!   still spreads over every slot.
//!
//! A chunk that failed before runs alone, so that its next failure delays no other chunk.

use std::time::Duration;

/// The most chunks one call carries: beyond this the per-call cost is already well under a
/// microsecond per chunk.
pub const MAX_BATCH_CHUNKS: usize = 256;

/// The most chunk bytes one call carries (a batch's first chunk goes whatever its size): the
/// size of a default chunk, so a batch costs the worker no more memory than a chunk does.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;

/// How long a batch should take at the job's pace: long enough that the per-call cost is a
/// percent of it, short enough that a worker answers several times a second.
pub const BATCH_TIME: Duration = Duration::from_millis(50);

/// A moving average of the time per chunk of the calls that answered lately.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pace(Option<Duration>);

impl Pace {
    /// Records a call that answered for `n_chunks` chunks after `took`; answers each chunk's
    /// share of the call's time (its chunks ran one after another).
    pub fn record_call(&mut self, took: Duration, n_chunks: usize) -> Duration {
        let share = took / u32::try_from(n_chunks.max(1)).unwrap_or(u32::MAX);
        // Recent calls weigh more, so that the pace follows a plugin that speeds up or slows down.
        self.0 = Some(self.0.map_or(share, |pace| (pace * 3 + share) / 4));
        share
    }

    /// The time per chunk of the calls that answered lately; `None` before any did.
    pub fn per_chunk(&self) -> Option<Duration> {
        self.0
    }
}

/// How many chunks the next call may carry, with `queued` chunks waiting, at `pace`, when the
/// job may run in `slots` slots.
pub fn batch_limit(queued: usize, pace: Pace, slots: u32) -> usize {
    let fair_share = queued / (2 * slots.max(1) as usize);
    let by_time = match pace.per_chunk() {
        None => 1,
        Some(pace) => usize::try_from(BATCH_TIME.as_nanos() / pace.as_nanos().max(1)).unwrap_or(usize::MAX),
    };
    fair_share.min(by_time).clamp(1, MAX_BATCH_CHUNKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced(per_chunk: Duration) -> Pace {
        let mut pace = Pace::default();
        pace.record_call(per_chunk, 1);
        pace
    }

    #[test]
    fn a_batch_is_one_chunk_until_a_call_answered_then_follows_the_pace_and_the_queue() {
        assert_eq!(batch_limit(1000, Pace::default(), 4), 1, "no pace yet");
        assert_eq!(batch_limit(1000, paced(Duration::from_millis(1)), 4), 50, "50 ms of 1 ms chunks");
        let tiny = paced(Duration::from_micros(10));
        assert_eq!(batch_limit(1000, tiny, 1), MAX_BATCH_CHUNKS, "tiny chunks, capped by count");
        assert_eq!(batch_limit(1000, tiny, 4), 125, "a fair share of the queue: 1000 / (2 × 4)");
        assert_eq!(batch_limit(10, tiny, 4), 1, "the tail spreads over every slot");
        assert_eq!(batch_limit(1000, paced(Duration::from_millis(300)), 1), 1, "slow chunks travel alone");
    }

    #[test]
    fn the_pace_follows_recent_calls_and_shares_a_call_among_its_chunks() {
        let mut pace = Pace::default();
        assert_eq!(pace.record_call(Duration::from_millis(40), 4), Duration::from_millis(10));
        assert_eq!(pace.per_chunk(), Some(Duration::from_millis(10)));
        pace.record_call(Duration::from_millis(50), 1);
        assert_eq!(pace.per_chunk(), Some(Duration::from_millis(20)), "(3 × 10 + 50) / 4");
    }
}
