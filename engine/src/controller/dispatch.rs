//! The scheduler task and the calls it makes to workers.
//!
//! One task, [`run_scheduler`], sleeps until something changes (a job is queued, a worker
//! becomes ready, a call returns: [`Shared::wake`]), asks [`State::plan`](super::jobs::State::plan)
//! what to start, and spawns one task per [`Action`]. Each action's task makes its call with
//! a deliberate deadline and applies the answer to the state itself (storing partials first,
//! so that what memory says is done is on disk), then wakes the scheduler.

mod chunks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tarpc::context;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::Shared;
use super::jobs::{Aggregation, GroupState, Prep};
use super::store::{ChunkMeta, state_name};
use super::workers::WorkerHandle;
use crate::rpc::{FailureKind, JobFailure, JobId, JobPlugin, JobState, RpcError, TaskError, WorkerId};
use crate::rules::deadlines::{CALL_DEADLINE, PREPARE_DEADLINE};

/// How long a worker may take to forget a job.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

/// Something the scheduler decided to start.
pub(super) enum Action {
    /// Make a worker ready for a job.
    Prepare { worker: WorkerHandle, job: JobId, plugin: JobPlugin },
    /// Run a copy of each of these chunks in one call, until it answers or `cancel` is notified.
    Run { worker: WorkerHandle, job: JobId, chunks: Vec<(u64, ChunkMeta)>, cancel: Arc<Notify>, deadline: Duration },
    /// Merge the partials of a complete group.
    Combine { worker: WorkerHandle, job: JobId, group: u64, group_size: u64 },
    /// Fold every partial into the output.
    Aggregate { worker: WorkerHandle, job: JobId, n_chunks: u64, group_size: u64 },
    /// Tell a worker a job has ended.
    Release { worker: WorkerHandle, job: JobId },
    /// Record that a job started running.
    MarkRunning { job: JobId, started_ms: u64 },
    /// Store a job's figures of lost workers and speculative copies.
    SaveFigures { job: JobId, lost_workers: u64, speculative: u64, speculative_won: u64 },
}

/// What a failed call means for the work it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// This attempt failed; another may succeed. Counts an attempt.
    Attempt(String),
    /// The work was stopped through no fault of its own: do it again, without an attempt.
    Interrupted(String),
    /// No attempt can succeed.
    Fatal(String),
    /// The plugin does not build.
    Build(String),
    /// The worker has not prepared the job (it restarted or dropped it): prepare again.
    NotPrepared,
    /// The worker is gone or does not know us: it is lost, and its work goes elsewhere.
    Lost(String),
}

type CallResult<T> = Result<Result<T, TaskError>, tarpc::client::RpcError>;

/// Sorts a call's failure into what to do about it.
pub(super) fn classify<T>(result: CallResult<T>, deadline: Duration) -> Result<T, Failure> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(TaskError::Plugin(message) | TaskError::Crashed(message))) => Err(Failure::Attempt(message)),
        Ok(Err(TaskError::Fatal(message))) => Err(Failure::Fatal(message)),
        Ok(Err(TaskError::Interrupted(message))) => Err(Failure::Interrupted(message)),
        Ok(Err(TaskError::NotPrepared(_))) => Err(Failure::NotPrepared),
        Ok(Err(TaskError::Rpc(RpcError::Build(diagnostics)))) => Err(Failure::Build(diagnostics)),
        Ok(Err(TaskError::Rpc(RpcError::Unauthorized(message)))) => {
            Err(Failure::Lost(format!("it refused the controller's secret ({message})")))
        }
        Ok(Err(TaskError::Rpc(other))) => Err(Failure::Attempt(format!("the worker failed: {other}"))),
        Err(tarpc::client::RpcError::DeadlineExceeded) => {
            Err(Failure::Attempt(format!("the worker did not answer within {} s", deadline.as_secs())))
        }
        Err(tarpc::client::RpcError::Server(e)) => Err(Failure::Attempt(format!("the worker aborted the call: {e}"))),
        Err(e) => Err(Failure::Lost(format!("its connection failed: {e}"))),
    }
}

fn deadline_in(duration: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + duration;
    ctx
}

/// Runs the scheduler until the task is aborted; aborting it aborts every call in flight.
pub(super) async fn run_scheduler(shared: Arc<Shared>) {
    let mut calls = JoinSet::new();
    loop {
        let (actions, next_speculation) = shared.with_state(|state| (state.plan(), state.next_speculation));
        for action in actions {
            calls.spawn(perform(Arc::clone(&shared), action));
        }
        // A chunk becomes slow enough for a speculative copy without anything happening.
        let speculation_due = async {
            match next_speculation {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = speculation_due => {}
            Some(done) = calls.join_next(), if !calls.is_empty() => {
                if let Err(e) = done && e.is_panic() {
                    error!("a call task panicked: {e}");
                }
            }
        }
    }
}

async fn perform(shared: Arc<Shared>, action: Action) {
    match action {
        Action::Prepare { worker, job, plugin } => {
            debug!(job, worker = worker.id, "preparing");
            let ctx = deadline_in(PREPARE_DEADLINE);
            let result = worker.client.prepare(ctx, worker.secret(), job, plugin).await;
            on_prepared(&shared, job, worker.id, classify(result, PREPARE_DEADLINE)).await;
        }
        Action::Run { worker, job, chunks, cancel, deadline } => {
            chunks::run_batch(&shared, chunks::BatchCall { job, chunks, worker, cancel, deadline }).await;
        }
        Action::Combine { worker, job, group, group_size } => combine(&shared, worker, job, group, group_size).await,
        Action::Aggregate { worker, job, n_chunks, group_size } => {
            aggregate(&shared, worker, job, n_chunks, group_size).await;
        }
        Action::Release { worker, job } => {
            let result = worker.client.release(deadline_in(RELEASE_DEADLINE), worker.secret(), job).await;
            debug!(job, worker = worker.id, ?result, "released");
        }
        Action::MarkRunning { job, started_ms } => {
            if let Err(e) = shared.store.mark_running(job, started_ms).await {
                error!(job, "{e}");
            }
        }
        Action::SaveFigures { job, lost_workers, speculative, speculative_won } => {
            if let Err(e) = shared.store.save_figures(job, lost_workers, speculative, speculative_won).await {
                error!(job, "{e}");
            }
        }
    }
}

/// Whether the job exists and has not ended.
fn is_active(shared: &Shared, job_id: JobId) -> bool {
    shared.with_state(|state| state.jobs.get(&job_id).is_some_and(|job| !job.state.is_final()))
}

/// Ends a job: in memory at once (nothing more is dispatched, late answers are ignored), then
/// in the store, then to watchers, so a watcher that sees the end can fetch the result.
/// Answers false when the job had already ended.
pub(super) async fn end_job(
    shared: &Shared,
    job_id: JobId,
    state: JobState,
    failure: Option<JobFailure>,
    result: Option<String>,
) -> bool {
    let record = shared.with_state(|st| {
        let job = st.jobs.get_mut(&job_id).filter(|job| !job.state.is_final())?;
        let (record, prepared) = job.finalize(state, failure, result);
        st.run_queue.retain(|id| *id != job_id);
        for worker in prepared {
            if st.workers.contains_key(&worker) {
                st.releases.push((worker, job_id));
            }
        }
        Some(record)
    });
    let Some(record) = record else { return false };
    if let Some(failure) = &record.failure {
        info!(job = job_id, kind = ?failure.kind, "job failed: {}", failure.message);
    }
    if let Err(e) = shared.store.save_final(&record).await {
        error!(job = job_id, state = state_name(state), "{e}");
    }
    shared.with_state(|st| {
        if let Some(job) = st.jobs.get_mut(&job_id) {
            job.publish();
        }
    });
    if let Err(e) = tokio::fs::remove_file(shared.input_path(job_id)).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(job = job_id, "cannot delete the job's spooled input: {e}");
    }
    shared.wake();
    true
}

/// Fails a job for a reason of the controller's own.
pub(super) async fn fail_internal(shared: &Shared, job_id: JobId, message: String) {
    let failure = JobFailure { kind: FailureKind::Internal, message, chunk: None, attempts: 0 };
    end_job(shared, job_id, JobState::Failed, Some(failure), None).await;
}

async fn on_prepared(shared: &Shared, job_id: JobId, worker_id: WorkerId, result: Result<(), Failure>) {
    let (kind, message) = match result {
        Ok(()) => {
            shared.with_state(|st| {
                if !st.workers.contains_key(&worker_id) {
                    return;
                }
                match st.jobs.get_mut(&job_id) {
                    Some(job) if !job.state.is_final() => {
                        job.prepared.insert(worker_id, Prep::Ready);
                    }
                    _ => st.releases.push((worker_id, job_id)),
                }
            });
            debug!(job = job_id, worker = worker_id, "prepared");
            shared.wake();
            return;
        }
        Err(Failure::Lost(reason)) => {
            shared.with_state(|st| st.lose_worker(worker_id, &reason));
            shared.wake();
            return;
        }
        Err(Failure::Build(diagnostics)) => (FailureKind::Build, diagnostics),
        Err(Failure::Fatal(message)) => (FailureKind::Plugin, message),
        Err(Failure::Attempt(message) | Failure::Interrupted(message)) => {
            // This worker cannot run the job; the job fails only when no worker can.
            warn!(job = job_id, worker = worker_id, "cannot prepare: {message}");
            let hopeless = shared.with_state(|st| {
                if !st.workers.contains_key(&worker_id) {
                    return None;
                }
                let registered: Vec<WorkerId> = st.workers.keys().copied().collect();
                let job = st.jobs.get_mut(&job_id)?;
                job.prepared.insert(worker_id, Prep::Failed);
                registered.iter().all(|w| job.prepared.get(w) == Some(&Prep::Failed)).then_some(())
            });
            shared.wake();
            if hopeless.is_none() {
                return;
            }
            (FailureKind::Plugin, message)
        }
        Err(Failure::NotPrepared) => (FailureKind::Internal, "the worker lost the job while preparing it".to_owned()),
    };
    let failure = JobFailure { kind, message, chunk: None, attempts: 0 };
    end_job(shared, job_id, JobState::Failed, Some(failure), None).await;
}

async fn combine(shared: &Shared, worker: WorkerHandle, job_id: JobId, group: u64, group_size: u64) {
    let partials = match is_active(shared, job_id) {
        true => shared.store.chunk_partials(job_id, group * group_size, group_size).await.map_err(|e| e.to_string()),
        false => Err(String::new()),
    };
    let outcome = match partials {
        Ok(partials) => {
            let result = worker.client.combine(deadline_in(CALL_DEADLINE), worker.secret(), job_id, partials).await;
            classify(result, CALL_DEADLINE)
        }
        Err(message) => Err(Failure::Attempt(message)),
    };
    let outcome = match outcome {
        Ok(Some(merged)) => match shared.store.save_combined(job_id, group, group_size, &merged).await {
            Ok(()) => Ok(Some(())),
            Err(e) => Err(Failure::Attempt(e.to_string())),
        },
        Ok(None) => Ok(None),
        Err(failure) => Err(failure),
    };
    let learned = shared.with_state(|st| {
        st.release_slot(worker.id, 0);
        if let Err(Failure::Lost(reason)) = &outcome {
            st.lose_worker(worker.id, reason);
        }
        let job = st.jobs.get_mut(&job_id).filter(|job| !job.state.is_final())?;
        let before = job.combines;
        let slot = job.groups.get_mut(group as usize)?;
        match &outcome {
            Ok(Some(())) => {
                slot.state = GroupState::Combined;
                job.combines = Some(true);
                debug!(job = job_id, group, "group combined");
            }
            Ok(None) => {
                slot.state = GroupState::Raw;
                job.stop_combining();
            }
            Err(Failure::Lost(_) | Failure::Interrupted(_)) => slot.state = GroupState::Open,
            Err(Failure::NotPrepared) => {
                slot.state = GroupState::Open;
                job.prepared.remove(&worker.id);
            }
            Err(failure) => {
                // Combining is an optimisation: the group's partials go to `aggregate` as they are.
                warn!(job = job_id, group, "cannot combine, keeping the partials apart: {failure:?}");
                slot.state = GroupState::Raw;
            }
        }
        (job.combines != before).then_some(job.combines).flatten()
    });
    shared.wake();
    if let Some(combines) = learned
        && let Err(e) = shared.store.set_combines(job_id, combines).await
    {
        error!(job = job_id, "{e}");
    }
}

async fn aggregate(shared: &Shared, worker: WorkerHandle, job_id: JobId, n_chunks: u64, group_size: u64) {
    if !is_active(shared, job_id) {
        return;
    }
    let partials = match shared.store.ordered_partials(job_id, n_chunks, group_size).await {
        Ok(partials) => partials,
        Err(e) => return fail_internal(shared, job_id, format!("cannot gather the partials: {e}")).await,
    };
    info!(job = job_id, worker = worker.id, partials = partials.len(), "aggregating");
    let result = worker.client.aggregate(deadline_in(CALL_DEADLINE), worker.secret(), job_id, partials).await;
    let failure = match classify(result, CALL_DEADLINE) {
        Ok(output) => {
            let mine = shared.with_state(|st| {
                let job = st.jobs.get_mut(&job_id).filter(|job| job.aggregation == Aggregation::Running(worker.id));
                job.map(|job| job.aggregation = Aggregation::Storing).is_some()
            });
            if mine {
                end_job(shared, job_id, JobState::Succeeded, None, Some(output)).await;
            }
            return;
        }
        Err(failure) => failure,
    };
    let fail = shared.with_state(|st| {
        if let Failure::Lost(reason) = &failure {
            st.lose_worker(worker.id, reason);
        }
        let job = st.jobs.get_mut(&job_id).filter(|job| job.aggregation == Aggregation::Running(worker.id))?;
        job.aggregation = Aggregation::Idle;
        match failure {
            Failure::Lost(_) | Failure::Interrupted(_) => None,
            Failure::NotPrepared => {
                job.prepared.remove(&worker.id);
                None
            }
            Failure::Attempt(message) => {
                job.aggregate_failures += 1;
                warn!(job = job_id, worker = worker.id, "aggregate failed: {message}");
                (job.aggregate_failures >= job.max_attempts()).then_some((FailureKind::Plugin, message))
            }
            Failure::Fatal(message) => Some((FailureKind::Plugin, message)),
            Failure::Build(message) => Some((FailureKind::Build, message)),
        }
    });
    shared.wake();
    if let Some((kind, message)) = fail {
        let failure = JobFailure { kind, message: format!("aggregate failed: {message}"), chunk: None, attempts: 0 };
        end_job(shared, job_id, JobState::Failed, Some(failure), None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(1);

    #[test]
    fn failures_are_sorted_by_what_can_help() {
        let ok: CallResult<u8> = Ok(Ok(1));
        assert_eq!(classify(ok, D), Ok(1));
        let plugin: CallResult<u8> = Ok(Err(TaskError::Plugin("boom".into())));
        assert_eq!(classify(plugin, D), Err(Failure::Attempt("boom".into())));
        let crashed: CallResult<u8> = Ok(Err(TaskError::Crashed("segfault".into())));
        assert_eq!(classify(crashed, D), Err(Failure::Attempt("segfault".into())));
        let fatal: CallResult<u8> = Ok(Err(TaskError::Fatal("bad params".into())));
        assert_eq!(classify(fatal, D), Err(Failure::Fatal("bad params".into())));
        let build: CallResult<u8> = Ok(Err(TaskError::Rpc(RpcError::Build("error[E0425]".into()))));
        assert_eq!(classify(build, D), Err(Failure::Build("error[E0425]".into())));
        let not_prepared: CallResult<u8> = Ok(Err(TaskError::NotPrepared(3)));
        assert_eq!(classify(not_prepared, D), Err(Failure::NotPrepared));
        let refused: CallResult<u8> = Ok(Err(TaskError::Rpc(RpcError::Unauthorized("who?".into()))));
        assert!(matches!(classify(refused, D), Err(Failure::Lost(_))));
        let gone: CallResult<u8> = Err(tarpc::client::RpcError::Shutdown);
        assert!(matches!(classify(gone, D), Err(Failure::Lost(_))));
        let interrupted: CallResult<u8> = Ok(Err(TaskError::Interrupted("another call timed out".into())));
        assert_eq!(classify(interrupted, D), Err(Failure::Interrupted("another call timed out".into())));
        let slow: CallResult<u8> = Err(tarpc::client::RpcError::DeadlineExceeded);
        assert!(matches!(classify(slow, D), Err(Failure::Attempt(m)) if m.contains("1 s")));
    }
}
