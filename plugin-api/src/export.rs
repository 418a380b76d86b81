//! The plugin side of the ABI: the `extern "C"` functions that `export_plugin!` puts in the root
//! module, each a thin wrapper that converts types and turns panics into errors.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RStr, RString, RVec};

use crate::abi::{Instance, OutputSink, PartialSource, PluginModule, PluginModuleRef};
use crate::partial::Merge;
use crate::streaming::{self, Source};
use crate::{API_VERSION, Chunk, MapReduce};

/// [`API_VERSION`] with a NUL terminator, for the plain C version symbol.
pub const VERSION_NUL: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// How a plugin's partials of type `T` are combined when the plugin does not write `combine`.
pub trait Combiner<T> {
    /// The merged partial, or `None` when these partials do not merge.
    fn merge_all(parts: Vec<T>) -> Option<T>;
}

/// Partials that implement [`Merge`] are combined with [`Merge::merge_all`].
pub struct ByMerge;

impl<T: Merge> Combiner<T> for ByMerge {
    fn merge_all(parts: Vec<T>) -> Option<T> {
        Some(T::merge_all(parts))
    }
}

/// Partials that do not implement [`Merge`] are not combined.
pub struct NotMerged;

impl<T> Combiner<T> for NotMerged {
    fn merge_all(_: Vec<T>) -> Option<T> {
        None
    }
}

/// Finds out, at the plugin's concrete partial type `T`, whether it implements [`Merge`]:
/// `(&&MergeProbe::<T>::new()).combiner()` is [`ByMerge`] when it does, [`NotMerged`] when not.
pub struct MergeProbe<T>(PhantomData<T>);

impl<T> MergeProbe<T> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        MergeProbe(PhantomData)
    }
}

/// Chosen by method resolution first (its receiver is `&&MergeProbe`), when `T: Merge`.
pub trait WithMerge {
    fn combiner(&self) -> ByMerge {
        ByMerge
    }
}

impl<T: Merge> WithMerge for &MergeProbe<T> {}

/// The fallback, reached after one auto-deref, for partials that do not merge.
pub trait NoMerge {
    fn combiner(&self) -> NotMerged {
        NotMerged
    }
}

impl<T> NoMerge for MergeProbe<T> {}

/// Builds the root module for plugin type `P`, whose partials combine as `C` says when the
/// plugin does not write `combine`; called once when the library is loaded.
pub fn root_module<P: MapReduce, C: Combiner<P::Partial>>(_: C) -> PluginModuleRef {
    PluginModule {
        api_version: RStr::from_str(API_VERSION),
        new: new::<P>,
        combines: combines::<P, C>,
        line_numbers: line_numbers::<P>,
        run: run::<P>,
        combine: combine::<P, C>,
        aggregate: aggregate::<P>,
        drop: drop_instance::<P>,
        last_failure_panicked,
        aggregate_streamed: aggregate_streamed::<P>,
        aggregate_into: aggregate_into::<P>,
    }
    .leak_into_prefix()
}

thread_local! {
    /// The message and location of the last panic on this thread, set by the panic hook.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether the last call on this thread that failed did so by panicking (rather than by
    /// returning `Err`), as `last_failure_panicked` tells the executor.
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

/// Replaces the plugin's panic hook (the plugin has its own copy of std, so this does not touch
/// the executor's) with one that records the panic instead of printing it.
///
/// A plugin built with `panic = "abort"` cannot catch its panic: the process aborts right after
/// the hook, and the recorded message would die with it. There the hook also writes the message
/// to stderr, which the executor's supervisor captures and puts in the crash it reports.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            let text = match info.location() {
                Some(at) => format!("panicked at {}:{}:{}: {message}", at.file(), at.line(), at.column()),
                None => format!("panicked: {message}"),
            };
            if cfg!(panic = "abort") {
                // One write, so the line arrives whole even with other threads printing.
                let line = format!(
                    "the plugin {text}\n(built with panic = \"abort\": the executor aborts instead of failing \
                     the call; remove it from the plugin's profile to have panics retried and reported alone)\n"
                );
                let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
            }
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
        }));
    });
}

/// Runs plugin code, turning a panic into an error carrying its message and location.
fn guard<T>(f: impl FnOnce() -> Result<T, String>) -> RResult<T, RString> {
    guard_with(f, |message| message)
}

/// [`guard`], with `explain` adding to a panic's message (the line it happened on).
fn guard_with<T>(f: impl FnOnce() -> Result<T, String>, explain: impl FnOnce(String) -> String) -> RResult<T, RString> {
    install_panic_hook();
    let outcome = catch_unwind(AssertUnwindSafe(f));
    // What the call printed without a newline waits in this std's buffer; the executor
    // collects a call's output when it answers, so it must be written out by then.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    match outcome {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(message)) => {
            PANICKED.set(false);
            RErr(message.into())
        }
        Err(_) => {
            PANICKED.set(true);
            let text = LAST_PANIC.with(|last| last.borrow_mut().take());
            RErr(explain(text.unwrap_or_else(|| "plugin panicked".to_owned())).into())
        }
    }
}

/// The longest prefix of a line that a panic's report quotes, in characters.
const QUOTED_CHARS: usize = 200;

/// Names the line of `text` that starts at byte `offset` (where `Chunk::lines` was when the
/// plugin panicked): its number in `file`, and its first characters, escaped so that no
/// control character reaches a terminal or a log. `None` when no line was being read.
pub(crate) fn describe_line(text: &str, file: &str, first_line: u64, offset: usize) -> Option<String> {
    let rest = text.get(offset..)?;
    let line = rest.split('\n').next().unwrap_or(rest);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let index = text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() as u64;
    let file = if file.is_empty() { "the input".to_owned() } else { file.escape_debug().to_string() };
    let place = match first_line {
        0 => format!("line {} of a chunk of {file} (its place in the file is unknown)", index + 1),
        first => format!("line {} of {file}", first + index),
    };
    let quoted: String = line.chars().take(QUOTED_CHARS).collect();
    let more = if quoted.len() < line.len() { " (cut)" } else { "" };
    Some(format!("on {place}: \"{}\"{more}", quoted.escape_debug()))
}

/// # Safety
/// `instance` must come from `new::<P>` and not have been dropped.
unsafe fn plugin<'a, P>(instance: Instance) -> &'a P {
    // SAFETY: guaranteed by the caller.
    unsafe { &*instance.as_ptr().cast::<P>() }
}

fn decode_all<P: MapReduce>(partials: RSlice<'_, RSlice<'_, u8>>) -> Result<Vec<P::Partial>, String> {
    partials
        .iter()
        .enumerate()
        .map(|(i, bytes)| postcard::from_bytes(bytes.as_slice()).map_err(|e| format!("cannot decode partial {i}: {e}")))
        .collect()
}

fn encode<T: serde::Serialize>(partial: &T) -> Result<RVec<u8>, String> {
    postcard::to_allocvec(partial).map(RVec::from).map_err(|e| format!("cannot encode partial: {e}"))
}

extern "C" fn new<P: MapReduce>(params: RStr<'_>) -> RResult<Instance, RString> {
    guard(|| {
        let plugin = P::new(params.as_str())?;
        Ok(Instance::from_ptr(Box::into_raw(Box::new(plugin)).cast::<c_void>()))
    })
}

extern "C" fn run<P: MapReduce>(
    instance: Instance,
    text: RStr<'_>,
    file: RStr<'_>,
    first_line: u64,
) -> RResult<RVec<u8>, RString> {
    let position = AtomicUsize::new(usize::MAX);
    let (text, file) = (text.as_str(), file.as_str());
    let run = || {
        // SAFETY: the executor passes instances it got from `new` and has not dropped.
        let plugin = unsafe { plugin::<P>(instance) };
        encode(&plugin.run(&Chunk::tracked(text, file, first_line, &position))?)
    };
    guard_with(run, |message| match describe_line(text, file, first_line, position.load(Ordering::Relaxed)) {
        Some(line) => format!("{message}\n{line}"),
        None => message,
    })
}

extern "C" fn last_failure_panicked() -> bool {
    PANICKED.get()
}

extern "C" fn line_numbers<P: MapReduce>() -> bool {
    P::LINE_NUMBERS
}

extern "C" fn combines<P: MapReduce, C: Combiner<P::Partial>>(instance: Instance) -> bool {
    // SAFETY: as in `run`.
    let plugin = unsafe { plugin::<P>(instance) };
    let combines = || Ok(plugin.combine(Vec::new()).is_some() || C::merge_all(Vec::new()).is_some());
    matches!(guard(combines), ROk(true))
}

extern "C" fn combine<P: MapReduce, C: Combiner<P::Partial>>(
    instance: Instance,
    partials: RSlice<'_, RSlice<'_, u8>>,
) -> RResult<RVec<u8>, RString> {
    guard(|| {
        // SAFETY: as in `run`.
        let plugin = unsafe { plugin::<P>(instance) };
        // The plugin's own `combine` wins; asking it with no partials costs nothing.
        let merged = if plugin.combine(Vec::new()).is_some() {
            plugin.combine(decode_all::<P>(partials)?)
        } else {
            C::merge_all(decode_all::<P>(partials)?).map(Ok)
        };
        match merged {
            Some(merged) => encode(&merged?),
            None => Err("this plugin does not implement combine".to_owned()),
        }
    })
}

extern "C" fn aggregate<P: MapReduce>(
    instance: Instance,
    partials: RSlice<'_, RSlice<'_, u8>>,
) -> RResult<RString, RString> {
    guard(|| {
        // SAFETY: as in `run`.
        let plugin = unsafe { plugin::<P>(instance) };
        let output = plugin.aggregate(decode_all::<P>(partials)?)?;
        serde_json::to_string(&output).map(RString::from).map_err(|e| format!("cannot encode output as JSON: {e}"))
    })
}

/// How much of the output's JSON is encoded before it goes to the executor: each write to the
/// sink becomes a piece of the answer.
const OUTPUT_WRITE_BYTES: usize = 1 << 20;

extern "C" fn aggregate_streamed<P: MapReduce>(
    instance: Instance,
    mut partials: PartialSource<'_>,
    output: OutputSink<'_>,
) -> RResult<(), RString> {
    guard(|| {
        // SAFETY: as in `run`.
        let plugin = unsafe { plugin::<P>(instance) };
        // The count comes from the executor; the vector grows with what arrives beyond a bound.
        let mut decoded = Vec::with_capacity(usize::try_from(partials.count).unwrap_or(0).min(1 << 16));
        while let Some(bytes) = partials.next_partial()? {
            let partial =
                postcard::from_bytes(&bytes).map_err(|e| format!("cannot decode partial {}: {e}", decoded.len()))?;
            // Freed before the next one arrives: the encoded partials are never all held.
            drop(bytes);
            decoded.push(partial);
        }
        let value = plugin.aggregate(decoded)?;
        let mut out = std::io::BufWriter::with_capacity(OUTPUT_WRITE_BYTES, output);
        serde_json::to_writer(&mut out, &value).map_err(|e| format!("cannot encode output as JSON: {e}"))?;
        std::io::Write::flush(&mut out).map_err(|e| format!("cannot encode output as JSON: {e}"))
    })
}

extern "C" fn aggregate_into<P: MapReduce>(
    instance: Instance,
    input_files: u64,
    partials: PartialSource<'_>,
    output: OutputSink<'_>,
) -> RResult<(), RString> {
    if !P::STREAMS_OUTPUT {
        return aggregate_streamed::<P>(instance, partials, output);
    }
    guard(|| {
        // SAFETY: as in `run`.
        let plugin = unsafe { plugin::<P>(instance) };
        let mut out = std::io::BufWriter::with_capacity(OUTPUT_WRITE_BYTES, output);
        match streaming::aggregate_into(plugin, Source::Executor(partials), input_files, &mut out) {
            Ok(()) => std::io::Write::flush(&mut out).map_err(|e| format!("cannot encode output as JSON: {e}")),
            Err(failure) => {
                // What waits in the buffer belongs to a failed call: dropped, not written out.
                drop(out.into_parts());
                Err(failure)
            }
        }
    })
}

extern "C" fn drop_instance<P: MapReduce>(instance: Instance) {
    // A panic in a plugin's `Drop` must not unwind across the boundary; it is recorded and lost.
    let _ = guard(|| {
        // SAFETY: the executor drops each instance once, after its last use.
        drop(unsafe { Box::from_raw(instance.as_ptr().cast::<P>().cast_mut()) });
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::partial::Counter;

    /// A plugin whose partial merges, and which writes no `combine`.
    struct Words;

    impl MapReduce for Words {
        type Partial = Counter;
        type Output = u64;
        fn new(_: &str) -> Result<Self, String> {
            Ok(Words)
        }
        fn run(&self, chunk: &Chunk<'_>) -> Result<Counter, String> {
            Ok(chunk.words().collect())
        }
        fn aggregate(&self, partials: Vec<Counter>) -> Result<u64, String> {
            Ok(Counter::merge_all(partials).total())
        }
    }

    /// The same with a partial that does not merge.
    struct Plain;

    impl MapReduce for Plain {
        type Partial = HashMap<String, u64>;
        type Output = u64;
        fn new(_: &str) -> Result<Self, String> {
            Ok(Plain)
        }
        fn run(&self, _: &Chunk<'_>) -> Result<Self::Partial, String> {
            Ok(HashMap::new())
        }
        fn aggregate(&self, _: Vec<Self::Partial>) -> Result<u64, String> {
            Ok(0)
        }
    }

    /// The module `export_plugin!` would build for `P`, with the same probe.
    macro_rules! module_of {
        ($plugin:ty) => {{
            #[allow(unused_imports)]
            use super::{NoMerge as _, WithMerge as _};
            root_module::<$plugin, _>((&&MergeProbe::<<$plugin as MapReduce>::Partial>::new()).combiner())
        }};
    }

    fn unwrap<T>(result: RResult<T, RString>) -> T {
        result.into_result().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_partial_that_merges_gives_the_plugin_a_combine() {
        let module = module_of!(Words);
        let instance = unwrap(module.new()(RStr::from_str("")));
        assert!(module.combines()(instance));
        let run = |text: &str| unwrap(module.run()(instance, RStr::from_str(text), RStr::from_str(""), 1));
        let (a, b) = (run("x y y\n"), run("y z\n"));
        let parts = [RSlice::from_slice(&a[..]), RSlice::from_slice(&b[..])];
        let merged = unwrap(module.combine()(instance, RSlice::from_slice(&parts)));
        let merged: Counter = postcard::from_bytes(&merged).unwrap();
        assert_eq!((merged.get("y"), merged.get("x"), merged.total()), (3, 1, 5));
        module.drop()(instance);
    }

    #[test]
    fn a_partial_that_does_not_merge_gives_no_combine() {
        let module = module_of!(Plain);
        let instance = unwrap(module.new()(RStr::from_str("")));
        assert!(!module.combines()(instance));
        let error = module.combine()(instance, RSlice::from_slice(&[])).into_result().unwrap_err();
        assert_eq!(error.as_str(), "this plugin does not implement combine");
        module.drop()(instance);
    }

    /// Hands `partials` over one at a time and collects what is written, as the executor does:
    /// through `aggregate_into` when told the input's files, else through `aggregate_streamed`.
    fn aggregate_streamed_of(
        module: PluginModuleRef,
        instance: Instance,
        partials: Vec<Vec<u8>>,
        input_files: Option<u64>,
    ) -> (Result<(), String>, Vec<u8>, usize) {
        struct Source(std::vec::IntoIter<Vec<u8>>);
        extern "C" fn next(state: *mut c_void) -> RResult<abi_stable::std_types::ROption<RVec<u8>>, RString> {
            // SAFETY: the `Source` below, alive for the call.
            let source = unsafe { &mut *state.cast::<Source>() };
            ROk(source.0.next().map(RVec::from).into())
        }
        struct Sink(Vec<u8>, usize);
        extern "C" fn write(state: *mut c_void, bytes: RSlice<'_, u8>) -> RResult<(), RString> {
            // SAFETY: the `Sink` below, alive for the call.
            let sink = unsafe { &mut *state.cast::<Sink>() };
            sink.0.extend_from_slice(&bytes);
            sink.1 += 1;
            ROk(())
        }
        let count = partials.len() as u64;
        let (mut source, mut sink) = (Source(partials.into_iter()), Sink(Vec::new(), 0));
        // SAFETY: both live beyond the call, made on this thread.
        let outcome = unsafe {
            let partials = PartialSource::new(count, &mut *(&mut source as *mut Source).cast(), next);
            let output = OutputSink::new(&mut *(&mut sink as *mut Sink).cast(), write);
            match input_files {
                Some(files) => module.aggregate_into().expect("the field is there")(instance, files, partials, output),
                None => module.aggregate_streamed().expect("the field is there")(instance, partials, output),
            }
        };
        (outcome.into_result().map_err(RString::into_string), sink.0, sink.1)
    }

    #[test]
    fn a_streamed_aggregate_decodes_partials_as_they_come_and_writes_its_json() {
        let module = module_of!(Words);
        let instance = unwrap(module.new()(RStr::from_str("")));
        let run = |text: &str| unwrap(module.run()(instance, RStr::from_str(text), RStr::from_str(""), 1)).into_vec();
        for files in [None, Some(1)] {
            let (outcome, json, _) = aggregate_streamed_of(module, instance, vec![run("x y y\n"), run("y z\n")], files);
            assert_eq!((outcome, String::from_utf8(json).unwrap()), (Ok(()), "5".to_owned()), "{files:?}");
            let (outcome, json, writes) =
                aggregate_streamed_of(module, instance, vec![run("a\n"), vec![0xff; 3]], files);
            assert!(outcome.unwrap_err().starts_with("cannot decode partial 1: "));
            assert_eq!((json.len(), writes), (0, 0), "nothing written before the output exists");
        }
        module.drop()(instance);
    }

    /// A streaming plugin: its lines, after the input's file count (which `aggregate`, as
    /// Kiln before 0.1.3 calls it, does not know: it answers 0 there).
    struct Listed;

    impl MapReduce for Listed {
        type Partial = Vec<String>;
        type Output = Vec<serde_json::Value>;
        const STREAMS_OUTPUT: bool = true;
        fn new(_: &str) -> Result<Self, String> {
            Ok(Listed)
        }
        fn run(&self, chunk: &Chunk<'_>) -> Result<Vec<String>, String> {
            Ok(chunk.lines().map(str::to_owned).collect())
        }
        fn aggregate(&self, partials: Vec<Vec<String>>) -> Result<Self::Output, String> {
            Ok([0.into()].into_iter().chain(partials.concat().into_iter().map(Into::into)).collect())
        }
        fn aggregate_into(
            &self,
            partials: crate::Partials<'_, Vec<String>>,
            out: &mut crate::JsonArray<'_>,
        ) -> Result<(), String> {
            out.item(&partials.input_files())?;
            partials.flatten().try_for_each(|line| out.item(&line))
        }
    }

    #[test]
    fn aggregate_into_tells_a_streaming_plugin_the_input_files_and_aggregate_streamed_keeps_the_old_path() {
        let module = module_of!(Listed);
        let instance = unwrap(module.new()(RStr::from_str("")));
        let run = |text: &str| unwrap(module.run()(instance, RStr::from_str(text), RStr::from_str(""), 1)).into_vec();
        let (outcome, json, _) = aggregate_streamed_of(module, instance, vec![run("a\nb\n"), run("c\n")], Some(3));
        assert_eq!((outcome, String::from_utf8(json).unwrap()), (Ok(()), r#"[3,"a","b","c"]"#.to_owned()));
        let (outcome, json, _) = aggregate_streamed_of(module, instance, vec![run("a\n")], None);
        assert_eq!((outcome, String::from_utf8(json).unwrap()), (Ok(()), r#"[0,"a"]"#.to_owned()));
        let (outcome, json, writes) = aggregate_streamed_of(module, instance, vec![run("a\n"), vec![0xff; 3]], Some(1));
        assert!(outcome.unwrap_err().starts_with("cannot decode partial 1: "));
        assert_eq!((json.len(), writes), (0, 0), "a failed call's buffered items are not written out");
        module.drop()(instance);
    }

    /// Panics on the line that holds "bad", or returns `Err` on the one that holds "no".
    struct Picky;

    impl MapReduce for Picky {
        type Partial = u64;
        type Output = u64;
        fn new(_: &str) -> Result<Self, String> {
            Ok(Picky)
        }
        fn run(&self, chunk: &Chunk<'_>) -> Result<u64, String> {
            for line in chunk.lines() {
                assert!(!line.contains("bad"), "a bad line");
                if line.contains("no") {
                    return Err("refused".to_owned());
                }
            }
            Ok(0)
        }
        fn aggregate(&self, _: Vec<u64>) -> Result<u64, String> {
            Ok(0)
        }
    }

    #[test]
    fn a_panic_while_reading_lines_names_the_line_and_an_err_is_told_apart() {
        let module = module_of!(Picky);
        let instance = unwrap(module.new()(RStr::from_str("")));
        let panicked = module.last_failure_panicked().expect("the field is there");
        let run = |text: &str, first_line: u64| {
            module.run()(instance, RStr::from_str(text), RStr::from_str("in\u{7}.txt"), first_line).into_result()
        };
        let error = run("ok\r\nfine\nso bad \u{1b}[1m\n", 40).unwrap_err();
        assert!(panicked());
        let (panic, line) = error.as_str().split_once('\n').unwrap();
        assert!(
            panic.starts_with("panicked at plugin-api/src/export.rs:") && panic.ends_with(": a bad line"),
            "{panic}"
        );
        assert_eq!(line, r#"on line 42 of in\u{7}.txt: "so bad \u{1b}[1m""#);
        let unknown = run("bad\n", 0).unwrap_err();
        assert!(
            unknown
                .as_str()
                .ends_with("on line 1 of a chunk of in\\u{7}.txt (its place in the file is unknown): \"bad\""),
            "{unknown}"
        );
        assert_eq!(run("yes\nno\n", 1).unwrap_err().as_str(), "refused");
        assert!(!panicked(), "an Err is not a panic");
        module.drop()(instance);
    }

    #[test]
    fn a_long_line_is_quoted_cut_and_lines_are_those_of_str_lines() {
        let long = format!("{}\n", "é".repeat(300));
        let said = describe_line(&long, "", 7, 0).unwrap();
        assert_eq!(said, format!("on line 7 of the input: \"{}\" (cut)", "é".repeat(200)));
        assert_eq!(describe_line("a\n", "f", 1, usize::MAX), None);
        for text in ["", "a", "a\n", "a\r\nb", "\n\n", "x\r", "a\rb\r\n\r\n", "é\nü"] {
            let lines: Vec<&str> = Chunk::new(text, 1).lines().collect();
            assert_eq!(lines, text.lines().collect::<Vec<_>>(), "{text:?}");
        }
    }
}
