//! A Kiln plugin: counts lines, words and how often each word occurs.
//!
//! Kiln cuts the input into chunks of whole lines and calls [`MapReduce::run`] on each chunk, on
//! many threads and machines at once. Each call returns a small [`Partial`]; Kiln merges the
//! partials of neighbouring chunks (with [`Merge`], below), and finally hands all of them, in
//! input order, to [`MapReduce::aggregate`], whose output becomes the job's result as JSON.
//!
//! Replace the body of the methods with your own computation. The partial types of
//! `kiln_plugin_api::partial` (`Counter`, `Sum`, `Min`, `Max`, `TopK`, `Ordered`, ...) are
//! already fast: counting into a `Counter` allocates nothing per word.

use std::collections::BTreeMap;

use kiln_plugin_api::partial::{Counter, Merge, Sum};
use kiln_plugin_api::{Chunk, MapReduce};
use serde::{Deserialize, Serialize};

/// The plugin. It holds the job's parameters, parsed once by [`MapReduce::new`].
pub struct WordCount {
    /// Words seen fewer times than this in the whole input are left out of the result.
    min_count: u64,
}

/// What one chunk (or a run of merged chunks) produces. Kiln encodes it with postcard to send it
/// between processes and machines, so keep it compact: the partial types are.
#[derive(Serialize, Deserialize, Default)]
pub struct Partial {
    lines: Sum<u64>,
    words: Sum<u64>,
    counts: Counter,
}

/// How the partials of consecutive chunks add up. Because `Partial` implements `Merge`, Kiln
/// merges partials near where they were produced: no `combine` to write.
impl Merge for Partial {
    fn merge(&mut self, other: Partial) {
        self.lines.merge(other.lines);
        self.words.merge(other.words);
        self.counts.merge(other.counts);
    }
}

/// The job's result, returned to the user as JSON.
#[derive(Serialize)]
pub struct Output {
    lines: u64,
    words: u64,
    /// A `BTreeMap` sorts the words, so the same input always gives the same JSON.
    counts: BTreeMap<String, u64>,
}

impl MapReduce for WordCount {
    type Partial = Partial;
    type Output = Output;

    /// Parameters: an optional minimum count (default 1). Errors here fail the job before any
    /// chunk runs.
    fn new(params: &str) -> Result<Self, String> {
        let params = params.trim();
        let min_count = if params.is_empty() {
            1
        } else {
            params.parse().map_err(|e| format!("invalid minimum count {params:?}: {e}"))?
        };
        Ok(WordCount { min_count })
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<Partial, String> {
        let mut partial = Partial::default();
        // `chunk.lines()` lets Kiln name the line when something here panics.
        for line in chunk.lines() {
            partial.lines.add(1);
            for word in line.split_whitespace() {
                partial.words.add(1);
                partial.counts.add(word);
            }
        }
        Ok(partial)
    }

    fn aggregate(&self, partials: Vec<Partial>) -> Result<Output, String> {
        let total = Partial::merge_all(partials);
        Ok(Output {
            lines: total.lines.get(),
            words: total.words.get(),
            counts: total.counts.into_sorted().into_iter().filter(|&(_, n)| n >= self.min_count).collect(),
        })
    }
}

kiln_plugin_api::export_plugin!(WordCount);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_across_chunks() {
        // Each string is one chunk of whole lines, run the way Kiln runs it.
        let output = kiln_plugin_api::run_in_process::<WordCount>("", &["a b a\n", "b\n", ""]).unwrap();
        assert_eq!(output.lines, 2);
        assert_eq!(output.words, 4);
        assert_eq!(output.counts, BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 2)]));
    }

    #[test]
    fn leaves_out_rare_words() {
        let output = kiln_plugin_api::run_in_process::<WordCount>("2", &["a b a\n"]).unwrap();
        assert_eq!(output.counts, BTreeMap::from([("a".to_owned(), 2)]));
    }

    #[test]
    fn rejects_a_bad_minimum() {
        let error = WordCount::new("many").err().unwrap();
        assert!(error.starts_with("invalid minimum count \"many\""), "{error}");
    }
}
