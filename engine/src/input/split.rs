//! Byte-range splits of a file read by reference, by the Hadoop rule.
//!
//! The controller plans a file's splits from its size alone ([`plan`]): consecutive byte
//! ranges of about the split size, without reading a byte. Whoever reads a split then finds its
//! lines by one rule ([`lines_in`], driven by [`read_split`]):
//!
//! - a split that starts at offset 0 begins there; any other begins after the first line end
//!   (`\n`) at or past its start;
//! - every split reads past its end to finish its last line: it ends after the first line end
//!   at or past its end (or at the end of the file).
//!
//! Split `k` ends exactly where split `k + 1` begins, so every line belongs to exactly one split
//! whatever the split size: the one that holds the line end before it (line 1, the split at 0).
//! A split inside a line longer than itself holds no line at all. A compressed file cannot be
//! entered in the middle, so it is one split.
//!
//! Reading past a split's end is bounded as cutting an uploaded input is: a line longer than
//! the limit (`--max-line-size`, or the split's size where that is more) fails the read
//! ([`SplitError::LineTooLong`]) once the reader holds one byte more than the limit of it.

use std::ops::Range;

/// A planned byte range of a file: `start..end`, before the rule moves its edges to line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Its first byte in the file.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
}

/// The splits of a file of `size` bytes, about `split_size` bytes each (at least one byte); a
/// compressed file is one split, an empty file none.
pub fn plan(size: u64, split_size: u64, compressed: bool) -> Vec<Split> {
    if size == 0 {
        return Vec::new();
    }
    if compressed {
        return vec![Split { start: 0, end: size }];
    }
    let split_size = split_size.max(1);
    (0..size.div_ceil(split_size))
        .map(|k| Split { start: k * split_size, end: ((k + 1) * split_size).min(size) })
        .collect()
}

/// Where a split's lines are in a window of the file's bytes that starts at the split's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// The split's lines are `window[range]` (empty: the split lies inside one line).
    Lines(Range<usize>),
    /// The window ends before the split's last line does: read further and ask again.
    NeedMore,
}

/// Finds `split`'s lines in `window`, the file's bytes from `split.start` on; `at_eof` says the
/// window reaches the end of the file.
pub fn lines_in(split: Split, window: &[u8], at_eof: bool) -> Span {
    let len = usize::try_from(split.end - split.start).unwrap_or(usize::MAX);
    let first = if split.start == 0 {
        0
    } else {
        let held = &window[..len.min(window.len())];
        match memchr::memchr(b'\n', held) {
            Some(at) => at + 1,
            // No line end within the split: it lies inside a line that an earlier split reads.
            None if held.len() == len || at_eof => return Span::Lines(0..0),
            None => return Span::NeedMore,
        }
    };
    if window.len() < len && !at_eof {
        return Span::NeedMore;
    }
    let past_end = len.min(window.len());
    match memchr::memchr(b'\n', &window[past_end..]) {
        Some(at) => Span::Lines(first..past_end + at + 1),
        None if at_eof => Span::Lines(first..window.len()),
        None => Span::NeedMore,
    }
}

/// Why a split could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError<E> {
    /// The fetch failed.
    Fetch(E),
    /// The split's last line, starting at byte `offset` of the file, is longer than `limit`
    /// bytes (without its line end).
    LineTooLong { offset: u64, limit: u64 },
}

/// A split's lines, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitText {
    /// Where the lines start in the file (for a split that holds no line, its start).
    pub offset: u64,
    /// The lines: whole, the last ending in `\n` unless it ends the file.
    pub bytes: Vec<u8>,
}

/// Reads `split` of a file of `size` bytes with `fetch` (which answers the file's bytes in a
/// range): first the split and `read_ahead` bytes past it, then twice as much again each time
/// its last line runs on, so a split costs one request unless a line crosses its end by more
/// than `read_ahead`. A fetch that answers fewer bytes than asked for means the file ended.
///
/// A line longer than `max_line` bytes (or the split's size, where that is more) fails the
/// read, which never holds more than one byte of it past the limit.
pub async fn read_split<E, F, Fut>(
    split: Split,
    size: u64,
    read_ahead: u64,
    max_line: u64,
    mut fetch: F,
) -> Result<SplitText, SplitError<E>>
where
    F: FnMut(Range<u64>) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, E>>,
{
    // Lines within the split are no longer than it: only its last line can pass the limit.
    let limit = max_line.max(split.end - split.start);
    let mut window = Vec::new();
    let mut asked = split.end.saturating_add(read_ahead.max(1)).min(size);
    let mut step = read_ahead.max(1);
    loop {
        let from = split.start + window.len() as u64;
        let piece = if from < asked { fetch(from..asked).await.map_err(SplitError::Fetch)? } else { Vec::new() };
        let short = (piece.len() as u64) < asked - from;
        window.extend_from_slice(&piece);
        let at_eof = short || split.start + window.len() as u64 >= size;
        let span = lines_in(split, &window, at_eof);
        // The line that crosses the split's end: refused once it is known to pass the limit,
        // and never read further than one byte past the limit.
        let mut cap = size;
        if let Some(last) = last_line_start(split, &window) {
            let end = match &span {
                Span::Lines(range) => range.end,
                Span::NeedMore => window.len(),
            };
            let line = &window[last..end];
            let line_len = line.len() - usize::from(line.last() == Some(&b'\n'));
            if line_len as u64 > limit {
                return Err(SplitError::LineTooLong { offset: split.start + last as u64, limit });
            }
            // The longest line accepted and its line end, then one byte that proves it longer.
            cap = (split.start + last as u64).saturating_add(limit).saturating_add(2).min(size);
        }
        if let Span::Lines(range) = span {
            window.truncate(range.end);
            window.drain(..range.start);
            return Ok(SplitText { offset: split.start + range.start as u64, bytes: window });
        }
        step = step.saturating_mul(2);
        asked = asked.saturating_add(step).min(cap).max(split.start + window.len() as u64);
    }
}

/// Where the line that crosses the end of `split` starts in `window` (the file's bytes from the
/// split's start), once the window holds the whole split; `None` while it does not, or when the
/// split holds no line (it lies inside a line an earlier split reads).
fn last_line_start(split: Split, window: &[u8]) -> Option<usize> {
    let len = usize::try_from(split.end - split.start).unwrap_or(usize::MAX);
    if window.len() < len {
        return None;
    }
    match memchr::memrchr(b'\n', &window[..len]) {
        Some(at) => Some(at + 1),
        None => (split.start == 0).then_some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_planned_into_ranges_of_the_split_size_and_a_compressed_one_whole() {
        let ranges = |splits: Vec<Split>| splits.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>();
        assert_eq!(ranges(plan(10, 4, false)), [(0, 4), (4, 8), (8, 10)]);
        assert_eq!(ranges(plan(8, 4, false)), [(0, 4), (4, 8)]);
        assert_eq!(ranges(plan(10, 4, true)), [(0, 10)]);
        assert_eq!(ranges(plan(0, 4, false)), []);
        assert_eq!(ranges(plan(3, 0, false)), [(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn a_split_begins_after_the_line_end_at_or_past_its_start_and_finishes_its_last_line() {
        let text = b"ab\ncd\nef";
        let at = |start, end| {
            let window = &text[start as usize..];
            lines_in(Split { start, end }, window, true)
        };
        // A split starting on a line end begins right after it.
        assert_eq!(at(2, 4), Span::Lines(1..4));
        // A split starting just after a line end leaves that line to the split before; here it
        // holds no line end at all, so it holds no line.
        assert_eq!(at(3, 5), Span::Lines(0..0));
        assert_eq!(at(3, 6), Span::Lines(3..5));
        assert_eq!(at(0, 3), Span::Lines(0..6));
        assert_eq!(at(7, 8), Span::Lines(0..0));
        assert_eq!(lines_in(Split { start: 0, end: 2 }, b"ab", false), Span::NeedMore);
    }
}
