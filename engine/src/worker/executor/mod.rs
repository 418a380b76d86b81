//! Running plugin code in executor processes, never in the calling process.
//!
//! An [`Executor`] is a supervised `kiln exec` child that has loaded one plugin library and
//! created one plugin instance with the job's parameters. It serves several calls at once (one
//! thread per slot) over a framed pipe ([`protocol`]); the child side is [`process`].
//!
//! A batch of chunks ([`Executor::run_batch`]) is one call that runs its chunks one after
//! another in one slot, answering each chunk as it is done; each chunk has the whole call
//! timeout, and when the executor ends mid-batch the answers so far are kept and the chunk
//! that was running is known, so one pipe round trip serves many small chunks.
//!
//! Each call has a timeout. A plugin's error or panic fails only its call. A crash (segfault,
//! abort, the kernel's OOM killer) or a timeout ends the process: every call in flight fails
//! with an [`ExecError`] that names what happened, and the caller starts a fresh executor.
//! [`Executor::ending`] tells afterwards what ended it and how many calls went down with it,
//! so that a caller can tell the call that crashed it from the bystanders.
//!
//! A call dropped before its answer (its caller was cancelled) is abandoned; when it was the
//! executor's only call, the process is ended, since plugin code cannot be stopped otherwise.
//! On Linux an executor also dies with the process that started it, so a killed worker leaves
//! no plugin running behind it.

mod calls;
pub mod capture;
mod child;
pub mod process;
pub mod protocol;
mod scratch;
pub mod staged;
pub(crate) mod utf8;

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};

use self::calls::{
    AbandonGuard, Pending, PendingBatch, PendingOutput, Shared, collect_stderr, read_responses, write_request,
    write_requests,
};
use self::capture::{Capture, CapturedOutput};
use self::child::{describe_exit, die_with_parent, limit_address_space, stdout_to_std, wait_status, watch_process};
use self::protocol::{Request, Response, StartFailure};
use self::scratch::PrivateDir;
use self::utf8::Utf8Check;
use crate::rules::deadlines::{DEFAULT_CALL_TIMEOUT, DEFAULT_START_TIMEOUT};
use crate::rules::limits::size;

/// A chunk to run: whole lines of one file, with the file's name as the user gave it and the
/// number of the chunk's first line within that file (0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkText {
    /// The file's name, shared by the chunks of one file.
    pub file: Arc<str>,
    /// The 1-based number of the chunk's first line within its file; 0 when unknown.
    pub first_line: u64,
    /// Whole lines of UTF-8.
    pub text: Bytes,
}

impl ChunkText {
    /// A chunk of `file` starting at line `first_line`.
    pub fn new(file: impl Into<Arc<str>>, first_line: u64, text: Bytes) -> ChunkText {
        ChunkText { file: file.into(), first_line, text }
    }
}

/// The partials an aggregate folds: in memory (run-local), or staged in a file (a worker,
/// which receives them in pieces).
#[derive(Debug)]
pub enum Partials {
    /// Encoded partials, in input order.
    InMemory(Vec<Bytes>),
    /// Encoded partials in a file, in input order.
    Staged(staged::StagedPartials),
}

/// How to start executors.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The `kiln` binary, started as `kiln exec`.
    pub program: PathBuf,
    /// The number of calls the executor runs at once (its threads).
    pub threads: usize,
    /// The longest a single call may take.
    pub call_timeout: Duration,
    /// The longest loading the plugin and creating its instance may take.
    pub start_timeout: Duration,
    /// A limit on the executor's address space in bytes (`RLIMIT_AS`), if any.
    pub memory_limit: Option<u64>,
    /// Whether executors enter the sandbox (`crate::sandbox`) before loading the plugin. Only
    /// `--insecure-no-sandbox` turns it off.
    pub sandbox: bool,
    /// Where each executor's private directory is made (default: the system's temporary
    /// directory). When the caller runs as root, `nobody` must be able to reach it.
    pub scratch_dir: PathBuf,
    /// Where executor starts and crashes are counted (the worker's metrics); by default
    /// counters no registry reads.
    pub counters: ExecutorCounters,
}

/// Executor processes started and crashed, for the worker's metrics.
#[derive(Debug, Clone, Default)]
pub struct ExecutorCounters {
    /// Processes started (each `kiln exec`, whether or not the plugin then loads).
    pub starts: Counter,
    /// Processes that ended by themselves while serving (a crash, an abort, the memory limit),
    /// not stopped on purpose.
    pub crashes: Counter,
}

impl ExecutorConfig {
    /// A configuration with default timeouts and no memory limit.
    pub fn new(program: PathBuf, threads: usize) -> Self {
        ExecutorConfig {
            program,
            threads: threads.max(1),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            start_timeout: DEFAULT_START_TIMEOUT,
            memory_limit: None,
            sandbox: true,
            scratch_dir: std::env::temp_dir(),
            counters: ExecutorCounters::default(),
        }
    }
}

/// Why a call to an executor failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// The executor process could not be started.
    #[error("cannot start the executor {program}: {message}")]
    Spawn { program: String, message: String },
    /// The plugin library could not be loaded.
    #[error("cannot load the plugin: {0}")]
    Load(String),
    /// The plugin was built against an incompatible API version.
    #[error("{0}")]
    Incompatible(String),
    /// The executor could not enter its sandbox.
    #[error("cannot start the executor: {0}")]
    Sandbox(String),
    /// The plugin's `new` refused the job's parameters.
    #[error("the plugin refused its parameters: {0}")]
    Params(String),
    /// The plugin panicked; the executor goes on.
    #[error("{0}")]
    Plugin(String),
    /// The plugin returned `Err` with this message: its decision, which no retry changes.
    #[error("{0}")]
    Refused(String),
    /// The executor process died (crash, abort, killed); every call in flight fails.
    #[error("the executor {reason}{}", stderr_note(.stderr))]
    Crashed { reason: String, stderr: String },
    /// A call took longer than the call timeout; the executor was killed.
    #[error("the plugin did not finish within {} s and its executor was killed", .0.as_secs_f64())]
    Timeout(Duration),
    /// The executor was stopped because another call timed out or it was shut down.
    #[error("the executor was stopped: {0}")]
    Stopped(String),
    /// The aggregate's output is larger than the caller allows; the executor goes on.
    #[error("the result is {} ({bytes} bytes), more than the {} allowed", size(*.bytes), size(*.limit))]
    ResultTooLarge { bytes: u64, limit: u64 },
    /// The aggregate's output could not be written to its file.
    #[error("{0}")]
    Output(String),
}

impl ExecError {
    /// Whether running the same call again (in a fresh executor) might succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ExecError::Plugin(_) | ExecError::Crashed { .. } | ExecError::Timeout(_) | ExecError::Stopped(_))
    }
}

fn stderr_note(stderr: &str) -> String {
    if stderr.trim().is_empty() { String::new() } else { format!("; its last output:\n{}", stderr.trim_end()) }
}

/// What ended an executor, as [`Executor::ending`] tells it.
#[derive(Debug, Clone)]
pub struct Ending {
    /// The first cause: [`ExecError::Crashed`] when the process died by itself,
    /// [`ExecError::Stopped`] when it was ended on purpose (another call timed out, it was
    /// killed, its only call was abandoned).
    pub cause: ExecError,
    /// How many calls were in flight and failed with it (not counting a call that timed out).
    pub calls_lost: usize,
}

/// What a batch of chunks came to ([`Executor::run_batch`]).
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The answers of the chunks that finished, in order: a partial, or the plugin's error.
    pub answers: Vec<Result<Bytes, ExecError>>,
    /// What each answered chunk printed, beside `answers`.
    pub outputs: Vec<CapturedOutput>,
    /// What ended the executor before every chunk was answered; the chunk that was running
    /// then is the first one without an answer.
    pub ended: Option<ExecError>,
    /// What the chunk that was running when the executor ended printed (a panic message of a
    /// plugin built with `panic = "abort"`, say).
    pub ended_output: CapturedOutput,
}

/// A running executor process with one plugin instance.
///
/// Dropping it closes the pipe and kills the process.
pub struct Executor {
    shared: Arc<Shared>,
    requests: mpsc::UnboundedSender<Request>,
    kill: watch::Sender<bool>,
    next_call: AtomicU64,
    call_timeout: Duration,
    combines: bool,
    line_numbers: bool,
    api_version: String,
    /// Becomes true once the process (with all it started) has ended and its private
    /// directory is removed.
    finished: watch::Receiver<bool>,
}

impl Executor {
    /// Starts an executor for the plugin `library`, created with `params`: in a private
    /// directory holding a copy of the library, with a cleared environment, in the sandbox
    /// unless the configuration says otherwise.
    pub async fn start(config: &ExecutorConfig, library: &Path, params: &str) -> Result<Executor, ExecError> {
        let spawn_error = |message: String| ExecError::Spawn { program: config.program.display().to_string(), message };
        let (scratch, library_copy) = {
            let (root, library) = (config.scratch_dir.clone(), library.to_path_buf());
            tokio::task::spawn_blocking(move || PrivateDir::create(&root, &library))
                .await
                .map_err(|e| spawn_error(e.to_string()))?
                .map_err(spawn_error)?
        };
        let mark = capture::Mark::random();
        let (capture, capture_ends) = Capture::new(config.threads, mark.clone())
            .map_err(|e| spawn_error(format!("cannot make its output pipes: {e}")))?;
        let capture_fds: Vec<i32> = capture_ends.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut command = Command::new(&config.program);
        command.arg("exec").arg("--threads").arg(config.threads.to_string());
        let listed: Vec<String> = capture_fds.iter().map(i32::to_string).collect();
        command.arg("--capture-fds").arg(listed.join(",")).arg("--capture-mark").arg(mark.hex());
        capture::inherit(&mut command, capture_fds);
        if config.sandbox {
            command.arg("--sandbox-dir").arg(scratch.path());
        }
        // Nothing of the caller's environment (secrets, keys, paths) reaches the plugin.
        command
            .env_clear()
            .env("TMPDIR", scratch.path())
            .env("HOME", scratch.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(limit) = config.memory_limit {
            limit_address_space(&mut command, limit);
        }
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| ExecError::Spawn { program: config.program.display().to_string(), message: e.to_string() })?;
        config.counters.starts.inc();
        // The child has its copies; once it has ended, the pipes end.
        drop(capture_ends);
        Capture::spawn_reader(&capture).map_err(|e| spawn_error(format!("cannot read its output: {e}")))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ExecError::Spawn {
                program: config.program.display().to_string(),
                message: "its pipes were not set up".to_owned(),
            });
        };
        child::widen_pipe(&stdin);
        child::widen_pipe(&stdout);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            dead: Mutex::new(None),
            calls_lost: AtomicUsize::new(0),
            stderr_tail: Mutex::new(VecDeque::new()),
            crashes: config.counters.crashes.clone(),
            capture,
            slots: Mutex::new(HashMap::new()),
            outputs: Mutex::new(HashMap::new()),
        });
        let stderr_task = tokio::spawn(collect_stderr(stderr, Arc::clone(&shared)));
        let (kill, kill_rx) = watch::channel(false);
        let (status_tx, status_rx) = watch::channel(None);
        let (finished_tx, finished) = watch::channel(false);
        tokio::spawn(watch_process(child, kill_rx, status_tx, config.sandbox, scratch, finished_tx));

        let init = Request::Init { library: library_copy.display().to_string(), params: params.to_owned() };
        let mut stdout = std::io::BufReader::new(stdout_to_std(stdout)?);
        let handshake = async {
            write_request(&mut stdin, &init).await?;
            let reply = tokio::task::spawn_blocking(move || Response::read_from(&mut stdout).map(|r| (r, stdout)))
                .await
                .map_err(std::io::Error::other)??;
            Ok::<_, std::io::Error>(reply)
        };
        let reply = match tokio::time::timeout(config.start_timeout, handshake).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) | Err(_) => {
                let _ = kill.send(true);
                let status = wait_status(status_rx).await;
                return Err(match status {
                    Some(status) => ExecError::Crashed { reason: describe_exit(status), stderr: shared.stderr_tail() },
                    None => ExecError::Timeout(config.start_timeout),
                });
            }
        };
        let (combines, line_numbers, api_version, stdout) = match reply {
            (Some(Response::Ready { api_version, combines, line_numbers }), stdout) => {
                (combines, line_numbers, api_version, stdout)
            }
            (Some(Response::StartFailed { kind, message }), _) => {
                return Err(match kind {
                    // Name the library the caller knows, not its copy.
                    StartFailure::Load => ExecError::Load(
                        message.replace(&library_copy.display().to_string(), &library.display().to_string()),
                    ),
                    StartFailure::Incompatible => ExecError::Incompatible(message),
                    StartFailure::Init => ExecError::Params(message),
                    StartFailure::Sandbox => ExecError::Sandbox(message),
                });
            }
            (other, _) => {
                let _ = kill.send(true);
                let status = wait_status(status_rx).await;
                let reason = match (other, status) {
                    (_, Some(status)) => describe_exit(status),
                    (Some(reply), None) => format!("answered {reply:?} instead of ready"),
                    (None, None) => "closed its output while starting".to_owned(),
                };
                return Err(ExecError::Crashed { reason, stderr: shared.stderr_tail() });
            }
        };

        let (requests, requests_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_requests(stdin, requests_rx));
        let reader_shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || read_responses(stdout, reader_shared, status_rx, stderr_task));

        Ok(Executor {
            shared,
            requests,
            kill,
            next_call: AtomicU64::new(1),
            call_timeout: config.call_timeout,
            combines,
            line_numbers,
            api_version,
            finished,
        })
    }

    /// Whether the plugin implements `combine`.
    pub fn combines(&self) -> bool {
        self.combines
    }

    /// Whether the plugin declares it needs line numbers (`MapReduce::LINE_NUMBERS`).
    pub fn line_numbers(&self) -> bool {
        self.line_numbers
    }

    /// The API version the plugin was built against.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Whether the executor can still take calls.
    pub fn is_alive(&self) -> bool {
        self.shared.dead().is_none()
    }

    /// What ended the executor and how many calls it took down; `None` while it lives.
    pub fn ending(&self) -> Option<Ending> {
        let cause = self.shared.dead()?;
        Some(Ending { cause, calls_lost: self.shared.calls_lost.load(Ordering::Relaxed) })
    }

    /// Runs one chunk; returns the encoded partial.
    pub async fn run(&self, chunk: ChunkText) -> Result<Bytes, ExecError> {
        self.call(|call| Request::Run { call, chunk }).await
    }

    /// Runs chunks one after another in one slot, each with the call
    /// timeout from the answer before it; answers each chunk's partial or plugin error, in
    /// order, up to the first chunk that did not finish because the executor ended (a crash,
    /// or that chunk's own timeout).
    pub async fn run_batch(&self, chunks: Vec<ChunkText>) -> BatchOutcome {
        let expected = chunks.len();
        if expected == 0 {
            return BatchOutcome::default();
        }
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (reply, mut answer) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(error) = self.shared.dead() {
                return BatchOutcome { ended: Some(error), ..BatchOutcome::default() };
            }
            let batch = PendingBatch {
                expected,
                answers: Vec::with_capacity(expected),
                outputs: Vec::with_capacity(expected),
                last_answer: Instant::now(),
                reply,
            };
            pending.insert(call, Pending::Batch(batch));
        }
        if self.requests.send(Request::RunBatch { call, chunks }).is_err() {
            self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&call);
            let error = self.shared.dead().unwrap_or_else(|| ExecError::Stopped("its pipe is closed".to_owned()));
            return BatchOutcome { ended: Some(error), ..BatchOutcome::default() };
        }
        let mut abandon = AbandonGuard { executor: self, call, armed: true };
        let mut deadline = Instant::now() + self.call_timeout;
        let outcome = loop {
            match tokio::time::timeout_at(deadline.into(), &mut answer).await {
                Ok(Ok(outcome)) => break outcome,
                Ok(Err(_)) => {
                    let error = self.shared.dead().unwrap_or_else(|| ExecError::Stopped("it went away".to_owned()));
                    break BatchOutcome { ended: Some(error), ..BatchOutcome::default() };
                }
                Err(_) => {
                    let mut pending = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
                    // Answered meanwhile: the answer is waiting.
                    let Some(Pending::Batch(batch)) = pending.get(&call) else { continue };
                    // Each chunk may take the whole timeout, counted from the answer before it.
                    let due = batch.last_answer + self.call_timeout;
                    if due > Instant::now() {
                        deadline = due;
                        continue;
                    }
                    let (answers, outputs) = match pending.remove(&call) {
                        Some(Pending::Batch(batch)) => (batch.answers, batch.outputs),
                        _ => (Vec::new(), Vec::new()),
                    };
                    drop(pending);
                    let ended_output = self.shared.output_of(call);
                    // As for one call: the plugin stuck in this chunk can only be stopped with its process.
                    let timeout = ExecError::Timeout(self.call_timeout);
                    self.shared.fail_all(ExecError::Stopped(format!("another call timed out: {timeout}")));
                    let _ = self.kill.send(true);
                    break BatchOutcome { answers, outputs, ended: Some(timeout), ended_output };
                }
            }
        };
        abandon.armed = false;
        outcome
    }

    /// Merges the encoded partials of consecutive chunks into one.
    pub async fn combine(&self, partials: Vec<Bytes>) -> Result<Bytes, ExecError> {
        self.call(|call| Request::Combine { call, partials }).await
    }

    /// Folds the encoded partials, in input order, into the output JSON, written to `out` as
    /// it comes (never held whole); answers its length. `input_files` is how many of the
    /// input's files have chunks (a streaming aggregate knows it before its first partial).
    /// An output longer than `limit` bytes is [`ExecError::ResultTooLarge`], with its whole
    /// length (`out` then holds a part of it).
    pub async fn aggregate(
        &self,
        partials: Partials,
        input_files: u64,
        out: std::fs::File,
        limit: u64,
    ) -> Result<u64, ExecError> {
        self.aggregate_with_output(partials, input_files, out, limit).await.0
    }

    /// [`Executor::aggregate`], with what the plugin printed meanwhile.
    pub async fn aggregate_with_output(
        &self,
        partials: Partials,
        input_files: u64,
        out: std::fs::File,
        limit: u64,
    ) -> (Result<u64, ExecError>, CapturedOutput) {
        let (reply, answer) = oneshot::channel();
        let out = std::io::BufWriter::with_capacity(1 << 16, out);
        let entry =
            Pending::Output(PendingOutput { out, written: 0, limit, utf8: Utf8Check::default(), error: None, reply });
        let request = |call| match partials {
            Partials::InMemory(partials) => Request::Aggregate { call, input_files, partials },
            Partials::Staged(partials) => Request::AggregateStaged { call, input_files, partials },
        };
        self.call_with(request, entry, answer).await
    }

    /// Runs one chunk; answers its partial and what it printed.
    pub async fn run_with_output(&self, chunk: ChunkText) -> (Result<Bytes, ExecError>, CapturedOutput) {
        let mut outcome = self.run_batch(vec![chunk]).await;
        match (outcome.answers.pop(), outcome.ended) {
            (Some(answer), _) => (answer, outcome.outputs.pop().unwrap_or_default()),
            (None, Some(error)) => (Err(error), outcome.ended_output),
            (None, None) => (Err(ExecError::Stopped("it answered nothing".to_owned())), outcome.ended_output),
        }
    }

    /// Kills the executor; calls in flight fail with [`ExecError::Stopped`].
    pub fn kill(&self, why: &str) {
        self.shared.fail_all(ExecError::Stopped(why.to_owned()));
        let _ = self.kill.send(true);
    }

    /// Kills the executor and waits until its process, and in the sandbox every process and
    /// thread the plugin started, has ended and its private directory is removed.
    pub async fn shutdown(&self, why: &str) {
        self.kill(why);
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|finished| *finished).await;
    }

    async fn call(&self, request: impl FnOnce(u64) -> Request) -> Result<Bytes, ExecError> {
        let (reply, answer) = oneshot::channel();
        self.call_with(request, Pending::One(reply), answer).await.0
    }

    /// Sends a call whose answer `entry` collects and `answer` receives.
    async fn call_with<T>(
        &self,
        request: impl FnOnce(u64) -> Request,
        entry: Pending,
        answer: oneshot::Receiver<Result<T, ExecError>>,
    ) -> (Result<T, ExecError>, CapturedOutput) {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        {
            // Checked under the pending lock, so a call can't slip in after `fail_all` drained.
            let mut pending = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(error) = self.shared.dead() {
                return (Err(error), CapturedOutput::default());
            }
            pending.insert(call, entry);
        }
        if self.requests.send(request(call)).is_err() {
            self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&call);
            let error = self.shared.dead().unwrap_or_else(|| ExecError::Stopped("its pipe is closed".to_owned()));
            return (Err(error), CapturedOutput::default());
        }
        let mut abandon = AbandonGuard { executor: self, call, armed: true };
        let answer = tokio::time::timeout(self.call_timeout, answer).await;
        abandon.armed = false;
        let result = match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.shared.dead().unwrap_or_else(|| ExecError::Stopped("it went away".to_owned()))),
            Err(_) => {
                // The only way to stop a plugin that does not return is to end its process.
                let timeout = ExecError::Timeout(self.call_timeout);
                self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&call);
                self.shared.fail_all(ExecError::Stopped(format!("another call timed out: {timeout}")));
                let _ = self.kill.send(true);
                Err(timeout)
            }
        };
        (result, self.shared.output_of(call))
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let _ = self.kill.send(true);
    }
}
