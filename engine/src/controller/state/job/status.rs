//! What watchers see of a job: its figures, the status made of them and published on every
//! change, and the figures of lost workers and speculative copies stored as they change.

use tokio::sync::watch;

use super::Job;
use crate::controller::store::Figures;
use crate::rpc::JobStatus;
use crate::rpc::build::BuildProgress;

impl Job {
    /// The chunks cut so far.
    pub fn n_chunks(&self) -> u64 {
        self.n_chunks
    }

    pub fn chunks_done(&self) -> u64 {
        self.chunks_done
    }

    /// Attempts that failed and were retried.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Counts a failed attempt that will be retried.
    pub fn count_retry(&mut self) {
        self.retries += 1;
    }

    /// The job's figures now, as they are with `seq`.
    pub(super) fn figures(&self, seq: u64) -> Figures {
        Figures {
            seq,
            state: self.state,
            n_chunks: self.n_chunks,
            bytes_total: self.bytes_total,
            chunks_done: self.chunks_done,
            lines_done: self.lines_done,
            bytes_done: self.bytes_done,
            retries: self.retries,
            lost_workers: self.lost_workers,
            speculative: self.speculative,
            speculative_won: self.speculative_won,
            workers: self.workers.values().cloned().collect(),
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            failure: self.failure.clone(),
            build: self.build.clone().map(|mut build| {
                // A job that ended while building (a compile error, a cancel) ended its build.
                if self.state.is_final() && build.finished_ms.is_none() {
                    build.finished_ms = Some(self.finished_ms.unwrap_or(build.started_ms).max(build.started_ms));
                }
                build
            }),
        }
    }

    /// The building phase begins with the first worker asked to prepare the job; answers
    /// whether that is now.
    pub fn build_started(&mut self, now_ms: u64) -> bool {
        if self.build.is_some() {
            return false;
        }
        self.build = Some(BuildProgress { started_ms: now_ms, ..BuildProgress::default() });
        true
    }

    /// Takes a worker's report of its build, while the phase lasts. When several workers
    /// build, the one furthest along shows (the first to finish lets the chunks start).
    /// Answers whether the status changed.
    pub fn record_build(&mut self, progress: BuildProgress) -> bool {
        let Some(build) = self.build.as_mut().filter(|build| !build.is_finished()) else { return false };
        let ahead = (progress.crates_total > 0 && build.crates_total == 0) || progress.crates_done >= build.crates_done;
        if !ahead {
            return false;
        }
        let changed = (progress.crates_done, progress.crates_total, &progress.current)
            != (build.crates_done, build.crates_total, &build.current);
        (build.crates_done, build.crates_total, build.current) =
            (progress.crates_done, progress.crates_total, progress.current);
        changed
    }

    /// A worker has the plugin ready: the building phase ends (chunks may start). Answers
    /// whether it ended now.
    pub fn build_finished(&mut self, now_ms: u64) -> bool {
        let Some(build) = self.build.as_mut().filter(|build| !build.is_finished()) else { return false };
        build.finished_ms = Some(now_ms.max(build.started_ms));
        build.crates_done = build.crates_total;
        build.current.clear();
        true
    }

    /// Sends the job's status, with a new `seq`, to everyone watching.
    pub fn publish(&mut self) {
        self.seq += 1;
        self.status.send_replace(self.snapshot());
    }

    /// The job's status now.
    pub(super) fn snapshot(&self) -> JobStatus {
        self.figures(self.seq).status(self.id, &self.spec)
    }

    /// The last published status.
    pub fn published(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    /// A receiver of the job's published statuses.
    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.status.subscribe()
    }

    /// The figures of lost workers and speculative copies (`lost_workers`, `speculative`,
    /// `speculative_won`), if they changed since they were last taken to be stored.
    pub fn take_dirty_figures(&mut self) -> Option<(u64, u64, u64)> {
        let dirty = std::mem::take(&mut self.figures_dirty);
        dirty.then_some((self.lost_workers, self.speculative, self.speculative_won))
    }

    /// Counts a speculative copy that finished before the original.
    pub fn count_speculative_win(&mut self) {
        self.speculative_won += 1;
        self.figures_dirty = true;
    }
}
