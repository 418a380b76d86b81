//! Running one job's calls on this host, the part of a worker below its RPC service: the job's
//! executor, started by the first call and again after it dies, and crash attribution
//! ([`attribution`]), which charges a crash to the chunk that caused it. The worker's service
//! runs every job through a [`JobRunner`], and so does `kiln run-local`, a cluster of one.

mod attribution;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::rpc::{JobId, TaskError};
use crate::rules::limits::size;
use crate::worker::executor::capture::CapturedOutput;
use crate::worker::executor::{ChunkText, Ending, ExecError, Executor, ExecutorConfig, Partials};

/// One job's plugin instance on this host: its executor, started by the first call and again
/// after it dies, until the job ends.
pub struct JobRunner {
    library: PathBuf,
    params: String,
    /// The worker's executor configuration within the job's limits.
    config: ExecutorConfig,
    /// The current executor, started once by whichever call comes first.
    current: Mutex<Arc<OnceCell<Arc<Executor>>>>,
    /// Set when the job ended: no executor starts any more, one that was starting is stopped.
    closed: Mutex<bool>,
}

/// A chunk's answer: its partial or why it failed, and what the plugin printed running it.
#[derive(Debug)]
pub struct ChunkAnswer {
    /// The encoded partial, or why the chunk failed.
    pub result: Result<Bytes, TaskError>,
    /// What the plugin printed while it ran the chunk (for a failed chunk, the last attempt).
    pub output: CapturedOutput,
}

impl ChunkAnswer {
    /// An answer with no output.
    pub(crate) fn silent(result: Result<Bytes, TaskError>) -> ChunkAnswer {
        ChunkAnswer { result, output: CapturedOutput::default() }
    }
}

/// Why an aggregate failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// The result is longer than the caller allows; the caller names its flag.
    #[error("the result is {} ({bytes} bytes), more than the {} allowed", size(*.bytes), size(*.limit))]
    TooLarge { bytes: u64, limit: u64 },
    /// The call failed as any call can.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Why a call finds its job's executor gone.
pub(crate) const JOB_ENDED: &str = "its job ended on this worker";

impl JobRunner {
    /// A runner for the plugin library at `library` with the job's parameters, its executor
    /// started as `config` says on first use.
    pub fn new(config: ExecutorConfig, library: PathBuf, params: String) -> JobRunner {
        JobRunner { library, params, config, current: Mutex::new(Arc::new(OnceCell::new())), closed: Mutex::new(false) }
    }

    /// Runs a batch of the job's chunks, one after another, as one executor call; answers one partial or error per chunk, in order, each
    /// crash charged to the chunk that caused it (see [`attribution`]). `job` names the job in
    /// logs.
    pub async fn run_batch(&self, job: JobId, chunks: Vec<ChunkText>) -> Vec<ChunkAnswer> {
        attribution::run_batch(self, job, chunks).await
    }

    /// Whether the plugin merges partials (`combine`), starting the executor to know.
    pub async fn combines(&self) -> Result<bool, TaskError> {
        Ok(self.executor().await.map_err(start_error)?.combines())
    }

    /// Whether the plugin declares it needs line numbers, starting the executor to know.
    pub async fn line_numbers(&self) -> Result<bool, TaskError> {
        Ok(self.executor().await.map_err(start_error)?.line_numbers())
    }

    /// Merges consecutive partials into one; `None` when the plugin does not combine.
    pub async fn combine(&self, partials: Vec<Bytes>) -> Result<Option<Bytes>, TaskError> {
        let executor = self.executor().await.map_err(start_error)?;
        if !executor.combines() {
            return Ok(None);
        }
        executor.combine(partials).await.map(Some).map_err(|e| ended_call_error(e, &executor))
    }

    /// The job's result from all its partials, in input order, from `input_files` files (those
    /// with chunks), written to `out` as it comes; answers its length, and what the plugin
    /// printed meanwhile. A result longer than `limit` is [`AggregateError::TooLarge`].
    pub async fn aggregate(
        &self,
        partials: Partials,
        input_files: u64,
        out: std::fs::File,
        limit: u64,
    ) -> (Result<u64, AggregateError>, CapturedOutput) {
        let executor = match self.executor().await {
            Ok(executor) => executor,
            Err(error) => return (Err(start_error(error).into()), CapturedOutput::default()),
        };
        let (result, output) = executor.aggregate_with_output(partials, input_files, out, limit).await;
        let result = result.map_err(|error| match error {
            ExecError::ResultTooLarge { bytes, limit } => AggregateError::TooLarge { bytes, limit },
            error => AggregateError::Task(ended_call_error(error, &executor)),
        });
        (result, output)
    }

    /// From now on no executor starts, and one that was starting is stopped ([`JobRunner::close`]
    /// also waits for the current one to end).
    pub fn refuse_new(&self) {
        *lock(&self.closed) = true;
    }

    /// The live executor, starting a fresh one when there is none or the last one died.
    pub async fn executor(&self) -> Result<Arc<Executor>, ExecError> {
        // Twice at most: a fresh executor that is dead at once will not do better a third time.
        for _ in 0..2 {
            self.check_open()?;
            let cell = Arc::clone(&lock(&self.current));
            let executor = cell
                .get_or_try_init(|| async {
                    let executor = Executor::start(&self.config, &self.library, &self.params).await?;
                    Ok::<_, ExecError>(Arc::new(executor))
                })
                .await?;
            // The job may have ended while this executor started: `close` did not see it then.
            if let Err(error) = self.check_open() {
                executor.kill(JOB_ENDED);
                return Err(error);
            }
            if executor.is_alive() {
                return Ok(Arc::clone(executor));
            }
            let mut current = lock(&self.current);
            // Unless another call replaced it already, the next one starts a fresh executor.
            if Arc::ptr_eq(&current, &cell) {
                *current = Arc::new(OnceCell::new());
            }
        }
        Err(ExecError::Crashed { reason: "died as soon as it started".to_owned(), stderr: String::new() })
    }

    /// A fresh executor of the same plugin with one slot, for a call that must run alone.
    pub(crate) async fn start_alone(&self) -> Result<Executor, ExecError> {
        self.check_open()?;
        let config = ExecutorConfig { threads: 1, ..self.config.clone() };
        let executor = Executor::start(&config, &self.library, &self.params).await?;
        // Dropping it stops it, if the job ended meanwhile.
        self.check_open()?;
        Ok(executor)
    }

    /// `Stopped` once the job ended.
    pub(crate) fn check_open(&self) -> Result<(), ExecError> {
        if *lock(&self.closed) { Err(ExecError::Stopped(JOB_ENDED.to_owned())) } else { Ok(()) }
    }

    /// Ends the job's executor for good, and waits until its process (and in the sandbox all
    /// it started) is gone.
    pub async fn close(&self, why: &str) {
        self.refuse_new();
        let executor = lock(&self.current).get().cloned();
        if let Some(executor) = executor {
            executor.shutdown(why).await;
        }
    }
}

/// The answer for an executor that could not start: hopeless when the plugin is at fault.
pub(crate) fn start_error(error: ExecError) -> TaskError {
    match error {
        ExecError::Load(_) | ExecError::Incompatible(_) | ExecError::Params(_) | ExecError::Sandbox(_) => {
            TaskError::Fatal(error.to_string())
        }
        error => TaskError::Crashed(error.to_string()),
    }
}

/// The answer for a failed call to an executor.
fn call_error(error: ExecError) -> TaskError {
    match error {
        ExecError::Plugin(message) => TaskError::Plugin(message),
        // The plugin's own `Err`: the job fails at once with its message.
        ExecError::Refused(message) => TaskError::Fatal(message),
        ExecError::Load(_) | ExecError::Incompatible(_) | ExecError::Params(_) | ExecError::Sandbox(_) => {
            TaskError::Fatal(error.to_string())
        }
        error => TaskError::Crashed(error.to_string()),
    }
}

/// The answer for a failed combine or aggregate: `Interrupted` when its executor was ended on
/// purpose (another call timed out there), which is no fault of this call.
fn ended_call_error(error: ExecError, executor: &Executor) -> TaskError {
    match (&error, executor.ending()) {
        (ExecError::Stopped(_), Some(Ending { cause: ExecError::Stopped(why), .. })) => TaskError::Interrupted(why),
        _ => call_error(error),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
