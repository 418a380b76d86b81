//! Ending a job: in memory, in the store, then to watchers; whoever ends it (a failed chunk,
//! the input, a cancel, the aggregate, a restart that lost the input) goes through here.

use tracing::{error, info, warn};

use super::Shared;
use crate::rpc::{FailureKind, JobFailure, JobId, JobState};

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
    let record = shared.with_state(|st| st.end_job(job_id, state, failure, result));
    let Some(record) = record else { return false };
    if let Some(failure) = &record.figures.failure {
        info!(job = job_id, kind = ?failure.kind, "job failed: {}", failure.message);
    }
    if let Err(e) = shared.store.save_final(&record).await {
        error!(job = job_id, state = state.as_str(), "{e}");
    }
    shared.with_state(|st| {
        if let Some(job) = st.job_mut(job_id) {
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
