//! Batches: which queued chunks one call to a worker carries. How many is the job's rule
//! ([`crate::rules::batch`], shared with run-local); which ones is the cluster's: the first
//! queued chunk this worker should run, then the chunks queued after it that have not failed,
//! within [`MAX_BATCH_BYTES`]. A chunk that failed before runs alone, so that its next failure
//! delays no other chunk; a chunk that failed on this worker is left for another one.

use super::state::job::Job;
use crate::rpc::WorkerId;
use crate::rules::batch::{self, MAX_BATCH_BYTES};

/// How many chunks the next call for `job` may carry, when the job may run in `job_slots`
/// slots over the cluster.
pub(super) fn batch_limit(job: &Job, job_slots: u32) -> usize {
    batch::batch_limit(job.queue.len(), job.times.pace(), job_slots)
}

/// Takes the next batch for `worker_id` out of the job's queue, at most `limit` chunks: the
/// first queued chunk it should run (see [`take_chunk_for`]), then the chunks queued after it
/// that have not failed, within [`MAX_BATCH_BYTES`]. Empty when nothing is left for it.
pub(super) fn take_batch(job: &mut Job, worker_id: WorkerId, able: &[WorkerId], limit: usize) -> Vec<u64> {
    let Some(first) = take_chunk_for(job, worker_id, able) else { return Vec::new() };
    let mut batch = vec![first];
    let first_chunk = &job.chunks[first as usize];
    if first_chunk.failures > 0 {
        return batch;
    }
    let mut bytes = first_chunk.meta.len;
    for &index in job.queue.range(first + 1..) {
        if batch.len() >= limit {
            break;
        }
        let chunk = &job.chunks[index as usize];
        if chunk.failures > 0 {
            continue;
        }
        bytes += chunk.meta.len;
        if bytes > MAX_BATCH_BYTES {
            break;
        }
        batch.push(index);
    }
    for index in &batch[1..] {
        job.queue.remove(index);
    }
    batch
}

/// Takes the first queued chunk this worker should run: a chunk that failed on it goes to
/// another of the `able` workers when one exists that it has not failed on.
fn take_chunk_for(job: &mut Job, worker_id: WorkerId, able: &[WorkerId]) -> Option<u64> {
    let index = job.queue.iter().copied().find(|&index| {
        let chunk = &job.chunks[index as usize];
        !chunk.failed_on.contains(&worker_id) || able.iter().all(|w| chunk.failed_on.contains(w))
    })?;
    job.queue.remove(&index);
    Some(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::job::tests::job;
    use crate::rules::batch::MAX_BATCH_CHUNKS;
    use std::time::Duration;

    #[test]
    fn a_retry_avoids_the_worker_it_failed_on_when_another_exists() {
        let mut job = job(2);
        job.chunks[0].failed_on.push(7);
        assert_eq!(take_chunk_for(&mut job, 7, &[7, 8]), Some(1), "worker 7 skips chunk 0");
        job.queue.insert(1);
        assert_eq!(take_chunk_for(&mut job, 8, &[7, 8]), Some(0));
        job.queue.insert(0);
        assert_eq!(take_chunk_for(&mut job, 7, &[7]), Some(0), "alone, worker 7 retries it");
    }

    #[test]
    fn a_batch_is_one_chunk_until_a_call_answered_then_follows_the_pace_and_the_queue() {
        let mut job = job(1000);
        assert_eq!(batch_limit(&job, 4), 1, "no pace yet");
        job.times.record_call(Duration::from_millis(1), 1);
        assert_eq!(batch_limit(&job, 4), 50, "50 ms of 1 ms chunks");
        job.times = Default::default();
        job.times.record_call(Duration::from_micros(10), 1);
        assert_eq!(batch_limit(&job, 1), MAX_BATCH_CHUNKS, "tiny chunks, capped by count");
        assert_eq!(batch_limit(&job, 4), 125, "a fair share of the queue: 1000 / (2 × 4)");
        job.queue = (0..10).collect();
        assert_eq!(batch_limit(&job, 4), 1, "the tail spreads over every slot");
        job.times = Default::default();
        job.times.record_call(Duration::from_millis(300), 1);
        job.queue = (0..1000).collect();
        assert_eq!(batch_limit(&job, 1), 1, "slow chunks travel alone");
    }

    #[test]
    fn a_batch_takes_consecutive_queued_chunks_leaving_failed_ones_and_bytes_beyond_the_budget() {
        let mut job = job(10);
        job.queue.remove(&2);
        job.chunks[4].failures = 1;
        assert_eq!(take_batch(&mut job, 1, &[1], 4), vec![0, 1, 3, 5], "chunk 2 runs, chunk 4 failed before");
        assert_eq!(take_batch(&mut job, 1, &[1], 4), vec![4], "a chunk that failed runs alone");
        job.chunks[7].meta.len = MAX_BATCH_BYTES;
        assert_eq!(take_batch(&mut job, 1, &[1], 4), vec![6], "chunk 7 would pass the byte budget");
        assert_eq!(take_batch(&mut job, 1, &[1], 4), vec![7], "a chunk beyond the budget goes alone");
        assert_eq!(take_batch(&mut job, 1, &[1], 4), vec![8, 9]);
        assert!(take_batch(&mut job, 1, &[1], 4).is_empty());
    }
}
