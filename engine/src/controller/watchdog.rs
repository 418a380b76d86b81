//! Warnings an operator can act on about work that cannot move: jobs waiting while no worker
//! is registered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Shared;
use crate::rpc::JobState;

/// How often the watchdog looks.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// How long jobs may wait without any worker before the first warning: workers reconnecting
/// after a controller restart take a few seconds.
const NO_WORKER_GRACE: Duration = Duration::from_secs(10);

/// How often the warning is repeated while nothing changes.
const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Warns while jobs are queued or running and no worker is registered, naming the jobs.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut waiting_since: Option<Instant> = None;
    let mut warned_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
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
