//! `kiln run-local`: a whole job on this machine, a cluster of one.
//!
//! It runs through the same parts as a cluster, in process and without RPC: the plugin is
//! built by the worker's [`Builder`], its calls go through the worker's [`JobRunner`] (one
//! executor for the job with one thread per slot, restarted when it dies, each crash charged
//! to the chunk that caused it), and the job's [`rules`](crate::rules) cut the input, size the
//! batches, group partials for `combine` and decide what a failure costs.
//!
//! The input, an ordered list of files (compressed ones decompressed as they are read), is
//! streamed file after file through the [`Chunker`]: a bounded queue of chunks waits for the
//! slots, so memory stays bounded whatever the input's size. Partials are kept by chunk index;
//! when the plugin combines, every run of [`combine_group`] consecutive partials is merged as
//! soon as it is complete, so `aggregate` decodes a handful of partials instead of one per
//! chunk.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::input::{self, InputError, InputFile};
use crate::owner::Owner;
use crate::plugin_source::{SourceError, read_source};
use crate::rpc::TaskError;
use crate::rpc::logs::{JobLogs, PluginOutput};
use crate::rules::batch::{MAX_BATCH_BYTES, MAX_BATCH_CHUNKS, Pace, batch_limit};
use crate::rules::chunk::{ChunkError, Chunker, InputChunk, fitted_chunk_size};
use crate::rules::combine::combine_group;
use crate::rules::retry;
use crate::worker::builder::{BuildError, BuildEvent, Builder, BuilderConfig};
use crate::worker::executor::{ChunkText, ExecutorConfig};
use crate::worker::runner::{AggregateError, ChunkAnswer, JobRunner};

mod partials;

use partials::{Partials, final_partials};

/// The job id run-local's logs carry: it has one job.
const LOCAL_JOB: u64 = 0;

/// What to run, and how.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The plugin: a crate directory, a `.tar.gz` or `.zip` of one, or a single `.rs` file.
    pub plugin: PathBuf,
    /// The input's sources, in order: files, directories and glob patterns on this machine.
    pub inputs: Vec<String>,
    /// How many chunks run at once.
    pub processes: usize,
    /// The job's parameters, passed to the plugin's `new`.
    pub params: String,
    /// The size at which the input is cut into chunks; `None` sizes them to the input and the
    /// slots ([`fitted_chunk_size`]).
    pub chunk_size: Option<usize>,
    /// Where plugins are built and cached.
    pub builder: BuilderConfig,
    /// How executors are started (`threads` is set from `processes`).
    pub executor: ExecutorConfig,
    /// Attempts at a chunk before the run fails (0: the cluster's default,
    /// [`retry::DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: u32,
    /// The largest output the run may have (`--max-result-size`; default
    /// [`DEFAULT_MAX_RESULT_BYTES`](crate::rules::limits::DEFAULT_MAX_RESULT_BYTES)).
    pub max_result_bytes: u64,
    /// The longest line the input may have (`--max-line-size`).
    pub max_line_bytes: usize,
}

/// What a successful run produced.
#[derive(Debug)]
pub struct LocalReport {
    /// The plugin's output, as JSON, in an unnamed temporary file (gone once closed), read from
    /// its start: results of any size, never held whole in memory.
    pub output: std::fs::File,
    /// The output's length in bytes.
    pub output_bytes: u64,
    /// Whether the plugin came from the build cache.
    pub cached_build: bool,
    /// The number of chunks the input was cut into.
    pub n_chunks: u64,
    /// The number of lines in the input.
    pub n_lines: u64,
    /// The size of the input in bytes.
    pub n_bytes: u64,
    /// How long building (or finding) the plugin took.
    pub build_time: Duration,
    /// How long running the chunks and aggregating took.
    pub run_time: Duration,
    /// What the plugin printed, per chunk and for the aggregate.
    pub plugin_output: JobLogs,
}

/// Why a local run failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The plugin's source could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The plugin did not build.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The host cannot sandbox plugins and the configuration did not allow running unconfined.
    #[error("this host cannot sandbox plugins: {0}: {hint}", hint = crate::sandbox::REFUSAL_HINT)]
    NoSandbox(#[from] crate::sandbox::Unavailable),
    /// A limit of the configuration cannot work.
    #[error(transparent)]
    Limit(#[from] crate::rules::limits::LimitError),
    /// The input's sources could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A file of the input could not be read, or is not UTF-8.
    #[error("input file {file}: {source}")]
    File {
        /// The file's name as the user gave it.
        file: String,
        #[source]
        source: ChunkError,
    },
    /// The executor could not start the plugin.
    #[error(transparent)]
    Start(TaskError),
    /// A chunk failed (on its last attempt).
    #[error(
        "chunk {index} ({file} lines {first_line}-{last_line}) failed after {attempts} attempt{}{}",
        plural(.attempts),
        crate::errors::colon_block(&.error.to_string())
    )]
    Chunk { index: u64, file: String, first_line: u64, last_line: u64, attempts: u32, error: TaskError },
    /// Merging partials failed.
    #[error("combine failed: {0}")]
    Combine(TaskError),
    /// The final aggregation failed.
    #[error("aggregate failed: {0}")]
    Aggregate(TaskError),
    /// The output is larger than the configuration allows.
    #[error("{0}: raise --max-result-size")]
    ResultTooLarge(AggregateError),
    /// The output could not be kept.
    #[error("cannot keep the output in {}: {source}: free space there or set TMPDIR", .dir.display())]
    Output { dir: PathBuf, source: std::io::Error },
    /// A task of the run itself panicked (a bug in Kiln).
    #[error("run-local failed internally: {0}")]
    Internal(String),
}

/// Builds the plugin and runs it over the input on this machine.
///
/// `progress` receives human-readable lines (cargo's, while it builds).
pub async fn run_local(
    config: &LocalConfig,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<LocalReport, LocalError> {
    if let Some(limit) = config.executor.memory_limit {
        crate::rules::limits::check_memory_limit(limit)?;
    }
    if config.executor.sandbox {
        crate::sandbox::probe()?;
    } else {
        tracing::warn!("the plugin runs without a sandbox (--insecure-no-sandbox): it has your rights");
    }
    let started = Instant::now();
    let plugin_path = config.plugin.clone();
    let source = tokio::task::spawn_blocking(move || read_source(&plugin_path))
        .await
        .map_err(|e| LocalError::Internal(format!("reading the plugin panicked: {e}")))??;
    let builder = Builder::new(
        config.builder.clone().sandboxed_like_executors(&config.executor.program, config.executor.sandbox),
    );
    // The one running `kiln run-local` holds everything on this machine: the key holder.
    let lines = |event: BuildEvent<'_>| {
        if let BuildEvent::Line(line) = event {
            progress(line);
        }
    };
    let built = builder.build(&Owner::key_holder(), &source, &lines).await?;
    let build_time = started.elapsed();

    let started = Instant::now();
    let slots = config.processes.max(1);
    let executor = ExecutorConfig { threads: slots, ..config.executor.clone() };
    let runner = Arc::new(JobRunner::new(executor, built.library.clone(), config.params.clone()));
    let result = run_chunks(config, slots, &runner).await;
    // Nothing the plugin started outlives its job: in the sandbox no thread, process or file.
    runner.close(if result.is_ok() { "the job ended" } else { "the job failed" }).await;
    let ((output, output_bytes), counts, plugin_output) = result?;
    Ok(LocalReport {
        output,
        output_bytes,
        cached_build: built.cached,
        n_chunks: counts.chunks,
        n_lines: counts.lines,
        n_bytes: counts.bytes,
        build_time,
        run_time: started.elapsed(),
        plugin_output,
    })
}

/// How much of the input was run.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    chunks: u64,
    lines: u64,
    bytes: u64,
    /// The files that have chunks (an empty file has none), told to `aggregate`.
    files: u64,
    /// The file of the last chunk queued: chunks come in file order.
    last_file: Option<u32>,
}

/// Streams the input through the runner's slots and aggregates the partials.
async fn run_chunks(
    config: &LocalConfig,
    slots: usize,
    runner: &Arc<JobRunner>,
) -> Result<((std::fs::File, u64), Counts, JobLogs), LocalError> {
    // Started before the input is read, so a plugin that cannot start fails the run at once.
    let combines = runner.combines().await.map_err(LocalError::Start)?;
    let sources = config.inputs.clone();
    let (files, input_bytes) = tokio::task::spawn_blocking(move || {
        let files = input::expand(&sources)?;
        // Sizes on disk, as listed: a file that cannot be read fails when it is opened.
        let bytes = files.iter().filter_map(|file| std::fs::metadata(&file.path).ok()).map(|meta| meta.len()).sum();
        Ok::<_, InputError>((files, bytes))
    })
    .await
    .map_err(|e| LocalError::Internal(format!("listing the input panicked: {e}")))??;
    let chunk_size =
        config.chunk_size.unwrap_or_else(|| fitted_chunk_size(input_bytes, slots, config.executor.memory_limit));
    tracing::debug!(input_bytes, chunk_size, "cutting the input");
    let names: Vec<Arc<str>> = files.iter().map(|file| Arc::from(file.name.as_str())).collect();
    let (chunks_tx, chunks_rx) = mpsc::channel::<Result<InputChunk, LocalError>>(slots);
    let max_line = config.max_line_bytes;
    let reader = tokio::task::spawn_blocking(move || read_files(&files, chunk_size, max_line, &chunks_tx));
    let group = combine_group(chunk_size as u64);
    let mut run = Run {
        runner: Arc::clone(runner),
        slots,
        max_attempts: retry::max_attempts(config.max_attempts),
        capacity: queue_capacity(chunk_size, slots),
        queue: VecDeque::new(),
        combines: VecDeque::new(),
        tasks: JoinSet::new(),
        partials: Partials::new(combines, group),
        pace: Pace::default(),
        counts: Counts::default(),
        names,
        logs: JobLogs::default(),
    };
    let ran = run.drive(chunks_rx).await;
    drop(run.tasks);
    let _ = reader.await;
    ran?;
    let finals = final_partials(runner, run.partials.into_ordered(), slots).await?;
    let dir = std::env::temp_dir();
    let output_error = |source| LocalError::Output { dir: dir.clone(), source };
    let mut output = tempfile::tempfile_in(&dir).map_err(output_error)?;
    let written = output.try_clone().map_err(output_error)?;
    let finals = crate::worker::executor::Partials::InMemory(finals);
    let (bytes, printed) = runner.aggregate(finals, run.counts.files, written, config.max_result_bytes).await;
    run.logs.add(PluginOutput {
        chunk: None,
        file: String::new(),
        first_line: 0,
        last_line: 0,
        stdout: printed.stdout,
        stderr: printed.stderr,
        cut: printed.cut,
    });
    let bytes = bytes.map_err(|error| match error {
        error @ AggregateError::TooLarge { .. } => LocalError::ResultTooLarge(error),
        AggregateError::Task(error) => LocalError::Aggregate(error),
    })?;
    std::io::Seek::rewind(&mut output).map_err(output_error)?;
    Ok(((output, bytes), run.counts, run.logs))
}

/// Reads the files one after another, decompressed, and sends their chunks in order (numbered
/// across the files, lines numbered within each); stops at the first error or when the
/// receiver is gone. Blocking.
fn read_files(
    files: &[InputFile],
    chunk_size: usize,
    max_line: usize,
    chunks: &mpsc::Sender<Result<InputChunk, LocalError>>,
) {
    let mut next_index = 0;
    for (position, file) in files.iter().enumerate() {
        let file_error = |source: ChunkError| LocalError::File { file: file.name.clone(), source };
        let opened = std::fs::File::open(&file.path).and_then(input::decode::decoded);
        let reader = match opened {
            Ok((_, reader)) => reader,
            Err(e) => {
                let _ = chunks.blocking_send(Err(file_error(ChunkError::Read(e))));
                return;
            }
        };
        let file_number = u32::try_from(position).unwrap_or(u32::MAX);
        for chunk in Chunker::for_file(reader, chunk_size, file_number, next_index).with_max_line(max_line) {
            let chunk = chunk.map_err(file_error);
            let failed = chunk.is_err();
            if let Ok(chunk) = &chunk {
                next_index = chunk.index + 1;
            }
            if chunks.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    }
}

/// How many chunks wait for a slot: enough bytes for two full batches per slot, so that small
/// chunks can travel in batches (two default chunks per slot), at least one chunk per slot and
/// at most two full batches of [`MAX_BATCH_CHUNKS`] per slot. Chunks larger than a batch wait
/// one per slot: each runs for a while, the reader's channel holds as many more, and every
/// chunk waiting is memory (see ARCHITECTURE.md, "run-local sizes its chunks").
fn queue_capacity(chunk_size: usize, slots: usize) -> usize {
    let by_bytes = usize::try_from(2 * slots as u64 * MAX_BATCH_BYTES / chunk_size.max(1) as u64).unwrap_or(usize::MAX);
    by_bytes.clamp(slots, 2 * slots * MAX_BATCH_CHUNKS)
}

/// A chunk waiting for a slot.
struct Queued {
    index: u64,
    chunk: ChunkText,
    last_line: u64,
    /// Attempts that failed so far.
    failures: u32,
    /// The message of the last attempt that panicked or crashed, to tell a fault that repeats.
    last_fault: Option<String>,
}

impl Queued {
    fn failed(self, error: TaskError) -> LocalError {
        LocalError::Chunk {
            index: self.index,
            file: self.chunk.file.to_string(),
            first_line: self.chunk.first_line,
            last_line: self.last_line,
            attempts: self.failures,
            error,
        }
    }
}

fn plural(n: &u32) -> &'static str {
    if *n == 1 { "" } else { "s" }
}

/// What a slot finished.
enum Done {
    /// A batch of chunks, with one result per chunk, after `took`.
    Batch { chunks: Vec<Queued>, took: Duration, results: Vec<ChunkAnswer> },
    /// The combine of a complete group.
    Combine { group: usize, members: Vec<Bytes>, result: Result<Option<Bytes>, TaskError> },
}

/// A run in progress: the chunks waiting, the calls in flight, the partials.
struct Run {
    runner: Arc<JobRunner>,
    slots: usize,
    max_attempts: u32,
    /// How many chunks may wait in `queue` ([`queue_capacity`]).
    capacity: usize,
    /// Chunks waiting for a slot, in input order; retries go first.
    queue: VecDeque<Queued>,
    /// Complete groups waiting to be combined.
    combines: VecDeque<(usize, Vec<Bytes>)>,
    tasks: JoinSet<Done>,
    partials: Partials,
    pace: Pace,
    counts: Counts,
    /// The names of the input's files, by position.
    names: Vec<Arc<str>>,
    /// What the plugin printed running the chunks that succeeded.
    logs: JobLogs,
}

impl Run {
    /// Runs every chunk of the input, combining complete groups as they finish.
    async fn drive(&mut self, mut input: mpsc::Receiver<Result<InputChunk, LocalError>>) -> Result<(), LocalError> {
        let mut input_done = false;
        loop {
            while !input_done && self.queue.len() < self.capacity {
                match input.try_recv() {
                    Ok(chunk) => self.enqueue(chunk?),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => input_done = true,
                }
            }
            self.start_calls();
            if self.tasks.is_empty() {
                if input_done && self.queue.is_empty() && self.combines.is_empty() {
                    return Ok(());
                }
                match input.recv().await {
                    Some(chunk) => self.enqueue(chunk?),
                    None => input_done = true,
                }
                continue;
            }
            tokio::select! {
                biased;
                done = self.tasks.join_next() => match done {
                    Some(Ok(done)) => self.finished(done)?,
                    Some(Err(e)) => return Err(LocalError::Internal(format!("a call's task panicked: {e}"))),
                    None => {}
                },
                chunk = input.recv(), if !input_done && self.queue.len() < self.capacity => match chunk {
                    Some(chunk) => self.enqueue(chunk?),
                    None => input_done = true,
                },
            }
        }
    }

    fn enqueue(&mut self, chunk: InputChunk) {
        self.counts.chunks += 1;
        self.counts.lines += chunk.n_lines;
        self.counts.bytes += chunk.text.len() as u64;
        if self.counts.last_file != Some(chunk.file) {
            self.counts.files += 1;
            self.counts.last_file = Some(chunk.file);
        }
        self.partials.expect(chunk.index);
        let last_line = chunk.last_line();
        let file = self.names.get(chunk.file as usize).cloned().unwrap_or_else(|| Arc::from(""));
        self.queue.push_back(Queued {
            index: chunk.index,
            chunk: ChunkText::new(file, chunk.first_line, Bytes::from(chunk.text.into_bytes())),
            last_line,
            failures: 0,
            last_fault: None,
        });
    }

    /// Fills the free slots: complete groups' combines first, then batches of queued chunks
    /// sized by the job's rules ([`batch_limit`]).
    fn start_calls(&mut self) {
        while self.tasks.len() < self.slots {
            if let Some((group, members)) = self.combines.pop_front() {
                let runner = Arc::clone(&self.runner);
                self.tasks.spawn(async move {
                    let result = runner.combine(members.clone()).await;
                    Done::Combine { group, members, result }
                });
                continue;
            }
            let Some(first) = self.queue.pop_front() else { break };
            let mut batch = vec![first];
            // A chunk that failed before runs alone.
            if batch[0].failures == 0 {
                let limit = batch_limit(self.queue.len() + 1, self.pace, self.slots as u32);
                let mut bytes = batch[0].chunk.text.len() as u64;
                while batch.len() < limit {
                    match self.queue.front() {
                        Some(next) if next.failures == 0 && bytes + next.chunk.text.len() as u64 <= MAX_BATCH_BYTES => {
                            bytes += next.chunk.text.len() as u64;
                            batch.extend(self.queue.pop_front());
                        }
                        _ => break,
                    }
                }
            }
            let runner = Arc::clone(&self.runner);
            self.tasks.spawn(async move {
                let inputs = batch.iter().map(|queued| queued.chunk.clone()).collect();
                let started = Instant::now();
                let results = runner.run_batch(LOCAL_JOB, inputs).await;
                Done::Batch { chunks: batch, took: started.elapsed(), results }
            });
        }
    }

    /// Takes in what a slot finished: partials are kept, failures cost an attempt as in a
    /// cluster (an interruption costs none; a plugin that cannot start fails the run at once).
    fn finished(&mut self, done: Done) -> Result<(), LocalError> {
        match done {
            Done::Batch { chunks, took, results } => {
                self.pace.record_call(took, chunks.len());
                for (mut chunk, ChunkAnswer { result, output }) in chunks.into_iter().zip(results) {
                    match result {
                        Ok(partial) => {
                            self.logs.add(PluginOutput {
                                chunk: Some(chunk.index),
                                file: chunk.chunk.file.to_string(),
                                first_line: chunk.chunk.first_line,
                                last_line: chunk.last_line,
                                stdout: output.stdout,
                                stderr: output.stderr,
                                cut: output.cut,
                            });
                            if let Some(group) = self.partials.insert(chunk.index, partial) {
                                self.combines.push_back(group);
                            }
                        }
                        Err(TaskError::Interrupted(_)) => self.queue.push_front(chunk),
                        Err(error @ TaskError::Fatal(_)) => {
                            chunk.failures += 1;
                            return Err(chunk.failed(error));
                        }
                        Err(error) => {
                            chunk.failures += 1;
                            let fault = matches!(error, TaskError::Plugin(_) | TaskError::Crashed(_));
                            let message = error.to_string();
                            let repeated = fault && chunk.last_fault.as_deref() == Some(message.as_str());
                            if fault {
                                chunk.last_fault = Some(message);
                            }
                            if retry::gives_up(chunk.failures, self.max_attempts, repeated) {
                                return Err(chunk.failed(error));
                            }
                            tracing::warn!(chunk = chunk.index, %error, "chunk failed: trying it again");
                            self.queue.push_front(chunk);
                        }
                    }
                }
            }
            Done::Combine { group, members, result } => match result {
                Ok(Some(merged)) => self.partials.combined(group, merged),
                Ok(None) => return Err(LocalError::Internal("the plugin stopped combining mid-run".to_owned())),
                Err(TaskError::Interrupted(_)) => self.combines.push_front((group, members)),
                Err(error) => return Err(LocalError::Combine(error)),
            },
        }
        Ok(())
    }
}
