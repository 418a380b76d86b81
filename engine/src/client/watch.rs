//! Watching a job: long-polls that survive a controller restart.

use std::time::Instant;

use futures::Stream;

use super::{BACKOFF_FIRST, BACKOFF_MAX, Client, ClientError, Repeat, WATCH_MARGIN};
use crate::rpc::{FailureKind, JobFailure, JobId, JobState, JobStatus, WATCH_WAIT};

impl Client {
    /// The job's statuses as they change, until it ends: each item is newer than the last.
    /// When the connection breaks (the controller restarts), the stream reconnects by itself,
    /// giving up with an error after the client's patience ([`Client::set_patience`]) without an
    /// answer.
    pub fn watch(&self, job: JobId) -> impl Stream<Item = Result<JobStatus, ClientError>> + Send + 'static {
        let watcher = Watcher { client: self.clone(), job, last_seq: None, reconnected: false, ended: false };
        futures::stream::unfold(watcher, |mut watcher| async move {
            if watcher.ended {
                return None;
            }
            let next = watcher.next().await;
            watcher.ended = next.as_ref().map_or(true, |status| status.state.is_final());
            Some((next, watcher))
        })
    }

    /// Waits for the job to end and answers its final status (succeeded, failed or cancelled).
    pub async fn wait(&self, job: JobId) -> Result<JobStatus, ClientError> {
        use futures::StreamExt;
        let mut statuses = std::pin::pin!(self.watch(job));
        let mut last = None;
        while let Some(status) = statuses.next().await {
            last = Some(status?);
        }
        last.filter(|status| status.state.is_final()).ok_or_else(|| ClientError::Connection {
            addr: self.inner.addr.clone(),
            message: format!("the status of job {job} stopped before the job ended"),
        })
    }
}

/// Turns a final status other than success into its error.
pub(super) fn ended(status: &JobStatus) -> Result<(), ClientError> {
    match (status.state, &status.failure) {
        (JobState::Failed, Some(failure)) => Err(ClientError::JobFailed { job: status.id, failure: failure.clone() }),
        (JobState::Failed, None) => Err(ClientError::JobFailed {
            job: status.id,
            failure: JobFailure {
                kind: FailureKind::Internal,
                message: "the controller gave no reason".to_owned(),
                chunk: None,
                attempts: 0,
            },
        }),
        (JobState::Cancelled, _) => Err(ClientError::Cancelled(status.id)),
        _ => Ok(()),
    }
}

/// Long-polls one job's status.
struct Watcher {
    client: Client,
    job: JobId,
    /// The `seq` of the last status handed out.
    last_seq: Option<u64>,
    /// Whether the connection was made anew since the last answer: a restarted controller may
    /// number its statuses differently, so the next call asks for the current one at once.
    reconnected: bool,
    ended: bool,
}

impl Watcher {
    /// The next status with another `seq` than the last one handed out.
    async fn next(&mut self) -> Result<JobStatus, ClientError> {
        let mut failing_since: Option<Instant> = None;
        let mut backoff = BACKOFF_FIRST;
        loop {
            let seen = if self.reconnected { 0 } else { self.last_seq.unwrap_or(0) };
            let key = &self.client.inner.key;
            let job = self.job;
            let answer = self
                .client
                .call(WATCH_WAIT + WATCH_MARGIN, Repeat::Never, |controller, ctx| {
                    let key = key.clone();
                    async move { controller.watch(ctx, key, job, seen).await }
                })
                .await;
            match answer {
                Ok(status) => {
                    self.reconnected = false;
                    if self.last_seq != Some(status.seq) {
                        self.last_seq = Some(status.seq);
                        return Ok(status);
                    }
                }
                Err(error) if error.is_transient() => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.client.patience() {
                        return Err(error);
                    }
                    tracing::debug!(job, "watching: {error}; retrying");
                    self.reconnected = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(error) => return Err(error),
            }
        }
    }
}
