//! The controller's data: jobs with their chunks and combine groups, the workers, chunk
//! timings and the spooled input, behind one mutex that is never held across an `.await`.
//!
//! The behaviour sits on top and only goes through the methods here, which move together what
//! must agree: a call's slot on its worker, its chunks' running copies and the job's in-flight
//! figure; the jobs and the queue they run in; a lost worker and everything it was doing.
//!
//! # Layout
//! - `job`: a job and what it knows of its workers; `job/status`: its figures and the status
//!   watchers see; `job/fold`: its combine groups and aggregation.
//! - `chunk`: a job's chunks, their running copies, and the groups `combine` merges.
//! - `workers`: the live and pending workers and their slots.
//! - `timings`: how long a job's chunks took.
//! - `spool`: a job's input file and the cutter it goes through.

pub(super) mod chunk;
pub(super) mod direct;
pub(super) mod job;
pub(super) mod spool;
pub(super) mod timings;
pub(super) mod workers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

use self::chunk::RunningCopy;
use self::job::Job;
use self::workers::{WorkerEntry, WorkerHandle, Workers};
use super::store::FinalRecord;
use crate::rpc::{JobFailure, JobId, JobState, WorkerId};

/// The controller's mutable state.
#[derive(Default)]
pub(super) struct State {
    /// Jobs created since the controller started, and unfinished jobs it resumed.
    jobs: BTreeMap<JobId, Job>,
    /// Jobs that have not ended, in the order they were queued.
    run_queue: Vec<JobId>,
    /// Live and pending workers.
    workers: Workers,
    /// Jobs to release on workers that prepared them.
    releases: Vec<(WorkerId, JobId)>,
    /// When a running chunk becomes slow enough for a speculative copy, if one may.
    next_speculation: Option<Instant>,
    /// Calls sent to each worker per slot ahead of its free slots (pipelined slots).
    prefetch: u32,
}

impl State {
    /// An empty state that sends `prefetch` calls per slot to each worker ahead of its free
    /// slots.
    pub fn with_prefetch(prefetch: u32) -> State {
        State { prefetch, ..State::default() }
    }

    /// Calls sent to each worker per slot ahead of its free slots.
    pub fn prefetch(&self) -> u32 {
        self.prefetch
    }

    /// Adds a job, queued at once: its chunks run as soon as they are cut from its input.
    pub fn add_job(&mut self, job: Job) {
        self.run_queue.push(job.id);
        self.jobs.insert(job.id, job);
    }

    pub fn job(&self, job_id: JobId) -> Option<&Job> {
        self.jobs.get(&job_id)
    }

    pub fn job_mut(&mut self, job_id: JobId) -> Option<&mut Job> {
        self.jobs.get_mut(&job_id)
    }

    /// The job, if it exists and has not ended.
    pub fn active_job_mut(&mut self, job_id: JobId) -> Option<&mut Job> {
        self.jobs.get_mut(&job_id).filter(|job| !job.state().is_final())
    }

    /// Whether the job exists and has not ended.
    pub fn is_active(&self, job_id: JobId) -> bool {
        self.jobs.get(&job_id).is_some_and(|job| !job.state().is_final())
    }

    /// Every job in memory, by id.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Every job in memory that has not ended, by id.
    pub fn active_jobs_mut(&mut self) -> impl Iterator<Item = &mut Job> {
        self.jobs.values_mut().filter(|job| !job.state().is_final())
    }

    /// The jobs that have not ended, in the order they run.
    pub fn run_queue(&self) -> Vec<JobId> {
        self.run_queue.clone()
    }

    /// A job and the workers, to start its work on them.
    pub fn job_and_workers(&mut self, job_id: JobId) -> Option<(&mut Job, &mut Workers)> {
        Some((self.jobs.get_mut(&job_id)?, &mut self.workers))
    }

    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    pub fn workers_mut(&mut self) -> &mut Workers {
        &mut self.workers
    }

    /// Asks for a job to be released on a worker, if the worker is live.
    pub fn release_later(&mut self, worker_id: WorkerId, job_id: JobId) {
        if self.workers.contains(worker_id) {
            self.releases.push((worker_id, job_id));
        }
    }

    /// The releases asked for, on workers still live.
    pub fn take_releases(&mut self) -> Vec<(WorkerHandle, JobId)> {
        let releases = std::mem::take(&mut self.releases);
        releases.into_iter().filter_map(|(worker, job)| Some((self.workers.get(worker)?.handle(), job))).collect()
    }

    pub fn next_speculation(&self) -> Option<Instant> {
        self.next_speculation
    }

    pub fn set_next_speculation(&mut self, due: Option<Instant>) {
        self.next_speculation = due;
    }

    /// Ends a job in memory (see [`Job::finalize`]): it leaves the queue and the workers that
    /// prepared it are to release it. Answers the record to write, or `None` when the job had
    /// already ended.
    pub fn end_job(
        &mut self,
        job_id: JobId,
        state: JobState,
        failure: Option<JobFailure>,
        result: Option<String>,
    ) -> Option<FinalRecord> {
        let job = self.jobs.get_mut(&job_id).filter(|job| !job.state().is_final())?;
        let (record, prepared) = job.finalize(state, failure, result);
        self.run_queue.retain(|id| *id != job_id);
        for worker in prepared {
            self.release_later(worker, job_id);
        }
        Some(record)
    }

    /// Frees the slot a finished call carrying `n_chunks` chunks held on a worker (if it is
    /// still registered).
    pub fn release_slot(&mut self, worker_id: WorkerId, n_chunks: u32) {
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.free_slot(n_chunks);
        }
    }

    /// Ends a call of `worker_id` carrying the chunks `indices` of a job: frees its slot and
    /// takes its copies off the chunks. Answers the job and the copies (one per chunk, in
    /// order) if the job is still running.
    pub fn end_call(
        &mut self,
        job_id: JobId,
        worker_id: WorkerId,
        indices: impl ExactSizeIterator<Item = u64>,
        cancel: &Arc<Notify>,
    ) -> Option<(&mut Job, Vec<Option<RunningCopy>>)> {
        let n_chunks = u32::try_from(indices.len()).unwrap_or(u32::MAX);
        self.release_slot(worker_id, n_chunks);
        let job = self.active_job_mut(job_id)?;
        let copies = job.end_call(worker_id, indices, cancel);
        Some((job, copies))
    }

    /// Makes a pending worker live, replacing a worker registered before from the same
    /// address. Answers false when its registration is gone (it was removed meanwhile).
    pub fn join_worker(&mut self, entry: WorkerEntry) -> bool {
        if self.workers.take_pending(entry.id()).is_none() {
            return false;
        }
        let stale: Vec<WorkerId> =
            self.workers.iter().filter(|w| w.info().address == entry.info().address).map(WorkerEntry::id).collect();
        for old in stale {
            self.lose_worker(old, "it registered again");
        }
        self.workers.insert(entry);
        true
    }

    /// Removes a lost worker; everything it was doing is done again elsewhere. Answers whether
    /// the worker was registered.
    pub fn lose_worker(&mut self, worker_id: WorkerId, reason: &str) -> bool {
        let Some(worker) = self.workers.remove(worker_id) else { return false };
        worker.disconnect();
        self.releases.retain(|(w, _)| *w != worker_id);
        let (mut chunks, mut jobs) = (0, 0);
        for job in self.jobs.values_mut() {
            let running = job.chunks_running_on(worker_id);
            if !job.state().is_final() && job.forget_worker(worker_id) {
                job.publish();
                chunks += running;
                jobs += u64::from(running > 0);
            }
        }
        warn!(
            worker = worker_id,
            address = %worker.info().address,
            reason,
            chunks_requeued = chunks,
            "worker lost: {chunks} chunk{} of {jobs} job{} it was running went back to the queue",
            if chunks == 1 { "" } else { "s" },
            if jobs == 1 { "" } else { "s" },
        );
        true
    }

    /// Removes a worker, live or pending, as lost. Answers its public key, `None` when it was
    /// neither.
    pub fn remove_worker(&mut self, worker_id: WorkerId) -> Option<Vec<u8>> {
        let pending = self.workers.take_pending(worker_id);
        let key = match (self.workers.get(worker_id), pending) {
            (Some(worker), _) => Some(worker.info().public_key.to_vec()),
            (None, Some(pending)) => Some(pending.info().public_key.to_vec()),
            (None, None) => None,
        };
        self.lose_worker(worker_id, "it was removed from the cluster");
        key
    }

    /// Loses the workers silent at `now` for longer than their limit: `timeout`, or more for
    /// a worker on a slow link (`WorkerEntry::silence_limit`). Answers whether any was lost,
    /// and when the next one can expire.
    pub fn lose_silent_workers(&mut self, timeout: Duration, now: Instant) -> (bool, Option<Instant>) {
        let expired: Vec<(WorkerId, Duration)> = self
            .workers
            .iter()
            .map(|w| (w.id(), w.silence_limit(timeout), w.last_seen()))
            .filter(|(_, limit, last_seen)| now.duration_since(*last_seen) >= *limit)
            .map(|(id, limit, _)| (id, limit))
            .collect();
        for (worker_id, limit) in &expired {
            self.lose_worker(*worker_id, &format!("no heartbeat for {} ms", limit.as_millis()));
        }
        (!expired.is_empty(), self.workers.iter().map(|w| w.last_seen() + w.silence_limit(timeout)).min())
    }

    /// Closes the connections to every worker and forgets them, at shutdown.
    pub fn disconnect_workers(&mut self) {
        self.workers.disconnect_all();
    }
}
