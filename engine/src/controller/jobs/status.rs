//! What watchers see of a job: its status, published on every change.

use tokio::sync::watch;

use super::Job;
use crate::rpc::{JobId, JobState, JobStatus};

impl Job {
    /// The job's status now.
    pub(super) fn snapshot(&self) -> JobStatus {
        JobStatus {
            id: self.id,
            owner: self.spec.owner.clone(),
            seq: self.seq,
            state: self.state,
            plugin_hash: self.spec.plugin_hash.clone(),
            params: self.spec.params.clone(),
            input_name: self.spec.input_name.clone(),
            processes: self.spec.processes,
            n_chunks: self.n_chunks,
            chunks_done: self.chunks_done,
            lines_done: self.lines_done,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            retries: self.retries,
            lost_workers: self.lost_workers,
            speculative: self.speculative,
            speculative_won: self.speculative_won,
            workers: self.workers.values().cloned().collect(),
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            failure: self.failure.clone(),
        }
    }

    /// Sends the job's status, with a new `seq`, to everyone watching.
    pub fn publish(&mut self) {
        self.seq += 1;
        let status = self.snapshot();
        self.status.send_replace(status);
    }

    /// The last published status.
    pub fn published(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    /// A receiver of the job's published statuses.
    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.status.subscribe()
    }
}

pub(super) fn placeholder_status(id: JobId) -> JobStatus {
    JobStatus {
        id,
        owner: String::new(),
        seq: 0,
        state: JobState::Uploading,
        plugin_hash: String::new(),
        params: String::new(),
        input_name: String::new(),
        processes: 0,
        n_chunks: 0,
        chunks_done: 0,
        lines_done: 0,
        bytes_done: 0,
        bytes_total: 0,
        retries: 0,
        lost_workers: 0,
        speculative: 0,
        speculative_won: 0,
        workers: Vec::new(),
        created_ms: 0,
        started_ms: None,
        finished_ms: None,
        failure: None,
    }
}
