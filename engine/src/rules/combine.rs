//! Combine groups: which consecutive partials `combine` merges into one while a job runs, so
//! that `aggregate` decodes a handful of partials instead of one per chunk.

/// The fewest consecutive partials merged into one by `combine` while a job runs.
pub const COMBINE_GROUP: usize = 16;

/// How much input a combine group covers at least: merging the partials of a few kilobytes
/// of input costs a call and a store round trip for next to nothing. Sixteen default chunks.
pub const COMBINE_GROUP_BYTES: u64 = 64 << 20;

/// The most partials one combine merges: they travel in one call and sit in the controller's
/// and the executor's memory together.
pub const MAX_COMBINE_GROUP: u64 = 256;

/// The most stored partial bytes one `combine` merges. A group's partials travel to the
/// worker in one call and the merged partial comes back in one answer, each whole in the
/// memory of the controller and of the executor; a group whose partials are larger stays
/// apart, and `aggregate` reads them page by page as any others. Partials that large are those
/// that merging hardly shrinks (grep's matches over every line are as large as their chunks,
/// and merging them only concatenates), so little is lost. 16 MiB: four default chunks, or the
/// word counts of 16 default chunks of text with 50 000 distinct words.
pub const MAX_COMBINE_BYTES: u64 = 16 << 20;

/// How many consecutive chunks of `chunk_size` bytes make one combine group: enough to cover
/// [`COMBINE_GROUP_BYTES`] of input, at least [`COMBINE_GROUP`] and at most
/// [`MAX_COMBINE_GROUP`]; 16 for the default 4 MiB chunks, 256 for chunks of 256 KiB or less.
pub fn combine_group(chunk_size: u64) -> u64 {
    COMBINE_GROUP_BYTES.div_ceil(chunk_size.max(1)).clamp(COMBINE_GROUP as u64, MAX_COMBINE_GROUP)
}

/// The combine groups of a job's chunks: `size` consecutive chunks each (the last one fills up
/// as chunks are cut), how many of each group's partials are in, and the caller's own state of
/// each group (the controller: whether a worker merges it; run-local: the merged partial). A
/// group is complete, ready to merge, when it has `size` chunks and all their partials.
#[derive(Debug, Clone)]
pub struct Groups<S> {
    size: u64,
    groups: Vec<Group<S>>,
}

/// One combine group.
#[derive(Debug, Clone)]
pub struct Group<S> {
    members: u64,
    arrived: u64,
    /// The caller's state of the group.
    pub state: S,
}

impl<S> Group<S> {
    /// How many chunks the group holds so far.
    pub fn members(&self) -> u64 {
        self.members
    }

    /// Whether the group has all its chunks and all their partials.
    pub fn is_complete(&self, size: u64) -> bool {
        self.members == size && self.arrived == self.members
    }
}

impl<S> Groups<S> {
    /// No chunks yet, in groups of `size` (at least one).
    pub fn new(size: u64) -> Self {
        Groups { size: size.max(1), groups: Vec::new() }
    }

    /// How many consecutive chunks a group holds.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The group chunk `index` belongs to.
    pub fn of(&self, index: u64) -> usize {
        usize::try_from(index / self.size).unwrap_or(usize::MAX)
    }

    /// Counts the next chunk cut; a group it starts gets `state()`.
    pub fn add_chunk(&mut self, state: impl FnOnce() -> S) {
        match self.groups.last_mut() {
            Some(group) if group.members < self.size => group.members += 1,
            _ => self.groups.push(Group { members: 1, arrived: 0, state: state() }),
        }
    }

    /// Counts chunk `index`'s partial in; answers its group's number when that made the group
    /// complete.
    pub fn arrive(&mut self, index: u64) -> Option<usize> {
        let number = self.of(index);
        let size = self.size;
        let group = self.groups.get_mut(number)?;
        group.arrived += 1;
        group.is_complete(size).then_some(number)
    }

    /// Whether group `number` is complete.
    pub fn is_complete(&self, number: usize) -> bool {
        self.groups.get(number).is_some_and(|group| group.is_complete(self.size))
    }

    /// Group `number`.
    pub fn get_mut(&mut self, number: usize) -> Option<&mut Group<S>> {
        self.groups.get_mut(number)
    }

    /// The groups, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Group<S>> {
        self.groups.iter()
    }

    /// The groups, in order, to change their states.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Group<S>> {
        self.groups.iter_mut()
    }

    /// Forgets every group (the job ended).
    pub fn clear(&mut self) {
        self.groups = Vec::new();
    }

    /// The groups' states, in order.
    pub fn into_states(self) -> impl Iterator<Item = S> {
        self.groups.into_iter().map(|group| group.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_groups_cover_64_mib_of_input_within_bounds() {
        assert_eq!(combine_group(4 << 20), 16, "the default chunks, as before");
        assert_eq!(combine_group(1 << 30), 16, "never fewer than 16");
        assert_eq!(combine_group(1 << 20), 64);
        assert_eq!(combine_group(8), MAX_COMBINE_GROUP, "tiny chunks, capped");
        assert_eq!(combine_group(0), MAX_COMBINE_GROUP);
    }

    #[test]
    fn a_group_is_complete_once_all_its_chunks_are_cut_and_their_partials_in() {
        let mut groups: Groups<()> = Groups::new(3);
        for _ in 0..4 {
            groups.add_chunk(|| ());
        }
        assert_eq!(groups.iter().count(), 2, "3 + 1 chunks");
        assert_eq!(groups.arrive(0), None);
        assert_eq!(groups.arrive(2), None);
        assert_eq!(groups.arrive(1), Some(0), "the third partial completes group 0");
        assert_eq!(groups.arrive(3), None, "group 1 has one chunk of three so far");
        groups.add_chunk(|| ());
        groups.add_chunk(|| ());
        assert!(!groups.is_complete(1));
        assert_eq!(groups.arrive(4), None);
        assert_eq!(groups.arrive(5), Some(1));
        assert_eq!(groups.arrive(6), None, "no such group");
    }
}
