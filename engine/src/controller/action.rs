//! The scheduler's decisions: what `plan` (and `speculation` within it) decided to start, and
//! `dispatch` performs, one task per action.
//!
//! An action is decided under the state's lock, where what it starts is already marked as
//! running (a chunk's copy, a group combining, a worker preparing), so that nothing is started
//! twice; its task makes the call and applies the answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::state::workers::WorkerHandle;
use super::store::ChunkMeta;
use crate::rpc::{JobId, JobPlugin};

/// Something the scheduler decided to start.
pub(super) enum Action {
    /// Make a worker ready for a job.
    Prepare { worker: WorkerHandle, job: JobId, plugin: JobPlugin },
    /// Run a copy of each of these chunks in one call, until it answers or `cancel` is notified.
    Run { worker: WorkerHandle, job: JobId, chunks: Vec<(u64, ChunkMeta)>, cancel: Arc<Notify>, deadline: Duration },
    /// Merge the partials of a complete group.
    Combine { worker: WorkerHandle, job: JobId, group: u64, group_size: u64 },
    /// Fold every partial, from `input_files` files, into the output.
    Aggregate { worker: WorkerHandle, job: JobId, n_chunks: u64, group_size: u64, input_files: u64 },
    /// Tell a worker a job has ended.
    Release { worker: WorkerHandle, job: JobId },
    /// Record that a job started running.
    MarkRunning { job: JobId, started_ms: u64 },
    /// Store a job's figures of lost workers and speculative copies.
    SaveFigures { job: JobId, lost_workers: u64, speculative: u64, speculative_won: u64 },
}
