//! The controller's tests' cluster: the controller started in-process through
//! `kiln_engine::controller::start`, driven with a raw tarpc `ControllerClient`, and fake
//! workers (`fake_worker.rs`) that serve the real `Worker` service on 127.0.0.1:0 and register
//! through the real `register`. Included with `#[path = "util/fake_cluster.rs"] mod
//! fake_cluster;` beside `#[path = "util/fake_worker.rs"] mod fake_worker;`.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use kiln_engine::controller::{ControllerConfig, RunningController, start};
use kiln_engine::plugin_source::SourceTree;
use kiln_engine::rpc::pieces::SharedBytes;
use kiln_engine::rpc::{
    ControllerClient, JobId, JobSpec, JobStatus, MAX_FRAME_BYTES, PROTOCOL_VERSION, RpcError, Secret, Worker,
    WorkerInfo,
};
use serde_bytes::ByteBuf;
use tarpc::context::{self, Context};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::task::JoinSet;

use crate::fake_worker::{Attempts, FakeWorker, Faults, Knobs, RunningWorker};

/// Small chunks, so that inputs of a few dozen KiB make dozens of chunks.
pub const CHUNK_SIZE: u64 = 1024;

/// A controller in its temporary directory, a client holding its API key, and the faults and
/// attempts its fake workers share.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub controller: RunningController,
    pub client: ControllerClient,
    pub key: Secret,
    pub faults: Arc<Faults>,
    pub attempts: Attempts,
}

/// A client of the controller at `addr`, over plain tarpc.
pub async fn connect(addr: SocketAddr) -> ControllerClient {
    let mut connect = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
    connect.config_mut().max_frame_length(MAX_FRAME_BYTES);
    ControllerClient::new(tarpc::client::Config::default(), connect.await.expect("controller reachable")).spawn()
}

/// A controller on loopback without TLS: these tests speak tarpc to it directly, as fake
/// workers and clients (TLS on every link is shown with real processes in `cluster_tls.rs`).
pub async fn start_controller(data_dir: &Path) -> RunningController {
    let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap(), data_dir.to_path_buf());
    config.plaintext = true;
    start(config).await.expect("controller starts")
}

/// A context whose deadline outlasts a long-poll.
pub fn long() -> Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(30);
    ctx
}

impl Cluster {
    /// A controller without faults.
    pub async fn new() -> Cluster {
        Cluster::with_faults(Faults::default()).await
    }

    /// A controller whose fake workers fail the chunks `faults` names.
    pub async fn with_faults(faults: Faults) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let controller = start_controller(dir.path()).await;
        let client = connect(controller.local_addr()).await;
        let key = controller.api_key().clone();
        Cluster { dir, controller, client, key, faults: Arc::new(faults), attempts: Arc::default() }
    }

    /// Starts a fake worker and registers it with `processes` slots.
    pub async fn worker(&self, name: &'static str, knobs: Knobs, processes: u32) -> RunningWorker {
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

    /// Uploads a one-file plugin (the fake workers ignore it); answers its hash.
    pub async fn upload_plugin(&self) -> String {
        let archive = SourceTree::from_single_file(b"// counted by the fake workers\n").unwrap().to_tar_gz();
        self.client.upload_plugin(context::current(), self.key.clone(), ByteBuf::from(archive)).await.unwrap().unwrap()
    }

    /// The spec of a job in `CHUNK_SIZE` chunks.
    pub async fn spec(&self, processes: u32, max_attempts: u32) -> JobSpec {
        JobSpec {
            owner: "cli".into(),
            plugin_hash: self.upload_plugin().await,
            params: String::new(),
            processes,
            input_name: "words.txt".into(),
            input_files: Vec::new(),
            input_urls: Vec::new(),
            max_attempts,
            chunk_size: CHUNK_SIZE,
            memory_limit: 0,
            chunk_timeout_ms: 0,
            speculative: true,
        }
    }

    /// Creates a job and uploads its input in pieces; answers its id once queued.
    pub async fn submit(&self, text: &str, processes: u32, max_attempts: u32) -> JobId {
        let spec = self.spec(processes, max_attempts).await;
        self.submit_spec(text, spec).await
    }

    /// Creates a job of this spec and uploads its input in pieces; answers its id once queued.
    pub async fn submit_spec(&self, text: &str, spec: JobSpec) -> JobId {
        let job = self.client.create_job(context::current(), self.key.clone(), spec).await.unwrap().unwrap();
        let mut offset = 0;
        for piece in text.as_bytes().chunks(10_000) {
            let piece = SharedBytes::from(piece.to_vec());
            let taken = self.client.upload_input(context::current(), self.key.clone(), job, 0, offset, piece).await;
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
    pub async fn ended_while_uploading(&self, job: JobId, answer: Result<(), RpcError>) -> bool {
        match answer {
            Ok(()) => false,
            Err(RpcError::Invalid(message)) if message.contains("can no longer change") => {
                assert!(self.finish(job).await.state.is_final(), "{message}");
                true
            }
            Err(e) => panic!("job {job}'s input was refused: {e}"),
        }
    }

    /// The job's status once its `seq` is past `seen`, as the controller's long-poll answers it.
    pub async fn watch(&self, job: JobId, seen: u64) -> JobStatus {
        self.client.watch(long(), self.key.clone(), job, seen).await.unwrap().unwrap()
    }

    /// Watches a job until `done` holds of its status.
    pub async fn wait_until(&self, job: JobId, done: impl Fn(&JobStatus) -> bool) -> JobStatus {
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut status = self.watch(job, u64::MAX).await;
        while !done(&status) {
            assert!(Instant::now() < give_up, "job {job} stuck: {status:?}");
            status = self.watch(job, status.seq).await;
        }
        status
    }

    /// Watches a job until it has ended.
    pub async fn finish(&self, job: JobId) -> JobStatus {
        self.wait_until(job, |status| status.state.is_final()).await
    }

    /// The job's result, as the controller answers it, read piece by piece.
    pub async fn result(&self, job: JobId) -> Result<String, RpcError> {
        let mut bytes = Vec::new();
        loop {
            let piece = self
                .client
                .result_piece(context::current(), self.key.clone(), job, bytes.len() as u64)
                .await
                .unwrap()?;
            bytes.extend_from_slice(&piece.bytes);
            if bytes.len() as u64 >= piece.total {
                return Ok(String::from_utf8(bytes).unwrap());
            }
        }
    }

    /// Shuts the controller down.
    pub async fn stop(self) {
        self.controller.shutdown().await;
    }
}

/// Deterministic text: `n_lines` lines of one to eight words from a small vocabulary.
pub fn words(seed: u64, n_lines: usize) -> String {
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

/// Lines of a few bytes, each a chunk of its own when cut with a chunk size of one byte.
pub fn short_lines(n_lines: u64) -> String {
    (1..=n_lines).map(|line| format!("w{} x\n", line % 97)).collect()
}

/// Submits `text` cut into one chunk per line, without speculative copies (so that a chunk
/// runs twice only when it failed).
pub async fn submit_line_per_chunk(cluster: &Cluster, text: &str, processes: u32, max_attempts: u32) -> JobId {
    let spec = JobSpec { chunk_size: 1, speculative: false, ..cluster.spec(processes, max_attempts).await };
    cluster.submit_spec(text, spec).await
}
