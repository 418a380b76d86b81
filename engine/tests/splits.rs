//! The split rule of inputs read by reference: over many random files (empty ones, lines far
//! longer than a split, empty lines, `\r\n`, no final newline) and split sizes, the splits that
//! `input::split` plans and reads hold every line exactly once, in order, each in the split a
//! naive rule written here assigns it to: the split that holds the line end before it. A split
//! that owns a line longer than the limit (`--max-line-size`, or the split's size where that is
//! more) refuses it, naming where it starts, without reading much past the limit.

mod util;

use std::ops::Range;

use kiln_engine::input::split::{self, Split, SplitError, SplitText};
use util::Rng;

/// A random file: sometimes empty, otherwise lines of random lengths (mostly short, some far
/// longer than any split tried), some empty, some ending in `\r\n`, the last one ending in a
/// newline or not.
fn random_file(rng: &mut Rng) -> Vec<u8> {
    if rng.below(12) == 0 {
        return Vec::new();
    }
    let mut text = Vec::new();
    let n_lines = 1 + rng.below(30);
    for _ in 0..n_lines {
        let len = match rng.below(10) {
            0 => 0,
            1 => 60 + rng.below(400),
            _ => rng.below(20),
        };
        text.extend((0..len).map(|_| b"abc xyz\t"[rng.below(8) as usize]));
        text.extend_from_slice(if rng.below(8) == 0 { b"\r\n" } else { b"\n" });
    }
    if rng.below(2) == 0 {
        // No final newline (and sometimes only a partial line after the last one).
        while text.last() == Some(&b'\n') || text.last() == Some(&b'\r') {
            text.pop();
        }
    }
    text
}

/// The naive rule, independent of `input::split`: the file's lines (each with its line end),
/// each given to the split holding the byte before it (the line end of the line before), the
/// first line to the split at 0.
fn naive_lines(text: &[u8], split_size: u64) -> Vec<Vec<&[u8]>> {
    let n_splits = (text.len() as u64).div_ceil(split_size) as usize;
    let mut owned = vec![Vec::new(); n_splits];
    let mut start = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let owner = if start == 0 { 0 } else { ((start - 1) as u64 / split_size) as usize };
        owned[owner].push(line);
        start += line.len();
    }
    owned
}

/// Reads `split` of `text` as a worker does, with `fetch` answering byte ranges of `text`,
/// refusing lines longer than `max_line`; answers what it read and the ranges it asked for.
fn read_limited(
    text: &[u8],
    split: Split,
    read_ahead: u64,
    max_line: u64,
) -> (Result<SplitText, SplitError<String>>, Vec<Range<u64>>) {
    let mut asked = Vec::new();
    let fetch = |range: Range<u64>| {
        asked.push(range.clone());
        std::future::ready(Ok::<_, String>(text[range.start as usize..range.end as usize].to_vec()))
    };
    let read = futures::executor::block_on(split::read_split(split, text.len() as u64, read_ahead, max_line, fetch));
    (read, asked)
}

/// [`read_limited`] without a limit.
fn read(text: &[u8], split: Split, read_ahead: u64) -> (SplitText, Vec<Range<u64>>) {
    let (read, asked) = read_limited(text, split, read_ahead, u64::MAX);
    (read.expect("the fetch never fails and no line is too long"), asked)
}

#[test]
fn every_line_lands_in_exactly_one_split_whatever_the_split_size() {
    let mut rng = Rng::new(14);
    let mut n_cases = 0;
    let mut n_empty_splits = 0;
    for case in 0..3_000 {
        let text = random_file(&mut rng);
        let split_size = match rng.below(4) {
            0 => 1 + rng.below(4),
            1 => 1 + rng.below(60),
            2 => 1 + rng.below(600),
            _ => text.len() as u64 + 1,
        };
        let read_ahead = 1 + rng.below(16);
        let splits = split::plan(text.len() as u64, split_size, false);
        let expected = naive_lines(&text, split_size);
        assert_eq!(splits.len(), expected.len(), "case {case}: one split per {split_size} bytes");

        let mut joined = Vec::new();
        for (k, &planned) in splits.iter().enumerate() {
            let (read, asked) = read(&text, planned, read_ahead);
            assert!(asked.iter().all(|r| r.start < r.end && r.end <= text.len() as u64), "case {case}: {asked:?}");
            if !read.bytes.is_empty() {
                assert_eq!(
                    read.offset,
                    joined.len() as u64,
                    "case {case}: split {k} begins where the one before ended"
                );
            }
            let lines: Vec<&[u8]> = read.bytes.split_inclusive(|&b| b == b'\n').collect();
            assert_eq!(
                lines,
                expected[k],
                "case {case}: split {k} of {planned:?} over {:?}",
                String::from_utf8_lossy(&text)
            );
            n_empty_splits += usize::from(lines.is_empty());
            joined.extend_from_slice(&read.bytes);
        }
        assert_eq!(joined, text, "case {case}: the splits together are the file, in order");
        n_cases += 1;
    }
    assert_eq!(n_cases, 3_000);
    assert!(n_empty_splits > 100, "lines longer than a split were tried ({n_empty_splits} empty splits)");
}

#[test]
fn a_compressed_file_is_one_split_read_whole() {
    let text = b"one\ntwo\nthree".to_vec();
    let splits = split::plan(text.len() as u64, 4, true);
    assert_eq!(splits, [Split { start: 0, end: text.len() as u64 }]);
    let (read, _) = read(&text, splits[0], 1);
    assert_eq!(read.bytes, text);
}

#[test]
fn a_split_refuses_a_line_longer_than_the_limit_without_reading_much_past_it() {
    let mut rng = Rng::new(15);
    let (mut n_refused, mut n_read) = (0, 0);
    for case in 0..3_000 {
        let text = random_file(&mut rng);
        let split_size = 1 + rng.below(60);
        let max_line = rng.below(300);
        let read_ahead = 1 + rng.below(16);
        let expected = naive_lines(&text, split_size);
        for (k, &planned) in split::plan(text.len() as u64, split_size, false).iter().enumerate() {
            let limit = max_line.max(planned.end - planned.start);
            let offset_of = |line: &[u8]| (line.as_ptr() as usize - text.as_ptr() as usize) as u64;
            let too_long = expected[k]
                .iter()
                .find(|line| line.len() as u64 - u64::from(line.ends_with(b"\n")) > limit)
                .map(|line| offset_of(line));
            let (read, asked) = read_limited(&text, planned, read_ahead, max_line);
            match (read, too_long) {
                (Ok(read), None) => {
                    let lines: Vec<&[u8]> = read.bytes.split_inclusive(|&b| b == b'\n').collect();
                    assert_eq!(lines, expected[k], "case {case}: split {k} of {planned:?}");
                    n_read += 1;
                }
                (Err(SplitError::LineTooLong { offset, limit: said }), Some(at)) => {
                    assert_eq!((offset, said), (at, limit), "case {case}: split {k} of {planned:?}");
                    n_refused += 1;
                }
                (read, too_long) => panic!("case {case}: split {k} of {planned:?} read {read:?}, {too_long:?}"),
            }
            // Never more than the split, its read-ahead, and its last line up to the limit,
            // its line end and one byte more.
            let last = expected[k].last().map_or(planned.start, |line| offset_of(line));
            let furthest = asked.iter().map(|range| range.end).max().unwrap_or(0);
            assert!(
                furthest <= (planned.end + read_ahead).max(last + limit + 2),
                "case {case}: split {k} of {planned:?} read to {furthest}"
            );
        }
    }
    assert!(n_refused > 100 && n_read > 1_000, "both kinds were tried: {n_refused} refused, {n_read} read");
}
