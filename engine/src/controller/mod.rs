//! The controller: takes jobs from clients, cuts their input into chunks, pushes the chunks to
//! workers and stores partials and results, so that a restarted controller resumes its jobs.
//!
//! # Layout
//! - `service`: the tarpc [`Controller`](crate::rpc::Controller) service; checks credentials.
//! - `input`: spooling uploaded input to disk and cutting it into chunks.
//! - `state`: the controller's data, below its behaviour: jobs, chunks, combine groups,
//!   workers, timings and spools, with private fields and the methods that keep them agreeing.
//! - `action`: the scheduler's decisions, as an enum; `plan`: what to start now.
//! - `batch`: which queued chunks one call to a worker carries (how many: `rules::batch`).
//! - `calls`: deadlines and how a call's failure is classified; `ending`: ending a job.
//! - `disk`: a full disk under the data directory, told as such to clients.
//! - `results`: results on disk, fetched from workers and read by clients in pieces.
//! - `speculation`: speculative copies of slow chunks.
//! - `dispatch`: the scheduler task and the calls it makes to workers.
//! - `workers`: registration, connections to workers, heartbeats.
//! - `links`: keys, TLS set-up, the accept loop, worker certificates and removed workers.
//! - `metrics`: the controller's Prometheus metrics.
//! - `store`: every SQL query (SQLite, `engine/migrations/`).
//!
//! # On disk, in the data directory
//! - `controller.db`: jobs, chunk states, partials and results.
//! - `inputs/<job>.txt`: a job's input, deleted when the job ends.
//! - `results/<job>.json`: a succeeded job's result, fetched from its worker piece by piece
//!   (`results/<job>.json.part` until complete); older jobs may hold theirs in the database.
//! - `plugins/<hash>.tar.gz`: uploaded plugin archives, by content hash.
//! - `api_key`, `join_token`: the keys as users copy them (`kiln-key-v2.…`, `kiln-join-v2.…`),
//!   when not given (mode 0600).
//! - `tls/ca.key` (mode 0600), `tls/ca.pem`: the cluster's certificate authority, whose
//!   fingerprint the keys carry; `tls/removed_workers`: public keys of removed workers.

mod action;
mod batch;
mod calls;
mod disk;
mod dispatch;
mod ending;
mod input;
mod links;
mod metrics;
mod plan;
mod reference;
mod results;
mod service;
mod speculation;
mod state;
mod store;
mod watchdog;
mod workers;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tracing::info;

use self::links::Links;
use self::metrics::ControllerMetrics;
use self::service::ControllerService;
use self::state::State;
use self::state::job::Job;
use self::state::spool::Spool;
use self::store::ChunkRow;
use self::store::Store;
use crate::input::allow::UrlPrefix;
use crate::rpc::{JobId, Secret};
use crate::telemetry::metrics::MetricsEndpoint;
use crate::tls::gate::Gate;
use crate::tls::key::Credential;
use crate::tls::{Fingerprint, TlsError};

/// How long a worker may stay silent before it is declared lost (three heartbeats).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a job's upload may go without a new byte of input before the job fails as
/// abandoned (its client gave up, or is gone): clients keep retrying for a few minutes.
pub const DEFAULT_UPLOAD_ABANDON: Duration = Duration::from_secs(600);

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Where to listen for clients and workers.
    pub listen: SocketAddr,
    /// Where the database, inputs, plugins and secrets live.
    pub data_dir: PathBuf,
    /// The API key clients must give (its secret, or a whole `kiln-key-v2.…` key); `None`:
    /// read `<data_dir>/api_key`, or generate it there.
    pub api_key: Option<Secret>,
    /// The token workers must give (its secret, or a whole `kiln-join-v2.…` token); `None`:
    /// read `<data_dir>/join_token`, or generate it there.
    pub join_token: Option<Secret>,
    /// How long a worker may stay silent before its work goes elsewhere.
    pub heartbeat_timeout: Duration,
    /// How long an upload may go without a new byte before its job fails as abandoned.
    pub upload_abandon: Duration,
    /// Plain TCP instead of TLS (`--insecure-plaintext`): only on a loopback address unless
    /// `plaintext_allow_remote`.
    pub plaintext: bool,
    /// Allows plain TCP on an address other hosts reach (`--insecure-plaintext-allow-remote`).
    pub plaintext_allow_remote: bool,
    /// An operator's certificate chain and key (PEM files) to present to clients instead of
    /// the cluster's own; clients then check it against the system roots or a CA file.
    pub operator_cert: Option<(PathBuf, PathBuf)>,
    /// How long the certificates issued to workers are valid; workers renew them before.
    pub worker_cert_lifetime: Duration,
    /// Where to serve Prometheus metrics (`/metrics`); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The largest result a job may have (`--max-result-size`); a job whose output is longer
    /// fails with a message that names both sizes and the flag.
    pub max_result_bytes: u64,
    /// The longest line an input may have (`--max-line-size`; the workers apply it to the
    /// inputs they read by reference): a chunk holds at least
    /// one line, so this bounds the memory a chunk takes where a line is longer than a chunk.
    pub max_line_bytes: usize,
    /// The directories below which `file://` inputs may be read (`--file-input-root`); none:
    /// `file://` inputs are refused, so a client cannot make workers read their hosts' files.
    pub file_input_roots: Vec<PathBuf>,
    /// The prefixes below which `s3://` and `http(s)://` inputs may be read
    /// (`--input-url-allow`); none: such inputs are refused, so a client cannot make the
    /// cluster fetch whatever URL its network reaches.
    pub input_url_allow: Vec<UrlPrefix>,
    /// Calls sent to each worker per slot ahead of its free slots (`--prefetch`, pipelined
    /// slots): they wait on the worker and run as soon as a slot frees, so that the link's
    /// latency is hidden. 0: a call is sent only to a free slot.
    pub prefetch: u32,
}

/// Calls sent to each worker per slot ahead of its free slots by default: one hides a link's
/// round trip while it is shorter than a call's run (see `plan`).
pub const DEFAULT_PREFETCH: u32 = 1;

impl ControllerConfig {
    /// A configuration with stored or generated secrets and the default heartbeat timeout.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        ControllerConfig {
            listen,
            data_dir,
            api_key: None,
            join_token: None,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            upload_abandon: DEFAULT_UPLOAD_ABANDON,
            plaintext: false,
            plaintext_allow_remote: false,
            operator_cert: None,
            worker_cert_lifetime: crate::tls::ca::DEFAULT_WORKER_CERT_LIFETIME,
            metrics_listen: None,
            max_result_bytes: crate::rules::limits::DEFAULT_MAX_RESULT_BYTES,
            max_line_bytes: crate::rules::chunk::DEFAULT_MAX_LINE_BYTES,
            file_input_roots: Vec::new(),
            input_url_allow: Vec::new(),
            prefetch: DEFAULT_PREFETCH,
        }
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The data directory could not be made.
    #[error("cannot create the data directory {path}: {source}: check its permissions")]
    DataDir { path: PathBuf, source: io::Error },
    /// A secret file could not be read or written.
    #[error("cannot read or write the secret file {path}: {source}")]
    SecretFile { path: PathBuf, source: io::Error },
    /// A secret is empty.
    #[error("the {what} is empty: give a non-empty one, or delete {path} to have one generated")]
    EmptySecret { what: &'static str, path: PathBuf },
    /// The database could not be opened.
    #[error("cannot open the controller database {path}: {source}")]
    Database { path: PathBuf, source: sqlx::Error },
    /// The database could not be brought to the current schema.
    #[error("cannot migrate the controller database {path}: {source}: was it written by a newer kiln?")]
    Migrate { path: PathBuf, source: sqlx::migrate::MigrateError },
    /// The stored jobs could not be read back.
    #[error("cannot resume the jobs stored in {path}: {message}")]
    Resume { path: PathBuf, message: String },
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}: is another controller running there?")]
    Listen { addr: SocketAddr, source: io::Error },
    /// The cluster's CA or certificates could not be made or read.
    #[error("cannot set up TLS: {0}")]
    Tls(TlsError),
    /// Plain TCP was asked for on an address other hosts reach.
    #[error(
        "refusing --insecure-plaintext on {addr}, which is not a loopback address: anyone on the network could \
         read the keys, plugins and inputs; drop --insecure-plaintext, or add --insecure-plaintext-allow-remote \
         if this network is yours alone"
    )]
    PlaintextRemote { addr: SocketAddr },
}

/// A controller serving on its address, until [`RunningController::shutdown`].
pub struct RunningController {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    generated: Vec<&'static str>,
    /// The accept loop, the scheduler and the heartbeat reaper.
    tasks: JoinSet<()>,
    metrics: Option<MetricsEndpoint>,
}

impl RunningController {
    /// The address the controller listens on (with the real port when given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address metrics are served on, when they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// The secret of the API key clients must give (what travels in calls).
    pub fn api_key(&self) -> &Secret {
        &self.shared.api_key
    }

    /// The secret of the token workers must give (what travels in `register`).
    pub fn join_token(&self) -> &Secret {
        &self.shared.join_token
    }

    /// The API key as clients are given it: `kiln-key-v2.<trust>.<secret>`.
    pub fn client_key(&self) -> &Credential {
        &self.shared.links.api_key
    }

    /// The join token as workers are given it: `kiln-join-v2.<trust>.<secret>`.
    pub fn worker_token(&self) -> &Credential {
        &self.shared.links.join_token
    }

    /// The fingerprint of the cluster's CA; `None` on a plaintext controller.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.shared.links.tls.as_ref().map(|tls| tls.ca.fingerprint())
    }

    /// Which secrets (`"api_key"`, `"join_token"`) were generated by this start, to print once.
    pub fn generated(&self) -> Vec<&'static str> {
        self.generated.clone()
    }

    /// Stops accepting connections, abandons the calls in flight (their chunks run again when
    /// the controller restarts), closes the connections to workers and the database.
    pub async fn shutdown(mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(self.metrics.take());
        self.tasks.shutdown().await;
        let mut background =
            std::mem::take(&mut *self.shared.background.lock().unwrap_or_else(PoisonError::into_inner));
        background.shutdown().await;
        self.shared.with_state(State::disconnect_workers);
        self.shared.store.close().await;
        info!(addr = %self.local_addr, "controller stopped");
    }
}

/// What every part of the controller shares.
struct Shared {
    data_dir: PathBuf,
    api_key: Secret,
    join_token: Secret,
    links: Links,
    heartbeat_timeout: Duration,
    store: Store,
    state: Mutex<State>,
    /// Wakes the scheduler: something changed that may let work start.
    wake: Notify,
    /// Wakes the heartbeat reaper: a worker registered.
    reaper_wake: Notify,
    next_worker_id: AtomicU64,
    /// Set when shutdown begins: from then on no job ends (see `ending::end_job`), since calls
    /// still unwinding may find the store closed and would fail jobs a restart resumes.
    stopping: AtomicBool,
    /// Tasks started by calls (worker connections, input cutting), ended at shutdown.
    background: Mutex<JoinSet<()>>,
    /// What is counted as it happens, for the metrics.
    metrics: ControllerMetrics,
    /// The largest result a job may have.
    max_result_bytes: u64,
    /// The longest line an input may have (uploaded, or read by reference by the workers).
    max_line_bytes: usize,
    /// Where `file://` inputs may be read ([`ControllerConfig::file_input_roots`]).
    file_input_roots: Vec<PathBuf>,
    /// Where `s3://` and `http(s)://` inputs may be read ([`ControllerConfig::input_url_allow`]).
    input_url_allow: Vec<UrlPrefix>,
}

impl Shared {
    /// Runs `f` on the state, under its lock; `f` must not block.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Tells the scheduler to look again.
    fn wake(&self) {
        self.wake.notify_one();
    }

    fn input_path(&self, job: JobId) -> PathBuf {
        self.data_dir.join("inputs").join(format!("{job}.txt"))
    }

    fn plugin_path(&self, hash: &str) -> PathBuf {
        self.data_dir.join("plugins").join(format!("{hash}.tar.gz"))
    }

    fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
        let mut tasks = self.background.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task)
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Starts a controller: opens its store, resumes unfinished jobs and serves on `listen`.
pub async fn start(config: ControllerConfig) -> Result<RunningController, ControllerError> {
    let data_dir = config.data_dir.clone();
    for dir in [data_dir.clone(), data_dir.join("inputs"), data_dir.join("plugins"), data_dir.join("results")] {
        tokio::fs::create_dir_all(&dir).await.map_err(|source| ControllerError::DataDir { path: dir, source })?;
    }
    let links::SetUp { links, generated } = links::set_up(&config).await?;
    let store = Store::open(&data_dir.join("controller.db")).await?;
    let shared = Arc::new(Shared {
        data_dir: data_dir.clone(),
        api_key: links.api_key.secret.clone(),
        join_token: links.join_token.secret.clone(),
        links,
        heartbeat_timeout: config.heartbeat_timeout,
        store,
        state: Mutex::new(State::with_prefetch(config.prefetch)),
        wake: Notify::new(),
        reaper_wake: Notify::new(),
        next_worker_id: AtomicU64::new(1),
        stopping: AtomicBool::new(false),
        background: Mutex::new(JoinSet::new()),
        metrics: ControllerMetrics::new(),
        max_result_bytes: config.max_result_bytes,
        max_line_bytes: config.max_line_bytes,
        file_input_roots: config.file_input_roots.clone(),
        input_url_allow: config.input_url_allow.clone(),
    });
    let mut registry = crate::telemetry::metrics::new_registry();
    shared.metrics.register(&mut registry, Arc::downgrade(&shared));
    let metrics = match config.metrics_listen {
        Some(addr) => match crate::telemetry::metrics::serve(addr, registry).await {
            Ok(endpoint) => Some(endpoint),
            Err(source) => {
                shared.store.close().await;
                return Err(ControllerError::Listen { addr, source });
            }
        },
        None => None,
    };
    let listener = match resume(&shared).await {
        Ok(()) => tokio::net::TcpListener::bind(config.listen).await,
        Err(e) => {
            shared.store.close().await;
            return Err(e);
        }
    };
    let listener = match listener.and_then(|listener| listener.local_addr().map(|addr| (listener, addr))) {
        Ok(bound) => bound,
        Err(source) => {
            shared.store.close().await;
            return Err(ControllerError::Listen { addr: config.listen, source });
        }
    };
    let (listener, local_addr) = listener;
    let service = ControllerService { shared: Arc::clone(&shared), peer: None, gate: Gate::opened() };
    let server = shared.links.tls.as_ref().map(|tls| Arc::clone(&tls.server));
    let mut tasks = JoinSet::new();
    tasks.spawn(links::accept_loop(listener, server, service));
    tasks.spawn(dispatch::run_scheduler(Arc::clone(&shared)));
    tasks.spawn(workers::run_reaper(Arc::clone(&shared)));
    tasks.spawn(watchdog::run(Arc::clone(&shared), config.upload_abandon));
    info!(addr = %local_addr, data_dir = %data_dir.display(), "controller listening");
    Ok(RunningController { shared, local_addr, generated, tasks, metrics })
}

/// Loads the jobs that had not ended: chunks with a stored partial stay done, the rest run
/// again.
async fn resume(shared: &Shared) -> Result<(), ControllerError> {
    let db = shared.data_dir.join("controller.db");
    let resume_error = |e: store::StoreError| ControllerError::Resume { path: db.clone(), message: e.to_string() };
    let rows = shared.store.unfinished_jobs().await.map_err(resume_error)?;
    for row in rows {
        let job_id = row.id;
        let state = row.figures.state;
        let chunks = shared.store.chunks(job_id).await.map_err(resume_error)?;
        let combined = shared.store.combined_groups(job_id).await.map_err(resume_error)?;
        let mut chunks = chunks;
        let objects = reference::resume_objects(shared, job_id)
            .await
            .map_err(|message| ControllerError::Resume { path: db.clone(), message })?;
        if let Some(objects) = objects {
            // Read by reference: nothing was spooled, and every chunk was planned at creation.
            let spool = Spool::new(shared.input_path(job_id), row.spec.chunk_size);
            let mut job = Job::resume(row, chunks, &combined, spool);
            job.set_objects(objects);
            info!(job = job_id, state = ?job.state(), chunks_done = job.chunks_done(), "job resumed");
            shared.with_state(|st| st.add_job(job));
            continue;
        }
        let (spool, lost) = match input::resume_input(shared, job_id, state, row.spec.chunk_size, &chunks).await {
            Ok(input) => {
                let cut_again = input.new_chunks.into_iter();
                chunks.extend(cut_again.map(|meta| ChunkRow { meta, done: false, attempts: 0 }));
                (input.spool, None)
            }
            Err(message) => (Spool::new(shared.input_path(job_id), row.spec.chunk_size), Some(message)),
        };
        let received = spool.received();
        let mut job = Job::resume(row, chunks, &combined, spool);
        if !job.input_complete() {
            job.received(received);
            job.publish();
        }
        info!(job = job_id, state = ?job.state(), chunks_done = job.chunks_done(), n_chunks = job.n_chunks(), "job resumed");
        shared.with_state(|st| st.add_job(job));
        if let Some(message) = lost {
            ending::fail_internal(shared, job_id, message).await;
        }
    }
    Ok(())
}
