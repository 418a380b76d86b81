//! The scheduler task and the calls it makes to workers.
//!
//! One task, [`run_scheduler`], sleeps until something changes (a job is queued, a worker
//! becomes ready, a call returns: [`Shared::wake`]), asks [`plan`](super::plan::plan) what to
//! start, and spawns one task per [`Action`]. Each action's task makes its call with
//! a deliberate deadline and applies the answer to the state itself (storing partials first,
//! so that what memory says is done is on disk), then wakes the scheduler.

mod chunks;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::Shared;
use super::action::Action;
use super::calls::{Failure, classify, deadline_in};
use super::ending::{end_job, fail_internal};
use super::plan::plan;
use super::results::{self, FetchError};
use super::state::chunk::GroupState;
use super::state::job::{Job, Prep};
use super::state::workers::WorkerHandle;
use crate::rpc::pieces::result_piece_bytes;
use crate::rpc::{FailureKind, JobFailure, JobId, JobState, WorkerId};
use crate::rules::combine::MAX_COMBINE_BYTES;
use crate::rules::deadlines::{CALL_DEADLINE, PREPARE_DEADLINE};

/// How long a worker may take to store one piece of partials (a few MiB) for an aggregate.
const STAGE_DEADLINE: Duration = Duration::from_secs(60);

/// How long a worker may take to forget a job.
const RELEASE_DEADLINE: Duration = Duration::from_secs(30);

/// How often the controller asks a worker preparing a job how far its build has come: often
/// enough for a progress bar, and each answer is a few bytes from the worker's memory.
const BUILD_POLL: Duration = Duration::from_millis(250);

/// Deadline of one such question.
const BUILD_POLL_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the scheduler until the task is aborted; aborting it aborts every call in flight.
pub(super) async fn run_scheduler(shared: Arc<Shared>) {
    let mut calls = JoinSet::new();
    loop {
        let (actions, next_speculation) = shared.with_state(|state| (plan(state), state.next_speculation()));
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
            publish_if(&shared, job, |job| job.build_started(super::now_ms()));
            let ctx = deadline_in(PREPARE_DEADLINE);
            let prepare = worker.client.prepare(ctx, worker.secret(), job, plugin);
            let result = watch_build(&shared, &worker, job, prepare).await;
            on_prepared(&shared, job, worker.id, classify(result, PREPARE_DEADLINE)).await;
        }
        Action::Run { worker, job, chunks, cancel, deadline } => {
            chunks::run_batch(&shared, chunks::BatchCall { job, chunks, worker, cancel, deadline }).await;
        }
        Action::Combine { worker, job, group, group_size } => combine(&shared, worker, job, group, group_size).await,
        Action::Aggregate { worker, job, n_chunks, group_size, input_files } => {
            aggregate(&shared, worker, job, n_chunks, group_size, input_files).await;
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

/// Awaits `prepare`, asking the worker meanwhile how far its build has come and publishing
/// that in the job's status (the building phase).
async fn watch_build<T>(shared: &Shared, worker: &WorkerHandle, job_id: JobId, prepare: impl Future<Output = T>) -> T {
    let mut prepare = std::pin::pin!(prepare);
    let mut ticks = tokio::time::interval(BUILD_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut prepare => return result,
            _ = ticks.tick() => {}
        }
        let asked = worker.client.build_progress(deadline_in(BUILD_POLL_DEADLINE), worker.secret(), job_id);
        // The answer to `prepare` is never held up by a question about it.
        let answer = tokio::select! {
            result = &mut prepare => return result,
            answer = asked => answer,
        };
        if let Ok(Ok(Some(progress))) = answer {
            publish_if(shared, job_id, |job| job.record_build(progress));
        }
    }
}

/// Applies `change` to the active job `job_id` and publishes its status when it says so.
fn publish_if(shared: &Shared, job_id: JobId, change: impl FnOnce(&mut Job) -> bool) {
    shared.with_state(|st| {
        if let Some(job) = st.active_job_mut(job_id)
            && change(job)
        {
            job.publish();
        }
    });
}

/// Whether the job exists and has not ended.
fn is_active(shared: &Shared, job_id: JobId) -> bool {
    shared.with_state(|state| state.is_active(job_id))
}

async fn on_prepared(shared: &Shared, job_id: JobId, worker_id: WorkerId, result: Result<(), Failure>) {
    let (kind, message) = match result {
        Ok(()) => {
            shared.with_state(|st| {
                if !st.workers().contains(worker_id) {
                    return;
                }
                match st.active_job_mut(job_id) {
                    Some(job) => {
                        job.prepared.insert(worker_id, Prep::Ready);
                        if job.build_finished(super::now_ms()) {
                            job.publish();
                        }
                    }
                    None => st.release_later(worker_id, job_id),
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
        Err(Failure::Attempt(message) | Failure::Fault(message) | Failure::Interrupted(message)) => {
            // This worker cannot run the job; the job fails only when no worker can.
            warn!(job = job_id, worker = worker_id, "cannot prepare: {message}");
            let hopeless = shared.with_state(|st| {
                if !st.workers().contains(worker_id) {
                    return None;
                }
                let registered: Vec<WorkerId> = st.workers().ids();
                let job = st.job_mut(job_id)?;
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

/// How a merge of a group went, when no call failed.
enum Merge {
    /// The merged partial is stored in place of the group's.
    Stored,
    /// The plugin does not combine.
    Unsupported,
    /// The group's partials are over [`MAX_COMBINE_BYTES`]: not read, left apart.
    TooLarge(u64),
}

async fn combine(shared: &Shared, worker: WorkerHandle, job_id: JobId, group: u64, group_size: u64) {
    let outcome = merge_group(shared, &worker, job_id, group, group_size).await;
    let learned = shared.with_state(|st| {
        st.release_slot(worker.id, 0);
        if let Err(Failure::Lost(reason)) = &outcome {
            st.lose_worker(worker.id, reason);
        }
        let job = st.active_job_mut(job_id)?;
        let before = job.combines();
        let left = match &outcome {
            Ok(Merge::Stored) => GroupState::Combined,
            Err(Failure::Lost(_) | Failure::Interrupted(_) | Failure::NotPrepared) => GroupState::Open,
            // Combining is an optimisation: the group's partials go to `aggregate` as they are.
            Ok(Merge::Unsupported | Merge::TooLarge(_)) | Err(_) => GroupState::Raw,
        };
        job.end_combine(group, left)?;
        match &outcome {
            Ok(Merge::Stored) => debug!(job = job_id, group, "group combined"),
            Ok(Merge::Unsupported) => job.stop_combining(),
            Ok(Merge::TooLarge(bytes)) => debug!(job = job_id, group, bytes, "group too large to combine, left apart"),
            Err(Failure::Lost(_) | Failure::Interrupted(_)) => {}
            Err(Failure::NotPrepared) => {
                job.prepared.remove(&worker.id);
            }
            Err(failure) => warn!(job = job_id, group, "cannot combine, keeping the partials apart: {failure:?}"),
        }
        (job.combines() != before).then_some(job.combines()).flatten()
    });
    shared.wake();
    if let Some(combines) = learned
        && let Err(e) = shared.store.set_combines(job_id, combines).await
    {
        error!(job = job_id, "{e}");
    }
}

/// Merges group `group` of the job on `worker` and stores the merge, unless its partials are
/// too large to hold (see [`MAX_COMBINE_BYTES`]).
async fn merge_group(
    shared: &Shared,
    worker: &WorkerHandle,
    job_id: JobId,
    group: u64,
    group_size: u64,
) -> Result<Merge, Failure> {
    if !is_active(shared, job_id) {
        return Err(Failure::Attempt(String::new()));
    }
    let (first, store) = (group * group_size, &shared.store);
    let bytes = store.partial_bytes(job_id, first, group_size).await.map_err(|e| Failure::Attempt(e.to_string()))?;
    if bytes > MAX_COMBINE_BYTES {
        return Ok(Merge::TooLarge(bytes));
    }
    let partials =
        store.chunk_partials(job_id, first, group_size).await.map_err(|e| Failure::Attempt(e.to_string()))?;
    let answer = worker.client.combine(deadline_in(CALL_DEADLINE), worker.secret(), job_id, partials).await;
    let Some(merged) = classify(answer, CALL_DEADLINE)? else { return Ok(Merge::Unsupported) };
    store.save_combined(job_id, group, group_size, &merged).await.map_err(|e| Failure::Attempt(e.to_string()))?;
    Ok(Merge::Stored)
}

/// Stages the job's partials on `worker` and has it aggregate them (telling the plugin how many
/// files they come from); stores the result, or deals with the failure.
async fn aggregate(
    shared: &Shared,
    worker: WorkerHandle,
    job_id: JobId,
    n_chunks: u64,
    group_size: u64,
    input_files: u64,
) {
    if !is_active(shared, job_id) {
        return;
    }
    info!(job = job_id, worker = worker.id, "aggregating");
    let staged = match stage_partials(shared, &worker, job_id, n_chunks, group_size).await {
        Ok(Ok(staged)) => staged,
        Ok(Err(failure)) => return aggregate_failed(shared, &worker, job_id, failure).await,
        Err(message) => return fail_internal(shared, job_id, message).await,
    };
    let limit = shared.max_result_bytes;
    let ctx = deadline_in(CALL_DEADLINE);
    let result = worker.client.aggregate(ctx, worker.secret(), job_id, staged, input_files, limit).await;
    let failure = match classify(result, CALL_DEADLINE) {
        Ok(answer) => match results::fetch(shared, &worker, job_id, answer.len).await {
            Ok(()) => {
                let mine =
                    shared.with_state(|st| st.job_mut(job_id).is_some_and(|job| job.aggregation_answered(worker.id)));
                if mine {
                    info!(job = job_id, worker = worker.id, bytes = answer.len, "result stored");
                    // Kept before the job ends, so whoever sees it succeed finds it (`kiln logs`);
                    // a failure to keep it is logged and costs the job nothing.
                    if let Some(printed) = answer.printed()
                        && let Err(e) = shared.store.save_plugin_output(job_id, &[&printed]).await
                    {
                        warn!(job = job_id, "cannot keep what the aggregate printed: {e}");
                    }
                    end_job(shared, job_id, JobState::Succeeded, None, None).await;
                } else if !is_active(shared, job_id) {
                    // Cancelled while it was fetched: nobody can read it.
                    let _ = tokio::fs::remove_file(results::result_path(shared, job_id)).await;
                }
                return;
            }
            Err(FetchError::Disk(message)) => {
                results::discard_part(shared, job_id, &worker).await;
                return fail_internal(shared, job_id, message).await;
            }
            Err(FetchError::Worker(failure)) => {
                results::discard_part(shared, job_id, &worker).await;
                failure
            }
        },
        Err(failure) => failure,
    };
    aggregate_failed(shared, &worker, job_id, failure).await;
}

/// Sends the job's partials, in input order, to `worker` in pieces of a few MiB (a page of the
/// store each); answers how many it staged, or why the worker did not take them (`Ok(Err)`),
/// or what is wrong with the stored partials (`Err`).
async fn stage_partials(
    shared: &Shared,
    worker: &WorkerHandle,
    job_id: JobId,
    n_chunks: u64,
    group_size: u64,
) -> Result<Result<u64, Failure>, String> {
    let (mut next_chunk, mut staged) = (0u64, 0u64);
    loop {
        let page = shared
            .store
            .partials_page(job_id, group_size, next_chunk, result_piece_bytes())
            .await
            .map_err(|e| format!("cannot gather the partials: {e}"))?;
        let mut partials = Vec::with_capacity(page.len());
        for (first, covers, partial) in page {
            if first != next_chunk {
                return Err(format!("cannot gather the partials: job {job_id} has no partial for chunk {next_chunk}"));
            }
            next_chunk = first + covers;
            partials.push(partial);
        }
        // The first call is made even without partials (an empty input): it starts the staging.
        if partials.is_empty() && staged > 0 {
            break;
        }
        let count = partials.len() as u64;
        let sent = worker.client.stage_partials(deadline_in(STAGE_DEADLINE), worker.secret(), job_id, staged, partials);
        if let Err(failure) = classify(sent.await, STAGE_DEADLINE) {
            return Ok(Err(failure));
        }
        staged += count;
        if count == 0 {
            break;
        }
    }
    if next_chunk != n_chunks {
        return Err(format!(
            "cannot gather the partials: job {job_id} has partials for {next_chunk} of {n_chunks} chunks"
        ));
    }
    Ok(Ok(staged))
}

/// An aggregate (or staging its partials, or fetching its output) failed on `worker`: lose the
/// worker, prepare again, try again elsewhere or fail the job, as the failure says.
async fn aggregate_failed(shared: &Shared, worker: &WorkerHandle, job_id: JobId, failure: Failure) {
    let fail = shared.with_state(|st| {
        if let Failure::Lost(reason) = &failure {
            st.lose_worker(worker.id, reason);
        }
        let job = st.job_mut(job_id)?;
        if !job.aggregation_failed(worker.id) {
            return None;
        }
        match failure {
            Failure::Lost(_) | Failure::Interrupted(_) => None,
            Failure::NotPrepared => {
                job.prepared.remove(&worker.id);
                None
            }
            Failure::Attempt(message) | Failure::Fault(message) => {
                let failures = job.count_aggregate_failure();
                warn!(job = job_id, worker = worker.id, "aggregate failed: {message}");
                (failures >= job.max_attempts()).then_some((FailureKind::Plugin, message))
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
