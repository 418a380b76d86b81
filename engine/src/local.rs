//! `kiln run-local`: a whole job on this machine, with no cluster.
//!
//! The plugin is built (or found in the cache), one executor process is started with one thread
//! per slot, and the input is streamed through the [`Chunker`](crate::chunk::Chunker): at most
//! `processes` chunks run at once and a few more wait, so memory stays bounded whatever the
//! input's size. Partials are kept by chunk index; when the plugin combines, every run of
//! [`combine_group`] consecutive partials is merged as soon as it is complete, so `aggregate`
//! decodes a handful of partials instead of one per chunk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::chunk::{ChunkError, Chunker, InputChunk};
use crate::owner::Owner;
use crate::worker::builder::{BuildError, Builder, BuilderConfig, SourceError, read_source};
use crate::worker::executor::{ExecError, Executor, ExecutorConfig};

/// The fewest consecutive partials merged into one by `combine` while a job runs.
pub const COMBINE_GROUP: usize = 16;

/// How much input a combine group covers at least: merging the partials of a few kilobytes
/// of input costs a call and a store round trip for next to nothing. Sixteen default chunks.
pub const COMBINE_GROUP_BYTES: u64 = 64 << 20;

/// The most partials one combine merges: they travel in one call and sit in the controller's
/// and the executor's memory together.
pub const MAX_COMBINE_GROUP: u64 = 256;

/// How many consecutive chunks of `chunk_size` bytes make one combine group: enough to cover
/// [`COMBINE_GROUP_BYTES`] of input, at least [`COMBINE_GROUP`] and at most
/// [`MAX_COMBINE_GROUP`]; 16 for the default 4 MiB chunks, 256 for chunks of 256 KiB or less.
pub fn combine_group(chunk_size: u64) -> u64 {
    COMBINE_GROUP_BYTES.div_ceil(chunk_size.max(1)).clamp(COMBINE_GROUP as u64, MAX_COMBINE_GROUP)
}

/// What to run, and how.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The plugin: a crate directory, a `.tar.gz` or `.zip` of one, or a single `.rs` file.
    pub plugin: PathBuf,
    /// The input file.
    pub input: PathBuf,
    /// How many chunks run at once.
    pub processes: usize,
    /// The job's parameters, passed to the plugin's `new`.
    pub params: String,
    /// The size at which the input is cut into chunks.
    pub chunk_size: usize,
    /// Where plugins are built and cached.
    pub builder: BuilderConfig,
    /// How executors are started (`threads` is set from `processes`).
    pub executor: ExecutorConfig,
}

/// What a successful run produced.
#[derive(Debug, Clone)]
pub struct LocalReport {
    /// The plugin's output, as JSON.
    pub output: String,
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
    /// The input could not be opened.
    #[error("cannot open the input {path}: {source}")]
    OpenInput { path: PathBuf, source: std::io::Error },
    /// The input could not be read or is not UTF-8.
    #[error(transparent)]
    Input(#[from] ChunkError),
    /// The executor could not start the plugin.
    #[error(transparent)]
    Start(ExecError),
    /// A chunk failed.
    #[error("chunk {index} (lines {first_line}-{last_line}) failed: {error}")]
    Chunk { index: u64, first_line: u64, last_line: u64, error: ExecError },
    /// Merging partials failed.
    #[error("combine failed: {0}")]
    Combine(ExecError),
    /// The final aggregation failed.
    #[error("aggregate failed: {0}")]
    Aggregate(ExecError),
}

/// Builds the plugin and runs it over the input on this machine.
///
/// `progress` receives human-readable lines (cargo's, while it builds).
pub async fn run_local(
    config: &LocalConfig,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<LocalReport, LocalError> {
    if config.executor.sandbox {
        crate::sandbox::probe()?;
    } else {
        tracing::warn!("the plugin runs without a sandbox (--insecure-no-sandbox): it has your rights");
    }
    let started = Instant::now();
    let plugin_path = config.plugin.clone();
    let source = tokio::task::spawn_blocking(move || read_source(&plugin_path))
        .await
        .map_err(|e| LocalError::Start(ExecError::Stopped(format!("reading the plugin panicked: {e}"))))??;
    let builder = Builder::new(
        config.builder.clone().sandboxed_like_executors(&config.executor.program, config.executor.sandbox),
    );
    // The one running `kiln run-local` holds everything on this machine: the key holder.
    let built = builder.build(&Owner::key_holder(), &source, progress).await?;
    let build_time = started.elapsed();

    let started = Instant::now();
    let processes = config.processes.max(1);
    let executor_config = ExecutorConfig { threads: processes, ..config.executor.clone() };
    let mut executor =
        Arc::new(Executor::start(&executor_config, &built.library, &config.params).await.map_err(LocalError::Start)?);

    let file = std::fs::File::open(&config.input)
        .map_err(|source| LocalError::OpenInput { path: config.input.clone(), source })?;
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Result<InputChunk, ChunkError>>(processes);
    let chunk_size = config.chunk_size;
    let reader = tokio::task::spawn_blocking(move || {
        for chunk in Chunker::new(file, chunk_size) {
            if chunks_tx.blocking_send(chunk).is_err() {
                break;
            }
        }
    });

    let group = usize::try_from(combine_group(config.chunk_size as u64)).unwrap_or(COMBINE_GROUP);
    let mut partials = Partials::new(executor.combines(), group);
    let mut tasks: JoinSet<(Work, Result<Bytes, ExecError>)> = JoinSet::new();
    let mut ready: Vec<Work> = Vec::new();
    let mut suspects: Vec<Work> = Vec::new();
    let (mut n_chunks, mut n_lines, mut n_bytes) = (0u64, 0u64, 0u64);
    let mut input_done = false;
    let mut input_error = None;
    let result = loop {
        // While an executor's crash is being sorted out, nothing new starts.
        while suspects.is_empty() && tasks.len() < processes {
            if let Some(work) = ready.pop() {
                spawn_work(&mut tasks, &executor, work);
                continue;
            }
            if input_done {
                break;
            }
            match chunks_rx.recv().await {
                Some(Ok(chunk)) => {
                    n_chunks += 1;
                    n_lines += chunk.n_lines;
                    n_bytes += chunk.text.len() as u64;
                    partials.expect(chunk.index);
                    spawn_work(&mut tasks, &executor, Work::from_chunk(chunk));
                }
                Some(Err(e)) => {
                    input_error = Some(e);
                    break;
                }
                None => input_done = true,
            }
        }
        // A read error is the input's fault: report it rather than the chunks in flight.
        if let Some(e) = input_error.take() {
            break Err(LocalError::Input(e));
        }
        let Some(finished) = tasks.join_next().await else {
            if suspects.is_empty() {
                break Ok(());
            }
            // Every call in the dead executor has come back: find the culprit.
            match isolate(&executor_config, &built.library, &config.params, std::mem::take(&mut suspects)).await {
                Ok((fresh, done)) => {
                    executor = Arc::new(fresh);
                    for (work, partial) in done {
                        ready.extend(accept(&mut partials, work, partial));
                    }
                    continue;
                }
                Err(e) => break Err(e),
            }
        };
        let (work, result) = match finished {
            Ok(finished) => finished,
            Err(e) => break Err(LocalError::Combine(ExecError::Stopped(format!("a task panicked: {e}")))),
        };
        match result {
            Ok(partial) => ready.extend(accept(&mut partials, work, partial)),
            // A crash fails every call in flight in that executor, so it does not say which
            // chunk caused it; all of them are suspects until run alone.
            Err(ExecError::Crashed { .. } | ExecError::Stopped(_)) => suspects.push(work),
            Err(error) => break Err(work.failed(error)),
        }
    };
    if let Err(e) = result {
        executor.shutdown("the job failed").await;
        return Err(e);
    }
    drop(chunks_rx);
    let _ = reader.await;

    let output = match final_partials(&executor, partials.into_ordered(), processes).await {
        Ok(finals) => executor.aggregate(finals).await.map_err(LocalError::Aggregate),
        Err(e) => Err(e),
    };
    // Nothing the plugin started outlives its job: in the sandbox no thread, process or file.
    executor.shutdown("the job ended").await;
    let output = output?;
    Ok(LocalReport {
        output,
        cached_build: built.cached,
        n_chunks,
        n_lines,
        n_bytes,
        build_time,
        run_time: started.elapsed(),
    })
}

/// A unit of work for an executor slot.
enum Work {
    /// Run one chunk.
    Run { index: u64, first_line: u64, last_line: u64, text: Bytes },
    /// Merge a complete group of consecutive partials.
    Combine { group: usize, members: Vec<Bytes> },
}

impl Work {
    fn from_chunk(chunk: InputChunk) -> Self {
        let last_line = chunk.last_line();
        Work::Run {
            index: chunk.index,
            first_line: chunk.first_line,
            last_line,
            text: Bytes::from(chunk.text.into_bytes()),
        }
    }

    async fn perform(&self, executor: &Executor) -> Result<Bytes, ExecError> {
        match self {
            Work::Run { first_line, text, .. } => executor.run(*first_line, text.clone()).await,
            Work::Combine { members, .. } => executor.combine(members.clone()).await,
        }
    }

    fn failed(self, error: ExecError) -> LocalError {
        match self {
            Work::Run { index, first_line, last_line, .. } => LocalError::Chunk { index, first_line, last_line, error },
            Work::Combine { .. } => LocalError::Combine(error),
        }
    }
}

fn spawn_work(tasks: &mut JoinSet<(Work, Result<Bytes, ExecError>)>, executor: &Arc<Executor>, work: Work) {
    let executor = Arc::clone(executor);
    tasks.spawn(async move {
        let result = work.perform(&executor).await;
        (work, result)
    });
}

/// Stores a finished work's partial; returns a combine to run when a group became complete.
fn accept(partials: &mut Partials, work: Work, partial: Bytes) -> Option<Work> {
    match work {
        Work::Run { index, .. } => {
            partials.insert(index, partial).map(|(group, members)| Work::Combine { group, members })
        }
        Work::Combine { group, .. } => {
            partials.combined(group, partial);
            None
        }
    }
}

/// Runs the suspects of a crash one at a time in a fresh executor: the one that crashes alone
/// is the culprit and fails the job with its own line range; the others just complete.
async fn isolate(
    config: &ExecutorConfig,
    library: &std::path::Path,
    params: &str,
    mut suspects: Vec<Work>,
) -> Result<(Executor, Vec<(Work, Bytes)>), LocalError> {
    // In input order, so that of two faulty chunks the first is reported.
    suspects.sort_by_key(|work| match work {
        Work::Run { index, .. } => *index,
        Work::Combine { .. } => u64::MAX,
    });
    let executor = Executor::start(config, library, params).await.map_err(LocalError::Start)?;
    let mut done = Vec::with_capacity(suspects.len());
    for work in suspects {
        match work.perform(&executor).await {
            Ok(partial) => done.push((work, partial)),
            Err(error) => {
                executor.shutdown("the job failed").await;
                return Err(work.failed(error));
            }
        }
    }
    Ok((executor, done))
}

/// The partials of a job, in chunk order, with groups of consecutive partials merged as they
/// complete when the plugin combines.
struct Partials {
    combines: bool,
    /// Chunks per group.
    group: usize,
    by_chunk: Vec<Option<Bytes>>,
    /// Per group: how many of its partials have arrived, and its merged partial once done.
    groups: Vec<Group>,
}

#[derive(Default)]
struct Group {
    arrived: usize,
    merged: Option<Bytes>,
}

impl Partials {
    fn new(combines: bool, group: usize) -> Self {
        Partials { combines, group: group.max(1), by_chunk: Vec::new(), groups: Vec::new() }
    }

    /// Makes room for chunk `index`, which is now running.
    fn expect(&mut self, index: u64) {
        let index = index as usize;
        if self.by_chunk.len() <= index {
            self.by_chunk.resize(index + 1, None);
            self.groups.resize_with(index / self.group + 1, Group::default);
        }
    }

    /// Stores a chunk's partial; returns a complete group's partials to combine, if any.
    fn insert(&mut self, index: u64, partial: Bytes) -> Option<(usize, Vec<Bytes>)> {
        let index = index as usize;
        self.by_chunk[index] = Some(partial);
        let group = index / self.group;
        self.groups[group].arrived += 1;
        if !self.combines || self.groups[group].arrived < self.group {
            return None;
        }
        let members = self.by_chunk[group * self.group..(group + 1) * self.group]
            .iter_mut()
            .map(|p| p.take().unwrap_or_default())
            .collect();
        Some((group, members))
    }

    fn combined(&mut self, group: usize, merged: Bytes) {
        self.groups[group].merged = Some(merged);
    }

    /// All partials in input order: merged groups as one partial each.
    fn into_ordered(self) -> Vec<Bytes> {
        let mut ordered = Vec::new();
        for (group, chunk_partials) in self.groups.into_iter().zip(self.by_chunk.chunks(self.group)) {
            match group.merged {
                Some(merged) => ordered.push(merged),
                None => ordered.extend(chunk_partials.iter().map(|p| p.clone().unwrap_or_default())),
            }
        }
        ordered
    }
}

/// Merges the remaining partials into at most `slots` (in parallel, keeping their order) when
/// the plugin combines and there are more than that, so `aggregate` has little left to decode.
async fn final_partials(
    executor: &Arc<Executor>,
    partials: Vec<Bytes>,
    slots: usize,
) -> Result<Vec<Bytes>, LocalError> {
    if !executor.combines() || partials.len() <= slots {
        return Ok(partials);
    }
    let per_batch = partials.len().div_ceil(slots);
    let mut batches: JoinSet<(usize, Result<Bytes, ExecError>)> = JoinSet::new();
    let mut rest = partials.into_iter();
    let mut n_batches = 0;
    loop {
        let batch: Vec<Bytes> = rest.by_ref().take(per_batch).collect();
        if batch.is_empty() {
            break;
        }
        let executor = Arc::clone(executor);
        let position = n_batches;
        batches.spawn(async move { (position, executor.combine(batch).await) });
        n_batches += 1;
    }
    let mut merged = vec![Bytes::new(); n_batches];
    while let Some(done) = batches.join_next().await {
        let (position, result) = done.map_err(|e| LocalError::Combine(ExecError::Stopped(e.to_string())))?;
        merged[position] = result.map_err(LocalError::Combine)?;
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_groups_cover_64_mib_of_input_within_bounds() {
        assert_eq!(combine_group(4 << 20), 16, "the default chunks, as before");
        assert_eq!(combine_group(1 << 30), 16, "never fewer than 16");
        assert_eq!(combine_group(1 << 20), 64);
        assert_eq!(combine_group(8), MAX_COMBINE_GROUP, "tiny chunks, capped");
        assert_eq!(combine_group(0), MAX_COMBINE_GROUP);
    }
}
