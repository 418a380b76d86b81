//! The two ends of a streaming aggregate (since 0.1.3): [`Partials`], the partials decoded one
//! at a time as the plugin pulls them, and [`JsonArray`], the output written item by item as a
//! JSON array. A plugin that declares [`MapReduce::STREAMS_OUTPUT`] gets both in
//! [`MapReduce::aggregate_into`], and holds one decoded partial and one item at a time instead
//! of every partial and its whole `Output`.

use std::cell::RefCell;
use std::io::Write;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::MapReduce;
use crate::abi::PartialSource;

/// The partials of an aggregate, in input order, each decoded as it is pulled, for
/// [`MapReduce::aggregate_into`]: a partial is freed when the plugin drops it, and the next one
/// is decoded only when asked for.
///
/// A partial that cannot be decoded, or that Kiln cannot deliver, ends the iteration, and the
/// call then fails with the reason whatever `aggregate_into` returns: no failure is lost by a
/// plugin that iterates with `for`.
pub struct Partials<'a, P> {
    source: Source<'a>,
    input_files: u64,
    /// How many partials were pulled so far.
    taken: u64,
    /// How many are still to come, as the executor announced them.
    left: u64,
    /// Why the partials stopped coming, read by the caller of `aggregate_into`.
    failure: &'a RefCell<Option<String>>,
    _partial: PhantomData<fn() -> P>,
}

/// Where encoded partials come from.
pub(crate) enum Source<'a> {
    /// The executor's, across the ABI: each an allocation freed once decoded.
    Executor(PartialSource<'a>),
    /// Encoded in this process ([`crate::run_in_process`]).
    Encoded(std::vec::IntoIter<Vec<u8>>),
}

impl Source<'_> {
    fn count(&self) -> u64 {
        match self {
            Source::Executor(source) => source.count,
            Source::Encoded(partials) => partials.len() as u64,
        }
    }
}

impl<P> Partials<'_, P> {
    /// How many of the input's files the partials come from: every file that holds at least one
    /// line (an empty file makes no chunk, and is not counted); 0 for an empty input.
    ///
    /// Known before the first partial is pulled, so that the output can depend on it from its
    /// first item: the grep example names each match's file only when this is more than 1.
    pub fn input_files(&self) -> u64 {
        self.input_files
    }
}

impl<P: DeserializeOwned> Iterator for Partials<'_, P> {
    type Item = P;

    fn next(&mut self) -> Option<P> {
        if self.failure.borrow().is_some() {
            return None;
        }
        let decoded = match &mut self.source {
            Source::Executor(source) => match source.next_partial() {
                // The bytes are freed here, before the plugin asks for the next partial.
                Ok(Some(bytes)) => postcard::from_bytes(&bytes),
                Ok(None) => return None,
                Err(reason) => {
                    *self.failure.borrow_mut() = Some(reason);
                    return None;
                }
            },
            Source::Encoded(partials) => postcard::from_bytes(&partials.next()?),
        };
        match decoded {
            Ok(partial) => {
                self.taken += 1;
                self.left = self.left.saturating_sub(1);
                Some(partial)
            }
            Err(e) => {
                *self.failure.borrow_mut() = Some(format!("cannot decode partial {}: {e}", self.taken));
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, usize::try_from(self.left).ok())
    }
}

/// The output of a streaming aggregate: a JSON array whose items are serialised into Kiln's
/// output as they are given, never held whole. Kiln writes the `[` before
/// [`MapReduce::aggregate_into`] runs and the `]` once it returns `Ok`.
pub struct JsonArray<'a> {
    out: &'a mut dyn Write,
    items: u64,
    /// The first failure to write, which fails the call whatever the plugin answers.
    failure: Option<String>,
}

impl<'a> JsonArray<'a> {
    /// An array written to `out`, its `[` written.
    pub(crate) fn open(out: &'a mut dyn Write) -> Result<Self, String> {
        out.write_all(b"[").map_err(|e| output_error(&e))?;
        Ok(JsonArray { out, items: 0, failure: None })
    }

    /// Appends `value`, serialised as JSON, as the array's next item.
    ///
    /// An `Err` says the output cannot be written (Kiln stopped taking it, or `value` cannot be
    /// serialised as JSON): return it. The call fails with it even if the plugin goes on.
    pub fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let comma = if self.items == 0 { Ok(()) } else { self.out.write_all(b",").map_err(serde_json::Error::io) };
        match comma.and_then(|()| serde_json::to_writer(&mut *self.out, value)) {
            Ok(()) => {
                self.items += 1;
                Ok(())
            }
            Err(e) => {
                let failure = output_error(&e);
                self.failure = Some(failure.clone());
                Err(failure)
            }
        }
    }

    /// How many items were written so far.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Writes the closing `]`, unless an item failed.
    fn close(self) -> Result<(), String> {
        match self.failure {
            Some(failure) => Err(failure),
            None => self.out.write_all(b"]").map_err(|e| output_error(&e)),
        }
    }
}

fn output_error(e: &dyn std::fmt::Display) -> String {
    format!("cannot encode output as JSON: {e}")
}

/// Runs `plugin`'s [`MapReduce::aggregate_into`] over the partials of `source` (from
/// `input_files` files), writing the whole array to `out`. A failure of the partials, then one
/// of the output, wins over what the plugin answered: either is why it stopped.
pub(crate) fn aggregate_into<P: MapReduce>(
    plugin: &P,
    source: Source<'_>,
    input_files: u64,
    out: &mut dyn Write,
) -> Result<(), String> {
    let failure = RefCell::new(None);
    let left = source.count();
    let partials = Partials { source, input_files, taken: 0, left, failure: &failure, _partial: PhantomData };
    let mut array = JsonArray::open(out)?;
    let answered = plugin.aggregate_into(partials, &mut array);
    if let Some(failure) = failure.take() {
        return Err(failure);
    }
    if let Some(failure) = array.failure.take() {
        return Err(failure);
    }
    answered?;
    array.close()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{Chunk, run_chunks_in_process, run_in_process};

    /// Each line as an item, with its file's name first when the input has several files, and
    /// `(files, partials)` as the last item; `aggregate` gives the same, whole.
    struct Lines;

    type Line = (Option<String>, String);

    impl MapReduce for Lines {
        type Partial = (String, Vec<String>);
        type Output = Vec<serde_json::Value>;
        const STREAMS_OUTPUT: bool = true;

        fn new(_: &str) -> Result<Self, String> {
            Ok(Lines)
        }
        fn run(&self, chunk: &Chunk<'_>) -> Result<Self::Partial, String> {
            Ok((chunk.file().to_owned(), chunk.lines().map(str::to_owned).collect()))
        }
        fn aggregate(&self, partials: Vec<Self::Partial>) -> Result<Self::Output, String> {
            let mut files: Vec<&str> = partials.iter().map(|(file, _)| file.as_str()).collect();
            files.dedup();
            let several = files.len() > 1;
            let mut items: Vec<serde_json::Value> = Vec::new();
            for (file, lines) in &partials {
                for line in lines {
                    let item: Line = (several.then(|| file.clone()), line.clone());
                    items.push(serde_json::to_value(item).map_err(|e| e.to_string())?);
                }
            }
            items.push(serde_json::json!([files.len(), partials.len()]));
            Ok(items)
        }
        fn aggregate_into(&self, partials: Partials<'_, Self::Partial>, out: &mut JsonArray<'_>) -> Result<(), String> {
            let (files, mut count) = (partials.input_files(), 0);
            for (file, lines) in partials {
                count += 1;
                for line in lines {
                    out.item(&((files > 1).then(|| file.clone()), line))?;
                }
            }
            out.item(&(files, count))
        }
    }

    #[test]
    fn a_streaming_aggregate_writes_an_array_item_by_item_with_the_input_files_known_first() {
        let one =
            run_chunks_in_process::<Lines>("", &[Chunk::in_file("a\nb\n", "x", 1), Chunk::in_file("c\n", "x", 3)]);
        assert_eq!(one.unwrap(), r#"[[null,"a"],[null,"b"],[null,"c"],[1,2]]"#);
        let chunks = [Chunk::in_file("a\n", "x", 1), Chunk::in_file("b\n", "y", 1), Chunk::in_file("", "y", 2)];
        let two = run_chunks_in_process::<Lines>("", &chunks).unwrap();
        assert_eq!(two, r#"[["x","a"],["y","b"],[2,3]]"#);
        assert_eq!(run_chunks_in_process::<Lines>("", &[]).unwrap(), "[[0,0]]");
        // `run_in_process` aggregates both ways and answers `aggregate`'s output.
        let output = run_in_process::<Lines>("", &["a\n", "b\nc\n"]).unwrap();
        assert_eq!(serde_json::to_string(&output).unwrap(), r#"[[null,"a"],[null,"b"],[null,"c"],[1,2]]"#);
    }

    /// Streams its lines as [`Lines`] does, but its `aggregate` forgets the last chunk.
    struct Forgetful;

    impl MapReduce for Forgetful {
        type Partial = Vec<String>;
        type Output = Vec<String>;
        const STREAMS_OUTPUT: bool = true;

        fn new(_: &str) -> Result<Self, String> {
            Ok(Forgetful)
        }
        fn run(&self, chunk: &Chunk<'_>) -> Result<Vec<String>, String> {
            Ok(chunk.lines().map(str::to_owned).collect())
        }
        fn aggregate(&self, mut partials: Vec<Vec<String>>) -> Result<Vec<String>, String> {
            partials.pop();
            Ok(partials.concat())
        }
        fn aggregate_into(&self, partials: Partials<'_, Vec<String>>, out: &mut JsonArray<'_>) -> Result<(), String> {
            partials.flatten().try_for_each(|line| out.item(&line))
        }
    }

    #[test]
    fn run_in_process_refuses_a_streaming_aggregate_that_disagrees_with_aggregate() {
        let error = run_in_process::<Forgetful>("", &["a\n", "b\n"]).unwrap_err();
        assert_eq!(
            error,
            r#"aggregate_into and aggregate disagree: aggregate_into gives ["a","b"], aggregate gives ["a"]"#
        );
        let error = run_chunks_in_process::<Forgetful>("", &[Chunk::new("a\n", 1), Chunk::new("b\n", 2)]).unwrap_err();
        assert!(error.starts_with("aggregate_into and aggregate disagree: "), "{error}");
        // A long output is shown cut, with its length.
        let long = "x\n".repeat(200);
        let error = run_in_process::<Forgetful>("", &[&long, "y\n"]).unwrap_err();
        let cut = format!("[{}\"x\"...", r#""x","#.repeat(74));
        let said = format!("aggregate_into gives {cut} (805 bytes), aggregate gives {cut} (801 bytes)");
        assert_eq!(error, format!("aggregate_into and aggregate disagree: {said}"));
    }

    /// Ignores every failure it is told of, and writes a map that JSON cannot key when asked.
    struct Careless;

    impl MapReduce for Careless {
        type Partial = u32;
        type Output = ();
        const STREAMS_OUTPUT: bool = true;

        fn new(_: &str) -> Result<Self, String> {
            Ok(Careless)
        }
        fn run(&self, _: &Chunk<'_>) -> Result<u32, String> {
            Ok(7)
        }
        fn aggregate(&self, _: Vec<u32>) -> Result<(), String> {
            Ok(())
        }
        fn aggregate_into(&self, partials: Partials<'_, u32>, out: &mut JsonArray<'_>) -> Result<(), String> {
            for partial in partials {
                let _ = out.item(&partial);
                if partial == 0 {
                    let _ = out.item(&BTreeMap::from([((1, 2), 3)]));
                }
            }
            let _ = out.item(&"after");
            Ok(())
        }
    }

    fn careless(partials: Vec<Vec<u8>>) -> (Result<(), String>, String) {
        let mut json = Vec::new();
        let outcome = aggregate_into(&Careless, Source::Encoded(partials.into_iter()), 1, &mut json);
        (outcome, String::from_utf8(json).unwrap())
    }

    #[test]
    fn a_partial_that_cannot_be_decoded_or_an_item_that_cannot_be_written_fails_the_call_even_if_ignored() {
        let (outcome, json) = careless(vec![vec![5], vec![9]]);
        assert_eq!((outcome, json.as_str()), (Ok(()), r#"[5,9,"after"]"#));
        // A varint that never ends: the iteration stops there, and the call fails.
        let (outcome, json) = careless(vec![vec![5], vec![0xff; 6], vec![9]]);
        assert!(outcome.unwrap_err().starts_with("cannot decode partial 1: "), "{json}");
        let (outcome, _) = careless(vec![vec![0], vec![9]]);
        assert_eq!(outcome.unwrap_err(), "cannot encode output as JSON: key must be a string");
    }

    /// Sets `STREAMS_OUTPUT` and forgets `aggregate_into`.
    struct Unfinished;

    impl MapReduce for Unfinished {
        type Partial = ();
        type Output = ();
        const STREAMS_OUTPUT: bool = true;

        fn new(_: &str) -> Result<Self, String> {
            Ok(Unfinished)
        }
        fn run(&self, _: &Chunk<'_>) -> Result<(), String> {
            Ok(())
        }
        fn aggregate(&self, _: Vec<()>) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn streaming_without_aggregate_into_is_an_error_that_says_so() {
        let error = run_chunks_in_process::<Unfinished>("", &[Chunk::new("a\n", 1)]).unwrap_err();
        assert_eq!(error, "this plugin sets STREAMS_OUTPUT but does not implement aggregate_into");
    }
}
