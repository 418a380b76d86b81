//! A chunk of a job's input and the copies of it running, and the groups of consecutive
//! chunks whose partials `combine` merges.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::controller::store::ChunkMeta;
use crate::rpc::WorkerId;

/// Where a group of consecutive chunks stands with `combine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::controller) enum GroupState {
    /// Waiting for its chunks (or for a worker to merge them).
    Open,
    Combining(WorkerId),
    Combined,
    /// Left as separate partials: the merge failed, or the plugin does not combine.
    Raw,
}

/// One copy of a chunk running on a worker, in a call that may carry a batch of chunks.
#[derive(Debug, Clone)]
pub(in crate::controller) struct RunningCopy {
    pub worker: WorkerId,
    pub since: Instant,
    /// Whether this is a speculative copy of a slow chunk.
    pub speculative: bool,
    /// Notified to abandon the call (every chunk it carries is done elsewhere, or the job
    /// ended); shared by the copies of the chunks of one call.
    pub cancel: Arc<Notify>,
    /// The chunks the call carries, in the order the worker runs them (this one among them).
    pub batch: Arc<[u64]>,
}

impl RunningCopy {
    /// A copy starting now on `worker`, in a call carrying the chunks `batch`.
    pub fn start(worker: WorkerId, speculative: bool, batch: Arc<[u64]>) -> RunningCopy {
        RunningCopy { worker, since: Instant::now(), speculative, cancel: Arc::new(Notify::new()), batch }
    }
}

/// A chunk of a job's input.
#[derive(Debug, Clone)]
pub(in crate::controller) struct Chunk {
    pub meta: ChunkMeta,
    pub done: bool,
    /// A partial came back and is being written; the chunk is neither queued nor lost.
    pub storing: bool,
    /// Attempts that failed.
    pub failures: u32,
    pub running: Vec<RunningCopy>,
    /// Workers where an attempt failed: a retry goes elsewhere when it can.
    pub failed_on: Vec<WorkerId>,
    /// The message of the last attempt that panicked or crashed, to tell a fault that repeats.
    pub last_fault: Option<String>,
    /// Whether a speculative copy was started (one per chunk at most).
    pub speculated: bool,
}

impl Chunk {
    /// Removes the running copy whose cancellation is `cancel`, and answers it.
    pub fn take_copy(&mut self, cancel: &Arc<Notify>) -> Option<RunningCopy> {
        let position = self.running.iter().position(|copy| Arc::ptr_eq(&copy.cancel, cancel))?;
        Some(self.running.remove(position))
    }
}
