//! Speculative execution: a copy of a chunk that runs far longer than the job's others.
//!
//! A straggler (a slow disk, a busy host, a plugin stuck on one chunk's first attempt) holds
//! back the whole job. While the job runs (not only at its tail, once nothing is queued), a
//! running chunk that has taken more than [`SPECULATION_FACTOR`] times its job's median chunk
//! time (and at least `SPECULATION_MIN_AGE`), once `SPECULATION_MIN_DONE` (both in
//! `state::timings`) chunks of the job have completed, gets one copy on a free slot, before
//! queued chunks take it: on another worker than the original where one is ready, on the same
//! worker only when no other can run the job. The first partial stored wins (the store keeps
//! exactly one per chunk). The other copy is not cancelled: its worker's executor would go on
//! with it anyway, so its call keeps its slot until it answers (on the worker too,
//! `worker/service/slots.rs`), and its partial is dropped as a duplicate; the job's end cancels
//! it. A slow ("gray") worker thus keeps getting work as its slots free, in proportion to its
//! speed. Jobs with `speculative: false` in their spec are left alone.

use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::action::Action;
use super::state::job::{Job, Prep};
use super::state::timings::SPECULATION_MIN_AGE;
use super::state::workers::Workers;
use crate::rpc::{JobState, WorkerId};

/// How many times its job's median chunk time a chunk must have run to get a copy.
pub(super) const SPECULATION_FACTOR: u32 = 3;

/// Starts speculative copies of the job's stragglers on free slots. A straggler carried in a
/// batch is the first chunk of its call still needed (the others wait behind it there): it is
/// copied alone, and the chunks behind it go back to the queue to run elsewhere as usual,
/// while the call goes on (the first partial stored wins). Answers when the next running chunk
/// will become a straggler, so the scheduler looks again then. While the job has queued
/// chunks, a worker's slot for a copy is any place a call could be sent, the `prefetch` calls
/// per slot ahead included (its slots are full then, and stay so, since calls are sent ahead):
/// the copy takes the place of the next queued chunk there.
pub(super) fn speculate(
    job: &mut Job,
    workers: &mut Workers,
    ready: &[WorkerId],
    (now, prefetch): (Instant, u32),
    actions: &mut Vec<Action>,
) -> Option<Instant> {
    let (stragglers, next_check) = stragglers(job, now);
    // The workers that can run the job's chunks at all.
    let able: Vec<WorkerId> = ready.iter().copied().filter(|id| job.prepared.get(id) == Some(&Prep::Ready)).collect();
    let mut started = false;
    for index in stragglers {
        let chunk = &job.chunks[index as usize];
        let original = chunk.running[0].worker;
        let per_slot = if job.queue.is_empty() { 1 } else { 1 + prefetch };
        let has_slot =
            |id: WorkerId| workers.get(id).is_some_and(|w| w.slots_used() < job.slots_on(w).saturating_mul(per_slot));
        let Some(target) = copy_target(original, &chunk.failed_on, &able, has_slot) else { continue };
        let Some(worker) = workers.get_mut(target) else { continue };
        let meta = chunk.meta;
        let straggling_call = Arc::clone(&chunk.running[0].batch);
        let cancel = job.start_speculative_copy(worker, index);
        started = true;
        info!(job = job.id, chunk = index, original, copy_on = target, "speculative copy of a slow chunk");
        for &behind in straggling_call.iter().filter(|&&other| other != index) {
            let waiting =
                job.chunks.get(behind as usize).is_some_and(|c| !c.done && !c.storing && c.running.len() == 1);
            if waiting {
                job.queue.insert(behind);
            }
        }
        let deadline = job.call_deadline(1);
        actions.push(Action::Run {
            worker: worker.handle(),
            job: job.id,
            chunks: vec![(index, meta)],
            cancel,
            deadline,
        });
    }
    if started {
        job.publish();
    }
    next_check
}

/// The job's chunks that deserve a copy now, the slowest first, and when the next running
/// chunk will (if nothing changes).
fn stragglers(job: &mut Job, now: Instant) -> (Vec<u64>, Option<Instant>) {
    if !job.spec.speculative || job.state() != JobState::Running {
        return (Vec::new(), None);
    }
    if let Some(quiet_until) = job.times.quiet_until().filter(|until| now < *until) {
        return (Vec::new(), Some(quiet_until));
    }
    let Some(median) = job.times.median() else { return (Vec::new(), None) };
    let threshold = median * SPECULATION_FACTOR;
    let mut next_check: Option<Instant> = None;
    let mut slow: Vec<(Instant, u64)> = Vec::new();
    let undone_from = job.undone_from() as usize;
    for (index, chunk) in job.chunks.iter().enumerate().skip(undone_from) {
        // One copy per chunk, of a chunk that runs once now.
        if chunk.done || chunk.storing || chunk.speculated || chunk.running.len() != 1 {
            continue;
        }
        let call = &chunk.running[0];
        // In a batch, the chunks behind the first one still needed are waiting, not slow.
        let needed = |other: &&u64| job.chunks.get(**other as usize).is_some_and(|c| !c.done && !c.storing);
        if call.batch.iter().find(needed) != Some(&(index as u64)) {
            continue;
        }
        // A call's chunks run one after another: it may take its share for each.
        let n_chunks = u32::try_from(call.batch.len()).unwrap_or(u32::MAX);
        let threshold = threshold.saturating_mul(n_chunks).max(SPECULATION_MIN_AGE);
        let since = call.since;
        if now.saturating_duration_since(since) >= threshold {
            slow.push((since, index as u64));
        } else {
            let due = since + threshold;
            next_check = Some(next_check.map_or(due, |next| next.min(due)));
        }
    }
    if slow.is_empty() {
        // Scanning is linear in the job's chunks not done; the next scan can wait for the first
        // chunk due (or a second, if none runs now), unless new copies start.
        let quiet_until = next_check.unwrap_or(now + SPECULATION_MIN_AGE);
        job.times.quiet(quiet_until);
        return (Vec::new(), Some(quiet_until));
    }
    slow.sort();
    (slow.into_iter().map(|(_, index)| index).collect(), next_check)
}

/// Where a copy of a chunk running on `original` goes: another able worker with a free slot
/// that the chunk has not failed on (the first of `able`, which come least loaded first); the
/// original worker only when no other worker can run the job. `None`: wait for a slot.
fn copy_target(
    original: WorkerId,
    failed_on: &[WorkerId],
    able: &[WorkerId],
    has_slot: impl Fn(WorkerId) -> bool,
) -> Option<WorkerId> {
    let elsewhere = able.iter().copied().find(|&id| id != original && !failed_on.contains(&id) && has_slot(id));
    match elsewhere {
        Some(id) => Some(id),
        None if able.iter().all(|&id| id == original) && has_slot(original) => Some(original),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::controller::state::chunk::RunningCopy;
    use crate::controller::state::job::tests::job;
    use crate::controller::state::timings::ChunkTimes;

    /// A running job of `n` chunks whose first three took 100 ms, the others running on
    /// worker 1 since `started`.
    fn running_job(n: u64, started: Instant) -> Job {
        let mut job = job(n);
        job.set_state(JobState::Running);
        job.queue.clear();
        for index in 0..n {
            if index < 3 {
                job.count_done(index, None);
                job.times.record_call(Duration::from_millis(100), 1);
            } else {
                let copy = RunningCopy { since: started, ..RunningCopy::start(1, false, Arc::from([index])) };
                job.chunks[index as usize].running.push(copy);
            }
        }
        job
    }

    #[test]
    fn a_chunk_slower_than_three_medians_and_the_floor_gets_a_copy_once() {
        let started = Instant::now();
        let mut job = running_job(5, started);
        let (slow, next) = stragglers(&mut job, started + Duration::from_millis(500));
        assert!(slow.is_empty(), "under the floor of {SPECULATION_MIN_AGE:?}");
        assert_eq!(next, Some(started + SPECULATION_MIN_AGE), "the scheduler looks again then");
        let (slow, next) = stragglers(&mut job, started + Duration::from_secs(2));
        assert_eq!((slow, next), (vec![3, 4], None));

        job.chunks[3].speculated = true;
        job.chunks[4].running.push(RunningCopy::start(2, true, Arc::from([4])));
        let (slow, _) = stragglers(&mut job, started + Duration::from_secs(2));
        assert!(slow.is_empty(), "one copy per chunk");
    }

    #[test]
    fn a_scan_that_found_no_straggler_waits_for_the_first_due_and_new_copies_cannot_come_sooner_than_the_floor() {
        let started = Instant::now();
        let mut job = running_job(5, started);
        let (slow, next) = stragglers(&mut job, started + Duration::from_millis(500));
        assert_eq!((slow, next), (Vec::new(), Some(started + SPECULATION_MIN_AGE)));
        // A copy starting meanwhile cannot straggle before the floor from its start.
        job.times.copies_started(started + Duration::from_millis(600));
        assert_eq!(job.times.quiet_until(), Some(started + SPECULATION_MIN_AGE));
        assert!(stragglers(&mut job, started + Duration::from_millis(900)).0.is_empty(), "quiet until then");
        assert_eq!(stragglers(&mut job, started + Duration::from_millis(1100)).0, vec![3, 4]);

        // Quiet for long (the first copy due far ahead), new copies bring the next scan forward
        // to their floor.
        job.times.quiet(started + Duration::from_secs(10));
        job.times.copies_started(started);
        assert_eq!(job.times.quiet_until(), Some(started + SPECULATION_MIN_AGE));
    }

    #[test]
    fn a_batch_straggles_after_its_chunks_share_and_only_its_first_chunk_still_needed_is_copied() {
        let started = Instant::now();
        let mut job = job(8);
        job.set_state(JobState::Running);
        job.queue.clear();
        for index in 0..3 {
            job.count_done(index, None);
            job.times.record_call(Duration::from_millis(100), 1);
        }
        // One call carries chunks 3 to 7; chunk 3 was done by another copy.
        let copy = RunningCopy { since: started, ..RunningCopy::start(1, false, Arc::from([3, 4, 5, 6, 7])) };
        for index in 3..8 {
            job.chunks[index].running.push(copy.clone());
        }
        job.count_done(3, None);
        let (slow, next) = stragglers(&mut job, started + Duration::from_millis(1200));
        assert!(slow.is_empty(), "five chunks of 100 ms may take 3 × 500 ms");
        assert_eq!(next, Some(started + Duration::from_millis(1500)));
        let (slow, _) = stragglers(&mut job, started + Duration::from_secs(2));
        assert_eq!(slow, vec![4], "the chunks behind the first one still needed are waiting, not slow");
    }

    #[test]
    fn copies_start_while_chunks_are_queued_but_not_before_a_median_or_when_the_job_says_no() {
        let started = Instant::now();
        let late = started + Duration::from_secs(10);
        let mut queued = running_job(5, started);
        queued.chunks[4].running.clear();
        queued.queue.insert(4);
        assert_eq!(stragglers(&mut queued, late).0, vec![3], "during the job, not only at its tail");
        let mut off = running_job(5, started);
        off.spec.speculative = false;
        assert!(stragglers(&mut off, late).0.is_empty());
        let mut early = running_job(5, started);
        early.times = ChunkTimes::default();
        early.times.record_call(Duration::from_millis(100), 1);
        assert!(stragglers(&mut early, late).0.is_empty(), "one chunk time is no median");
    }

    #[test]
    fn a_copy_goes_to_another_worker_unless_the_original_is_the_only_one() {
        let free = |_| true;
        assert_eq!(copy_target(1, &[], &[1, 2, 3], free), Some(2));
        assert_eq!(copy_target(1, &[2], &[1, 2, 3], free), Some(3), "not where it failed");
        assert_eq!(copy_target(1, &[], &[1, 2], |id| id != 2), None, "wait for the other worker");
        assert_eq!(copy_target(1, &[], &[1], free), Some(1), "alone, a free slot on the same worker");
        assert_eq!(copy_target(1, &[], &[1], |_| false), None);
    }
}
