//! Grep: the lines of the input that match a regular expression, with their line numbers and,
//! when the input has several files, their file's name.
//!
//! Params: the regular expression, in the syntax of the `regex` crate. Output: a JSON array of
//! `{"line": N, "text": "..."}` in input order, `N` counted from 1 within the line's file, with
//! `"file": "..."` first when the input holds more than one (non-empty) file.
//!
//! The output streams (`STREAMS_OUTPUT`): `aggregate_into` writes each partial's matches as it
//! is decoded, so the executor holds one partial at a time, not every match of the input.

use kiln_plugin_api::partial::Merge;
use kiln_plugin_api::{Chunk, JsonArray, MapReduce, Partials};
use regex::Regex;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

/// The plugin: the job's regular expression, compiled once per executor.
pub struct Grep {
    pattern: Regex,
}

/// The matches of consecutive chunks: the files they come from, in input order, and the
/// matching lines, each naming its file by its place in `files`.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matches {
    /// The names of the files the chunks belong to, in order, each once.
    pub files: Vec<String>,
    /// `(file, line, text)`: the file's place in `files`, the line's number, the line.
    pub lines: Vec<(u32, u64, String)>,
}

/// The output: every match, in input order, written as a JSON array of [`Match`]es straight
/// from the merged partial. Building a `Vec<Match>` first would hold a second array as long as
/// the partial's beside it (for a pattern matching every line, hundreds of MiB).
#[derive(Debug)]
pub struct Found {
    matches: Matches,
    /// Whether the input has several files, and so each match names its own.
    several: bool,
}

impl Serialize for Found {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.matches.lines.len()))?;
        for shown in self.matches.shown(self.several) {
            seq.serialize_element(&shown.map_err(serde::ser::Error::custom)?)?;
        }
        seq.end()
    }
}

/// A match as [`Match`] shows it, borrowed from the partial.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    line: u64,
    text: &'a str,
}

impl Matches {
    /// The matches as the output shows them, naming their files when `several`.
    fn shown(&self, several: bool) -> impl Iterator<Item = Result<Shown<'_>, String>> {
        self.lines.iter().map(move |(file, line, text)| {
            let file = match several {
                true => Some(self.files.get(*file as usize).ok_or_else(|| format!("no file {file} in a partial"))?),
                false => None,
            };
            Ok(Shown { file: file.map(String::as_str), line: *line, text })
        })
    }
}

/// A line that matched, as the output shows it.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// The name of its file, when the input has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its 1-based number within its file.
    pub line: u64,
    /// The line, without its line ending.
    pub text: String,
}

impl MapReduce for Grep {
    type Partial = Matches;
    type Output = Found;

    /// Matches are reported with their line numbers, so inputs read by reference are numbered.
    const LINE_NUMBERS: bool = true;

    /// The output is an array of matches: Kiln calls `aggregate_into`, which writes them out
    /// partial by partial, rather than `aggregate`, which holds every one.
    const STREAMS_OUTPUT: bool = true;

    fn new(params: &str) -> Result<Self, String> {
        if params.is_empty() {
            return Err("grep needs a regular expression as its parameter".to_owned());
        }
        let pattern = Regex::new(params).map_err(|e| format!("invalid regular expression {params:?}: {e}"))?;
        Ok(Grep { pattern })
    }

    fn run(&self, chunk: &Chunk<'_>) -> Result<Matches, String> {
        // Lines are borrowed from the chunk; only the (usually few) matches are copied.
        let lines = chunk
            .numbered_lines()
            .filter(|(_, text)| self.pattern.is_match(text))
            .map(|(line, text)| (0, line, text.to_owned()))
            .collect();
        Ok(Matches { files: vec![chunk.file().to_owned()], lines })
    }

    // No `combine`: `Matches` implements `Merge`, and Kiln combines with that.

    /// Each partial's matches go out as it is decoded, and it is dropped before the next one:
    /// knowing the input's files from the start, the first match already says whether it
    /// names its file.
    fn aggregate_into(&self, partials: Partials<'_, Matches>, out: &mut JsonArray<'_>) -> Result<(), String> {
        let several = partials.input_files() > 1;
        for matches in partials {
            for shown in matches.shown(several) {
                out.item(&shown?)?;
            }
        }
        Ok(())
    }

    /// The same output, held whole: what a Kiln older than API 0.1.3 calls, and what
    /// `run_in_process` checks `aggregate_into` against.
    fn aggregate(&self, partials: Vec<Matches>) -> Result<Found, String> {
        let matches = Matches::merge_all(partials);
        // Every non-empty file has a chunk, so `files` holds all of them.
        let several = matches.files.len() > 1;
        Ok(Found { matches, several })
    }
}

/// Appends the matches of the chunks that follow, moving them; a file whose chunks are in both
/// is listed once.
impl Merge for Matches {
    fn merge(&mut self, other: Matches) {
        let mut places = Vec::with_capacity(other.files.len());
        for name in other.files {
            if self.files.last() != Some(&name) {
                self.files.push(name);
            }
            places.push(self.files.len() as u32 - 1);
        }
        self.lines.extend(other.lines.into_iter().map(|(file, line, text)| (places[file as usize], line, text)));
    }
}

kiln_plugin_api::export_plugin!(Grep);

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs both aggregates in process (`run_in_process` checks that they agree).
    fn grep(params: &str, chunks: &[&str]) -> Vec<(u64, String)> {
        let output = kiln_plugin_api::run_in_process::<Grep>(params, chunks).unwrap();
        let json = serde_json::to_string(&output).unwrap();
        let matches: Vec<Match> = serde_json::from_str(&json).unwrap();
        matches.into_iter().map(|m| (m.line, m.text)).collect()
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
    fn the_streamed_output_names_files_only_when_the_input_has_several() {
        let chunks = [Chunk::in_file("ab\nc\n", "one.txt", 1), Chunk::in_file("x\nbb\n", "one.txt", 3)];
        let one = kiln_plugin_api::run_chunks_in_process::<Grep>("b", &chunks).unwrap();
        assert_eq!(one, r#"[{"line":1,"text":"ab"},{"line":4,"text":"bb"}]"#);
        let two = [chunks[0], chunks[1], Chunk::in_file("nothing\n", "two.txt", 1), Chunk::in_file("b\n", "3", 1)];
        let several = kiln_plugin_api::run_chunks_in_process::<Grep>("b", &two).unwrap();
        let expected = r#"[{"file":"one.txt","line":1,"text":"ab"},{"file":"one.txt","line":4,"text":"bb"},{"file":"3","line":1,"text":"b"}]"#;
        assert_eq!(several, expected);
        assert_eq!(kiln_plugin_api::run_chunks_in_process::<Grep>("b", &[]).unwrap(), "[]");
    }

    #[test]
    fn names_the_file_of_each_match_when_the_input_has_several() {
        let plugin = Grep::new("b").unwrap();
        let first = plugin.run(&Chunk::in_file("ab\nc\n", "one.txt", 1)).unwrap();
        let second = plugin.run(&Chunk::in_file("x\nbb\n", "one.txt", 3)).unwrap();
        let third = plugin.run(&Chunk::in_file("nothing\n", "two.txt", 1)).unwrap();
        let merged = Matches::merge_all(vec![first, second]);
        assert_eq!(merged.files, ["one.txt"], "one file's chunks are one file");
        let output = plugin.aggregate(vec![merged, third]).unwrap();
        let json = serde_json::to_string(&output).unwrap();
        assert_eq!(json, r#"[{"file":"one.txt","line":1,"text":"ab"},{"file":"one.txt","line":4,"text":"bb"}]"#);
    }

    #[test]
    fn combine_keeps_input_order_and_one_file_is_not_named() {
        let plugin = Grep::new("b").unwrap();
        let first = plugin.run(&Chunk::in_file("ab\nc\n", "in.txt", 1)).unwrap();
        let second = plugin.run(&Chunk::in_file("bb\n", "in.txt", 3)).unwrap();
        let merged = Matches::merge_all(vec![first, second]);
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
