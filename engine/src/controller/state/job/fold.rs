//! Where a job's folding stands: the groups `combine` merges and the one `aggregate` call.

use super::{Aggregation, Job};
use crate::controller::state::chunk::GroupState;
use crate::rpc::{JobState, WorkerId};

impl Job {
    /// Whether the plugin combines; `None` until a worker answered a `combine`.
    pub fn combines(&self) -> Option<bool> {
        self.combines
    }

    /// Groups whose partials are all stored and that wait for a merge.
    pub fn groups_to_combine(&self) -> impl Iterator<Item = usize> + '_ {
        let size = self.groups.size();
        self.groups
            .iter()
            .enumerate()
            .filter_map(move |(g, group)| (group.state == GroupState::Open && group.is_complete(size)).then_some(g))
    }

    /// Leaves every group not yet merged as separate partials.
    pub fn stop_combining(&mut self) {
        self.combines = Some(false);
        for group in self.groups.iter_mut() {
            if group.state == GroupState::Open {
                group.state = GroupState::Raw;
            }
        }
    }

    pub(super) fn combining(&self) -> bool {
        self.groups.iter().any(|g| matches!(g.state, GroupState::Combining(_)))
    }

    /// How many of the input's files have chunks, which `aggregate` passes to the plugin: an
    /// empty file has none, as each of a plugin's partials comes from a chunk of one file.
    /// Chunks are in file order, so each file's chunks are consecutive.
    pub fn input_files(&self) -> u64 {
        let starts = self.chunks.windows(2).filter(|pair| pair[0].meta.file != pair[1].meta.file).count();
        if self.chunks.is_empty() { 0 } else { starts as u64 + 1 }
    }

    /// Whether every chunk is done and no merge is running: time to aggregate.
    pub fn ready_to_aggregate(&self) -> bool {
        self.input_complete() && self.chunks_done == self.n_chunks && !self.combining()
    }

    /// Group `group` is being merged on `worker_id`.
    pub fn start_combine(&mut self, group: usize, worker_id: WorkerId) {
        if let Some(group) = self.groups.get_mut(group) {
            group.state = GroupState::Combining(worker_id);
        }
    }

    /// A merge of group `group` ended, leaving it `state`: merged (so the plugin combines),
    /// open to be merged again, or raw. Answers `None` when the job has no such group.
    pub fn end_combine(&mut self, group: u64, state: GroupState) -> Option<()> {
        let slot = self.groups.get_mut(usize::try_from(group).ok()?)?;
        slot.state = state;
        if state == GroupState::Combined {
            self.combines = Some(true);
        }
        Some(())
    }

    /// Where the aggregation stands.
    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    /// The aggregation runs on `worker_id`.
    pub fn start_aggregation(&mut self, worker_id: WorkerId) {
        self.aggregation = Aggregation::Running(worker_id);
        self.set_state(JobState::Aggregating);
    }

    /// The aggregation on `worker_id` answered the output: answers whether it was the one
    /// running (the output is then being stored), rather than a late answer.
    pub fn aggregation_answered(&mut self, worker_id: WorkerId) -> bool {
        if self.aggregation != Aggregation::Running(worker_id) {
            return false;
        }
        self.aggregation = Aggregation::Storing;
        true
    }

    /// The aggregation on `worker_id` failed: answers whether it was the one running (it is
    /// then to be started again).
    pub fn aggregation_failed(&mut self, worker_id: WorkerId) -> bool {
        if self.aggregation != Aggregation::Running(worker_id) {
            return false;
        }
        self.aggregation = Aggregation::Idle;
        true
    }

    /// Counts a failed attempt at aggregating; answers the attempts failed so far.
    pub fn count_aggregate_failure(&mut self) -> u32 {
        self.aggregate_failures += 1;
        self.aggregate_failures
    }
}
