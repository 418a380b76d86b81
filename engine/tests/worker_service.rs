//! The worker daemon against a stand-in controller served in this file: it registers with the
//! join token (and keeps trying while the controller is away), registers again when the
//! controller forgets it, fetches and builds a plugin once, runs chunks only for the secret of
//! its current registration, and stops for good when its join token is refused.

mod util;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use kiln_engine::plugin_source::read_source;
use kiln_engine::rpc::logs::PluginOutput;
use kiln_engine::rpc::pieces::ResultPiece;
use kiln_engine::rpc::pieces::SharedBytes;
use kiln_engine::rpc::{
    ChunkInput, ClusterInfo, Controller, ExecLimits, JobId, JobPlugin, JobSpec, JobStatus, JobSummary, MAX_FRAME_BYTES,
    Registration, RpcError, Secret, TaskError, WorkerCertificate, WorkerClient, WorkerId, WorkerInfo,
};
use kiln_engine::worker::builder::BuilderConfig;
use kiln_engine::worker::executor::ExecutorConfig;
use kiln_engine::worker::service::{self, RunningWorker, WorkerConfig, WorkerError};
use serde_bytes::ByteBuf;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use util::{example, fixture, plugin_target_dir};

const JOIN_TOKEN: &str = "the-join-token";

/// What the stand-in controller has seen and knows.
#[derive(Default)]
struct Seen {
    registrations: Vec<WorkerInfo>,
    /// The registration it knows now; `None` after it "restarted".
    known: Option<Registration>,
    heartbeats: u64,
    fetches: u64,
    archives: HashMap<String, Vec<u8>>,
}

#[derive(Clone)]
struct StandIn {
    seen: Arc<Mutex<Seen>>,
}

impl StandIn {
    fn knows(&self, worker_id: WorkerId, secret: &Secret) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.known.as_ref().is_some_and(|known| known.worker_id == worker_id && known.worker_secret.matches(secret))
    }
}

fn not_here<T>() -> Result<T, RpcError> {
    Err(RpcError::Invalid("not served by the stand-in controller".to_owned()))
}

impl Controller for StandIn {
    async fn register(self, _: Context, token: Secret, info: WorkerInfo) -> Result<Registration, RpcError> {
        if !token.matches(&Secret::new(JOIN_TOKEN)) {
            return Err(RpcError::Unauthorized("wrong join token".to_owned()));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.registrations.push(info);
        let registration = Registration {
            worker_id: seen.registrations.len() as WorkerId,
            worker_secret: Secret::generate(),
            certificate: None,
        };
        seen.known = Some(registration.clone());
        Ok(registration)
    }

    async fn activate(self, _: Context, worker_id: WorkerId, secret: Secret) -> Result<(), RpcError> {
        if !self.knows(worker_id, &secret) {
            return Err(RpcError::NotFound(format!("worker {worker_id}")));
        }
        Ok(())
    }

    async fn renew(self, _: Context, _: WorkerId, _: Secret, _: ByteBuf) -> Result<WorkerCertificate, RpcError> {
        not_here()
    }

    async fn heartbeat(self, _: Context, worker_id: WorkerId, secret: Secret) -> Result<(), RpcError> {
        if !self.knows(worker_id, &secret) {
            return Err(RpcError::NotFound(format!("worker {worker_id}")));
        }
        self.seen.lock().unwrap().heartbeats += 1;
        Ok(())
    }

    async fn fetch_plugin(
        self,
        _: Context,
        worker_id: WorkerId,
        secret: Secret,
        hash: String,
    ) -> Result<ByteBuf, RpcError> {
        if !self.knows(worker_id, &secret) {
            return Err(RpcError::Unauthorized("unknown worker".to_owned()));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.fetches += 1;
        seen.archives.get(&hash).map(|archive| ByteBuf::from(archive.clone())).ok_or(RpcError::NotFound(hash))
    }

    async fn upload_plugin(self, _: Context, _: Secret, _: ByteBuf) -> Result<String, RpcError> {
        not_here()
    }
    async fn create_job(self, _: Context, _: Secret, _: JobSpec) -> Result<JobId, RpcError> {
        not_here()
    }
    async fn upload_input(
        self,
        _: Context,
        _: Secret,
        _: JobId,
        _: u32,
        _: u64,
        _: SharedBytes,
    ) -> Result<(), RpcError> {
        not_here()
    }
    async fn finish_input(self, _: Context, _: Secret, _: JobId, _: u64) -> Result<(), RpcError> {
        not_here()
    }
    async fn watch(self, _: Context, _: Secret, _: JobId, _: u64) -> Result<JobStatus, RpcError> {
        not_here()
    }
    async fn result_piece(self, _: Context, _: Secret, _: JobId, _: u64) -> Result<ResultPiece, RpcError> {
        not_here()
    }
    async fn cancel(self, _: Context, _: Secret, _: JobId) -> Result<JobStatus, RpcError> {
        not_here()
    }
    async fn plugin_output(self, _: Context, _: Secret, _: JobId) -> Result<Vec<PluginOutput>, RpcError> {
        not_here()
    }
    async fn list_jobs(self, _: Context, _: Secret) -> Result<Vec<JobSummary>, RpcError> {
        not_here()
    }
    async fn cluster_info(self, _: Context, _: Secret) -> Result<ClusterInfo, RpcError> {
        not_here()
    }
    async fn remove_worker(self, _: Context, _: Secret, _: WorkerId) -> Result<(), RpcError> {
        not_here()
    }
}

/// Serves a stand-in controller on `addr` until the returned handle is aborted.
async fn serve_stand_in(addr: SocketAddr, stand_in: StandIn) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut incoming = tarpc::serde_transport::tcp::listen(addr, Bincode::default).await.unwrap();
    incoming.config_mut().max_frame_length(MAX_FRAME_BYTES);
    let addr = incoming.local_addr();
    let server = tokio::spawn(async move {
        incoming
            .filter_map(|transport| future::ready(transport.ok()))
            .map(BaseChannel::with_defaults)
            .for_each(|channel| {
                let stand_in = stand_in.clone();
                tokio::spawn(channel.execute(stand_in.serve()).for_each(|request| async move {
                    tokio::spawn(request);
                }));
                future::ready(())
            })
            .await
    });
    (addr, server)
}

async fn start_worker(controller: SocketAddr, token: &str, cache: &std::path::Path) -> RunningWorker {
    let mut builder = BuilderConfig::new(cache);
    builder.target_dir = plugin_target_dir();
    let executor = ExecutorConfig::new(env!("CARGO_BIN_EXE_kiln").into(), 2);
    // The stand-in speaks plain tarpc: the worker is given a plaintext token (TLS on every link
    // is shown with real processes in `cluster_tls.rs`).
    let token = Secret::new(format!("kiln-join-v2.plaintext.{token}"));
    service::start(WorkerConfig::new(controller.to_string(), token, builder, executor)).await.unwrap()
}

/// What `prepare` gets for the key holder's job of plugin `hash`.
fn plugin(hash: impl Into<String>, params: impl Into<String>, limits: ExecLimits) -> JobPlugin {
    JobPlugin { owner: "cli".into(), plugin_hash: hash.into(), params: params.into(), limits }
}

/// Waits until `check` holds for what the stand-in saw.
async fn until(stand_in: &StandIn, what: &str, check: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check(&stand_in.seen.lock().unwrap()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn worker_client(addr: SocketAddr) -> WorkerClient {
    let mut connect = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
    connect.config_mut().max_frame_length(MAX_FRAME_BYTES);
    WorkerClient::new(tarpc::client::Config::default(), connect.await.unwrap()).spawn()
}

/// A context whose deadline leaves room for a cold plugin build.
fn long() -> Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(600);
    ctx
}

fn current_secret(stand_in: &StandIn) -> Secret {
    stand_in.seen.lock().unwrap().known.as_ref().unwrap().worker_secret.clone()
}

fn is_unauthorized<T: std::fmt::Debug>(answer: Result<T, TaskError>) -> bool {
    matches!(answer, Err(TaskError::Rpc(RpcError::Unauthorized(_))))
}

/// Runs one chunk as a batch of one; answers its partial, or why the call or the chunk failed.
async fn run_one(
    client: &WorkerClient,
    secret: &Secret,
    job: JobId,
    first_line: u64,
    text: &[u8],
) -> Result<ByteBuf, TaskError> {
    let chunk = ChunkInput { file: "in".into(), first_line, text: ByteBuf::from(text.to_vec()), source: None };
    let mut results = client.run_chunks(long(), secret.clone(), job, vec![chunk]).await.unwrap()?.results;
    assert_eq!(results.len(), 1, "one result per chunk");
    results.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_chunks_only_for_its_controller_and_keeps_the_executor_warm() {
    let cache = tempfile::tempdir().unwrap();
    let stand_in = StandIn { seen: Arc::default() };
    let tree = read_source(&example("wordcount")).unwrap();
    let hash = tree.hash();
    stand_in.seen.lock().unwrap().archives.insert(hash.clone(), tree.to_tar_gz());
    let (addr, _server) = serve_stand_in("127.0.0.1:0".parse().unwrap(), stand_in.clone()).await;
    let worker = start_worker(addr, JOIN_TOKEN, cache.path()).await;
    until(&stand_in, "the registration", |seen| seen.known.is_some()).await;
    {
        let seen = stand_in.seen.lock().unwrap();
        let info = &seen.registrations[0];
        assert_eq!((info.address.as_str(), info.processes), (worker.local_addr().to_string().as_str(), 2));
    }
    let secret = current_secret(&stand_in);
    let client = worker_client(worker.local_addr()).await;
    let limits = ExecLimits::default();

    // A stranger is refused before anything happens: nothing is fetched or built.
    let stranger = Secret::generate();
    assert!(is_unauthorized(
        client.prepare(long(), stranger.clone(), 1, plugin(hash.clone(), String::new(), limits)).await.unwrap()
    ));
    let chunk = b"a b a\n";
    assert!(is_unauthorized(run_one(&client, &stranger, 1, 1, chunk).await));
    assert_eq!(stand_in.seen.lock().unwrap().fetches, 0);

    // Its controller prepares a job (fetch, build, executor) and runs chunks.
    assert_eq!(run_one(&client, &secret, 1, 1, chunk).await, Err(TaskError::NotPrepared(1)));
    client.prepare(long(), secret.clone(), 1, plugin(hash.clone(), String::new(), limits)).await.unwrap().unwrap();
    let first = run_one(&client, &secret, 1, 1, chunk).await.unwrap();
    let second = run_one(&client, &secret, 1, 2, b"b c\n").await.unwrap();
    let merged = client.combine(long(), secret.clone(), 1, vec![first.clone(), second.clone()]).await.unwrap().unwrap();
    assert!(merged.is_some(), "wordcount combines");
    let output = aggregated(&client, &secret, 1, vec![first, second]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&output).unwrap(),
        serde_json::json!({"a": 2, "b": 2, "c": 1})
    );
    assert!(is_unauthorized(client.aggregate(long(), stranger.clone(), 1, 0, 1, u64::MAX).await.unwrap()));
    assert!(is_unauthorized(client.stage_partials(long(), stranger.clone(), 1, 0, vec![]).await.unwrap()));
    assert!(is_unauthorized(client.fetch_output(long(), stranger.clone(), 1, 0).await.unwrap()));

    // A second job with the same plugin: no fetch, and its executor is warm at once.
    client.release(long(), secret.clone(), 1).await.unwrap().unwrap();
    let started = Instant::now();
    client.prepare(long(), secret.clone(), 2, plugin(hash.clone(), String::new(), limits)).await.unwrap().unwrap();
    // Not a speed figure: fetching and building the plugin again would take tens of seconds;
    // a 500 ms bound risked failing on a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(5), "prepare took {:?}", started.elapsed());
    assert_eq!(stand_in.seen.lock().unwrap().fetches, 1);
    let answer = run_one(&client, &secret, 1, 1, b"x\n").await;
    assert_eq!(answer, Err(TaskError::NotPrepared(1)), "job 1 was released");

    // Parameters the plugin refuses are fatal, not worth a retry.
    let refused =
        client.prepare(long(), secret.clone(), 3, plugin(hash.clone(), "nonsense".to_owned(), limits)).await.unwrap();
    assert!(
        matches!(&refused, Err(TaskError::Fatal(message)) if message.contains("takes no parameters")),
        "{refused:?}"
    );
    // A hash the controller does not have.
    let missing = client.prepare(long(), secret, 4, plugin("0".repeat(64), String::new(), limits)).await.unwrap();
    assert!(matches!(missing, Err(TaskError::Rpc(RpcError::NotFound(_)))), "{missing:?}");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_charged_to_the_chunk_that_caused_it_and_a_timeout_spares_the_others() {
    let cache = tempfile::tempdir().unwrap();
    let stand_in = StandIn { seen: Arc::default() };
    let tree = read_source(&fixture("misbehave")).unwrap();
    let hash = tree.hash();
    stand_in.seen.lock().unwrap().archives.insert(hash.clone(), tree.to_tar_gz());
    let (addr, _server) = serve_stand_in("127.0.0.1:0".parse().unwrap(), stand_in.clone()).await;
    let worker = start_worker(addr, JOIN_TOKEN, cache.path()).await;
    until(&stand_in, "the registration", |seen| seen.known.is_some()).await;
    let secret = current_secret(&stand_in);
    let client = worker_client(worker.local_addr()).await;
    let lines = |first: u64| (first..first + 10).map(|i| format!("line{i}\n")).collect::<String>();
    let run = |job: JobId, first: u64| {
        let (client, secret) = (client.clone(), secret.clone());
        tokio::spawn(async move { run_one(&client, &secret, job, first, lines(first).as_bytes()).await })
    };

    // The chunk at line 1 segfaults while the one at line 11 sleeps in the same executor: both
    // calls fail, each runs again alone, and only the culprit's failure comes back.
    let params = "segfault-at=1,sleep-at=11:1500".to_owned();
    client
        .prepare(long(), secret.clone(), 1, plugin(hash.clone(), params, ExecLimits::default()))
        .await
        .unwrap()
        .unwrap();
    let bystander = run(1, 11);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let culprit = run(1, 1).await.unwrap();
    assert!(matches!(&culprit, Err(TaskError::Crashed(m)) if m.contains("segmentation fault")), "{culprit:?}");
    let spared = bystander.await.unwrap();
    assert!(spared.is_ok(), "the bystander's partial, from a run alone: {spared:?}");

    // The chunk at line 1 loops past the job's 3 s timeout while the one at line 11 sleeps:
    // the culprit times out, the bystander is interrupted, which costs it no attempt.
    let params = "loop-at=1,sleep-at=11:2500".to_owned();
    let limits = ExecLimits { chunk_timeout_ms: 3_000, ..ExecLimits::default() };
    client.prepare(long(), secret.clone(), 2, plugin(hash.clone(), params, limits)).await.unwrap().unwrap();
    let culprit = run(2, 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let bystander = run(2, 11);
    let culprit = culprit.await.unwrap();
    assert!(matches!(&culprit, Err(TaskError::Crashed(m)) if m.contains("did not finish within 3 s")), "{culprit:?}");
    let interrupted = bystander.await.unwrap();
    assert!(matches!(&interrupted, Err(TaskError::Interrupted(_))), "{interrupted:?}");

    // The worker serves on with fresh executors.
    assert!(run(2, 21).await.unwrap().is_ok());
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_chunk_for_itself_whatever_its_neighbours_do() {
    let cache = tempfile::tempdir().unwrap();
    let stand_in = StandIn { seen: Arc::default() };
    let tree = read_source(&fixture("misbehave")).unwrap();
    let hash = tree.hash();
    stand_in.seen.lock().unwrap().archives.insert(hash.clone(), tree.to_tar_gz());
    let (addr, _server) = serve_stand_in("127.0.0.1:0".parse().unwrap(), stand_in.clone()).await;
    let worker = start_worker(addr, JOIN_TOKEN, cache.path()).await;
    until(&stand_in, "the registration", |seen| seen.known.is_some()).await;
    let secret = current_secret(&stand_in);
    let client = worker_client(worker.local_addr()).await;
    fn lines(first: u64) -> String {
        (first..first + 10).map(|i| format!("line{i}\n")).collect()
    }
    fn batch(firsts: &[u64]) -> Vec<ChunkInput> {
        firsts
            .iter()
            .map(|&first| ChunkInput {
                file: "in".into(),
                first_line: first,
                text: ByteBuf::from(lines(first)),
                source: None,
            })
            .collect()
    }

    let refused = client.run_chunks(long(), secret.clone(), 1, batch(&[1, 11])).await.unwrap();
    assert_eq!(refused, Err(TaskError::NotPrepared(1)), "the whole call is refused");
    let params = "panic-at=25,segfault-at=45,sleep-at=101:1000".to_owned();
    client.prepare(long(), secret.clone(), 1, plugin(hash, params, ExecLimits::default())).await.unwrap().unwrap();

    // A batch in the other slot, sleeping in the same executor when the segfault strikes: it is
    // a bystander, and its chunks answer normally (its sleeper run again alone if need be).
    let neighbour = {
        let (client, secret) = (client.clone(), secret.clone());
        tokio::spawn(async move { client.run_chunks(long(), secret, 1, batch(&[101, 111])).await.unwrap() })
    };
    let results =
        client.run_chunks(long(), secret.clone(), 1, batch(&[1, 11, 21, 31, 41, 51])).await.unwrap().unwrap().results;
    assert_eq!(results.len(), 6, "one result per chunk: {results:?}");
    assert!(
        matches!(&results[2], Err(TaskError::Plugin(m)) if m.contains("deliberate panic at line 25")),
        "{results:?}"
    );
    assert!(matches!(&results[4], Err(TaskError::Crashed(m)) if m.contains("segmentation fault")), "{results:?}");
    let neighbours = neighbour.await.unwrap().unwrap().results;
    assert!(neighbours.iter().all(Result::is_ok), "{neighbours:?}");

    // The chunks that succeeded, before and after the failures in their batch, hold their own
    // partials: aggregated with the neighbour's, they count exactly their lines.
    let partials: Vec<ByteBuf> = [0, 1, 3, 5]
        .into_iter()
        .map(|position| results[position].clone().unwrap())
        .chain(neighbours.into_iter().map(Result::unwrap))
        .collect();
    let output = aggregated(&client, &secret, 1, partials).await;
    let counted: Vec<String> = [1, 11, 31, 51, 101, 111]
        .into_iter()
        .flat_map(|first: u64| lines(first).lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let sum: usize = counted.iter().map(String::len).sum();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&output).unwrap(),
        serde_json::json!({"lines": counted.len(), "sum": sum})
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_again_when_the_controller_forgets_it_and_refuses_the_old_secret() {
    let cache = tempfile::tempdir().unwrap();
    let stand_in = StandIn { seen: Arc::default() };
    let (addr, _server) = serve_stand_in("127.0.0.1:0".parse().unwrap(), stand_in.clone()).await;
    let worker = start_worker(addr, JOIN_TOKEN, cache.path()).await;
    until(&stand_in, "the registration", |seen| seen.known.is_some()).await;
    until(&stand_in, "a heartbeat", |seen| seen.heartbeats >= 1).await;
    let old_secret = current_secret(&stand_in);

    // As after a restart: the controller no longer knows the worker.
    stand_in.seen.lock().unwrap().known = None;
    until(&stand_in, "a second registration", |seen| seen.known.is_some()).await;
    assert_eq!(stand_in.seen.lock().unwrap().registrations.len(), 2);
    let new_secret = current_secret(&stand_in);

    let client = worker_client(worker.local_addr()).await;
    assert!(is_unauthorized(client.release(long(), old_secret, 1).await.unwrap()));
    assert_eq!(client.release(long(), new_secret, 1).await.unwrap(), Ok(()));
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_trying_while_the_controller_is_away() {
    let cache = tempfile::tempdir().unwrap();
    // A free port with nothing behind it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let worker = start_worker(addr, JOIN_TOKEN, cache.path()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let stand_in = StandIn { seen: Arc::default() };
    let (_, _server) = serve_stand_in(addr, stand_in.clone()).await;
    let started = Instant::now();
    until(&stand_in, "the registration", |seen| seen.known.is_some()).await;
    assert!(started.elapsed() < Duration::from_secs(3), "backoff is capped at about 2 s");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_join_token_stops_the_worker_for_good() {
    let cache = tempfile::tempdir().unwrap();
    let stand_in = StandIn { seen: Arc::default() };
    let (addr, _server) = serve_stand_in("127.0.0.1:0".parse().unwrap(), stand_in.clone()).await;
    let worker = start_worker(addr, "not-the-token", cache.path()).await;

    let error = tokio::time::timeout(Duration::from_secs(10), worker.failed()).await.expect("the worker gives up");
    assert!(matches!(&error, WorkerError::Refused { error: RpcError::Unauthorized(_), .. }), "{error:?}");
    assert!(error.to_string().contains("--join-token"), "{error}");
    assert!(stand_in.seen.lock().unwrap().registrations.is_empty());
    worker.shutdown().await;
}

/// Aggregates the partials on the worker and reads the output back piece by piece, as the
/// controller does.
async fn aggregated(client: &WorkerClient, secret: &Secret, job: JobId, partials: Vec<ByteBuf>) -> String {
    let n_partials = partials.len() as u64;
    // In two pieces, as the controller sends partials a few MiB at a time.
    let mut partials = partials;
    let second = partials.split_off(partials.len() / 2);
    client.stage_partials(long(), secret.clone(), job, 0, partials).await.unwrap().unwrap();
    client
        .stage_partials(long(), secret.clone(), job, n_partials - second.len() as u64, second)
        .await
        .unwrap()
        .unwrap();
    let len = client.aggregate(long(), secret.clone(), job, n_partials, 1, u64::MAX).await.unwrap().unwrap().len;
    let mut output = Vec::new();
    while (output.len() as u64) < len {
        let piece = client.fetch_output(long(), secret.clone(), job, output.len() as u64).await.unwrap().unwrap();
        assert!(!piece.is_empty(), "the output ended early");
        output.extend_from_slice(&piece);
    }
    String::from_utf8(output).unwrap()
}
