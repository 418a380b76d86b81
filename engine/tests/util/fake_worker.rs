//! A fake worker for the controller's tests: it serves the real `Worker` service and its
//! `run_chunks` counts words, with knobs for delays, failures and combining, and records what
//! it was asked, so that scheduling is tested without building plugins. Included with
//! `#[path = "util/fake_worker.rs"] mod fake_worker;` beside `#[path = "util/fake_cluster.rs"]
//! mod fake_cluster;`, which starts the controller and registers these workers.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::rpc::logs::{Aggregated, ChunkResults};
use kiln_engine::rpc::{ChunkInput, JobId, JobPlugin, RpcError, Secret, TaskError, Worker};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tarpc::context::Context;
use tokio::task::JoinSet;

/// A generous bound for things that should take milliseconds.
pub const SOON: Duration = Duration::from_secs(2);

/// A partial: the lines it covers (to check that partials arrive in input order) and counts.
#[derive(Serialize, Deserialize, Default)]
struct Partial {
    first_line: u64,
    last_line: u64,
    counts: BTreeMap<String, u64>,
}

/// How a fake worker behaves.
#[derive(Default)]
pub struct Knobs {
    /// How long each chunk takes.
    pub delay: Duration,
    /// Whether `combine` merges (else it answers `None`, as a plugin without combine).
    pub combines: bool,
    /// Whether `prepare` fails the build.
    pub build_error: Option<String>,
}

/// What a fake worker was asked to do.
#[derive(Default)]
pub struct Record {
    /// Calls in flight (each carries a batch of chunks), and the most at once.
    pub in_flight: AtomicU32,
    pub max_in_flight: AtomicU32,
    pub runs: Mutex<Vec<(JobId, u64)>>,
    /// The first lines of the chunks of each call, in order.
    pub batches: Mutex<Vec<Vec<u64>>>,
    pub prepared: Mutex<Vec<(JobId, String)>>,
    pub released: Mutex<Vec<JobId>>,
    /// How many partials the last `aggregate` received.
    pub aggregated: AtomicU64,
    /// Each job's partials staged for `aggregate`.
    pub staged: Mutex<std::collections::HashMap<JobId, Vec<ByteBuf>>>,
    /// Each job's output, kept from `aggregate` for `fetch_output`.
    pub outputs: Mutex<std::collections::HashMap<JobId, Vec<u8>>>,
}

/// Chunks (by first line) whose first attempt fails, shared by all fake workers; `always`
/// makes every attempt fail, the same way unless `varying` numbers each failure's message.
#[derive(Default)]
pub struct Faults {
    pub lines: HashSet<u64>,
    pub always: bool,
    pub varying: bool,
    pub count: AtomicU64,
    pub failed: Mutex<HashSet<u64>>,
}

/// Every attempt of every worker: (worker, first line, succeeded).
pub type Attempts = Arc<Mutex<Vec<(&'static str, u64, bool)>>>;

/// A fake worker's service; `secret` is the one its registration answered.
#[derive(Clone)]
pub struct FakeWorker {
    pub name: &'static str,
    pub knobs: Arc<Knobs>,
    pub record: Arc<Record>,
    pub faults: Arc<Faults>,
    pub attempts: Attempts,
    pub secret: tokio::sync::watch::Sender<Option<Secret>>,
}

/// Counts a call in flight until it returns or is cancelled.
struct InFlight<'a>(&'a Record);

impl<'a> InFlight<'a> {
    fn enter(record: &'a Record) -> Self {
        let now = record.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        record.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(record)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeWorker {
    /// Runs one chunk of a batch: counts its words, unless a fault makes it fail.
    async fn run_one(&self, job: JobId, chunk: ChunkInput) -> Result<ByteBuf, TaskError> {
        let first_line = chunk.first_line;
        self.record.runs.lock().unwrap().push((job, first_line));
        tokio::time::sleep(self.knobs.delay).await;
        let fails = self.faults.lines.contains(&first_line)
            && (self.faults.always || self.faults.failed.lock().unwrap().insert(first_line));
        self.attempts.lock().unwrap().push((self.name, first_line, !fails));
        if fails && self.faults.varying {
            let n = self.faults.count.fetch_add(1, Ordering::SeqCst) + 1;
            return Err(TaskError::Plugin(format!("injected failure {n} at line {first_line}")));
        }
        if fails {
            return Err(TaskError::Plugin(format!("injected failure at line {first_line}")));
        }
        let text = std::str::from_utf8(&chunk.text).map_err(|e| TaskError::Plugin(e.to_string()))?;
        let mut partial =
            Partial { first_line, last_line: first_line + text.lines().count() as u64 - 1, ..Default::default() };
        for word in text.split_whitespace() {
            *partial.counts.entry(word.to_owned()).or_default() += 1;
        }
        Ok(ByteBuf::from(serde_json::to_vec(&partial).unwrap()))
    }

    /// Refuses a stranger; waits briefly for the registration's answer, as a real worker does.
    async fn check(&self, secret: &Secret) -> Result<(), TaskError> {
        let mut known = self.secret.subscribe();
        let found = tokio::time::timeout(SOON, known.wait_for(Option::is_some)).await;
        match found {
            Ok(Ok(mine)) if mine.as_ref().is_some_and(|mine| mine.matches(secret)) => Ok(()),
            _ => Err(TaskError::Rpc(RpcError::Unauthorized("not my controller".into()))),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Partial, TaskError> {
    serde_json::from_slice(bytes).map_err(|e| TaskError::Plugin(e.to_string()))
}

/// Merges partials of consecutive lines, refusing any that are out of order.
fn merge(partials: &[ByteBuf]) -> Result<Partial, TaskError> {
    let mut merged = Partial::default();
    for (position, bytes) in partials.iter().enumerate() {
        let partial = decode(bytes)?;
        if position == 0 {
            merged.first_line = partial.first_line;
        } else if partial.first_line != merged.last_line + 1 {
            return Err(TaskError::Plugin(format!("partials out of order at line {}", partial.first_line)));
        }
        merged.last_line = partial.last_line;
        for (word, n) in partial.counts {
            *merged.counts.entry(word).or_default() += n;
        }
    }
    Ok(merged)
}

impl Worker for FakeWorker {
    async fn prepare(self, _: Context, secret: Secret, job: JobId, plugin: JobPlugin) -> Result<(), TaskError> {
        self.check(&secret).await?;
        self.record.prepared.lock().unwrap().push((job, plugin.owner));
        match &self.knobs.build_error {
            Some(diagnostics) => Err(TaskError::Rpc(RpcError::Build(diagnostics.clone()))),
            None => Ok(()),
        }
    }

    async fn run_chunks(
        self,
        _: Context,
        secret: Secret,
        job: JobId,
        chunks: Vec<ChunkInput>,
    ) -> Result<ChunkResults, TaskError> {
        self.check(&secret).await?;
        let _in_flight = InFlight::enter(&self.record);
        self.record.batches.lock().unwrap().push(chunks.iter().map(|chunk| chunk.first_line).collect());
        // One after another, as a real worker runs a batch in its slot.
        let mut results = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            results.push(self.run_one(job, chunk).await);
        }
        Ok(ChunkResults { results, printed: Vec::new(), lines: Vec::new() })
    }

    async fn combine(
        self,
        _: Context,
        secret: Secret,
        _: JobId,
        partials: Vec<ByteBuf>,
    ) -> Result<Option<ByteBuf>, TaskError> {
        self.check(&secret).await?;
        if !self.knobs.combines {
            return Ok(None);
        }
        Ok(Some(ByteBuf::from(serde_json::to_vec(&merge(&partials)?).unwrap())))
    }

    async fn aggregate(
        self,
        _: Context,
        secret: Secret,
        job: JobId,
        n_partials: u64,
        _input_files: u64,
        max_result_bytes: u64,
    ) -> Result<Aggregated, TaskError> {
        self.check(&secret).await?;
        let partials = self.record.staged.lock().unwrap().remove(&job).unwrap_or_default();
        if partials.len() as u64 != n_partials {
            return Err(TaskError::Rpc(RpcError::Invalid(format!(
                "{} partials staged, not {n_partials}",
                partials.len()
            ))));
        }
        self.record.aggregated.store(partials.len() as u64, Ordering::SeqCst);
        let merged = merge(&partials)?;
        if !partials.is_empty() && merged.first_line != 1 {
            return Err(TaskError::Plugin("the first partial does not start at line 1".into()));
        }
        let output = serde_json::to_vec(&merged.counts).unwrap();
        let len = output.len() as u64;
        if len > max_result_bytes {
            return Err(TaskError::Fatal(format!("the result is {len} bytes, more than {max_result_bytes}")));
        }
        self.record.outputs.lock().unwrap().insert(job, output);
        Ok(Aggregated { len, ..Aggregated::default() })
    }

    async fn stage_partials(
        self,
        _: Context,
        secret: Secret,
        job: JobId,
        first: u64,
        partials: Vec<ByteBuf>,
    ) -> Result<(), TaskError> {
        self.check(&secret).await?;
        let mut staged = self.record.staged.lock().unwrap();
        let staged = staged.entry(job).or_default();
        if first == 0 {
            staged.clear();
        }
        if staged.len() as u64 != first {
            return Err(TaskError::Rpc(RpcError::Invalid(format!("{} partials staged, not {first}", staged.len()))));
        }
        staged.extend(partials);
        Ok(())
    }

    async fn fetch_output(self, _: Context, secret: Secret, job: JobId, offset: u64) -> Result<ByteBuf, TaskError> {
        self.check(&secret).await?;
        let outputs = self.record.outputs.lock().unwrap();
        let output = outputs.get(&job).ok_or_else(|| TaskError::Rpc(RpcError::NotFound(format!("job {job}"))))?;
        let start = (offset as usize).min(output.len());
        let end = (start + kiln_engine::rpc::pieces::result_piece_bytes()).min(output.len());
        Ok(ByteBuf::from(output[start..end].to_vec()))
    }

    async fn release(self, _: Context, secret: Secret, job: JobId) -> Result<(), TaskError> {
        self.check(&secret).await?;
        self.record.released.lock().unwrap().push(job);
        Ok(())
    }

    async fn build_progress(
        self,
        _: Context,
        secret: Secret,
        _job: JobId,
    ) -> Result<Option<kiln_engine::rpc::build::BuildProgress>, TaskError> {
        self.check(&secret).await?;
        Ok(None)
    }
}

/// A fake worker serving and registered; dropping `tasks` (or [`RunningWorker::kill`]) ends
/// its server, connections and heartbeats, as a killed process would.
pub struct RunningWorker {
    pub record: Arc<Record>,
    pub worker_id: u64,
    pub tasks: JoinSet<()>,
}

impl RunningWorker {
    pub async fn kill(mut self) {
        self.tasks.shutdown().await;
    }
}

/// The word counts computed here, as the fake workers' output spells them.
pub fn check(text: &str) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_owned()).or_default() += 1;
    }
    serde_json::to_string(&counts).unwrap()
}

/// A worker that runs chunks at once and combines.
pub fn quick() -> Knobs {
    Knobs { combines: true, ..Knobs::default() }
}

/// A worker that takes `delay_ms` per chunk and combines.
pub fn slow(delay_ms: u64) -> Knobs {
    Knobs { delay: Duration::from_millis(delay_ms), combines: true, ..Knobs::default() }
}

/// How many chunks of `job` the worker ran (retries and speculative copies included).
pub fn runs_of(worker: &RunningWorker, job: JobId) -> usize {
    worker.record.runs.lock().unwrap().iter().filter(|(j, _)| *j == job).count()
}

/// The batches a worker was sent (first lines of their chunks).
pub fn batches_of(worker: &RunningWorker) -> Vec<Vec<u64>> {
    worker.record.batches.lock().unwrap().clone()
}
