//! Run-local's partials: kept by chunk index in input order, merged in groups as they complete
//! when the plugin combines, and merged once more in runs before `aggregate`; as on a cluster,
//! partials that together exceed [`MAX_COMBINE_BYTES`] are not merged but left apart, so that
//! no `combine` holds a result as large as the input (grep's matches of every line).

use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;

use super::LocalError;
use crate::rpc::TaskError;
use crate::rules::combine::{Groups, MAX_COMBINE_BYTES};
use crate::worker::runner::JobRunner;

/// The partials of a job, in chunk order, with groups of consecutive partials merged as they
/// complete when the plugin combines.
pub(super) struct Partials {
    combines: bool,
    by_chunk: Vec<Option<Bytes>>,
    /// The combine groups, each with its merged partial once done.
    groups: Groups<Option<Bytes>>,
}

impl Partials {
    pub(super) fn new(combines: bool, group: u64) -> Self {
        Partials { combines, by_chunk: Vec::new(), groups: Groups::new(group) }
    }

    /// Makes room for the next chunk, `index`, which is now queued.
    pub(super) fn expect(&mut self, index: u64) {
        debug_assert_eq!(index, self.by_chunk.len() as u64, "chunks are queued in order");
        self.by_chunk.push(None);
        self.groups.add_chunk(|| None);
    }

    /// Stores a chunk's partial; returns a complete group (its number and partials) to
    /// combine, if any.
    pub(super) fn insert(&mut self, index: u64, partial: Bytes) -> Option<(usize, Vec<Bytes>)> {
        self.by_chunk[index as usize] = Some(partial);
        let group = self.groups.arrive(index)?;
        if !self.combines {
            return None;
        }
        let size = self.groups.size() as usize;
        let members = &mut self.by_chunk[group * size..(group + 1) * size];
        let bytes: u64 = members.iter().flatten().map(|p| p.len() as u64).sum();
        if bytes > MAX_COMBINE_BYTES {
            // Left apart: `into_ordered` gives the group's partials one by one.
            return None;
        }
        Some((group, members.iter_mut().map(|p| p.take().unwrap_or_default()).collect()))
    }

    pub(super) fn combined(&mut self, group: usize, merged: Bytes) {
        if let Some(group) = self.groups.get_mut(group) {
            group.state = Some(merged);
        }
    }

    /// All partials in input order: merged groups as one partial each.
    pub(super) fn into_ordered(self) -> Vec<Bytes> {
        let mut ordered = Vec::new();
        let size = self.groups.size() as usize;
        for (merged, chunk_partials) in self.groups.into_states().zip(self.by_chunk.chunks(size)) {
            match merged {
                Some(merged) => ordered.push(merged),
                None => ordered.extend(chunk_partials.iter().map(|p| p.clone().unwrap_or_default())),
            }
        }
        ordered
    }
}

/// Merges runs of consecutive partials, in parallel with at most `slots` merges at a time and
/// keeping their order, when the plugin combines, so that `aggregate` has few left to decode.
/// A run holds at most a `slots`-th of the partials and of [`MAX_COMBINE_BYTES`], so that the
/// merges at once hold no more than one combine of a cluster: larger partials (those merging
/// hardly shrinks, such as grep's matches of every line) are left apart, and the aggregate takes
/// them one at a time.
pub(super) async fn final_partials(
    runner: &Arc<JobRunner>,
    partials: Vec<Bytes>,
    slots: usize,
) -> Result<Vec<Bytes>, LocalError> {
    if partials.len() <= slots || !runner.combines().await.map_err(LocalError::Combine)? {
        return Ok(partials);
    }
    let runs = runs(partials, slots, MAX_COMBINE_BYTES / slots.max(1) as u64);
    let mut merged = vec![Bytes::new(); runs.len()];
    let mut merges: JoinSet<(usize, Result<Option<Bytes>, TaskError>)> = JoinSet::new();
    let mut waiting = runs.into_iter().enumerate();
    loop {
        while merges.len() < slots.max(1) {
            match waiting.next() {
                Some((position, mut run)) if run.len() == 1 => merged[position] = run.pop().unwrap_or_default(),
                Some((position, run)) => {
                    let runner = Arc::clone(runner);
                    merges.spawn(async move { (position, runner.combine(run).await) });
                }
                None => break,
            }
        }
        let Some(done) = merges.join_next().await else { break };
        let (position, result) = done.map_err(|e| LocalError::Internal(format!("a combine's task panicked: {e}")))?;
        match result.map_err(LocalError::Combine)? {
            Some(partial) => merged[position] = partial,
            None => return Err(LocalError::Internal("the plugin stopped combining mid-run".to_owned())),
        }
    }
    Ok(merged)
}

/// Cuts the partials into runs of consecutive ones to merge: each of at most a `slots`-th of
/// them and at most `max_bytes` (a larger partial is a run of its own).
fn runs(partials: Vec<Bytes>, slots: usize, max_bytes: u64) -> Vec<Vec<Bytes>> {
    let per_run = partials.len().div_ceil(slots.max(1));
    let mut runs: Vec<Vec<Bytes>> = Vec::new();
    let mut bytes = 0;
    for partial in partials {
        let len = partial.len() as u64;
        match runs.last_mut() {
            Some(run) if run.len() < per_run && bytes + len <= max_bytes => {
                bytes += len;
                run.push(partial);
            }
            _ => {
                bytes = len;
                runs.push(vec![partial]);
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(runs: &[Vec<Bytes>]) -> Vec<Vec<usize>> {
        runs.iter().map(|run| run.iter().map(Bytes::len).collect()).collect()
    }

    #[test]
    fn runs_keep_their_order_and_stay_within_a_slots_share_of_the_partials_and_the_bytes() {
        let partial = |len: usize| Bytes::from(vec![0u8; len]);
        let small = (0..7).map(|_| partial(10)).collect();
        assert_eq!(sizes(&runs(small, 2, 1000)), [vec![10; 4], vec![10; 3]]);
        let mixed = vec![partial(50), partial(50), partial(1), partial(300), partial(5), partial(6)];
        assert_eq!(sizes(&runs(mixed, 1, 100)), [vec![50, 50], vec![1], vec![300], vec![5, 6]]);
    }
}
