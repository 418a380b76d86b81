//! The executor process, `kiln exec`: loads one plugin and serves calls over stdin and stdout.
//!
//! This is the only place where plugin code runs. Given a private directory, the process
//! enters the sandbox (`crate::sandbox`) after reading `Init` and before loading the library
//! (which the supervisor copied into that directory), so that nothing of the plugin ever
//! runs unconfined; it is then PID 2 of its own namespaces. The process reads requests on its main
//! thread and runs them on a pool of threads sharing one plugin instance; each thread writes
//! its responses itself, one at a time under a lock, before it runs anything else. The protocol's
//! responses go out on a copy of the original stdout, and descriptor 1 is pointed at stderr
//! before the plugin is loaded, so plugin output cannot corrupt the protocol; each pool thread
//! then points its own descriptors 1 and 2 at its slot's capture pipes ([`own_output`]), so that
//! what a call prints is captured as that call's output. When stdin closes, it finishes the
//! calls in flight and exits.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use abi_stable::std_types::{RResult, RSlice, RStr};
use bytes::Bytes;
use kiln_plugin_api::abi::{Instance, OutputSink, PartialSource, PluginModuleRef, versions_compatible};
use kiln_plugin_api::{API_VERSION, VERSION_SYMBOL};

use self::streaming::{STOPPED_COMING, Sink, Source, erase, feed, send_pieces};
use super::ChunkText;
use super::protocol::{Incoming, Request, Response, StartFailure};

mod streaming;

/// Serves one plugin over stdin and stdout with `threads` threads, until stdin closes; first
/// enters the sandbox with `sandbox_dir` as its only writable directory, if given.
///
/// Must be called at the start of the process, while it has one thread (see
/// [`crate::sandbox::enter`]). Returns an error only when the protocol itself breaks; plugin
/// failures are answers.
///
/// Each thread points its own descriptors 1 and 2 at its pair of `capture.fds` and writes
/// `capture.mark` there after each call, so that what plugin code prints is captured per call
/// (see `super::capture`). With no descriptors, plugin output goes to the process's stderr.
pub fn serve(threads: usize, sandbox_dir: Option<&Path>, capture: &CaptureSetup) -> io::Result<()> {
    let threads = threads.max(1);
    let mark: Option<Arc<[u8]>> = (!capture.fds.is_empty()).then(|| Arc::from(capture.mark.bytes()));
    let capture = &capture.fds;
    if !capture.is_empty() && capture.len() != 2 * threads {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} capture descriptors for {threads} threads: expected two per thread", capture.len()),
        ));
    }
    let protocol_out = take_stdout()?;
    let mut input = BufReader::with_capacity(1 << 20, io::stdin().lock());
    let mut output = BufWriter::with_capacity(1 << 16, protocol_out);

    let Some(Request::Init { library, params }) = Request::read_from(&mut input)? else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the first request must be init"));
    };
    if let Some(Err(e)) = sandbox_dir.map(|dir| crate::sandbox::enter(&crate::sandbox::Policy::private(dir))) {
        Response::StartFailed { kind: StartFailure::Sandbox, message: e.to_string() }.write_to(&mut output)?;
        return output.flush();
    }
    let plugin = match Plugin::load(Path::new(&library), &params) {
        Ok(plugin) => plugin,
        Err((kind, message)) => {
            Response::StartFailed { kind, message }.write_to(&mut output)?;
            return output.flush();
        }
    };
    let ready = Response::Ready {
        api_version: plugin.api_version.clone(),
        combines: plugin.combines,
        line_numbers: plugin.line_numbers,
    };
    let plugin = Arc::new(plugin);
    let output = Arc::new(Mutex::new(output));

    // The pool takes requests from a shared queue; a bounded queue is unnecessary because the
    // supervisor never has more than its slots' worth of calls in flight. Each thread first
    // takes its own output; the plugin is ready once all have.
    let (request_tx, request_rx) = mpsc::channel::<Work>();
    let request_rx = Arc::new(Mutex::new(request_rx));
    let (setup_tx, setup_rx) = mpsc::channel::<io::Result<()>>();
    let pool: Vec<_> = (0..threads)
        .map(|slot| {
            let plugin = Arc::clone(&plugin);
            let requests = Arc::clone(&request_rx);
            let output = Arc::clone(&output);
            let setup = setup_tx.clone();
            let mark = mark.clone();
            let pair = capture.get(2 * slot..2 * slot + 2).map(|pair| (pair[0], pair[1]));
            thread::spawn(move || {
                let owned = pair.map_or(Ok(()), |(stdout, stderr)| own_output(stdout, stderr));
                let failed = owned.is_err();
                let _ = setup.send(owned);
                drop(setup);
                if failed {
                    return Ok(());
                }
                loop {
                    let request = match requests.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return Ok(()),
                    };
                    let Ok(work) = request else { return Ok(()) };
                    send(&output, &Response::Started { call: work.call(), slot: slot as u64 })?;
                    match work {
                        Work::Call(request) => plugin.serve(request, &output, mark.as_deref())?,
                        Work::Aggregate(aggregate) => plugin.aggregate_streamed(aggregate, &output, mark.as_deref())?,
                    }
                }
            })
        })
        .collect();
    drop(setup_tx);
    let setup: io::Result<()> = setup_rx.iter().collect();
    let start = match setup {
        Ok(()) => ready,
        Err(e) => Response::StartFailed { kind: StartFailure::Sandbox, message: e.to_string() },
    };
    send(&output, &start)?;
    if matches!(start, Response::StartFailed { .. }) {
        return Ok(());
    }

    let read_result = loop {
        match Request::read_incoming(&mut input) {
            Ok(Some(Incoming::Whole(request))) => {
                if request_tx.send(Work::Call(request)).is_err() {
                    break Ok(());
                }
            }
            Ok(Some(Incoming::Aggregate { call, input_files, partials })) => {
                // Handed over in batches of up to BATCH_BYTES: this thread reads the next
                // batch while the plugin decodes the one before, and no more.
                let (partials_tx, partials_rx) = mpsc::sync_channel(0);
                let count = partials.count();
                let aggregate = AggregateWork { call, input_files, count, partials: partials_rx };
                if request_tx.send(Work::Aggregate(aggregate)).is_err() {
                    break Ok(());
                }
                if let Err(e) = feed(&mut input, partials, &partials_tx) {
                    break Err(e);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(request_tx);
    let mut write_result = Ok(());
    for thread in pool {
        let result = thread.join().unwrap_or_else(|_| Err(io::Error::other("a pool thread panicked")));
        write_result = write_result.and(result);
    }
    read_result.and(write_result)
}

/// What a pool thread is given: a call whose request was read whole, or an aggregate.
enum Work {
    Call(Request),
    Aggregate(AggregateWork),
}

/// An aggregate over the input's `input_files` files, whose `count` partials come in batches
/// from the thread that reads the pipe.
struct AggregateWork {
    call: u64,
    input_files: u64,
    count: u64,
    partials: mpsc::Receiver<Vec<Vec<u8>>>,
}

impl Work {
    fn call(&self) -> u64 {
        match self {
            Work::Call(request) => request.call(),
            Work::Aggregate(aggregate) => aggregate.call,
        }
    }
}

/// Moves the real stdout to a new descriptor for the protocol and points descriptor 1 at
/// stderr, so that whatever the plugin prints lands in the executor's log.
fn take_stdout() -> io::Result<File> {
    io::stdout().flush()?;
    // SAFETY: dup and dup2 on the process's own standard descriptors; the duplicate is owned
    // by the returned File alone.
    unsafe {
        let protocol = libc::dup(libc::STDOUT_FILENO);
        if protocol < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(File::from_raw_fd(protocol))
    }
}

/// The arguments of `kiln exec` (and `kiln-web exec`), which the supervisor passes.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// How many calls to run at once.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Enter the sandbox with this as the only writable directory before loading the plugin.
    #[arg(long)]
    pub sandbox_dir: Option<std::path::PathBuf>,
    /// Each thread's stdout and stderr descriptors in turn, where what plugin code prints on
    /// that thread goes (inherited from the supervisor).
    #[arg(long, value_delimiter = ',')]
    pub capture_fds: Vec<RawFd>,
    /// The mark each thread writes on its descriptors after each call.
    #[arg(long, default_value = "")]
    pub capture_mark: String,
}

/// Runs `exec` with its arguments: [`serve`].
pub fn run(args: ExecArgs) -> io::Result<()> {
    let capture = CaptureSetup { fds: args.capture_fds, mark: super::capture::Mark::parse(&args.capture_mark) };
    serve(args.threads, args.sandbox_dir.as_deref(), &capture)
}

/// Where each pool thread's output goes: its stdout and stderr descriptors in turn (thread 0's
/// stdout, thread 0's stderr, thread 1's stdout...), and the mark written after each call.
#[derive(Debug, Clone)]
pub struct CaptureSetup {
    /// Two descriptors per thread; none to leave output on the process's stderr.
    pub fds: Vec<RawFd>,
    /// The end of each call's output.
    pub mark: super::capture::Mark,
}

/// Writes the end-of-call mark on this thread's descriptors 1 and 2 (its capture pipes), after
/// the call's own output and before its answer.
fn end_call(mark: Option<&[u8]>) {
    let Some(mark) = mark else { return };
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: writing bytes we own to this thread's own descriptor. The mark is shorter
        // than PIPE_BUF, so it arrives in one piece, not mixed with a plugin thread's write.
        let _ = unsafe { libc::write(fd, mark.as_ptr().cast(), mark.len()) };
    }
}

/// Gives the calling thread a file table of its own whose descriptors 1 and 2 are `stdout` and
/// `stderr`: what plugin code prints on this thread (and on threads it starts) goes there, and
/// no other thread's output does.
fn own_output(stdout: RawFd, stderr: RawFd) -> io::Result<()> {
    // SAFETY: unshare(CLONE_FILES) copies this thread's file table; dup2 then changes only the
    // copy. Plugin code has not run yet on this thread.
    unsafe {
        if libc::unshare(libc::CLONE_FILES) != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("cannot give a thread its own output: unshare: {e}")));
        }
        if libc::dup2(stdout, libc::STDOUT_FILENO) < 0 || libc::dup2(stderr, libc::STDERR_FILENO) < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("cannot give a thread its own output: dup2: {e}")));
        }
    }
    Ok(())
}

/// Writes one response and flushes it, so that it is in the pipe before the thread runs
/// anything else: when plugin code then crashes the process, the supervisor still gets every
/// answer sent before, and knows which chunk of a batch was running.
fn send(output: &Mutex<BufWriter<File>>, response: &Response) -> io::Result<()> {
    send_with(output, |out| response.write_to(out))
}

/// Writes one frame with `write` and flushes it, as [`send`] does.
fn send_with(
    output: &Mutex<BufWriter<File>>,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let mut output = output.lock().map_err(|_| io::Error::other("a thread panicked while writing a response"))?;
    write(&mut output)?;
    output.flush()
}

/// A loaded plugin and its instance.
struct Plugin {
    module: PluginModuleRef,
    instance: Instance,
    api_version: String,
    combines: bool,
    line_numbers: bool,
}

impl Plugin {
    /// Loads the library, checks its API version, and creates the instance.
    fn load(library: &Path, params: &str) -> Result<Plugin, (StartFailure, String)> {
        let plugin_version = read_api_version(library).map_err(|message| (StartFailure::Load, message))?;
        if !versions_compatible(&plugin_version, API_VERSION) {
            return Err((
                StartFailure::Incompatible,
                format!(
                    "plugin built against kiln-plugin-api {plugin_version}, which this kiln (kiln-plugin-api \
                     {API_VERSION}) cannot load: depend on kiln-plugin-api = \"{}\" in the plugin's \
                     Cargo.toml and build it again",
                    requirement(API_VERSION)
                ),
            ));
        }
        let module = abi_stable::library::lib_header_from_path(library)
            .and_then(|header| header.init_root_module::<PluginModuleRef>())
            .map_err(|e| (StartFailure::Load, short_library_error(&e.to_string())))?;
        let instance = match (module.new())(RStr::from_str(params)) {
            RResult::ROk(instance) => instance,
            RResult::RErr(message) => return Err((StartFailure::Init, message.into_string())),
        };
        let combines = (module.combines())(instance);
        let line_numbers = (module.line_numbers())();
        Ok(Plugin { module, instance, api_version: module.api_version().to_string(), combines, line_numbers })
    }

    /// Runs one call and sends its responses: one, or one per chunk of a batch as each is
    /// done (so the supervisor's per-chunk timeout and crash attribution see how far it got).
    fn serve(&self, request: Request, output: &Mutex<BufWriter<File>>, mark: Option<&[u8]>) -> io::Result<()> {
        match request {
            Request::RunBatch { call, chunks } => {
                for chunk in chunks {
                    let outcome = self.run(&chunk);
                    end_call(mark);
                    send(output, &answer(call, outcome))?;
                }
                Ok(())
            }
            request => {
                let response = self.call(request);
                end_call(mark);
                send(output, &response)
            }
        }
    }

    /// Runs one call and turns its outcome into the response.
    fn call(&self, request: Request) -> Response {
        let (call, outcome) = match request {
            Request::Run { call, chunk } => (call, self.run(&chunk)),
            Request::RunBatch { call, .. } => {
                return Response::Failed { call, message: "a batch answers chunk by chunk".to_owned() };
            }
            Request::Combine { call, partials } => {
                let slices: Vec<RSlice<'_, u8>> = partials.iter().map(|p| RSlice::from_slice(p)).collect();
                let outcome = (self.module.combine())(self.instance, RSlice::from_slice(&slices));
                (call, self.failure(outcome.map(|bytes| Bytes::from(bytes.into_vec()))))
            }
            Request::Aggregate { call, .. } | Request::AggregateStaged { call, .. } => {
                return Response::Failed { call, message: "an aggregate's partials are read one at a time".to_owned() };
            }
            Request::Init { .. } => return Response::Failed { call: 0, message: "init sent twice".to_owned() },
        };
        answer(call, outcome)
    }

    /// Runs an aggregate of `count` partials, which come from `partials` in batches, and
    /// sends its output as pieces as the plugin writes it, then `Done` (or the failure).
    ///
    /// A plugin built against API 0.1.2 or later takes each partial as it comes, freeing its
    /// bytes once decoded, and writes its JSON straight into pieces on the pipe: the executor
    /// holds a batch or two of encoded partials (up to 1 MiB each, or one larger
    /// partial) and a piece beside the plugin's own values. From 0.1.3 on it is told the
    /// input's file count (`aggregate_into`), and a plugin that streams its output holds one
    /// decoded partial at a time. An older plugin gets them all at once and answers the JSON
    /// whole, as before.
    fn aggregate_streamed(
        &self,
        work: AggregateWork,
        output: &Mutex<BufWriter<File>>,
        mark: Option<&[u8]>,
    ) -> io::Result<()> {
        let AggregateWork { call, input_files, count, partials } = work;
        let Some(aggregate) = self.module.aggregate_streamed() else {
            let partials: Vec<Bytes> = partials.iter().flatten().map(Bytes::from).collect();
            let outcome = if partials.len() as u64 == count {
                let slices: Vec<RSlice<'_, u8>> = partials.iter().map(|p| RSlice::from_slice(p)).collect();
                let outcome = (self.module.aggregate())(self.instance, RSlice::from_slice(&slices));
                self.failure(outcome.map(|json| Bytes::from(json.into_string())))
            } else {
                Err(CallFailure::Panicked(STOPPED_COMING.to_owned()))
            };
            end_call(mark);
            drop(partials);
            return match outcome {
                Ok(json) => send_pieces(output, call, json),
                Err(failure) => send(output, &answer(call, Err(failure))),
            };
        };
        let mut source = Source { partials, batch: Vec::new().into_iter(), left: count, stopped: false };
        let mut sink = Sink { output, call, error: None };
        // SAFETY: `source` and `sink` outlive the call, which uses them on this thread only.
        let outcome = unsafe {
            let partials = PartialSource::new(count, erase(&mut source), Source::next);
            let out = OutputSink::new(erase(&mut sink), Sink::write);
            match self.module.aggregate_into() {
                Some(aggregate_into) => aggregate_into(self.instance, input_files, partials, out),
                None => aggregate(self.instance, partials, out),
            }
        };
        end_call(mark);
        if let Some(e) = sink.error {
            // The pipe to the supervisor broke: nothing more can be said.
            return Err(e);
        }
        let outcome = if source.stopped {
            Err(CallFailure::Panicked(STOPPED_COMING.to_owned()))
        } else {
            self.failure(outcome.map(|()| Bytes::new()))
        };
        send(output, &answer(call, outcome))
    }

    fn run(&self, chunk: &ChunkText) -> Result<Bytes, CallFailure> {
        // The supervisor cut the chunk from validated UTF-8, but a plugin must never see
        // invalid text whatever sent it; checking costs little beside the plugin's own scan.
        let text = std::str::from_utf8(&chunk.text)
            .map_err(|e| CallFailure::Panicked(format!("chunk is not valid UTF-8: {e}")))?;
        let (text, file) = (RStr::from_str(text), RStr::from_str(&chunk.file));
        let outcome = (self.module.run())(self.instance, text, file, chunk.first_line);
        self.failure(outcome.map(|bytes| Bytes::from(bytes.into_vec())))
    }

    /// Sorts a call's error, on the thread that made the call, into a panic or the plugin's
    /// own `Err` (which plugins built against API 0.1.0 cannot tell apart: taken for panics).
    fn failure(&self, outcome: RResult<Bytes, abi_stable::std_types::RString>) -> Result<Bytes, CallFailure> {
        outcome.into_result().map_err(|message| {
            let message = message.into_string();
            match self.module.last_failure_panicked() {
                Some(panicked) if !panicked() => CallFailure::Refused(message),
                _ => CallFailure::Panicked(message),
            }
        })
    }
}

/// How a call failed.
enum CallFailure {
    /// A panic caught in the plugin (or an error of the call itself): worth another try.
    Panicked(String),
    /// The plugin returned `Err`: its decision.
    Refused(String),
}

/// The response to a call with this outcome.
fn answer(call: u64, outcome: Result<Bytes, CallFailure>) -> Response {
    match outcome {
        Ok(bytes) => Response::Done { call, bytes },
        Err(CallFailure::Panicked(message)) => Response::Failed { call, message },
        Err(CallFailure::Refused(message)) => Response::Refused { call, message },
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        (self.module.drop())(self.instance);
    }
}

/// Reads the plain C version symbol that `export_plugin!` exports, before any abi_stable
/// check, so that a plugin built against another API gets a one-line answer.
fn read_api_version(library: &Path) -> Result<String, String> {
    // SAFETY: loading runs the library's initialisers; it is a plugin the user asked us to
    // run, in a process that exists to contain it.
    let lib = unsafe { libloading::Library::new(library) }
        .map_err(|e| format!("cannot load plugin library {}: {e}", library.display()))?;
    let symbol = VERSION_SYMBOL.as_bytes();
    // SAFETY: `export_plugin!` defines this symbol with exactly this signature.
    let version = unsafe {
        let get: libloading::Symbol<'_, unsafe extern "C" fn() -> *const std::ffi::c_char> =
            lib.get(symbol).map_err(|_| {
                format!("{} is not a kiln plugin: it does not export {VERSION_SYMBOL} (call kiln_plugin_api::export_plugin!)", library.display())
            })?;
        let ptr = get();
        if ptr.is_null() {
            return Err(format!("{} returned no API version", library.display()));
        }
        CStr::from_ptr(ptr).to_string_lossy().into_owned()
    };
    // Libraries are never unloaded (abi_stable keeps its own handle too); keeping this one
    // open avoids running the library's destructors while the plugin is in use.
    std::mem::forget(lib);
    Ok(version)
}

/// The version requirement that accepts `version` and the versions compatible with it:
/// `"0.1"` for 0.1.1, `"2"` for 2.3.0.
fn requirement(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_owned(),
        _ => version.to_owned(),
    }
}

/// abi_stable explains a layout mismatch in hundreds of lines, the cause in the last few.
fn short_library_error(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.len() <= 6 {
        return lines.join("\n");
    }
    format!("{}\n...\n{}", lines[0], lines[lines.len() - 4..].join("\n"))
}
