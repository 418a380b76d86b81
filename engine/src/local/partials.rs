//! Run-local's partials: kept by chunk index in input order, merged in groups as they complete
//! when the plugin combines, and merged once more into one per slot before `aggregate`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;

use super::LocalError;
use crate::rpc::TaskError;
use crate::rules::combine::Groups;
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
        let members =
            self.by_chunk[group * size..(group + 1) * size].iter_mut().map(|p| p.take().unwrap_or_default()).collect();
        Some((group, members))
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

/// Merges the remaining partials into at most `slots` (in parallel, keeping their order) when
/// the plugin combines and there are more than that, so `aggregate` has little left to decode.
pub(super) async fn final_partials(
    runner: &Arc<JobRunner>,
    partials: Vec<Bytes>,
    slots: usize,
) -> Result<Vec<Bytes>, LocalError> {
    if partials.len() <= slots || !runner.combines().await.map_err(LocalError::Combine)? {
        return Ok(partials);
    }
    let per_batch = partials.len().div_ceil(slots);
    let mut batches: JoinSet<(usize, Result<Option<Bytes>, TaskError>)> = JoinSet::new();
    let mut rest = partials.into_iter();
    let mut n_batches = 0;
    loop {
        let batch: Vec<Bytes> = rest.by_ref().take(per_batch).collect();
        if batch.is_empty() {
            break;
        }
        let runner = Arc::clone(runner);
        let position = n_batches;
        batches.spawn(async move { (position, runner.combine(batch).await) });
        n_batches += 1;
    }
    let mut merged = vec![Bytes::new(); n_batches];
    while let Some(done) = batches.join_next().await {
        let (position, result) = done.map_err(|e| LocalError::Internal(format!("a combine's task panicked: {e}")))?;
        match result.map_err(LocalError::Combine)? {
            Some(partial) => merged[position] = partial,
            None => return Err(LocalError::Internal("the plugin stopped combining mid-run".to_owned())),
        }
    }
    Ok(merged)
}
