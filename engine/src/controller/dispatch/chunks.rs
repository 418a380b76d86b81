//! Running a copy of a chunk on a worker and applying its answer: the partial stored first
//! (the first one stored wins, and the other copies are cancelled), or the failure sorted
//! into an attempt, an interruption, a lost worker or the end of the job.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use super::super::Shared;
use super::super::jobs::{Job, RunningCopy, State};
use super::super::store::ChunkMeta;
use super::super::workers::WorkerHandle;
use super::{Failure, classify, deadline_in, end_job, fail_internal, is_active};
use crate::rpc::{FailureKind, JobFailure, JobId, JobState};

/// One copy of a chunk being run on a worker: what its call task knows of it.
pub(in crate::controller) struct ChunkCall {
    pub job: JobId,
    pub index: u64,
    pub meta: ChunkMeta,
    pub worker: WorkerHandle,
    /// The copy's cancellation, which also tells it from other copies on the same worker.
    pub cancel: Arc<Notify>,
    /// How long the call may take.
    pub deadline: Duration,
}

/// Runs the copy until the worker answers or the copy is cancelled, and applies the answer.
pub(super) async fn run_chunk(shared: &Shared, call: ChunkCall) {
    let (job_id, index) = (call.job, call.index);
    if !is_active(shared, job_id) {
        return drop_copy(shared, &call);
    }
    let text = match read_chunk(shared.input_path(job_id), call.meta).await {
        Ok(text) => text,
        Err(e) => {
            drop_copy(shared, &call);
            let message = format!("cannot read chunk {index} of the spooled input: {e}");
            return fail_internal(shared, job_id, message).await;
        }
    };
    let worker = &call.worker;
    let ctx = deadline_in(call.deadline);
    let answer = worker.client.run_chunk(ctx, worker.secret(), job_id, call.meta.first_line, ByteBuf::from(text));
    // Dropping the call cancels it on the worker, which abandons the chunk there.
    let result = tokio::select! {
        result = answer => result,
        () = call.cancel.notified() => {
            debug!(job = job_id, chunk = index, worker = worker.id, "copy cancelled");
            return drop_copy(shared, &call);
        }
    };
    match classify(result, call.deadline) {
        Ok(partial) => store_partial(shared, &call, partial).await,
        Err(failure) => chunk_failed(shared, &call, failure).await,
    }
}

/// Frees the slot of a copy whose call ended and forgets the copy; answers the job's copy if
/// the job is still running.
fn end_copy<'a>(st: &'a mut State, call: &ChunkCall) -> Option<(&'a mut Job, Option<RunningCopy>)> {
    st.release_slot(call.worker.id, true);
    let job = st.jobs.get_mut(&call.job).filter(|job| !job.state.is_final())?;
    if let Some(progress) = job.workers.get_mut(&call.worker.id) {
        progress.in_flight = progress.in_flight.saturating_sub(1);
    }
    let copy = job.chunks.get_mut(call.index as usize).and_then(|chunk| chunk.take_copy(&call.cancel));
    Some((job, copy))
}

/// Forgets one running copy of a chunk (its call ended without a partial); the chunk is
/// queued again unless another copy runs or it is done.
fn drop_copy(shared: &Shared, call: &ChunkCall) {
    shared.with_state(|st| {
        let Some((job, _)) = end_copy(st, call) else { return };
        job.requeue_if_idle(call.index);
        job.publish();
    });
    shared.wake();
}

async fn read_chunk(path: std::path::PathBuf, meta: ChunkMeta) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let mut text = vec![0; usize::try_from(meta.len).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut text, meta.offset)?;
        Ok(text)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Stores a copy's partial unless another copy's is stored or being stored; the first one
/// wins, and the other copies still running are cancelled.
async fn store_partial(shared: &Shared, call: &ChunkCall, partial: ByteBuf) {
    let (job_id, index, worker_id) = (call.job, call.index, call.worker.id);
    let attempts = shared.with_state(|st| {
        let (job, copy) = end_copy(st, call)?;
        let chunk = job.chunks.get_mut(index as usize)?;
        if chunk.done || chunk.storing {
            return None;
        }
        chunk.storing = true;
        Some((chunk.failures + 1, copy))
    });
    shared.wake();
    let Some((attempts, copy)) = attempts else {
        debug!(job = job_id, chunk = index, worker = worker_id, "late or duplicate partial dropped");
        return;
    };
    if let Err(e) = shared.store.save_partial(job_id, index, attempts, &partial).await {
        return fail_internal(shared, job_id, format!("cannot store the partial of chunk {index}: {e}")).await;
    }
    shared.with_state(|st| {
        if let Some(worker) = st.workers.get_mut(&worker_id) {
            worker.chunks_done += 1;
        }
        let Some(job) = st.jobs.get_mut(&job_id).filter(|job| !job.state.is_final()) else { return };
        if job.chunks.get(index as usize).is_none_or(|chunk| chunk.done) {
            return;
        }
        job.cancel_copies(index);
        job.count_done(index, Some(worker_id));
        let took = copy.as_ref().map(|copy| copy.since.elapsed());
        if let Some(took) = took {
            job.times.record(took);
        }
        if copy.is_some_and(|copy| copy.speculative) {
            job.speculative_won += 1;
            job.figures_dirty = true;
            info!(job = job_id, chunk = index, worker = worker_id, "the speculative copy finished first");
        }
        debug!(job = job_id, chunk = index, worker = worker_id, took_ms = took.map(|t| t.as_millis()), "chunk done");
        job.publish();
    });
    shared.wake();
}

/// Applies a copy's failure: a lost worker or an interruption puts the chunk back without an
/// attempt; a failed attempt is retried (elsewhere when possible) until the job's
/// `max_attempts`; a fatal or build error ends the job at once.
async fn chunk_failed(shared: &Shared, call: &ChunkCall, failure: Failure) {
    enum Next {
        Retry { attempts: u32, retries: u64 },
        Fail(JobFailure),
    }
    let (job_id, index, worker_id) = (call.job, call.index, call.worker.id);
    let (kind, message) = match failure {
        Failure::Lost(reason) => {
            shared.with_state(|st| st.lose_worker(worker_id, &reason));
            return drop_copy(shared, call);
        }
        Failure::NotPrepared => {
            shared.with_state(|st| {
                if let Some(job) = st.jobs.get_mut(&job_id) {
                    job.prepared.remove(&worker_id);
                }
            });
            return drop_copy(shared, call);
        }
        Failure::Interrupted(reason) => {
            debug!(job = job_id, chunk = index, worker = worker_id, "chunk interrupted, to run again: {reason}");
            return drop_copy(shared, call);
        }
        Failure::Attempt(message) => (None, message),
        Failure::Fatal(message) => (Some(FailureKind::Plugin), message),
        Failure::Build(message) => (Some(FailureKind::Build), message),
    };
    let next = shared.with_state(|st| {
        let (job, _) = end_copy(st, call)?;
        let max_attempts = job.max_attempts();
        let span = job.span(index);
        let chunk = job.chunks.get_mut(index as usize)?;
        if chunk.done || chunk.storing {
            return None;
        }
        chunk.failures += 1;
        chunk.failed_on.push(worker_id);
        let attempts = chunk.failures;
        warn!(job = job_id, chunk = index, worker = worker_id, attempts, "chunk attempt failed: {message}");
        if let Some(kind) = kind.or((attempts >= max_attempts).then_some(FailureKind::Plugin)) {
            let failure = JobFailure { kind, message: message.clone(), chunk: Some(span), attempts };
            return Some(Next::Fail(failure));
        }
        job.retries += 1;
        job.requeue_if_idle(index);
        job.publish();
        Some(Next::Retry { attempts, retries: job.retries })
    });
    shared.wake();
    match next {
        Some(Next::Retry { attempts, retries }) => {
            if let Err(e) = shared.store.save_attempts(job_id, index, attempts, retries).await {
                error!(job = job_id, "{e}");
            }
        }
        Some(Next::Fail(failure)) => {
            end_job(shared, job_id, JobState::Failed, Some(failure), None).await;
        }
        None => {}
    }
}
