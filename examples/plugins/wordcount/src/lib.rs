//! Word count: how often each word occurs in the input.
//!
//! Words are the pieces that [`str::split_whitespace`] gives, compared case-sensitively. The
//! output is a JSON object `{"word": count, ...}` with its keys sorted.
//!
//! This is the plugin Kiln's benchmark runs, so it is written for speed (see the README):
//! `run` counts slices borrowed from the chunk, and partials are two flat buffers instead of a
//! map of `String`s, so that encoding, decoding and merging them allocates almost nothing.

use std::collections::BTreeMap;

use kiln_plugin_api::{Chunk, MapReduce};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// The plugin; it takes no parameters.
pub struct WordCount;

/// The separator between the words of a [`Counts`]. A word never contains whitespace, so a
/// space cannot be part of one.
const SEPARATOR: char = ' ';

/// A map from word to count, stored flat: the distinct words one after another, each followed
/// by [`SEPARATOR`], and their counts in the same order.
///
/// Compared with a `HashMap<String, u64>`, decoding one costs two allocations instead of one
/// per word and no hashing, which matters because every partial is decoded at least once
/// (postcard encodes `counts` as varints, so small counts take a byte or two).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    words: String,
    counts: Vec<u64>,
}

/// Counts slices of a chunk; no allocation per word.
type Tally<'a> = FxHashMap<&'a str, u64>;

impl MapReduce for WordCount {
    type Partial = Counts;
    type Output = BTreeMap<String, u64>;

    fn new(params: &str) -> Result<Self, String> {
        if params.trim().is_empty() {
            Ok(WordCount)
        } else {
            Err(format!("wordcount takes no parameters, got {params:?}"))
        }
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<Counts, String> {
        let text = chunk.text();
        let mut tally = Tally::default();
        if is_plain_ascii(text) {
            // Same words as `split_whitespace`, found without decoding UTF-8.
            count_words(&mut tally, text.split_ascii_whitespace());
        } else {
            count_words(&mut tally, text.split_whitespace());
        }
        Ok(flatten(&tally))
    }

    fn combine(&self, partials: Vec<Counts>) -> Option<Result<Counts, String>> {
        Some(merge(&partials).map(|tally| flatten(&tally)))
    }

    fn aggregate(&self, partials: Vec<Counts>) -> Result<Self::Output, String> {
        let tally = merge(&partials)?;
        Ok(tally.into_iter().map(|(word, n)| (word.to_owned(), n)).collect())
    }
}

kiln_plugin_api::export_plugin!(WordCount);

/// Whether `text` is ASCII without vertical tabs, where [`str::split_ascii_whitespace`] splits
/// exactly as [`str::split_whitespace`] does (the one ASCII character `char::is_whitespace`
/// accepts and `u8::is_ascii_whitespace` does not is U+000B). Both checks are vectorised scans,
/// far cheaper than the counting that follows.
fn is_plain_ascii(text: &str) -> bool {
    text.is_ascii() && !text.as_bytes().contains(&0x0B)
}

fn count_words<'a>(tally: &mut Tally<'a>, words: impl Iterator<Item = &'a str>) {
    for word in words {
        *tally.entry(word).or_default() += 1;
    }
}

/// Writes a tally out as a partial: the only copy of the words it makes.
fn flatten(tally: &Tally<'_>) -> Counts {
    let mut partial = Counts {
        words: String::with_capacity(tally.keys().map(|word| word.len() + 1).sum()),
        counts: Vec::with_capacity(tally.len()),
    };
    for (word, &n) in tally {
        partial.words.push_str(word);
        partial.words.push(SEPARATOR);
        partial.counts.push(n);
    }
    partial
}

/// Adds partials up into a tally of slices borrowed from them.
fn merge(partials: &[Counts]) -> Result<Tally<'_>, String> {
    let largest = partials.iter().map(|p| p.counts.len()).max().unwrap_or(0);
    let mut tally = Tally::with_capacity_and_hasher(largest, Default::default());
    for (i, partial) in partials.iter().enumerate() {
        let corrupt = || format!("corrupt partial {i}: its numbers of words and counts differ");
        let mut counts = partial.counts.iter();
        for word in partial.words.split_terminator(SEPARATOR) {
            *tally.entry(word).or_default() += counts.next().ok_or_else(corrupt)?;
        }
        if counts.next().is_some() {
            return Err(corrupt());
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(chunks: &[&str]) -> BTreeMap<String, u64> {
        kiln_plugin_api::run_in_process::<WordCount>("", chunks).unwrap()
    }

    fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(w, n)| (w.to_owned(), n)).collect()
    }

    #[test]
    fn counts_words_case_sensitively() {
        let output = count(&["the cat\tThe  cat\n", "cat, the\n"]);
        assert_eq!(output, expected(&[("The", 1), ("cat", 2), ("cat,", 1), ("the", 2)]));
    }

    #[test]
    fn the_split_does_not_change_the_result() {
        let lines = ["a b c\n", "b c\n", "c\n", "\n", "a\n"];
        let whole = count(&[&lines.concat()]);
        assert_eq!(whole, count(&lines));
        assert_eq!(whole, count(&[&lines[..2].concat(), "", &lines[2..].concat()]));
        assert_eq!(whole, expected(&[("a", 2), ("b", 2), ("c", 3)]));
    }

    #[test]
    fn splits_on_unicode_whitespace_like_split_whitespace() {
        // U+000B, U+0085, U+00A0 and U+2003 are whitespace to `split_whitespace`; only the
        // first is ASCII, and `split_ascii_whitespace` alone would keep it inside a word.
        for text in ["a\u{0B}b a\n", "é\u{85}b\u{a0}é\u{2003}a\r\n", "x\u{0B}y\n"] {
            let mut want = BTreeMap::new();
            for word in text.split_whitespace() {
                *want.entry(word.to_owned()).or_default() += 1;
            }
            assert_eq!(count(&[text]), want, "{text:?}");
        }
    }

    #[test]
    fn vertical_tab_is_the_only_ascii_difference() {
        for b in 0..=0x7Fu8 {
            assert_eq!((b as char).is_whitespace(), b.is_ascii_whitespace() || b == 0x0B, "{b:#x}");
        }
    }

    #[test]
    fn combine_merges_partials() {
        let plugin = WordCount::new("").unwrap();
        let a = plugin.run(&Chunk::new("x y y\n", 1)).unwrap();
        let b = plugin.run(&Chunk::new("y z\n", 2)).unwrap();
        let merged = plugin.combine(vec![a, b]).unwrap().unwrap();
        let empty = plugin.run(&Chunk::new("", 3)).unwrap();
        let output = plugin.aggregate(vec![merged, empty]).unwrap();
        assert_eq!(output, expected(&[("x", 1), ("y", 3), ("z", 1)]));
        assert!(plugin.combine(Vec::new()).unwrap().unwrap().counts.is_empty());
    }

    #[test]
    fn empty_input_gives_an_empty_object() {
        assert_eq!(count(&[]), BTreeMap::new());
        let json = serde_json::to_string(&count(&["  \n"])).unwrap();
        assert_eq!(json, "{}");
    }

    #[test]
    fn rejects_parameters() {
        let error = WordCount::new("x").err().unwrap();
        assert_eq!(error, "wordcount takes no parameters, got \"x\"");
    }

    #[test]
    fn rejects_a_corrupt_partial() {
        let plugin = WordCount::new("").unwrap();
        for (words, counts) in [("a b ", vec![1]), ("a ", vec![1, 2])] {
            let partial = Counts { words: words.to_owned(), counts };
            let error = plugin.aggregate(vec![partial]).unwrap_err();
            assert_eq!(error, "corrupt partial 0: its numbers of words and counts differ");
        }
    }
}
