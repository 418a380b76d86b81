//! Work that cannot move: a warning an operator can act on while jobs wait with no worker
//! registered, and the end of uploads their clients abandoned (no new byte of input for the
//! configured time: the job fails as "upload abandoned" and its partial input is deleted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Shared;
use super::ending::end_job;
use crate::rpc::{FailureKind, JobFailure, JobId, JobState};

/// How often the watchdog looks.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// How long jobs may wait without any worker before the first warning: workers reconnecting
/// after a controller restart take a few seconds.
const NO_WORKER_GRACE: Duration = Duration::from_secs(10);

/// How often the warning is repeated while nothing changes.
const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Warns while jobs are queued or running and no worker is registered, naming the jobs, and
/// fails uploads that got no new byte for `upload_abandon`.
pub(super) async fn run(shared: Arc<Shared>, upload_abandon: Duration) {
    let mut waiting_since: Option<Instant> = None;
    let mut warned_at: Option<Instant> = None;
    let mut uploads: HashMap<JobId, (u64, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(LOOK_EVERY.min(upload_abandon)).await;
        end_abandoned_uploads(&shared, &mut uploads, upload_abandon).await;
        let waiting: Vec<String> = shared.with_state(|st| {
            if !st.workers().ids().is_empty() {
                return Vec::new();
            }
            st.jobs()
                .filter(|job| matches!(job.state(), JobState::Queued | JobState::Running | JobState::Aggregating))
                .map(|job| job.id.to_string())
                .collect()
        });
        if waiting.is_empty() {
            (waiting_since, warned_at) = (None, None);
            continue;
        }
        let now = Instant::now();
        let since = *waiting_since.get_or_insert(now);
        let due = match warned_at {
            None => now.duration_since(since) >= NO_WORKER_GRACE,
            Some(warned) => now.duration_since(warned) >= REPEAT_EVERY,
        };
        if due {
            warned_at = Some(now);
            let (noun, jobs) = if waiting.len() == 1 { ("job", "it waits") } else { ("jobs", "they wait") };
            warn!(
                jobs = %waiting.join(","),
                "no worker has been registered for {} s while {noun} {} cannot run: {jobs} until a worker joins \
                 (kiln worker --controller ADDR --join-token TOKEN)",
                now.duration_since(since).as_secs(),
                waiting.join(", "),
            );
        }
    }
}

/// Fails the jobs whose input has not grown for `abandon`; `uploads` holds each uploading job's
/// bytes received when last seen and since when it holds that many.
async fn end_abandoned_uploads(shared: &Shared, uploads: &mut HashMap<JobId, (u64, Instant)>, abandon: Duration) {
    let now = Instant::now();
    let uploading: Vec<(JobId, u64)> = shared.with_state(|st| {
        st.jobs()
            .filter(|job| job.state() == JobState::Uploading && !job.finishing_input())
            .map(|job| (job.id, job.bytes_total()))
            .collect()
    });
    uploads.retain(|job_id, _| uploading.iter().any(|(id, _)| id == job_id));
    for (job_id, received) in uploading {
        let seen = uploads.entry(job_id).or_insert((received, now));
        if seen.0 != received {
            *seen = (received, now);
            continue;
        }
        if now.duration_since(seen.1) < abandon {
            continue;
        }
        uploads.remove(&job_id);
        let message = format!(
            "upload abandoned: no new piece of input for {} s after {received} bytes; its partial input was \
             deleted: submit the job again",
            abandon.as_secs()
        );
        warn!(job = job_id, "{message}");
        let failure = JobFailure { kind: FailureKind::Input, message, chunk: None, attempts: 0 };
        end_job(shared, job_id, JobState::Failed, Some(failure), None).await;
    }
}
