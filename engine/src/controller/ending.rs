//! Ending a job: in memory, in the store, then to watchers; whoever ends it (a failed chunk,
//! the input, a cancel, the aggregate, a restart that lost the input) goes through here.

use tracing::{error, info, warn};

use super::Shared;
use crate::rpc::{FailureKind, JobFailure, JobId, JobState};

/// Ends a job: in memory at once (nothing more is dispatched, late answers are ignored), then
/// in the store, then to watchers, so a watcher that sees the end can fetch the result; its
/// spooled input is deleted only once the end is stored, so a job whose end was not stored
/// still has its input when a restart resumes it. Answers false when the job had already ended,
/// or when the controller is stopping: a call cut short by shutdown (its store closed under
/// it) ends nothing, and the restart resumes the job.
pub(super) async fn end_job(
    shared: &Shared,
    job_id: JobId,
    state: JobState,
    failure: Option<JobFailure>,
    result: Option<String>,
) -> bool {
    if shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        info!(job = job_id, state = state.as_str(), "the controller is stopping: the job is left to resume");
        return false;
    }
    let record = shared.with_state(|st| st.end_job(job_id, state, failure, result));
    let Some(record) = record else { return false };
    if let Some(failure) = &record.figures.failure {
        info!(job = job_id, kind = ?failure.kind, "job failed: {}", failure.message);
    }
    let stored = match shared.store.save_final(&record).await {
        Ok(()) => true,
        Err(e) => {
            error!(job = job_id, state = state.as_str(), "{e}");
            false
        }
    };
    shared.with_state(|st| {
        if let Some(job) = st.job_mut(job_id) {
            job.publish();
        }
    });
    if stored
        && let Err(e) = tokio::fs::remove_file(shared.input_path(job_id)).await
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
