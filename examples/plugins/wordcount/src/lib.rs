//! Word count: how often each word occurs in the input.
//!
//! Words are the pieces that [`str::split_whitespace`] gives, compared case-sensitively. The
//! output is a JSON object `{"word": count, ...}` with its keys sorted.
//!
//! This is the plugin Kiln's benchmark runs, and it is written the shortest way, with the API's
//! [`Counter`] (see the README for why that is also the fast way): `run` counts the chunk's
//! words without an allocation per word, and because a `Counter` knows how to merge, Kiln
//! combines partials without this plugin writing `combine`.

use std::collections::BTreeMap;

use kiln_plugin_api::partial::{Counter, Merge};
use kiln_plugin_api::{Chunk, MapReduce};

/// The plugin; it takes no parameters.
pub struct WordCount;

impl MapReduce for WordCount {
    type Partial = Counter;
    type Output = BTreeMap<String, u64>;

    fn new(params: &str) -> Result<Self, String> {
        if params.trim().is_empty() {
            Ok(WordCount)
        } else {
            Err(format!("wordcount takes no parameters, got {params:?}"))
        }
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<Counter, String> {
        Ok(chunk.words().collect())
    }

    fn aggregate(&self, partials: Vec<Counter>) -> Result<Self::Output, String> {
        Ok(Counter::merge_all(partials).into_sorted())
    }
}

kiln_plugin_api::export_plugin!(WordCount);

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
    fn partials_merge_without_a_combine_of_its_own() {
        let plugin = WordCount::new("").unwrap();
        assert!(plugin.combine(Vec::new()).is_none(), "the Counter's Merge does it");
        let a = plugin.run(&Chunk::new("x y y\n", 1)).unwrap();
        let b = plugin.run(&Chunk::new("y z\n", 2)).unwrap();
        let merged = Counter::merge_all(vec![a, b]);
        let empty = plugin.run(&Chunk::new("", 3)).unwrap();
        let output = plugin.aggregate(vec![merged, empty]).unwrap();
        assert_eq!(output, expected(&[("x", 1), ("y", 3), ("z", 1)]));
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
}
