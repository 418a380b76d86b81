//! The worker daemon: serves the [`Worker`] RPC service to the controller it registered with,
//! and keeps that registration alive.
//!
//! [`start`] binds the service, then a background task registers with the controller (with the
//! join token, over TLS checked against the CA the token pins, getting a certificate), sends a heartbeat every [`HEARTBEAT_INTERVAL`](crate::rpc::HEARTBEAT_INTERVAL)
//! and registers again by itself when the controller was away or forgot the worker (it
//! restarted), retrying with a backoff capped at 2 s. Registration hands the
//! worker a secret; every call to the service must carry the secret of the current
//! registration, compared in constant time before anything else happens.
//!
//! `prepare` finds the plugin in the build cache or fetches its archive from the controller and
//! builds it (one [`Builder`] for all jobs, so a plugin hash is built once per host), then gets
//! an executor for the job. An executor serves one job: it stays warm across the job's chunks
//! and is stopped when the job is released (in the sandbox with every process and thread the
//! plugin started), so nothing of one job's plugin outlives it or meets another job's data.
//! Plugin code runs only in those executor processes,
//! never in the worker itself. An executor that crashed or timed out is replaced by a fresh one
//! on the next call, and a crash is charged only to the chunk that caused it (see
//! [`crate::worker::runner`]).

mod metrics;
mod output;
mod referenced;
mod registrar;
mod round_trip;
mod slots;
mod state;
mod warm;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, future};
use serde_bytes::ByteBuf;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use self::metrics::WorkerMetrics;
use self::registrar::Registrar;
use self::state::{State, lock};
use crate::owner::Owner;
use crate::rpc::build::BuildProgress;
use crate::rpc::logs::{Aggregated, ChunkResults};
use crate::rpc::{ChunkInput, JobId, JobPlugin, RpcError, Secret, TaskError, Worker};
use crate::sandbox::{self, Unavailable};
use crate::telemetry::metrics::{Counted, MetricsEndpoint};
use crate::tls::TlsError;
use crate::tls::ca::WorkerKey;
use crate::tls::frames;
use crate::tls::gate::{Gate, PRE_AUTH_TIMEOUT};
use crate::tls::key::{Credential, Role, Trust};
use crate::tls::link;
use crate::worker::builder::{BuildError, Builder, BuilderConfig};
use crate::worker::executor::{ExecutorConfig, Partials};
use crate::worker::runner::AggregateError;

/// Connections one peer address may hold open to the service: the controller needs one or two;
/// the limit keeps a stranger from exhausting the worker's sockets.
const MAX_CHANNELS_PER_PEER: u32 = 8;

/// Plain-TCP connections that have made no authenticated call yet; each holds at most a
/// [`PRE_AUTH_FRAME_BYTES`](gate::PRE_AUTH_FRAME_BYTES) frame (see [`crate::tls::gate`]).
const MAX_UNAUTHENTICATED: usize = 16;

/// Requests in flight on one connection. The controller sends at most `processes` calls
/// (batches of chunks, a few MiB each) per job at once; anything beyond this is refused, which
/// bounds the chunk bytes held in memory.
const MAX_REQUESTS_PER_CHANNEL: usize = 256;

/// How a worker joins its controller and runs its work.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The controller's address, `host:port`.
    pub controller: String,
    /// The cluster's join token, as the controller printed it (`kiln-join-v2.…`).
    pub join_token: Secret,
    /// How many chunks the worker runs at once (the threads of each executor).
    pub processes: u32,
    /// Where the worker's service listens (`127.0.0.1:0` by default: a free port on loopback).
    pub listen: SocketAddr,
    /// The address the controller should dial; by default the bound address (with the address
    /// the worker reaches the controller from, when it listens on all interfaces).
    pub advertise: Option<String>,
    /// Where plugins are built and cached.
    pub builder: BuilderConfig,
    /// How executors are started (`threads` is set from `processes`).
    pub executor: ExecutorConfig,
    /// Allows a plaintext join token with a `listen` address other hosts reach
    /// (`--insecure-plaintext-allow-remote`).
    pub plaintext_allow_remote: bool,
    /// Where to serve Prometheus metrics (`/metrics`); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The owner whose target directory gets the plugin template's dependencies compiled in
    /// the background at start ([`Builder::warm`]), so its first upload compiles only its own
    /// crate; `None`: no warm-up. By default the API key's holder, who owns every job that
    /// `kiln submit` creates.
    pub warm_owner: Option<Owner>,
}

impl WorkerConfig {
    /// A worker of `controller` listening on a free loopback port, running as many chunks at
    /// once as `executor.threads`.
    pub fn new(
        controller: impl Into<String>,
        join_token: Secret,
        builder: BuilderConfig,
        executor: ExecutorConfig,
    ) -> Self {
        WorkerConfig {
            controller: controller.into(),
            join_token,
            processes: u32::try_from(executor.threads).unwrap_or(u32::MAX).max(1),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            advertise: None,
            builder,
            executor,
            plaintext_allow_remote: false,
            metrics_listen: None,
            warm_owner: Some(Owner::key_holder()),
        }
    }
}

/// Why a worker could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The service's address could not be bound.
    #[error("cannot listen on {addr}: {source}: pick another --listen address")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// The join token is not usable.
    #[error("cannot use the join token: {0}")]
    Token(TlsError),
    /// A plaintext cluster, and a listen address other hosts reach.
    #[error(
        "refusing to serve plain TCP on {addr}, which is not a loopback address: the join token is for an \
         --insecure-plaintext controller; listen on loopback, or add --insecure-plaintext-allow-remote if this \
         network is yours alone"
    )]
    PlaintextRemote { addr: SocketAddr },
    /// The controller refused the registration for good (wrong join token, other protocol).
    #[error("the controller at {controller} refused this worker: {error}{}", refusal_hint(.error))]
    Refused {
        /// The controller's address.
        controller: String,
        /// Its answer.
        error: RpcError,
    },
    /// The host cannot sandbox plugins, and the configuration did not allow running them
    /// unconfined.
    #[error("this host cannot sandbox plugins: {0}: {hint}", hint = sandbox::REFUSAL_HINT)]
    NoSandbox(#[from] Unavailable),
}

fn refusal_hint(error: &RpcError) -> &'static str {
    match error {
        RpcError::Unauthorized(message) if message.contains("removed") || message.contains("belongs to") => "",
        RpcError::Unauthorized(_) => ": check the join token (--join-token or KILN_JOIN_TOKEN)",
        RpcError::VersionMismatch { .. } => ": run the same Kiln version on the controller and its workers",
        _ => "",
    }
}

/// A running worker: its service and its registration task. Dropping it stops the service
/// without waiting; [`RunningWorker::shutdown`] waits.
pub struct RunningWorker {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    refused: watch::Receiver<Option<RpcError>>,
    controller: String,
    tasks: JoinSet<()>,
    state: Arc<State>,
    metrics: Option<MetricsEndpoint>,
}

impl RunningWorker {
    /// The address the service is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address metrics are served on, when they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// Waits until the worker fails in a way it cannot recover from: the controller refused
    /// its join token or protocol version. Pending forever while the worker is fine.
    pub async fn failed(&self) -> WorkerError {
        let mut refused = self.refused.clone();
        match refused.wait_for(Option::is_some).await {
            Ok(error) => {
                let error = error.clone().unwrap_or_else(|| RpcError::Internal("unknown refusal".to_owned()));
                WorkerError::Refused { controller: self.controller.clone(), error }
            }
            // The registration task is gone without a refusal: only shutdown does that.
            Err(_) => future::pending().await,
        }
    }

    /// Stops registering and serving, stops every executor, and waits until all is done.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.state.forget_everything();
    }
}

/// Binds the worker's service on `config.listen` and starts registering with the controller.
///
/// Returns once the service listens; registration goes on in the background and retries while
/// the controller is away. See [`RunningWorker::failed`] for refusals.
pub async fn start(config: WorkerConfig) -> Result<RunningWorker, WorkerError> {
    if config.executor.sandbox {
        tokio::task::spawn_blocking(sandbox::probe).await.unwrap_or_else(|e| {
            Err(Unavailable { feature: sandbox::Feature::Seccomp, reason: format!("the probe panicked: {e}") })
        })?;
    } else {
        tracing::warn!("plugins run without a sandbox (--insecure-no-sandbox): they have this worker's rights");
    }
    let token = Credential::parse(Role::Worker, config.join_token.expose()).map_err(WorkerError::Token)?;
    let key = match token.trust {
        Trust::Pinned(_) => Some(Arc::new(WorkerKey::generate().map_err(WorkerError::Token)?)),
        Trust::Plaintext if !config.listen.ip().is_loopback() && !config.plaintext_allow_remote => {
            return Err(WorkerError::PlaintextRemote { addr: config.listen });
        }
        Trust::Plaintext => None,
        Trust::WebPki => {
            return Err(WorkerError::Token(TlsError::BadKey(
                "a join token pins the cluster's own CA, never `pki`: use the token the controller printed".to_owned(),
            )));
        }
    };
    let bind_error = |source| WorkerError::Bind { addr: config.listen, source };
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;

    let mut registry = crate::telemetry::metrics::new_registry();
    let metrics = WorkerMetrics::register(&mut registry);
    let metrics_endpoint = match config.metrics_listen {
        Some(addr) => Some(
            crate::telemetry::metrics::serve(addr, registry)
                .await
                .map_err(|source| WorkerError::Bind { addr, source })?,
        ),
        None => None,
    };

    let processes = config.processes.max(1);
    let executor =
        ExecutorConfig { threads: processes as usize, counters: metrics.executors.clone(), ..config.executor.clone() };
    let builder = config.builder.clone().sandboxed_like_executors(&executor.program, executor.sandbox);
    let builder = Builder::new(builder);
    let state = Arc::new(State::new(builder.clone(), executor, metrics.clone()));
    let (stop, stop_rx) = watch::channel(false);
    let (refused_tx, refused) = watch::channel(None);
    let mut tasks = JoinSet::new();
    if let Some(owner) = config.warm_owner.clone() {
        // Beside registration, not before it: the worker takes jobs at once, and a build that
        // comes meanwhile waits on the owner's build lock, then finds the dependencies compiled.
        tasks.spawn(warm::warm(builder, owner, metrics));
    }
    tasks.spawn(serve(listener, key.is_some(), WorkerServer { state: Arc::clone(&state), gate: Gate::opened() }));
    let registrar = Registrar {
        controller: config.controller.clone(),
        trust: token.trust,
        join_token: token.secret,
        key,
        advertise: config.advertise.clone(),
        local_addr,
        processes,
        state: Arc::clone(&state),
        round_trip: Default::default(),
    };
    tasks.spawn(registrar.run(stop_rx, refused_tx));
    tracing::info!(%local_addr, controller = %config.controller, processes, "worker listening");
    Ok(RunningWorker {
        local_addr,
        stop,
        refused,
        controller: config.controller,
        tasks,
        state,
        metrics: metrics_endpoint,
    })
}

/// Accepts connections with limits per peer and per connection; each connection is served in
/// its own task (TLS handshake first, with the certificate of the current registration: none
/// is accepted before the first), which ends with this one.
async fn serve(listener: tokio::net::TcpListener, tls: bool, server: WorkerServer) {
    let per_peer: Arc<Mutex<HashMap<IpAddr, u32>>> = Arc::default();
    let unauthenticated = Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED));
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // Reap finished connections so the set does not grow with every one ever accepted.
        while connections.try_join_next().is_some() {}
        let config = if tls {
            match lock(&server.state.link).server_tls.clone() {
                Some(config) => Some(config),
                None => continue,
            }
        } else {
            None
        };
        {
            let mut counts = lock(&per_peer);
            let count = counts.entry(peer.ip()).or_insert(0);
            if *count >= MAX_CHANNELS_PER_PEER {
                tracing::warn!(peer = %peer, "{MAX_CHANNELS_PER_PEER} connections from this address are open: refusing another");
                continue;
            }
            *count += 1;
        }
        // Over TLS only the controller gets through the handshake; on plain TCP a link is
        // trusted once a call on it carried the secret.
        let gate = if tls {
            Gate::opened()
        } else {
            match Arc::clone(&unauthenticated).try_acquire_owned() {
                Ok(permit) => Gate::closed(permit),
                Err(_) => {
                    tracing::warn!(
                        peer = %peer,
                        "{MAX_UNAUTHENTICATED} connections have made no authenticated call yet: refusing another"
                    );
                    release_peer(&per_peer, peer.ip());
                    continue;
                }
            }
        };
        let (server, per_peer) = (server.clone(), Arc::clone(&per_peer));
        connections.spawn(async move {
            match link::accept(tcp, config).await {
                Ok(link) => serve_link(link, WorkerServer { gate, ..server }).await,
                Err(e) => tracing::info!(peer = %peer, "closed a connection whose TLS handshake failed: {e}"),
            }
            release_peer(&per_peer, peer.ip());
        });
    }
}

/// Serves a link's calls until it closes, it breaks, or it goes [`PRE_AUTH_TIMEOUT`] without
/// an authenticated call.
async fn serve_link(link: link::Link, server: WorkerServer) {
    let peer = link.peer_addr();
    let gate = server.gate.clone();
    let transport = frames::accepted(link, gate.clone())
        .inspect_err(move |e| tracing::info!(peer = %peer, "closed a broken connection: {e}"));
    let calls = server.state.metrics.rpc.clone();
    let serve = BaseChannel::with_defaults(transport)
        .max_concurrent_requests(MAX_REQUESTS_PER_CHANNEL)
        .execute(Counted::new(server.serve(), calls))
        .for_each_concurrent(None, |request| request);
    tokio::select! {
        () = serve => {}
        () = gate.still_closed_after(PRE_AUTH_TIMEOUT) => tracing::info!(
            peer = %peer,
            "closed a connection that made no authenticated call within {} s",
            PRE_AUTH_TIMEOUT.as_secs()
        ),
    }
}

fn release_peer(per_peer: &Mutex<HashMap<IpAddr, u32>>, ip: IpAddr) {
    let mut counts = lock(per_peer);
    if let Some(count) = counts.get_mut(&ip) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&ip);
        }
    }
}

/// The [`Worker`] service.
#[derive(Clone)]
struct WorkerServer {
    state: Arc<State>,
    /// The link's gate, opened by the first call that carries the secret.
    gate: Gate,
}

impl WorkerServer {
    /// Checks the secret a call carries; a link that passes reads large frames from now on.
    async fn authorize(&self, secret: &Secret) -> Result<(), TaskError> {
        self.state.authorize(secret).await?;
        self.gate.open();
        Ok(())
    }
}

impl Worker for WorkerServer {
    async fn prepare(self, _: Context, secret: Secret, job: JobId, plugin: JobPlugin) -> Result<(), TaskError> {
        self.authorize(&secret).await?;
        let JobPlugin { owner, plugin_hash, params, limits } = plugin;
        let owner = Owner::parse(&owner)
            .map_err(|error| RpcError::Invalid(format!("the controller sent an unusable owner: {error}")))?;
        // In a task of its own, so a build the controller stopped waiting for still finishes
        // and the next `prepare` finds it done (or joins it) instead of starting over.
        let state = Arc::clone(&self.state);
        tokio::spawn(async move { state.prepare(job, owner, plugin_hash, params, limits).await })
            .await
            .unwrap_or_else(|e| Err(RpcError::Internal(format!("preparing job {job} failed: {e}")).into()))
    }

    async fn run_chunks(
        self,
        _: Context,
        secret: Secret,
        job: JobId,
        chunks: Vec<ChunkInput>,
    ) -> Result<ChunkResults, TaskError> {
        self.authorize(&secret).await?;
        let runner = self.state.job_runner(job)?;
        let n_chunks = chunks.len();
        let first_line = chunks.first().map_or(0, |chunk| chunk.first_line);
        let bytes: u64 = chunks.iter().map(|chunk| chunk.text.len() as u64).sum();
        let span = tracing::info_span!("run_chunks", job, first_line, chunks = n_chunks);
        // Chunks of an input read by reference are read here, from the store, while the call
        // may wait for a slot (a compressed object is streamed in the slot); one that cannot be
        // read answers why, and the others run.
        let read = referenced::read_chunks(&self.state, &runner, chunks).instrument(span.clone()).await;
        let referenced::ReadChunks { texts, mut places, mut lines, streamed } = read;
        let state = Arc::clone(&self.state);
        let run = async move {
            let started = std::time::Instant::now();
            let answers = runner.run_batch(job, texts).await;
            let mut streamed_answers = Vec::with_capacity(streamed.len());
            for (position, file, source) in streamed {
                let (answer, read) = referenced::run_compressed(&runner, job, file, &source).await;
                state.metrics.read_by_reference(read.bytes);
                streamed_answers.push((position, answer, read.lines));
            }
            (answers, streamed_answers, started.elapsed())
        };
        let (answers, streamed, elapsed) = self.state.slots.run(run.instrument(span.clone())).await?;
        let mut answers = answers.into_iter();
        for (position, answer, n_lines) in streamed {
            places[position] = referenced::Place::Answered(answer);
            lines[position] = n_lines;
        }
        let mut printed = Vec::new();
        let results: Vec<Result<Bytes, TaskError>> = places
            .into_iter()
            .enumerate()
            .map(|(position, place)| {
                let answer = match place {
                    referenced::Place::Failed(error) => return Err(error),
                    referenced::Place::Batched => answers.next(),
                    referenced::Place::Answered(answer) => Some(answer),
                };
                match answer {
                    Some(answer) => {
                        printed.push((position, answer.output));
                        answer.result
                    }
                    None => Err(TaskError::Crashed("the chunk was not run".into())),
                }
            })
            .collect();
        let failed = results.iter().filter(|result| result.is_err()).count();
        self.state.metrics.record_call(n_chunks, failed, bytes, elapsed);
        span.in_scope(|| tracing::debug!(failed, ?elapsed, "chunks run"));
        Ok(ChunkResults { results: output::bound_answers(results), printed: output::bound_printed(printed), lines })
    }

    async fn combine(
        self,
        _: Context,
        secret: Secret,
        job: JobId,
        partials: Vec<ByteBuf>,
    ) -> Result<Option<ByteBuf>, TaskError> {
        self.authorize(&secret).await?;
        let runner = self.state.job_runner(job)?;
        let partials = partials.into_iter().map(|p| Bytes::from(p.into_vec())).collect();
        let merged = self.state.slots.run(async move { runner.combine(partials).await }).await??;
        merged.map(output::bound_merged).transpose()
    }

    async fn stage_partials(
        self,
        _: Context,
        secret: Secret,
        job: JobId,
        first: u64,
        partials: Vec<ByteBuf>,
    ) -> Result<(), TaskError> {
        self.authorize(&secret).await?;
        self.state.job_runner(job)?;
        self.state.outputs.stage(self.state.output_dir(), job, first, partials).await
    }

    async fn aggregate(
        self,
        _: Context,
        secret: Secret,
        job: JobId,
        n_partials: u64,
        input_files: u64,
        max_result_bytes: u64,
    ) -> Result<Aggregated, TaskError> {
        self.authorize(&secret).await?;
        let runner = self.state.job_runner(job)?;
        let partials = self.state.outputs.take_staged(job, n_partials)?;
        let file = output::Outputs::create_file(self.state.output_dir())?;
        let kept = file.try_clone().map_err(|e| RpcError::Internal(format!("cannot open the result's file: {e}")))?;
        let (len, printed) = runner.aggregate(Partials::Staged(partials), input_files, file, max_result_bytes).await;
        let len = len.map_err(|error| match error {
            error @ AggregateError::TooLarge { .. } => {
                TaskError::Fatal(format!("{error}: raise the controller's --max-result-size"))
            }
            AggregateError::Task(error) => error,
        })?;
        self.state.outputs.keep(job, kept, len);
        Ok(Aggregated { len, stdout: printed.stdout, stderr: printed.stderr, cut: printed.cut })
    }

    async fn fetch_output(self, _: Context, secret: Secret, job: JobId, offset: u64) -> Result<ByteBuf, TaskError> {
        self.authorize(&secret).await?;
        self.state.outputs.read(job, offset).await
    }

    async fn release(self, _: Context, secret: Secret, job: JobId) -> Result<(), TaskError> {
        self.authorize(&secret).await?;
        self.state.release(job).await;
        Ok(())
    }

    async fn build_progress(self, _: Context, secret: Secret, job: JobId) -> Result<Option<BuildProgress>, TaskError> {
        self.state.authorize(&secret).await?;
        Ok(self.state.build_progress(job))
    }
}

/// The answer for a build failure: the plugin's own fault (cargo's words) or the worker's.
fn build_error(error: BuildError) -> RpcError {
    match error {
        BuildError::Compile { diagnostics } => RpcError::Build(diagnostics),
        error @ (BuildError::NotCdylib { .. } | BuildError::Cargo { .. } | BuildError::Timeout { .. }) => {
            RpcError::Build(error.to_string())
        }
        error => RpcError::Internal(error.to_string()),
    }
}
