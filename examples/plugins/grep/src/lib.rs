//! Grep: the lines of the input that match a regular expression, with their line numbers.
//!
//! Params: the regular expression, in the syntax of the `regex` crate. Output: a JSON array of
//! `{"line": N, "text": "..."}` in input order, `N` counted from 1 over the whole input.

use kiln_plugin_api::{Chunk, MapReduce};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// The plugin: the job's regular expression, compiled once per executor.
pub struct Grep {
    pattern: Regex,
}

/// A line that matched.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// Its 1-based number in the whole input.
    pub line: u64,
    /// The line, without its line ending.
    pub text: String,
}

impl MapReduce for Grep {
    /// The matching lines of one chunk, or of consecutive chunks, in input order.
    type Partial = Vec<Match>;
    type Output = Vec<Match>;

    fn new(params: &str) -> Result<Self, String> {
        if params.is_empty() {
            return Err("grep needs a regular expression as its parameter".to_owned());
        }
        let pattern = Regex::new(params).map_err(|e| format!("invalid regular expression {params:?}: {e}"))?;
        Ok(Grep { pattern })
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<Vec<Match>, String> {
        // Lines are borrowed from the chunk; only the (usually few) matches are copied.
        Ok(chunk
            .numbered_lines()
            .filter(|(_, text)| self.pattern.is_match(text))
            .map(|(line, text)| Match { line, text: text.to_owned() })
            .collect())
    }

    fn combine(&self, partials: Vec<Vec<Match>>) -> Option<Result<Vec<Match>, String>> {
        Some(Ok(concat(partials)))
    }

    fn aggregate(&self, partials: Vec<Vec<Match>>) -> Result<Vec<Match>, String> {
        Ok(concat(partials))
    }
}

/// Joins partials, moving the matches. Partials come in input order, so the lines stay in order.
fn concat(partials: Vec<Vec<Match>>) -> Vec<Match> {
    partials.into_iter().flatten().collect()
}

kiln_plugin_api::export_plugin!(Grep);

#[cfg(test)]
mod tests {
    use super::*;

    fn grep(params: &str, chunks: &[&str]) -> Vec<(u64, String)> {
        let output = kiln_plugin_api::run_in_process::<Grep>(params, chunks).unwrap();
        output.into_iter().map(|m| (m.line, m.text)).collect()
    }

    fn lines(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
        pairs.iter().map(|&(n, text)| (n, text.to_owned())).collect()
    }

    #[test]
    fn numbers_matching_lines_over_the_whole_input() {
        let chunks = ["apple\nbanana\n", "cherry\napricot\r\n", "", "avocado"];
        let output = grep("^a", &chunks);
        assert_eq!(output, lines(&[(1, "apple"), (4, "apricot"), (5, "avocado")]));
    }

    #[test]
    fn the_split_does_not_change_the_result() {
        let chunks = ["x1\ny\n", "x2\n", "y\nx3\n"];
        assert_eq!(grep("x", &chunks), grep("x", &[&chunks.concat()]));
    }

    #[test]
    fn combine_keeps_input_order() {
        let plugin = Grep::new("b").unwrap();
        let first = plugin.run(&Chunk::new("ab\nc\n", 1)).unwrap();
        let second = plugin.run(&Chunk::new("bb\n", 3)).unwrap();
        let merged = plugin.combine(vec![first, second]).unwrap().unwrap();
        let output = plugin.aggregate(vec![merged]).unwrap();
        let json = serde_json::to_string(&output).unwrap();
        assert_eq!(json, r#"[{"line":1,"text":"ab"},{"line":3,"text":"bb"}]"#);
    }

    #[test]
    fn no_match_gives_an_empty_array() {
        assert_eq!(grep("z", &["a\n", "b\n"]), lines(&[]));
    }

    #[test]
    fn rejects_an_invalid_regular_expression() {
        let error = Grep::new("a(b").err().unwrap();
        assert!(error.starts_with("invalid regular expression \"a(b\": "), "{error}");
        assert!(error.contains("unclosed group"), "{error}");
    }

    #[test]
    fn rejects_a_missing_regular_expression() {
        let error = Grep::new("").err().unwrap();
        assert_eq!(error, "grep needs a regular expression as its parameter");
    }
}
