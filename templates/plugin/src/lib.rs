//! A Kiln plugin: counts lines, words and how often each word occurs.
//!
//! Kiln cuts the input into chunks of whole lines and calls [`MapReduce::run`] on each chunk, on
//! many threads and machines at once. Each call returns a small [`Partial`]; Kiln may merge the
//! partials of neighbouring chunks with [`MapReduce::combine`], and finally hands all of them, in
//! input order, to [`MapReduce::aggregate`], whose output becomes the job's result as JSON.
//!
//! Replace the body of the three methods with your own computation. Keep `run` fast: borrow
//! `&str` slices from the chunk instead of allocating a `String` per line or word.

use std::collections::{BTreeMap, HashMap};

use kiln_plugin_api::{Chunk, MapReduce};
use serde::{Deserialize, Serialize};

/// The plugin. It holds the job's parameters, parsed once by [`MapReduce::new`].
pub struct WordCount {
    /// Words seen fewer times than this in the whole input are left out of the result.
    min_count: u64,
}

/// What one chunk (or a run of merged chunks) produces. Kiln encodes it with postcard to send it
/// between processes and machines, so keep it compact.
#[derive(Serialize, Deserialize, Default)]
pub struct Partial {
    lines: u64,
    words: u64,
    counts: HashMap<String, u64>,
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
        // Count into a map keyed by slices of the chunk's text: no allocation per word.
        let mut counts: HashMap<&str, u64> = HashMap::new();
        let mut words = 0;
        for word in chunk.text().split_whitespace() {
            *counts.entry(word).or_default() += 1;
            words += 1;
        }
        Ok(Partial {
            lines: chunk.lines().count() as u64,
            words,
            // Allocate once per distinct word, only to hand the partial back.
            counts: counts.into_iter().map(|(w, n)| (w.to_owned(), n)).collect(),
        })
    }

    /// Optional: merging partials where they are produced makes `aggregate` faster. Returning
    /// `None` (the default) tells Kiln this plugin does not combine.
    fn combine(&self, partials: Vec<Partial>) -> Option<Result<Partial, String>> {
        Some(Ok(merge(partials)))
    }

    fn aggregate(&self, partials: Vec<Partial>) -> Result<Output, String> {
        let total = merge(partials);
        Ok(Output {
            lines: total.lines,
            words: total.words,
            counts: total.counts.into_iter().filter(|&(_, n)| n >= self.min_count).collect(),
        })
    }
}

/// Adds partials up, reusing the largest one's map.
fn merge(mut partials: Vec<Partial>) -> Partial {
    let largest = (0..partials.len()).max_by_key(|&i| partials[i].counts.len());
    let mut total = largest.map(|i| partials.swap_remove(i)).unwrap_or_default();
    for partial in partials {
        total.lines += partial.lines;
        total.words += partial.words;
        for (word, n) in partial.counts {
            *total.counts.entry(word).or_default() += n;
        }
    }
    total
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
