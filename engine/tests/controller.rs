//! The controller, started in-process through `kiln_engine::controller::start`, driven with a
//! raw tarpc `ControllerClient`, with fake workers written here: they serve the real `Worker`
//! service on 127.0.0.1:0 and register through the real `register`, and their `run_chunks`
//! counts words, so that scheduling is tested without building plugins.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use kiln_engine::controller::{ControllerConfig, RunningController, start};
use kiln_engine::plugin_source::SourceTree;
use kiln_engine::rpc::{
    ChunkInput, ControllerClient, FailureKind, JobId, JobPlugin, JobSpec, JobState, JobStatus, MAX_FRAME_BYTES,
    PROTOCOL_VERSION, RpcError, Secret, TaskError, Worker, WorkerInfo,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tarpc::context::{self, Context};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::task::JoinSet;

/// Small chunks, so that inputs of a few dozen KiB make dozens of chunks.
const CHUNK_SIZE: u64 = 1024;

/// A generous bound for things that should take milliseconds.
const SOON: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// A fake worker: word count, with knobs for delays, failures and combining.

/// A partial: the lines it covers (to check that partials arrive in input order) and counts.
#[derive(Serialize, Deserialize, Default)]
struct Partial {
    first_line: u64,
    last_line: u64,
    counts: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Knobs {
    /// How long each chunk takes.
    delay: Duration,
    /// Whether `combine` merges (else it answers `None`, as a plugin without combine).
    combines: bool,
    /// Whether `prepare` fails the build.
    build_error: Option<String>,
}

#[derive(Default)]
struct Record {
    /// Calls in flight (each carries a batch of chunks), and the most at once.
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    runs: Mutex<Vec<(JobId, u64)>>,
    /// The first lines of the chunks of each call, in order.
    batches: Mutex<Vec<Vec<u64>>>,
    prepared: Mutex<Vec<(JobId, String)>>,
    released: Mutex<Vec<JobId>>,
    /// How many partials the last `aggregate` received.
    aggregated: AtomicU64,
}

/// Chunks (by first line) whose first attempt fails, shared by all fake workers; `always`
/// makes every attempt fail.
#[derive(Default)]
struct Faults {
    lines: HashSet<u64>,
    always: bool,
    failed: Mutex<HashSet<u64>>,
}

/// Every attempt of every worker: (worker, first line, succeeded).
type Attempts = Arc<Mutex<Vec<(&'static str, u64, bool)>>>;

#[derive(Clone)]
struct FakeWorker {
    name: &'static str,
    knobs: Arc<Knobs>,
    record: Arc<Record>,
    faults: Arc<Faults>,
    attempts: Attempts,
    secret: tokio::sync::watch::Sender<Option<Secret>>,
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
    ) -> Result<Vec<Result<ByteBuf, TaskError>>, TaskError> {
        self.check(&secret).await?;
        let _in_flight = InFlight::enter(&self.record);
        self.record.batches.lock().unwrap().push(chunks.iter().map(|chunk| chunk.first_line).collect());
        // One after another, as a real worker runs a batch in its slot.
        let mut results = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            results.push(self.run_one(job, chunk).await);
        }
        Ok(results)
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
        _: JobId,
        partials: Vec<ByteBuf>,
    ) -> Result<String, TaskError> {
        self.check(&secret).await?;
        self.record.aggregated.store(partials.len() as u64, Ordering::SeqCst);
        let merged = merge(&partials)?;
        if !partials.is_empty() && merged.first_line != 1 {
            return Err(TaskError::Plugin("the first partial does not start at line 1".into()));
        }
        Ok(serde_json::to_string(&merged.counts).unwrap())
    }

    async fn release(self, _: Context, secret: Secret, job: JobId) -> Result<(), TaskError> {
        self.check(&secret).await?;
        self.record.released.lock().unwrap().push(job);
        Ok(())
    }
}

/// A fake worker serving and registered; dropping `tasks` (or [`RunningWorker::kill`]) ends
/// its server, connections and heartbeats, as a killed process would.
struct RunningWorker {
    record: Arc<Record>,
    worker_id: u64,
    tasks: JoinSet<()>,
}

impl RunningWorker {
    async fn kill(mut self) {
        self.tasks.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster around a controller.

struct Cluster {
    dir: tempfile::TempDir,
    controller: RunningController,
    client: ControllerClient,
    key: Secret,
    faults: Arc<Faults>,
    attempts: Attempts,
}

async fn connect(addr: SocketAddr) -> ControllerClient {
    let mut connect = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
    connect.config_mut().max_frame_length(MAX_FRAME_BYTES);
    ControllerClient::new(tarpc::client::Config::default(), connect.await.expect("controller reachable")).spawn()
}

/// A controller on loopback without TLS: these tests speak tarpc to it directly, as fake
/// workers and clients (TLS on every link is shown with real processes in `cluster_tls.rs`).
async fn start_controller(data_dir: &Path) -> RunningController {
    let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap(), data_dir.to_path_buf());
    config.plaintext = true;
    start(config).await.expect("controller starts")
}

/// A context whose deadline outlasts a long-poll.
fn long() -> Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(30);
    ctx
}

impl Cluster {
    async fn new() -> Cluster {
        Cluster::with_faults(Faults::default()).await
    }

    async fn with_faults(faults: Faults) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let controller = start_controller(dir.path()).await;
        let client = connect(controller.local_addr()).await;
        let key = controller.api_key().clone();
        Cluster { dir, controller, client, key, faults: Arc::new(faults), attempts: Arc::default() }
    }

    /// Starts a fake worker and registers it with `processes` slots.
    async fn worker(&self, name: &'static str, knobs: Knobs, processes: u32) -> RunningWorker {
        let (secret, _) = tokio::sync::watch::channel(None);
        let fake = FakeWorker {
            name,
            knobs: Arc::new(knobs),
            record: Arc::default(),
            faults: Arc::clone(&self.faults),
            attempts: Arc::clone(&self.attempts),
            secret,
        };
        let mut listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default).await.unwrap();
        listener.config_mut().max_frame_length(MAX_FRAME_BYTES);
        let address = listener.local_addr().to_string();
        let mut tasks = JoinSet::new();
        let server = fake.clone();
        tasks.spawn(async move {
            let mut channels = JoinSet::new();
            let mut incoming = listener.filter_map(|t| future::ready(t.ok())).map(BaseChannel::with_defaults);
            while let Some(channel) = incoming.next().await {
                let serve = server.clone().serve();
                channels.spawn(channel.execute(serve).for_each_concurrent(None, |request| request));
            }
        });
        let controller = connect(self.controller.local_addr()).await;
        let info = WorkerInfo {
            protocol: PROTOCOL_VERSION,
            address,
            processes,
            hostname: name.into(),
            public_key: ByteBuf::new(),
        };
        let registration = controller
            .register(context::current(), self.controller.join_token().clone(), info)
            .await
            .unwrap()
            .expect("registration accepted");
        fake.secret.send_replace(Some(registration.worker_secret.clone()));
        let worker_id = registration.worker_id;
        let secret = registration.worker_secret.clone();
        controller.activate(context::current(), worker_id, secret).await.unwrap().expect("activation accepted");
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticks.tick().await;
                let secret = registration.worker_secret.clone();
                let _ = controller.heartbeat(context::current(), worker_id, secret).await;
            }
        });
        RunningWorker { record: fake.record, worker_id, tasks }
    }

    async fn upload_plugin(&self) -> String {
        let archive = SourceTree::from_single_file(b"// counted by the fake workers\n").unwrap().to_tar_gz();
        self.client.upload_plugin(context::current(), self.key.clone(), ByteBuf::from(archive)).await.unwrap().unwrap()
    }

    /// The spec of a job in `CHUNK_SIZE` chunks.
    async fn spec(&self, processes: u32, max_attempts: u32) -> JobSpec {
        JobSpec {
            owner: "cli".into(),
            plugin_hash: self.upload_plugin().await,
            params: String::new(),
            processes,
            input_name: "words.txt".into(),
            max_attempts,
            chunk_size: CHUNK_SIZE,
            memory_limit: 0,
            chunk_timeout_ms: 0,
            speculative: true,
        }
    }

    /// Creates a job and uploads its input in pieces; answers its id once queued.
    async fn submit(&self, text: &str, processes: u32, max_attempts: u32) -> JobId {
        let spec = self.spec(processes, max_attempts).await;
        self.submit_spec(text, spec).await
    }

    /// Creates a job of this spec and uploads its input in pieces; answers its id once queued.
    async fn submit_spec(&self, text: &str, spec: JobSpec) -> JobId {
        let job = self.client.create_job(context::current(), self.key.clone(), spec).await.unwrap().unwrap();
        let mut offset = 0;
        for piece in text.as_bytes().chunks(10_000) {
            let piece = ByteBuf::from(piece.to_vec());
            let taken = self.client.upload_input(context::current(), self.key.clone(), job, offset, piece).await;
            if self.ended_while_uploading(job, taken.unwrap()).await {
                return job;
            }
            offset += 10_000.min(text.len() as u64 - offset);
        }
        let finished = self.client.finish_input(long(), self.key.clone(), job, text.len() as u64).await;
        self.ended_while_uploading(job, finished.unwrap()).await;
        job
    }

    /// Whether a call refused a piece of input because the job had ended (its chunks run while
    /// it uploads); any other error fails the test.
    async fn ended_while_uploading(&self, job: JobId, answer: Result<(), RpcError>) -> bool {
        match answer {
            Ok(()) => false,
            Err(RpcError::Invalid(message)) if message.contains("can no longer change") => {
                assert!(self.finish(job).await.state.is_final(), "{message}");
                true
            }
            Err(e) => panic!("job {job}'s input was refused: {e}"),
        }
    }

    async fn watch(&self, job: JobId, seen: u64) -> JobStatus {
        self.client.watch(long(), self.key.clone(), job, seen).await.unwrap().unwrap()
    }

    /// Watches a job until `done` holds of its status.
    async fn wait_until(&self, job: JobId, done: impl Fn(&JobStatus) -> bool) -> JobStatus {
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut status = self.watch(job, u64::MAX).await;
        while !done(&status) {
            assert!(Instant::now() < give_up, "job {job} stuck: {status:?}");
            status = self.watch(job, status.seq).await;
        }
        status
    }

    async fn finish(&self, job: JobId) -> JobStatus {
        self.wait_until(job, |status| status.state.is_final()).await
    }

    async fn result(&self, job: JobId) -> Result<String, RpcError> {
        self.client.result(context::current(), self.key.clone(), job).await.unwrap()
    }

    async fn stop(self) {
        self.controller.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs and the independent count.

/// Deterministic text: `n_lines` lines of one to eight words from a small vocabulary.
fn words(seed: u64, n_lines: usize) -> String {
    const VOCABULARY: [&str; 12] =
        ["kiln", "clay", "fire", "glaze", "wheel", "pot", "ash", "cone", "slip", "bisque", "raku", "été"];
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut text = String::new();
    for _ in 0..n_lines {
        let n_words = 1 + next() % 8;
        let line: Vec<&str> = (0..n_words).map(|_| VOCABULARY[next() % VOCABULARY.len()]).collect();
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    text
}

/// The word counts computed here, as the fake workers' output spells them.
fn check(text: &str) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_owned()).or_default() += 1;
    }
    serde_json::to_string(&counts).unwrap()
}

fn quick() -> Knobs {
    Knobs { combines: true, ..Knobs::default() }
}

fn slow(delay_ms: u64) -> Knobs {
    Knobs { delay: Duration::from_millis(delay_ms), combines: true, ..Knobs::default() }
}

fn runs_of(worker: &RunningWorker, job: JobId) -> usize {
    worker.record.runs.lock().unwrap().iter().filter(|(j, _)| *j == job).count()
}

// ---------------------------------------------------------------------------------------------
// Behaviour.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_and_nothing_is_created() {
    let cluster = Cluster::new().await;
    let wrong = Secret::new("not the key");
    let c = &cluster.client;
    let archive = ByteBuf::from(SourceTree::from_single_file(b"\n").unwrap().to_tar_gz());
    let spec = JobSpec {
        owner: "cli".into(),
        plugin_hash: "ab".into(),
        params: String::new(),
        processes: 1,
        input_name: "x".into(),
        max_attempts: 0,
        chunk_size: 0,
        memory_limit: 0,
        chunk_timeout_ms: 0,
        speculative: true,
    };
    let refused =
        |result: Result<(), RpcError>| assert!(matches!(result, Err(RpcError::Unauthorized(_))), "{result:?}");
    let ctx = context::current;
    refused(c.upload_plugin(ctx(), wrong.clone(), archive).await.unwrap().map(drop));
    refused(c.create_job(ctx(), wrong.clone(), spec).await.unwrap().map(drop));
    refused(c.upload_input(ctx(), wrong.clone(), 1, 0, ByteBuf::from(vec![1])).await.unwrap());
    refused(c.finish_input(ctx(), wrong.clone(), 1, 1).await.unwrap());
    refused(c.watch(ctx(), wrong.clone(), 1, 0).await.unwrap().map(drop));
    refused(c.result(ctx(), wrong.clone(), 1).await.unwrap().map(drop));
    refused(c.cancel(ctx(), wrong.clone(), 1).await.unwrap().map(drop));
    refused(c.list_jobs(ctx(), wrong.clone()).await.unwrap().map(drop));
    refused(c.cluster_info(ctx(), wrong.clone()).await.unwrap().map(drop));

    let info = |address: String| WorkerInfo {
        protocol: PROTOCOL_VERSION,
        address,
        processes: 1,
        hostname: "h".into(),
        public_key: ByteBuf::new(),
    };
    refused(c.register(ctx(), wrong.clone(), info("127.0.0.1:1".into())).await.unwrap().map(drop));
    let old = WorkerInfo { protocol: PROTOCOL_VERSION + 1, ..info("127.0.0.1:1".into()) };
    let mismatch = c.register(ctx(), cluster.controller.join_token().clone(), old).await.unwrap();
    assert!(matches!(mismatch, Err(RpcError::VersionMismatch { .. })), "{mismatch:?}");

    // A registered worker's id with the wrong secret.
    let worker = cluster.worker("w", quick(), 1).await;
    refused(c.heartbeat(ctx(), worker.worker_id, wrong.clone()).await.unwrap());
    refused(c.fetch_plugin(ctx(), worker.worker_id, wrong.clone(), "ab".into()).await.unwrap().map(drop));
    refused(c.activate(ctx(), worker.worker_id, wrong.clone()).await.unwrap());
    refused(c.remove_worker(ctx(), wrong.clone(), worker.worker_id).await.unwrap());

    let jobs = c.list_jobs(ctx(), cluster.key.clone()).await.unwrap().unwrap();
    assert!(jobs.is_empty(), "no job was created: {jobs:?}");
    let plugins = std::fs::read_dir(cluster.dir.path().join("plugins")).unwrap().count();
    assert_eq!(plugins, 0, "no plugin was stored");
    let cluster_info = c.cluster_info(ctx(), cluster.key.clone()).await.unwrap().unwrap();
    assert_eq!(cluster_info.workers.len(), 1, "only the worker with the right token joined");
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_on_two_workers_and_counts_exactly() {
    let cluster = Cluster::new().await;
    let a = cluster.worker("a", slow(5), 2).await;
    let b = cluster.worker("b", slow(5), 2).await;
    let text = words(1, 30_000);
    let job = cluster.submit(&text, 2, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    let group = kiln_engine::rules::combine::combine_group(CHUNK_SIZE);
    assert_eq!(group, 256, "small chunks make large groups");
    assert!(status.n_chunks > 2 * group, "the input spans several combine groups: {}", status.n_chunks);
    assert_eq!(
        (status.chunks_done, status.bytes_done, status.bytes_total),
        (status.n_chunks, text.len() as u64, text.len() as u64)
    );
    assert_eq!(status.lines_done, 30_000);
    assert!(runs_of(&a, job) > 0 && runs_of(&b, job) > 0, "both workers ran chunks");
    let per_worker: u64 = status.workers.iter().map(|w| w.chunks_done).sum();
    assert_eq!(per_worker, status.n_chunks);
    assert!(status.started_ms.is_some() && status.finished_ms.is_some());
    // Complete groups were merged by `combine`: aggregate got one partial per group and the
    // chunks of the incomplete last group.
    let aggregated = a.record.aggregated.load(Ordering::SeqCst) + b.record.aggregated.load(Ordering::SeqCst);
    assert_eq!(aggregated, status.n_chunks / group + status.n_chunks % group);
    tokio::time::timeout(SOON, async {
        while a.record.released.lock().unwrap().is_empty() || b.record.released.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both workers were told to release the job");
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_without_combine_gets_every_partial_in_order() {
    let cluster = Cluster::new().await;
    let a = cluster.worker("a", Knobs::default(), 3).await;
    let text = words(2, 3000);
    let job = cluster.submit(&text, 3, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(a.record.aggregated.load(Ordering::SeqCst), status.n_chunks, "one partial per chunk");
    a.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_without_workers_waits_queued_then_runs_when_one_registers() {
    let cluster = Cluster::new().await;
    let text = words(3, 500);
    let job = cluster.submit(&text, 2, 0).await;
    let again = cluster.client.finish_input(long(), cluster.key.clone(), job, text.len() as u64).await.unwrap();
    assert_eq!(again, Ok(()), "a repeated finish is acknowledged");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = cluster.watch(job, u64::MAX).await;
    assert_eq!(status.state, JobState::Queued);
    let worker = cluster.worker("late", quick(), 2).await;
    assert_eq!(cluster.finish(job).await.state, JobState::Succeeded);
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_joining_mid_job_gets_chunks() {
    let cluster = Cluster::new().await;
    let first = cluster.worker("first", slow(40), 1).await;
    let text = words(4, 3000);
    let job = cluster.submit(&text, 2, 0).await;
    cluster.wait_until(job, |status| status.chunks_done >= 3).await;
    let second = cluster.worker("second", slow(5), 2).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert!(runs_of(&second, job) > runs_of(&first, job), "the faster newcomer took more chunks");
    first.kill().await;
    second.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_job_stops_dispatching_and_the_next_job_completes() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", slow(50), 2).await;
    let long_text = words(5, 5000);
    let short_text = words(6, 300);
    let long_job = cluster.submit(&long_text, 2, 0).await;
    let short_job = cluster.submit(&short_text, 2, 0).await;
    cluster.wait_until(long_job, |status| status.chunks_done >= 2).await;
    let status = cluster.client.cancel(context::current(), cluster.key.clone(), long_job).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Cancelled);
    let runs_at_cancel = runs_of(&worker, long_job);

    let short = cluster.finish(short_job).await;
    assert_eq!(short.state, JobState::Succeeded);
    assert_eq!(cluster.result(short_job).await.unwrap(), check(&short_text));
    // A call sent just before the cancel may reach the worker just after it: at most one per slot.
    assert!(runs_of(&worker, long_job) <= runs_at_cancel + 2, "nothing was dispatched after the cancel");
    assert!(runs_at_cancel < status.n_chunks as usize);
    let result = cluster.result(long_job).await;
    assert!(matches!(&result, Err(RpcError::Invalid(m)) if m.contains("Cancelled")), "{result:?}");
    assert!(worker.record.released.lock().unwrap().contains(&long_job));
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_in_flight_per_worker_never_exceed_processes() {
    let cluster = Cluster::new().await;
    let a = cluster.worker("a", slow(15), 8).await;
    let b = cluster.worker("b", slow(15), 8).await;
    let text = words(7, 4000);
    let job = cluster.submit(&text, 3, 0).await;
    assert_eq!(cluster.finish(job).await.state, JobState::Succeeded);
    for worker in [&a, &b] {
        let max = worker.record.max_in_flight.load(Ordering::SeqCst);
        assert!((2..=3).contains(&max), "at most 3 chunks at once, and more than one: {max}");
    }
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

/// Lines of a few bytes, each a chunk of its own when cut with a chunk size of one byte.
fn short_lines(n_lines: u64) -> String {
    (1..=n_lines).map(|line| format!("w{} x\n", line % 97)).collect()
}

/// Submits `text` cut into one chunk per line, without speculative copies (so that a chunk
/// runs twice only when it failed).
async fn submit_line_per_chunk(cluster: &Cluster, text: &str, processes: u32, max_attempts: u32) -> JobId {
    let spec = JobSpec { chunk_size: 1, speculative: false, ..cluster.spec(processes, max_attempts).await };
    cluster.submit_spec(text, spec).await
}

/// The batches a worker was sent (first lines of their chunks) for `job`.
fn batches_of(worker: &RunningWorker) -> Vec<Vec<u64>> {
    worker.record.batches.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tiny_chunks_travel_in_batches_within_the_slots_and_count_exactly() {
    let cluster = Cluster::new().await;
    let a = cluster.worker("a", quick(), 2).await;
    let b = cluster.worker("b", quick(), 2).await;
    let n_lines = 5000;
    let text = short_lines(n_lines);
    let job = submit_line_per_chunk(&cluster, &text, 2, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!((status.n_chunks, status.chunks_done, status.lines_done), (n_lines, n_lines, n_lines));
    assert_eq!(status.workers.iter().map(|w| w.chunks_done).sum::<u64>(), n_lines, "each chunk counted once");

    let batches: Vec<Vec<u64>> = batches_of(&a).into_iter().chain(batches_of(&b)).collect();
    let mut ran: Vec<u64> = batches.iter().flatten().copied().collect();
    ran.sort();
    ran.dedup();
    assert_eq!(ran, (1..=n_lines).collect::<Vec<_>>(), "every chunk was sent");
    let largest = batches.iter().map(Vec::len).max().unwrap();
    assert!(largest > 1 && largest <= 256, "tiny chunks travel in batches of at most 256: {largest}");
    assert!(batches.len() < n_lines as usize / 2, "{} calls for {n_lines} chunks", batches.len());
    for batch in &batches {
        assert!(batch.windows(2).all(|pair| pair[0] < pair[1]), "a batch holds chunks in input order: {batch:?}");
    }
    for worker in [&a, &b] {
        let max = worker.record.max_in_flight.load(Ordering::SeqCst);
        assert!(max <= 2, "at most `processes` calls at once on a worker, whatever they carry: {max}");
    }
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_inside_batches_cost_only_their_own_chunk_and_keep_the_others_partials() {
    let failing = [700, 1234, 2000];
    let cluster = Cluster::with_faults(Faults { lines: HashSet::from(failing), ..Faults::default() }).await;
    let a = cluster.worker("a", quick(), 2).await;
    let b = cluster.worker("b", quick(), 2).await;
    let n_lines = 3000;
    let text = short_lines(n_lines);
    let job = submit_line_per_chunk(&cluster, &text, 2, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(status.retries, failing.len() as u64, "one retry per failing chunk");

    // Each failing chunk's first attempt came in a batch with others, whose partials were kept:
    // every other chunk ran exactly once, the failing ones twice, the retry on the other worker.
    let attempts = cluster.attempts.lock().unwrap().clone();
    let mut runs: BTreeMap<u64, Vec<(&str, bool)>> = BTreeMap::new();
    for (worker, line, succeeded) in attempts {
        runs.entry(line).or_default().push((worker, succeeded));
    }
    assert_eq!(runs.len() as u64, n_lines);
    for (line, tries) in runs {
        if !failing.contains(&line) {
            assert_eq!(tries, vec![(tries[0].0, true)], "chunk {line} ran again although its partial came back");
            continue;
        }
        assert_eq!(tries.len(), 2, "chunk {line}: {tries:?}");
        assert!(!tries[0].1 && tries[1].1 && tries[0].0 != tries[1].0, "chunk {line}: {tries:?}");
        let failed_on = if tries[0].0 == "a" { &a } else { &b };
        let first_call = batches_of(failed_on).into_iter().find(|batch| batch.contains(&line)).unwrap();
        assert!(first_call.len() > 1, "chunk {line} failed alone, not inside a batch: {first_call:?}");
    }
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_failing_every_time_inside_batches_fails_the_job_naming_it_alone() {
    let line = 1500;
    let faults = Faults { lines: HashSet::from([line]), always: true, ..Faults::default() };
    let cluster = Cluster::with_faults(faults).await;
    let worker = cluster.worker("w", quick(), 2).await;
    let job = submit_line_per_chunk(&cluster, &short_lines(3000), 2, 3).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Failed);
    let failure = status.failure.expect("a failure");
    assert_eq!((failure.kind, failure.attempts), (FailureKind::Plugin, 3));
    assert_eq!(failure.message, format!("injected failure at line {line}"));
    let span = failure.chunk.expect("the chunk is named");
    assert_eq!((span.index, span.first_line, span.last_line), (line - 1, line, line));
    assert_eq!(status.retries, 2, "only the failing chunk was charged");
    let first_call = batches_of(&worker).into_iter().find(|batch| batch.contains(&line)).unwrap();
    assert!(first_call.len() > 1, "the chunk first failed alone, not inside a batch: {first_call:?}");
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_failing_once_is_retried_on_another_worker_and_the_result_is_exact() {
    let faults = Faults { lines: HashSet::from([1]), ..Faults::default() };
    let cluster = Cluster::with_faults(faults).await;
    let a = cluster.worker("a", slow(5), 2).await;
    let b = cluster.worker("b", slow(5), 2).await;
    let text = words(8, 2000);
    let job = cluster.submit(&text, 2, 0).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(status.retries, 1);
    let attempts: Vec<_> = cluster.attempts.lock().unwrap().iter().filter(|(_, line, _)| *line == 1).copied().collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_ne!(attempts[0].0, attempts[1].0, "the retry ran on the other worker");
    assert!(!attempts[0].2 && attempts[1].2);
    a.kill().await;
    b.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_failing_every_time_fails_the_job_after_max_attempts() {
    let text = words(9, 400);
    let second_chunk_line = text[..CHUNK_SIZE as usize].matches('\n').count() as u64 + 1;
    let faults = Faults { lines: HashSet::from([second_chunk_line]), always: true, ..Faults::default() };
    let cluster = Cluster::with_faults(faults).await;
    let worker = cluster.worker("w", quick(), 2).await;
    let job = cluster.submit(&text, 2, 3).await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Failed);
    let failure = status.failure.expect("a failure");
    assert_eq!(failure.kind, FailureKind::Plugin);
    assert_eq!(failure.message, format!("injected failure at line {second_chunk_line}"));
    assert_eq!(failure.attempts, 3);
    let span = failure.chunk.expect("the chunk is named");
    assert_eq!((span.index, span.first_line), (1, second_chunk_line));
    assert!(span.last_line > span.first_line);
    assert_eq!(status.retries, 2);
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_worker_chunks_run_elsewhere_without_counting_an_attempt() {
    let cluster = Cluster::new().await;
    let stuck = cluster.worker("stuck", slow(60_000), 2).await;
    let text = words(10, 1500);
    let job = cluster.submit(&text, 2, 0).await;
    tokio::time::timeout(SOON, async {
        while stuck.record.in_flight.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stuck worker took chunks");
    let healthy = cluster.worker("healthy", quick(), 2).await;
    stuck.kill().await;
    let status = cluster.finish(job).await;
    assert_eq!(status.state, JobState::Succeeded);
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(status.retries, 0, "a lost worker costs no attempt");
    let info = cluster.client.cluster_info(context::current(), cluster.key.clone()).await.unwrap().unwrap();
    assert_eq!(info.workers.iter().map(|w| w.worker_id).collect::<Vec<_>>(), vec![healthy.worker_id]);
    healthy.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_failure_fails_the_job_with_the_diagnostics() {
    let cluster = Cluster::new().await;
    let diagnostics = "error[E0425]: cannot find value `x` in this scope".to_owned();
    let worker = cluster.worker("w", Knobs { build_error: Some(diagnostics.clone()), ..quick() }, 1).await;
    let job = cluster.submit(&words(11, 100), 1, 0).await;
    let status = cluster.finish(job).await;
    let failure = status.failure.expect("a failure");
    assert_eq!((status.state, failure.kind, failure.message), (JobState::Failed, FailureKind::Build, diagnostics));
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_input_aggregates_no_partials_and_bad_input_names_its_line() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", quick(), 1).await;
    let empty = cluster.submit("", 1, 0).await;
    let status = cluster.finish(empty).await;
    assert_eq!((status.state, status.n_chunks), (JobState::Succeeded, 0));
    assert_eq!(cluster.result(empty).await.unwrap(), "{}");

    let spec = JobSpec {
        owner: "cli".into(),
        plugin_hash: cluster.upload_plugin().await,
        params: String::new(),
        processes: 1,
        input_name: "bad.txt".into(),
        max_attempts: 0,
        chunk_size: 0,
        memory_limit: 0,
        chunk_timeout_ms: 0,
        speculative: true,
    };
    let job = cluster.client.create_job(context::current(), cluster.key.clone(), spec).await.unwrap().unwrap();
    let bytes = ByteBuf::from(b"fine\nnot \xff utf-8\n".to_vec());
    cluster.client.upload_input(context::current(), cluster.key.clone(), job, 0, bytes).await.unwrap().unwrap();
    let short = cluster.client.finish_input(long(), cluster.key.clone(), job, 99).await.unwrap();
    assert!(matches!(&short, Err(RpcError::Invalid(m)) if m.contains("received 17 bytes")), "{short:?}");
    let finished = cluster.client.finish_input(long(), cluster.key.clone(), job, 17).await.unwrap();
    assert!(matches!(&finished, Err(RpcError::Invalid(m)) if m.contains("line 2")), "{finished:?}");
    let again = cluster.client.finish_input(long(), cluster.key.clone(), job, 17).await.unwrap();
    assert!(matches!(&again, Err(RpcError::Invalid(m)) if m.contains("line 2")), "{again:?}");
    let status = cluster.finish(job).await;
    let failure = status.failure.expect("a failure");
    assert_eq!((status.state, failure.kind), (JobState::Failed, FailureKind::Input));
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_answers_soon_after_a_change_not_after_its_wait() {
    let cluster = Cluster::new().await;
    let job = cluster.submit(&words(12, 200), 1, 0).await;
    let seen = cluster.watch(job, u64::MAX).await.seq;
    let watching = {
        let client = cluster.client.clone();
        let key = cluster.key.clone();
        tokio::spawn(async move { client.watch(long(), key, job, seen).await.unwrap().unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watching.is_finished(), "nothing changed yet, so the watch waits");
    let worker = cluster.worker("w", slow(200), 1).await;
    let changed_at = Instant::now();
    let status = tokio::time::timeout(SOON, watching).await.expect("the watch answered soon").unwrap();
    assert!(status.seq > seen && status.state != JobState::Queued, "{status:?}");
    assert!(changed_at.elapsed() < SOON);
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_job_and_secrets_survive_a_restart() {
    let cluster = Cluster::new().await;
    assert_eq!(cluster.controller.generated(), vec!["api_key", "join_token"]);
    let worker = cluster.worker("w", quick(), 2).await;
    let text = words(13, 800);
    let job = cluster.submit(&text, 2, 0).await;
    let before = cluster.finish(job).await;
    assert_eq!(before.state, JobState::Succeeded);
    let Cluster { dir, controller, key, .. } = cluster;
    worker.kill().await;
    controller.shutdown().await;

    let controller = start_controller(dir.path()).await;
    assert!(controller.generated().is_empty(), "the stored secrets are used");
    assert!(controller.api_key().matches(&key));
    let client = connect(controller.local_addr()).await;
    let result = client.result(context::current(), key.clone(), job).await.unwrap();
    assert_eq!(result, Ok(check(&text)));
    let status = client.watch(context::current(), key.clone(), job, 0).await.unwrap().unwrap();
    assert_eq!((status.state, status.chunks_done, status.lines_done), (JobState::Succeeded, before.n_chunks, 800));
    let jobs = client.list_jobs(context::current(), key).await.unwrap().unwrap();
    assert_eq!(jobs.len(), 1);
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_owner_is_checked_stored_listed_and_sent_to_the_workers() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", quick(), 2).await;
    let spec = JobSpec { owner: "web:42".into(), ..cluster.spec(2, 0).await };
    let job = cluster.submit_spec(&words(14, 300), spec.clone()).await;
    let status = cluster.finish(job).await;
    assert_eq!((status.state, status.owner.as_str()), (JobState::Succeeded, "web:42"));
    assert_eq!(worker.record.prepared.lock().unwrap().clone(), [(job, "web:42".to_owned())]);
    let jobs = cluster.client.list_jobs(context::current(), cluster.key.clone()).await.unwrap().unwrap();
    assert_eq!((jobs[0].id, jobs[0].owner.as_str()), (job, "web:42"));

    // Owners become directory names on workers: anything but a plain name is refused.
    for owner in ["", "../../etc", "a/b", "web 1", ".x"] {
        let spec = JobSpec { owner: owner.into(), ..spec.clone() };
        let refused = cluster.client.create_job(context::current(), cluster.key.clone(), spec).await.unwrap();
        assert!(matches!(&refused, Err(RpcError::Invalid(m)) if m.contains("owner")), "{owner:?}: {refused:?}");
    }
    let jobs = cluster.client.list_jobs(context::current(), cluster.key.clone()).await.unwrap().unwrap();
    assert_eq!(jobs.len(), 1, "no job was created under a refused owner");
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_job_resumes_after_a_restart_without_redoing_stored_chunks() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("before", slow(20), 2).await;
    let text = words(14, 4000);
    let job = cluster.submit(&text, 2, 0).await;
    let status = cluster.wait_until(job, |status| status.chunks_done >= 10).await;
    let n_chunks = status.n_chunks;
    let Cluster { dir, controller, key, faults, attempts, .. } = cluster;
    controller.shutdown().await;
    worker.kill().await;

    let controller = start_controller(dir.path()).await;
    let client = connect(controller.local_addr()).await;
    let cluster = Cluster { dir, controller, client, key, faults, attempts };
    let after = cluster.worker("after", quick(), 2).await;
    let done = cluster.finish(job).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    let rerun = runs_of(&after, job) as u64;
    assert!(rerun <= n_chunks - status.chunks_done, "{rerun} chunks ran again, {} were stored", status.chunks_done);
    after.kill().await;
    cluster.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Chunks run while the input uploads.

impl Cluster {
    /// Creates a job of the word count, without input.
    async fn create(&self, processes: u32) -> JobId {
        let spec = JobSpec {
            owner: "cli".into(),
            plugin_hash: self.upload_plugin().await,
            params: String::new(),
            processes,
            input_name: "words.txt".into(),
            max_attempts: 0,
            chunk_size: CHUNK_SIZE,
            memory_limit: 0,
            chunk_timeout_ms: 0,
            speculative: true,
        };
        self.client.create_job(context::current(), self.key.clone(), spec).await.unwrap().unwrap()
    }

    /// Uploads `bytes` at `offset`, in pieces of 3,000 bytes.
    async fn upload(&self, job: JobId, mut offset: u64, bytes: &[u8]) {
        for piece in bytes.chunks(3_000) {
            let sent = ByteBuf::from(piece.to_vec());
            self.client.upload_input(context::current(), self.key.clone(), job, offset, sent).await.unwrap().unwrap();
            offset += piece.len() as u64;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_run_while_the_input_is_still_uploading() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", quick(), 2).await;
    let text = words(15, 3000);
    let half = text[..text.len() / 2].rfind('\n').unwrap() + 1;
    let job = cluster.create(2).await;
    cluster.upload(job, 0, &text.as_bytes()[..half]).await;
    let early = cluster.wait_until(job, |status| status.chunks_done >= 5).await;
    assert_eq!(early.state, JobState::Uploading, "the input is not complete yet: {early:?}");
    assert!(early.bytes_done <= half as u64);
    cluster.upload(job, half as u64, &text.as_bytes()[half..]).await;
    cluster.client.finish_input(long(), cluster.key.clone(), job, text.len() as u64).await.unwrap().unwrap();
    let done = cluster.finish(job).await;
    assert_eq!((done.state, done.bytes_total, done.lines_done), (JobState::Succeeded, text.len() as u64, 3000));
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    assert_eq!(runs_of(&worker, job) as u64, done.n_chunks, "each chunk ran once");
    worker.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_restart_resumes_where_the_file_ends_and_keeps_its_done_chunks() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("before", quick(), 2).await;
    let text = words(16, 3000);
    // Mid-line, so that the restart has bytes to cut again.
    let cut_at = text.len() * 2 / 5 + 7;
    let job = cluster.create(2).await;
    cluster.upload(job, 0, &text.as_bytes()[..cut_at]).await;
    let before = cluster.wait_until(job, |status| status.chunks_done >= 5).await;
    let Cluster { dir, controller, key, faults, attempts, .. } = cluster;
    controller.shutdown().await;
    worker.kill().await;

    let controller = start_controller(dir.path()).await;
    let client = connect(controller.local_addr()).await;
    let cluster = Cluster { dir, controller, client, key, faults, attempts };
    let resumed = cluster.watch(job, 0).await;
    assert_eq!((resumed.state, resumed.bytes_total), (JobState::Uploading, cut_at as u64), "{resumed:?}");
    let after = cluster.worker("after", quick(), 2).await;
    // The client resends its last piece (acknowledged and ignored), then goes on.
    let resend = cut_at - 1000;
    cluster.upload(job, resend as u64, &text.as_bytes()[resend..]).await;
    cluster.client.finish_input(long(), cluster.key.clone(), job, text.len() as u64).await.unwrap().unwrap();
    let done = cluster.finish(job).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(cluster.result(job).await.unwrap(), check(&text));
    let rerun = runs_of(&after, job) as u64;
    assert!(
        rerun <= done.n_chunks - before.chunks_done,
        "{rerun} chunks ran again, {} were stored",
        before.chunks_done
    );
    after.kill().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_that_is_not_utf8_fails_the_job_during_its_upload() {
    let cluster = Cluster::new().await;
    let worker = cluster.worker("w", quick(), 1).await;
    let job = cluster.create(1).await;
    let mut text = words(17, 200).into_bytes();
    text.extend_from_slice(b"bad \xff byte\n");
    text.extend_from_slice(words(18, 200).as_bytes());
    let sent = ByteBuf::from(text.clone());
    let refused = cluster.client.upload_input(context::current(), cluster.key.clone(), job, 0, sent).await.unwrap();
    assert!(matches!(&refused, Err(RpcError::Invalid(m)) if m.contains("line 201")), "{refused:?}");
    let status = cluster.finish(job).await;
    let failure = status.failure.expect("a failure");
    assert_eq!((status.state, failure.kind), (JobState::Failed, FailureKind::Input));
    let late = ByteBuf::from(b"more\n".to_vec());
    let more = cluster.client.upload_input(context::current(), cluster.key.clone(), job, text.len() as u64, late).await;
    assert!(matches!(&more.unwrap(), Err(RpcError::Invalid(m)) if m.contains("line 201")), "the failure is kept");
    worker.kill().await;
    cluster.stop().await;
}
