//! The scheduling plan: what to start now.
//!
//! [`plan`] looks at the state and decides, synchronously and under the state's lock,
//! what to start: prepares, chunk runs, combines, aggregations and releases. It marks what it
//! starts as running before it returns the [`Action`]s, so that nothing is started twice; the
//! actions themselves run as tasks (see `dispatch`).
//!
//! Jobs run first in, first out (by creation; a job's chunks run as soon as they are cut from
//! its uploading input): the head job's chunks go to every worker, at most the job's
//! `processes` calls in flight per worker (least loaded workers first), then, once every
//! worker's slots are busy, up to `prefetch` more calls per slot that wait there for a slot
//! (pipelined slots: the next chunks are on the worker when a slot frees, whatever the link's
//! latency; the worker holds them in `worker/service/slots.rs`), each call carrying a
//! batch of consecutive chunks when they are small (`batch`), and only when the head
//! job has no queued chunk left may the next job use free slots. Merging complete groups comes
//! before new chunks; a retried chunk goes to a worker it has not failed on when one exists.
//! Before queued chunks, free slots run speculative copies of chunks running far beyond their
//! job's others (`speculation`), while the job runs and not only at its tail.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::action::Action;
use super::batch::{batch_limit, take_batch};
use super::speculation::speculate;
use super::state::State;
use super::state::job::{Aggregation, Job, Prep};
use super::state::workers::{WorkerEntry, Workers};
use super::store::ChunkMeta;
use crate::rpc::WorkerId;

/// Decides what to start now, marking it started.
pub(super) fn plan(state: &mut State) -> Vec<Action> {
    let mut actions = Vec::new();
    for (worker, job) in state.take_releases() {
        actions.push(Action::Release { worker, job });
    }
    for job in state.active_jobs_mut() {
        if let Some((lost_workers, speculative, speculative_won)) = job.take_dirty_figures() {
            actions.push(Action::SaveFigures { job: job.id, lost_workers, speculative, speculative_won });
        }
    }
    state.set_next_speculation(None);
    let mut ready: Vec<WorkerId> = state.workers().ids();
    if ready.is_empty() {
        return actions;
    }
    // Copies of stragglers first: a chunk running far beyond the others' times holds back its
    // whole job, so a slot that frees goes to its copy before queued chunks.
    let (now, prefetch) = (Instant::now(), state.prefetch());
    let mut next_speculation = None;
    for job_id in state.run_queue() {
        let Some((job, workers)) = state.job_and_workers(job_id) else { continue };
        if job.state().is_final() {
            continue;
        }
        ready.sort_by_key(|id| (workers.load(*id), *id));
        if let Some(due) = speculate(job, workers, &ready, (now, prefetch), &mut actions) {
            next_speculation = Some(next_speculation.map_or(due, |next: Instant| next.min(due)));
        }
    }
    state.set_next_speculation(next_speculation);
    // Then queued chunks, with those that waited behind a straggler in its batch.
    plan_jobs(state, &mut ready, &mut actions);
    actions
}

/// Plans the jobs in the order they were queued, until one still has queued chunks.
fn plan_jobs(state: &mut State, ready: &mut [WorkerId], actions: &mut Vec<Action>) {
    let prefetch = state.prefetch();
    for job_id in state.run_queue() {
        let Some((job, workers)) = state.job_and_workers(job_id) else { continue };
        // A job whose input still uploads runs the chunks cut so far.
        if job.state().is_final() {
            continue;
        }
        // The least loaded workers first, so that a few chunks spread over the cluster.
        ready.sort_by_key(|id| (workers.load(*id), *id));
        plan_job(job, workers, ready, prefetch, actions);
        if !job.queue.is_empty() {
            break;
        }
    }
}

/// Plans one job: its aggregation, merges of complete groups, then chunks: first to every
/// worker's free slots, then `prefetch` calls per slot ahead of them (pipelined slots), while
/// the job has more queued chunks than slots.
fn plan_job(job: &mut Job, workers: &mut Workers, ready: &[WorkerId], prefetch: u32, actions: &mut Vec<Action>) {
    let (mut changed, mut dispatched) = (false, false);
    if job.ready_to_aggregate() {
        if job.aggregation() == Aggregation::Idle {
            let prepared = ready.iter().find(|id| job.prepared.get(*id) == Some(&Prep::Ready));
            if let Some(worker) = prepared.and_then(|id| workers.get(*id)) {
                job.start_aggregation(worker.id());
                changed = true;
                actions.push(Action::Aggregate {
                    worker: worker.handle(),
                    job: job.id,
                    n_chunks: job.n_chunks(),
                    group_size: job.group_size(),
                    input_files: job.input_files(),
                });
            } else if !job.prepared.values().any(|p| *p == Prep::Preparing)
                && let Some(worker) =
                    ready.iter().find(|id| !job.prepared.contains_key(*id)).and_then(|id| workers.get(*id))
            {
                changed |= start_prepare(job, worker, actions);
            }
        }
        if changed {
            job.publish();
        }
        return;
    }
    if job.combines() != Some(false) {
        let groups: Vec<usize> = job.groups_to_combine().collect();
        for group in groups {
            let free = ready
                .iter()
                .filter_map(|id| workers.get(*id))
                .find(|w| job.prepared.get(&w.id()) == Some(&Prep::Ready) && w.slots_used() < job.slots_on(w));
            let Some(worker) = free else { break };
            let worker_id = worker.id();
            job.start_combine(group, worker_id);
            actions.push(Action::Combine {
                worker: worker.handle(),
                job: job.id,
                group: group as u64,
                group_size: job.group_size(),
            });
            if let Some(worker) = workers.get_mut(worker_id) {
                worker.take_slot(0);
            }
        }
    }
    // The workers that can still run this job's chunks (not those that failed to prepare it).
    let able: Vec<WorkerId> = ready.iter().copied().filter(|id| job.prepared.get(id) != Some(&Prep::Failed)).collect();
    let job_slots: u32 = able.iter().filter_map(|id| workers.get(*id)).map(|w| job.slots_on(w)).sum();
    // Free slots first, on every worker, so that calls sent ahead never leave a slot idle.
    let passes: &[u32] = if prefetch == 0 { &[0] } else { &[0, prefetch] };
    for &per_slot in passes {
        for &worker_id in ready {
            if job.queue.is_empty() {
                break;
            }
            // At the job's tail, chunks sent ahead would wait behind a busy slot while another
            // worker's slot frees: what is left goes to free slots only.
            if per_slot > 0 && job.queue.len() <= job_slots as usize {
                break;
            }
            let Some(worker) = workers.get_mut(worker_id) else { continue };
            match job.prepared.get(&worker_id) {
                None => {
                    changed |= start_prepare(job, worker, actions);
                    continue;
                }
                Some(Prep::Preparing | Prep::Failed) => continue,
                Some(Prep::Ready) => {}
            }
            let slots = job.slots_on(worker);
            while worker.slots_used() < slots.saturating_add(slots.saturating_mul(per_slot)) {
                let limit = batch_limit(job, job_slots);
                let batch: Arc<[u64]> = take_batch(job, worker_id, &able, limit).into();
                if batch.is_empty() {
                    break;
                }
                let chunks: Vec<(u64, ChunkMeta)> =
                    batch.iter().map(|&index| (index, job.chunks[index as usize].meta)).collect();
                // A call sent ahead may wait on the worker as long as a call runs there.
                let sent_ahead = worker.slots_used() >= slots;
                let cancel = job.start_call(worker, Arc::clone(&batch));
                (changed, dispatched) = (true, true);
                debug!(
                    job = job.id,
                    first_chunk = batch[0],
                    chunks = batch.len(),
                    worker = worker_id,
                    sent_ahead,
                    "chunks dispatched"
                );
                let deadline = match sent_ahead {
                    true => job.call_deadline(batch.len()).saturating_mul(2),
                    false => job.call_deadline(batch.len()),
                };
                actions.push(Action::Run { worker: worker.handle(), job: job.id, chunks, cancel, deadline });
            }
        }
    }
    // The run starts with its first chunk: preparing (the plugin's build) is the phase before,
    // with its own duration in the status, so that the run's time and speed leave it out.
    if dispatched && let Some(started_ms) = job.mark_running() {
        actions.push(Action::MarkRunning { job: job.id, started_ms });
    }
    if changed {
        job.publish();
    }
}

/// Asks a worker to prepare the job; answers whether it was not already asked.
fn start_prepare(job: &mut Job, worker: &WorkerEntry, actions: &mut Vec<Action>) -> bool {
    if job.prepared.contains_key(&worker.id()) {
        return false;
    }
    job.prepared.insert(worker.id(), Prep::Preparing);
    actions.push(Action::Prepare { worker: worker.handle(), job: job.id, plugin: job.spec.plugin() });
    true
}
