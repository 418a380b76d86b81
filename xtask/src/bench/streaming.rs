//! The streaming baseline: the fastest plain program we know for the word count, the figure
//! every Kiln throughput is divided by.
//!
//! Each of `threads` threads reads its own byte range of the file with positioned reads
//! (`pread`), in blocks, and counts the words of the lines that belong to it in its own hash
//! map; the maps are merged at the end. There is no serial read or split phase, so the program
//! is limited by counting alone. Ranges follow the Hadoop rule, the one Kiln's by-reference
//! splits use: a range that does not start at offset 0 begins after the first line end at or
//! past its start, and every range reads past its end to finish its last line, so each line is
//! counted once. Words and hashing are the wordcount example's: `split_whitespace` pieces
//! (found with `split_ascii_whitespace` when a block is plain ASCII), FxHash.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Context;
use rustc_hash::FxHashMap;

/// Bytes read per `pread`.
const BLOCK: usize = 4 << 20;

/// Counts the words of `path` on `threads` threads.
pub fn word_count(path: &Path, threads: usize) -> anyhow::Result<BTreeMap<String, u64>> {
    word_count_in_blocks(path, threads, BLOCK)
}

/// [`word_count`] reading `block` bytes at a time (small in tests, to cross many block ends).
fn word_count_in_blocks(path: &Path, threads: usize, block: usize) -> anyhow::Result<BTreeMap<String, u64>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let threads = threads.max(1) as u64;
    let per_thread = len.div_ceil(threads).max(1);
    let maps = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (start, end) = ((i * per_thread).min(len), ((i + 1) * per_thread).min(len));
                let file = &file;
                scope.spawn(move || count_range(file, start, end, block))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a counting thread panicked")).collect::<Vec<_>>()
    });
    let mut merged: FxHashMap<String, u64> = FxHashMap::default();
    for map in maps {
        for (word, n) in map? {
            *merged.entry(word).or_default() += n;
        }
    }
    Ok(merged.into_iter().collect())
}

/// The counts of the words on the lines that start in `(start, end]` (and at 0 when `start` is
/// 0), reading forward from `start` until the line that starts at or before `end` is finished.
fn count_range(file: &File, start: u64, end: u64, block: usize) -> anyhow::Result<FxHashMap<String, u64>> {
    let mut counts: FxHashMap<String, u64> = FxHashMap::default();
    if start >= end && start != 0 {
        return Ok(counts);
    }
    let mut buf = vec![0u8; block.max(1)];
    // The file offset of `buf[0]`, and how many bytes of `buf` hold data.
    let (mut offset, mut filled) = (start, 0usize);
    let mut skipping = start > 0;
    loop {
        if filled == buf.len() {
            // A line longer than the buffer: make room for the rest of it.
            buf.resize(buf.len() * 2, 0);
        }
        let read = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        let at_eof = read == 0;
        filled += read;
        let mut from = 0;
        if skipping {
            match memchr::memchr(b'\n', &buf[..filled]) {
                Some(i) => {
                    from = i + 1;
                    skipping = false;
                }
                None if at_eof => return Ok(counts),
                None => {
                    // Still inside the line the previous range finishes: drop what was read.
                    offset += filled as u64;
                    filled = 0;
                    continue;
                }
            }
        }
        // The lines of ours in `buf[from..upto]`; `done` once the last of them is complete.
        let last_ours = end.saturating_sub(offset) as usize; // lines starting at or before this index
        let (upto, done) = if from > last_ours {
            (from, true)
        } else if last_ours < filled {
            match memchr::memchr(b'\n', &buf[last_ours..filled]) {
                Some(i) => (last_ours + i + 1, true),
                None if at_eof => (filled, true),
                None => (from + memchr::memrchr(b'\n', &buf[from..filled]).map_or(0, |i| i + 1), false),
            }
        } else {
            match memchr::memrchr(b'\n', &buf[from..filled]) {
                _ if at_eof => (filled, true),
                Some(i) => (from + i + 1, false),
                None => (from, false),
            }
        };
        count_words(&mut counts, &buf[from..upto])?;
        if done || at_eof {
            return Ok(counts);
        }
        buf.copy_within(upto..filled, 0);
        offset += upto as u64;
        filled -= upto;
    }
}

/// Counts the words of a stream (for example `zcat`'s output): one thread reads blocks cut at
/// line ends, `threads` threads count them, and their maps are merged. The reference for
/// compressed input, which cannot be read at an offset.
pub fn word_count_reader(reader: impl std::io::Read, threads: usize) -> anyhow::Result<BTreeMap<String, u64>> {
    word_count_reader_in_blocks(reader, threads, BLOCK)
}

fn word_count_reader_in_blocks(
    mut reader: impl std::io::Read,
    threads: usize,
    block_size: usize,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let (blocks, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(threads * 2);
    let receiver = std::sync::Mutex::new(receiver);
    std::thread::scope(|scope| {
        let counters: Vec<_> = (0..threads.max(1))
            .map(|_| {
                let receiver = &receiver;
                scope.spawn(move || {
                    let mut counts = FxHashMap::default();
                    loop {
                        let block = receiver.lock().expect("block queue").recv();
                        match block {
                            Ok(block) => count_words(&mut counts, &block)?,
                            Err(_) => return Ok::<_, anyhow::Error>(counts),
                        }
                    }
                })
            })
            .collect();
        let mut carry = Vec::new();
        loop {
            let mut block = std::mem::take(&mut carry);
            let had = block.len();
            block.resize(had + block_size.max(1), 0);
            let read = reader.read(&mut block[had..])?;
            block.truncate(had + read);
            if read == 0 {
                if !block.is_empty() {
                    blocks.send(block).ok();
                }
                break;
            }
            match memchr::memrchr(b'\n', &block) {
                Some(i) => {
                    carry = block.split_off(i + 1);
                    blocks.send(block).ok();
                }
                None => carry = block,
            }
        }
        drop(blocks);
        let mut merged: FxHashMap<String, u64> = FxHashMap::default();
        for counter in counters {
            for (word, n) in counter.join().expect("a counting thread panicked")? {
                *merged.entry(word).or_default() += n;
            }
        }
        Ok(merged.into_iter().collect())
    })
}

fn count_words(counts: &mut FxHashMap<String, u64>, bytes: &[u8]) -> anyhow::Result<()> {
    let text = std::str::from_utf8(bytes).context("the corpus is UTF-8")?;
    let mut tally: FxHashMap<&str, u64> = FxHashMap::default();
    if text.is_ascii() && !bytes.contains(&0x0B) {
        for word in text.split_ascii_whitespace() {
            *tally.entry(word).or_default() += 1;
        }
    } else {
        for word in text.split_whitespace() {
            *tally.entry(word).or_default() += 1;
        }
    }
    for (word, n) in tally {
        match counts.get_mut(word) {
            Some(count) => *count += n,
            None => {
                counts.insert(word.to_owned(), n);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The independent count: every `split_whitespace` piece of the whole text.
    fn naive(text: &str) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for word in text.split_whitespace() {
            *counts.entry(word.to_owned()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn every_word_is_counted_once_whatever_the_number_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let long_line = "x".repeat(3 * 64 + 17);
        let texts = [
            String::new(),
            "\n".to_owned(),
            "one".to_owned(),
            "a b\nc d e\nf\n\ng h\n".to_owned(),
            "a b\nc d e\nf\n\ng h".to_owned(),
            format!("start\n{long_line} tail\nend"),
            format!("{long_line}\n\n{long_line}\nné\u{b}x y\n"),
            (0..2_000).map(|i| format!("w{} w{} \n", i % 97, i % 13)).collect(),
        ];
        for (n, text) in texts.iter().enumerate() {
            let path = dir.path().join(format!("{n}.txt"));
            std::fs::write(&path, text).unwrap();
            let expected = naive(text);
            for (threads, block) in [(1, BLOCK), (2, 1), (3, 5), (7, 64), (64, 7)] {
                let counted = word_count_in_blocks(&path, threads, block).unwrap();
                assert_eq!(counted, expected, "text {n}, {threads} threads, blocks of {block}");
            }
            for (threads, block) in [(1, BLOCK), (3, 5)] {
                let counted = word_count_reader_in_blocks(text.as_bytes(), threads, block).unwrap();
                assert_eq!(counted, expected, "text {n} as a stream, {threads} threads, blocks of {block}");
            }
        }
    }
}
