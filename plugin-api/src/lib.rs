//! The plugin API of Kiln: what a map-reduce plugin implements, and the stable ABI through which
//! Kiln's executor calls it.
//!
//! A plugin is a `cdylib` crate that implements [`MapReduce`] for one type and exports it with
//! [`export_plugin!`]. Kiln cuts the input into chunks of whole lines, calls
//! [`MapReduce::run`] once per chunk (on many threads and machines at once), and hands the
//! partial results, in input order, to [`MapReduce::aggregate`], whose output becomes the job's
//! result as JSON. A plugin whose output is a JSON array may set [`MapReduce::STREAMS_OUTPUT`]
//! and write it item by item in [`MapReduce::aggregate_into`] instead, holding one partial at a
//! time, whatever the result's size.
//!
//! ```
//! use std::collections::HashMap;
//! use kiln_plugin_api::{Chunk, MapReduce};
//!
//! /// Counts how often each whitespace-separated word occurs.
//! pub struct WordCount;
//!
//! impl MapReduce for WordCount {
//!     type Partial = HashMap<String, u64>;
//!     type Output = HashMap<String, u64>;
//!
//!     fn new(_params: &str) -> Result<Self, String> {
//!         Ok(WordCount)
//!     }
//!
//!     fn run(&self, chunk: &Chunk<'_>) -> Result<Self::Partial, String> {
//!         // Borrow words from the chunk; allocate only for words not seen before.
//!         let mut counts: HashMap<&str, u64> = HashMap::new();
//!         for word in chunk.text().split_whitespace() {
//!             *counts.entry(word).or_default() += 1;
//!         }
//!         Ok(counts.into_iter().map(|(w, n)| (w.to_owned(), n)).collect())
//!     }
//!
//!     fn aggregate(&self, partials: Vec<Self::Partial>) -> Result<Self::Output, String> {
//!         let mut total = HashMap::new();
//!         for partial in partials {
//!             for (word, n) in partial {
//!                 *total.entry(word).or_default() += n;
//!             }
//!         }
//!         Ok(total)
//!     }
//! }
//!
//! kiln_plugin_api::export_plugin!(WordCount);
//!
//! // Plugin authors test their code in-process, partials round-tripping through the same
//! // encoding Kiln uses between machines.
//! let counts = kiln_plugin_api::run_in_process::<WordCount>("", &["a b\n", "b\n"]).unwrap();
//! assert_eq!(counts["b"], 2);
//! ```
//!
//! # Rules Kiln relies on
//!
//! - `run` sees one chunk and nothing else; it must not depend on how the input was split.
//! - `aggregate` gets one partial per chunk in input order (an input is an ordered list of files:
//!   files in order, chunks in order within a file), whichever machine produced it and however
//!   often a chunk was retried, so the output is the same for any split and any failure.
//! - A chunk holds whole lines of one file: [`Chunk::file`] names it and [`Chunk::first_line`]
//!   numbers its first line within it (see [`MapReduce::LINE_NUMBERS`] for inputs read by
//!   reference).
//! - A panic in plugin code is caught inside the plugin and reported as the chunk's error with
//!   its message and location; it never unwinds into Kiln.
//! - Partials cross process and machine boundaries in a compact binary encoding (postcard); keep
//!   them small, since their decoding is part of every job's critical path.

pub mod abi;
mod export;
pub mod partial;
mod streaming;
mod words;

pub use streaming::{JsonArray, Partials};
pub use words::Words;

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Serialize, de::DeserializeOwned};

/// The version of this API, checked when Kiln loads a plugin.
///
/// A plugin built against another minor version (or, from 1.0 on, another major version) is
/// refused with a message that names both versions.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The name of the plain C symbol that holds the API version a plugin was built against.
///
/// The executor reads it before any layout check, so that a mismatch gives a one-line error.
pub const VERSION_SYMBOL: &str = "kiln_plugin_api_version";

/// A map-reduce computation over the lines of a text input.
///
/// One value is created per executor with [`MapReduce::new`] and then shared by all the threads
/// that run chunks, hence `Send + Sync`.
pub trait MapReduce: Send + Sync + Sized + 'static {
    /// The result of one chunk. It is encoded with postcard to travel between processes.
    type Partial: Serialize + DeserializeOwned;
    /// The final result, returned to the user as JSON.
    type Output: Serialize;

    /// Builds the plugin from the job's parameters (`""` when none were given).
    ///
    /// Validate the parameters here: an error fails the job before any chunk runs.
    fn new(params: &str) -> Result<Self, String>;

    /// Maps one chunk of whole lines to a partial result.
    fn run(&self, chunk: &Chunk<'_>) -> Result<Self::Partial, String>;

    /// Folds all partial results, one per chunk and in input order, into the final output.
    ///
    /// Called with an empty vector when the input is empty.
    fn aggregate(&self, partials: Vec<Self::Partial>) -> Result<Self::Output, String>;

    /// Merges the partials of consecutive chunks into one partial, in input order.
    ///
    /// Optional. When it returns `Some`, Kiln may merge partials close to where they were
    /// produced, so that `aggregate` decodes fewer of them; `aggregate` must then accept merged
    /// partials as it accepts the ones of single chunks. The default, `None`, says the plugin
    /// does not combine. Kiln calls it once per instance with an empty vector to learn which.
    ///
    /// A plugin whose `Partial` implements [`partial::Merge`] need not write this: when it
    /// returns `None`, Kiln combines with [`partial::Merge::merge_all`] instead.
    fn combine(&self, partials: Vec<Self::Partial>) -> Option<Result<Self::Partial, String>> {
        let _ = partials;
        None
    }

    /// Whether `run` needs the numbers of its chunk's lines ([`Chunk::first_line`]).
    ///
    /// Inputs uploaded or read on one machine are numbered as they are cut, at no cost, so
    /// their chunks always know their lines. An input that the workers read by reference
    /// (`s3://`, `https://`, `file://`) is cut into byte ranges read in parallel, and a range
    /// that does not start its file cannot know how many lines come before it: when this is
    /// `true`, the workers first count the line ends of every range (one more pass over the
    /// uncompressed input, in parallel), so that every chunk gets its true numbers; when it is
    /// `false` (the default), those chunks say their first line is unknown (0) and the plugin
    /// pays nothing.
    const LINE_NUMBERS: bool = false;

    /// Whether Kiln aggregates with [`MapReduce::aggregate_into`] rather than
    /// [`MapReduce::aggregate`] (since 0.1.3; `false` by default).
    ///
    /// For a plugin whose output is a JSON array (matching lines, sorted records, joined
    /// rows): `aggregate` holds every decoded partial and the whole `Output` at once, which for
    /// a large result is several times its size in the executor's memory; `aggregate_into`
    /// takes the partials one at a time and writes each item as it goes. `aggregate` must still
    /// give the same JSON: [`run_in_process`] checks that they agree, and a Kiln older than
    /// 0.1.3 calls it.
    const STREAMS_OUTPUT: bool = false;

    /// Folds the partials, pulled one at a time and in input order from `partials`, into the
    /// output, written item by item into `out` as a JSON array; called instead of
    /// [`MapReduce::aggregate`] when [`MapReduce::STREAMS_OUTPUT`] is set.
    ///
    /// Drop each partial once it is written out, so that only one is decoded at a time.
    /// [`Partials::input_files`] tells from the start how many files the input has. A partial
    /// that cannot be decoded ends the iteration and fails the call, as does an output that
    /// cannot be written; an `Err` returned here fails it with that message. The default
    /// refuses: a plugin that sets `STREAMS_OUTPUT` implements this.
    ///
    /// ```
    /// use kiln_plugin_api::{Chunk, JsonArray, MapReduce, Partials};
    ///
    /// /// The lines of the input that hold a digit, in input order.
    /// pub struct Digits;
    ///
    /// impl MapReduce for Digits {
    ///     type Partial = Vec<String>;
    ///     type Output = Vec<String>;
    ///     const STREAMS_OUTPUT: bool = true;
    ///
    ///     fn new(_params: &str) -> Result<Self, String> {
    ///         Ok(Digits)
    ///     }
    ///     fn run(&self, chunk: &Chunk<'_>) -> Result<Vec<String>, String> {
    ///         let digit = |line: &&str| line.bytes().any(|b| b.is_ascii_digit());
    ///         Ok(chunk.lines().filter(digit).map(str::to_owned).collect())
    ///     }
    ///     // What a Kiln before 0.1.3 calls: the same JSON, held whole.
    ///     fn aggregate(&self, partials: Vec<Vec<String>>) -> Result<Vec<String>, String> {
    ///         Ok(partials.concat())
    ///     }
    ///     fn aggregate_into(&self, partials: Partials<'_, Vec<String>>, out: &mut JsonArray<'_>) -> Result<(), String> {
    ///         for partial in partials {
    ///             for line in &partial {
    ///                 out.item(line)?;
    ///             }
    ///         }
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let json = kiln_plugin_api::run_chunks_in_process::<Digits>("", &[Chunk::new("a1\nb\n", 1), Chunk::new("c2\n", 3)]);
    /// assert_eq!(json.unwrap(), r#"["a1","c2"]"#);
    /// ```
    fn aggregate_into(&self, partials: Partials<'_, Self::Partial>, out: &mut JsonArray<'_>) -> Result<(), String> {
        let _ = (partials, out);
        Err("this plugin sets STREAMS_OUTPUT but does not implement aggregate_into".to_owned())
    }
}

/// A chunk of the input: whole lines of one file, borrowed from Kiln's buffer without copying.
///
/// An input is an ordered list of files; a chunk never spans two of them.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    text: &'a str,
    file: &'a str,
    first_line: u64,
    /// Where [`Chunk::lines`] last started a line (a byte offset into `text`), so that a panic
    /// can be reported with its line; `usize::MAX` before the first.
    position: &'a AtomicUsize,
}

/// The position slot of chunks made outside Kiln's calls (in plugin authors' tests), where no
/// one reads it.
static NOWHERE: AtomicUsize = AtomicUsize::new(usize::MAX);

impl<'a> Chunk<'a> {
    /// Makes a chunk of `text` whose first line is line `first_line` (1-based) of an input
    /// with no file name.
    pub fn new(text: &'a str, first_line: u64) -> Self {
        Chunk { text, file: "", first_line, position: &NOWHERE }
    }

    /// Makes a chunk of `text` from the file named `file`, whose first line is line
    /// `first_line` (1-based) of that file, or 0 when that is unknown.
    pub fn in_file(text: &'a str, file: &'a str, first_line: u64) -> Self {
        Chunk { text, file, first_line, position: &NOWHERE }
    }

    /// The chunk's text: whole lines, each ending in `\n` except perhaps the input's last.
    ///
    /// Scanning this directly (for example with `split_whitespace`) is the fastest way through
    /// a chunk.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The name of the file this chunk comes from, as the user gave it (a path, a URL, or a
    /// path within a directory or a prefix the user gave); empty when the input has no name.
    pub fn file(&self) -> &'a str {
        self.file
    }

    /// The 1-based number, within its file, of this chunk's first line; 0 when it is unknown:
    /// a chunk in the middle of a file read by reference, for a plugin that does not declare
    /// [`MapReduce::LINE_NUMBERS`].
    pub fn first_line(&self) -> u64 {
        self.first_line
    }

    /// The chunk's words: the pieces that [`str::split_whitespace`] gives, found faster.
    ///
    /// It splits on ASCII whitespace a byte at a time, in one pass, without decoding UTF-8; only
    /// a word that holds a non-ASCII byte is split again by `split_whitespace` (it may hold a
    /// non-ASCII space such as U+00A0), so the rest of the chunk stays on the fast path.
    pub fn words(&self) -> Words<'a> {
        Words::new(self.text)
    }

    /// The chunk's lines without their line endings (`\n` or `\r\n`), as [`str::lines`] gives.
    ///
    /// When plugin code panics while iterating them, Kiln reports the line it was at: its
    /// number, file and first characters.
    pub fn lines(&self) -> Lines<'a> {
        Lines { text: self.text, offset: 0, position: self.position }
    }

    /// The chunk as `export_plugin!`'s `run` makes it, with a position slot Kiln reads.
    pub(crate) fn tracked(text: &'a str, file: &'a str, first_line: u64, position: &'a AtomicUsize) -> Self {
        Chunk { text, file, first_line, position }
    }

    /// The chunk's lines with their 1-based numbers within the file (0 for every line when
    /// [`Chunk::first_line`] is unknown).
    pub fn numbered_lines(&self) -> impl Iterator<Item = (u64, &'a str)> + 'a {
        let first_line = self.first_line;
        let known = u64::from(first_line != 0);
        (0..).map(move |i| first_line + i * known).zip(self.lines())
    }
}

/// The lines of a chunk, from [`Chunk::lines`]: what [`str::lines`] gives, each line's start
/// noted so that a panic can name its line.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    text: &'a str,
    /// Where the next line starts.
    offset: usize,
    position: &'a AtomicUsize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let Some(rest) = self.text.get(self.offset..).filter(|rest| !rest.is_empty()) else {
            // Done: a panic after the loop is not on any line.
            self.position.store(usize::MAX, Ordering::Relaxed);
            return None;
        };
        // One relaxed store per line: a plain write, read only after a panic on this thread.
        self.position.store(self.offset, Ordering::Relaxed);
        let line = match rest.find('\n') {
            Some(end) => {
                self.offset += end + 1;
                let line = &rest[..end];
                line.strip_suffix('\r').unwrap_or(line)
            }
            None => {
                self.offset = self.text.len();
                rest
            }
        };
        Some(line)
    }
}

/// Runs a plugin in this process over chunks of text, the way Kiln would.
///
/// Meant for plugin authors' unit tests: each string is one chunk (whole lines), partials are
/// encoded and decoded as they are between Kiln's processes, `combine` is ignored, and the
/// chunks' line numbers follow each other. A plugin that sets [`MapReduce::STREAMS_OUTPUT`] is
/// aggregated both ways, and an `aggregate_into` whose JSON differs from `aggregate`'s is an
/// `Err` saying so; [`run_chunks_in_process`] gives the JSON itself.
pub fn run_in_process<P: MapReduce>(params: &str, chunks: &[&str]) -> Result<P::Output, String> {
    let mut first_line = 1;
    let chunks: Vec<Chunk<'_>> = chunks
        .iter()
        .map(|text| {
            let chunk = Chunk::new(text, first_line);
            first_line += text.lines().count() as u64;
            chunk
        })
        .collect();
    let plugin = P::new(params)?;
    let partials = encoded_partials(&plugin, &chunks)?;
    let output = aggregate_in_process(&plugin, &partials)?;
    if P::STREAMS_OUTPUT {
        let streamed = stream_in_process(&plugin, partials, input_files(&chunks))?;
        agree(&output, &streamed)?;
    }
    Ok(output)
}

/// Runs a plugin in this process over chunks that name their files and lines, and answers the
/// output's JSON as Kiln gives it.
///
/// For tests of what depends on files, which [`run_in_process`] cannot give: the input's file
/// count ([`Partials::input_files`]) is the number of files the chunks name (consecutive
/// chunks of one name are one file). Partials are encoded and decoded as between Kiln's
/// processes and `combine` is ignored. A plugin that sets [`MapReduce::STREAMS_OUTPUT`] is
/// aggregated both ways, and answers `aggregate_into`'s JSON, or an `Err` when `aggregate`
/// gives other JSON.
pub fn run_chunks_in_process<P: MapReduce>(params: &str, chunks: &[Chunk<'_>]) -> Result<String, String> {
    let plugin = P::new(params)?;
    let partials = encoded_partials(&plugin, chunks)?;
    let output = aggregate_in_process(&plugin, &partials)?;
    if !P::STREAMS_OUTPUT {
        return serde_json::to_string(&output).map_err(|e| format!("cannot encode output as JSON: {e}"));
    }
    let streamed = stream_in_process(&plugin, partials, input_files(chunks))?;
    agree(&output, &streamed)?;
    String::from_utf8(streamed).map_err(|e| format!("aggregate_into wrote other than UTF-8: {e}"))
}

/// Runs every chunk and answers its encoded partial.
fn encoded_partials<P: MapReduce>(plugin: &P, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<u8>>, String> {
    chunks
        .iter()
        .map(|chunk| postcard::to_allocvec(&plugin.run(chunk)?).map_err(|e| format!("cannot encode partial: {e}")))
        .collect()
}

fn aggregate_in_process<P: MapReduce>(plugin: &P, partials: &[Vec<u8>]) -> Result<P::Output, String> {
    let decoded = partials
        .iter()
        .map(|bytes| postcard::from_bytes(bytes).map_err(|e| format!("cannot decode partial: {e}")))
        .collect::<Result<_, _>>()?;
    plugin.aggregate(decoded)
}

/// The JSON that `aggregate_into` writes for these partials.
fn stream_in_process<P: MapReduce>(plugin: &P, partials: Vec<Vec<u8>>, input_files: u64) -> Result<Vec<u8>, String> {
    let mut json = Vec::new();
    streaming::aggregate_into(plugin, streaming::Source::Encoded(partials.into_iter()), input_files, &mut json)?;
    Ok(json)
}

/// How many files the chunks come from, as Kiln counts them for [`Partials::input_files`].
fn input_files(chunks: &[Chunk<'_>]) -> u64 {
    let starts = chunks.windows(2).filter(|pair| pair[0].file() != pair[1].file()).count();
    if chunks.is_empty() { 0 } else { starts as u64 + 1 }
}

/// Checks that `aggregate`'s `output` and `aggregate_into`'s JSON are the same value.
fn agree<T: Serialize>(output: &T, streamed: &[u8]) -> Result<(), String> {
    let whole = serde_json::to_value(output).map_err(|e| format!("cannot encode output as JSON: {e}"))?;
    let streamed: serde_json::Value =
        serde_json::from_slice(streamed).map_err(|e| format!("aggregate_into wrote invalid JSON: {e}"))?;
    if whole == streamed {
        return Ok(());
    }
    let shown = |value: &serde_json::Value| {
        let text = value.to_string();
        match text.char_indices().nth(SHOWN_CHARS) {
            Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
            None => text,
        }
    };
    Err(format!(
        "aggregate_into and aggregate disagree: aggregate_into gives {}, aggregate gives {}",
        shown(&streamed),
        shown(&whole)
    ))
}

/// How much of each output a disagreement shows, in characters.
const SHOWN_CHARS: usize = 300;

/// Items that [`export_plugin!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{MergeProbe, NoMerge, VERSION_NUL, WithMerge, root_module};
    pub use abi_stable;
}

/// Exports a [`MapReduce`] type as this crate's plugin.
///
/// Use it once, in a `cdylib` crate. It exports the API version as a plain C symbol and the
/// abi_stable root module through which Kiln's executor calls the plugin. When the plugin's
/// partial implements [`partial::Merge`], the partials are combined with it unless the plugin
/// writes its own `combine`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The API version this plugin was built against, as a NUL-terminated string.
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub extern "C" fn kiln_plugin_api_version() -> *const ::core::ffi::c_char {
            $crate::__private::VERSION_NUL.as_ptr().cast()
        }

        /// The abi_stable library header; the name is abi_stable's mangled loader name.
        #[doc(hidden)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __KILN_LIB_HEADER: $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn load_root_module() -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(|| {
                    #[allow(unused_imports)]
                    use $crate::__private::{NoMerge as _, WithMerge as _};
                    // `ByMerge` when the partial implements `Merge`, else `NotMerged`: method
                    // resolution picks `WithMerge` (on `&&MergeProbe`) only when it applies.
                    let combiner =
                        (&&$crate::__private::MergeProbe::<<$plugin as $crate::MapReduce>::Partial>::new()).combiner();
                    $crate::__private::root_module::<$plugin, _>(combiner)
                })
            }
            // SAFETY: the constructor returns the root module of type `PluginModuleRef`, the
            // type given here, exactly as `#[export_root_module]` would generate it.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginModuleRef>(
                    load_root_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
