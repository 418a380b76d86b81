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

/// How many consecutive chunks of `chunk_size` bytes make one combine group: enough to cover
/// [`COMBINE_GROUP_BYTES`] of input, at least [`COMBINE_GROUP`] and at most
/// [`MAX_COMBINE_GROUP`]; 16 for the default 4 MiB chunks, 256 for chunks of 256 KiB or less.
pub fn combine_group(chunk_size: u64) -> u64 {
    COMBINE_GROUP_BYTES.div_ceil(chunk_size.max(1)).clamp(COMBINE_GROUP as u64, MAX_COMBINE_GROUP)
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
}
