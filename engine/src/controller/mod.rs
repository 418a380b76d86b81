//! The controller: takes jobs from clients, cuts their input into chunks, pushes the chunks to
//! workers and stores partials and results, so that a restarted controller resumes its jobs.
//!
//! # Layout
//! - `service`: the tarpc [`Controller`](crate::rpc::Controller) service; checks credentials.
//! - `input`: spooling uploaded input to disk and cutting it into chunks.
//! - `jobs`: jobs and chunks in memory.
//! - `plan`: the scheduling plan: what to start now.
//! - `batch`: how many queued chunks one call to a worker carries.
//! - `speculation`: speculative copies of slow chunks.
//! - `dispatch`: the scheduler task and the calls it makes to workers.
//! - `workers`: registration, connections to workers, heartbeats.
//! - `store`: every SQL query (SQLite, `engine/migrations/`).
//!
//! # On disk, in the data directory
//! - `controller.db`: jobs, chunk states, partials and results.
//! - `inputs/<job>.txt`: a job's input, deleted when the job ends.
//! - `plugins/<hash>.tar.gz`: uploaded plugin archives, by content hash.
//! - `api_key`, `join_token`: the secrets, when not given (mode 0600).

mod batch;
mod dispatch;
mod input;
mod jobs;
mod plan;
mod service;
mod speculation;
mod store;
mod workers;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{StreamExt, future};
use tarpc::server::incoming::Incoming;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{info, warn};

use self::input::Spool;
use self::jobs::{Job, State};
use self::service::ControllerService;
use self::store::ChunkRow;
use self::store::Store;
use crate::rpc::{Controller as _, ControllerRequest, ControllerResponse, JobId, MAX_FRAME_BYTES, Secret};

/// How long a worker may stay silent before it is declared lost (three heartbeats).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections from one IP address: a host runs a worker and a few clients; a web app relaying
/// many users may hold a few dozen.
const MAX_CHANNELS_PER_IP: u32 = 64;

/// Connections in all, so that a flood of them cannot exhaust file descriptors.
const MAX_CHANNELS: usize = 1024;

/// Requests in flight on one connection: long-polls of many jobs, uploads, and a margin.
const MAX_REQUESTS_PER_CHANNEL: usize = 128;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Where to listen for clients and workers.
    pub listen: SocketAddr,
    /// Where the database, inputs, plugins and secrets live.
    pub data_dir: PathBuf,
    /// The API key clients must give; `None`: read `<data_dir>/api_key`, or generate it there.
    pub api_key: Option<Secret>,
    /// The token workers must give; `None`: read `<data_dir>/join_token`, or generate it there.
    pub join_token: Option<Secret>,
    /// How long a worker may stay silent before its work goes elsewhere.
    pub heartbeat_timeout: Duration,
}

impl ControllerConfig {
    /// A configuration with stored or generated secrets and the default heartbeat timeout.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        ControllerConfig {
            listen,
            data_dir,
            api_key: None,
            join_token: None,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
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
}

/// A controller serving on its address, until [`RunningController::shutdown`].
pub struct RunningController {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    generated: Vec<&'static str>,
    /// The accept loop, the scheduler and the heartbeat reaper.
    tasks: JoinSet<()>,
}

impl RunningController {
    /// The address the controller listens on (with the real port when given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The API key clients must give.
    pub fn api_key(&self) -> &Secret {
        &self.shared.api_key
    }

    /// The token workers must give.
    pub fn join_token(&self) -> &Secret {
        &self.shared.join_token
    }

    /// Which secrets (`"api_key"`, `"join_token"`) were generated by this start, to print once.
    pub fn generated(&self) -> Vec<&'static str> {
        self.generated.clone()
    }

    /// Stops accepting connections, abandons the calls in flight (their chunks run again when
    /// the controller restarts), closes the connections to workers and the database.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        let mut background =
            std::mem::take(&mut *self.shared.background.lock().unwrap_or_else(PoisonError::into_inner));
        background.shutdown().await;
        self.shared.with_state(|st| {
            for worker in st.workers.values() {
                worker.disconnect();
            }
            st.workers.clear();
        });
        self.shared.store.close().await;
        info!(addr = %self.local_addr, "controller stopped");
    }
}

/// What every part of the controller shares.
struct Shared {
    data_dir: PathBuf,
    api_key: Secret,
    join_token: Secret,
    heartbeat_timeout: Duration,
    store: Store,
    state: Mutex<State>,
    /// Wakes the scheduler: something changed that may let work start.
    wake: Notify,
    /// Wakes the heartbeat reaper: a worker registered.
    reaper_wake: Notify,
    next_worker_id: AtomicU64,
    /// Tasks started by calls (worker connections, input cutting), ended at shutdown.
    background: Mutex<JoinSet<()>>,
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
    let data_dir = config.data_dir;
    for dir in [data_dir.clone(), data_dir.join("inputs"), data_dir.join("plugins")] {
        tokio::fs::create_dir_all(&dir).await.map_err(|source| ControllerError::DataDir { path: dir, source })?;
    }
    let mut generated = Vec::new();
    let api_key = load_secret(config.api_key, &data_dir.join("api_key"), "API key").await?;
    let join_token = load_secret(config.join_token, &data_dir.join("join_token"), "join token").await?;
    for (name, (_, fresh)) in [("api_key", &api_key), ("join_token", &join_token)] {
        if *fresh {
            generated.push(name);
        }
    }
    let store = Store::open(&data_dir.join("controller.db")).await?;
    let shared = Arc::new(Shared {
        data_dir: data_dir.clone(),
        api_key: api_key.0,
        join_token: join_token.0,
        heartbeat_timeout: config.heartbeat_timeout,
        store,
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        reaper_wake: Notify::new(),
        next_worker_id: AtomicU64::new(1),
        background: Mutex::new(JoinSet::new()),
    });
    let listener = match resume(&shared).await {
        Ok(()) => tarpc::serde_transport::tcp::listen(config.listen, Bincode::default).await,
        Err(e) => {
            shared.store.close().await;
            return Err(e);
        }
    };
    let mut listener = match listener {
        Ok(listener) => listener,
        Err(source) => {
            shared.store.close().await;
            return Err(ControllerError::Listen { addr: config.listen, source });
        }
    };
    listener.config_mut().max_frame_length(MAX_FRAME_BYTES);
    let local_addr = listener.local_addr();
    let service = ControllerService { shared: Arc::clone(&shared) };
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut channels = JoinSet::new();
        let all_channels = Arc::new(Semaphore::new(MAX_CHANNELS));
        let mut incoming = listener
            .filter_map(|accepted| future::ready(accepted.map_err(|e| warn!("cannot accept a connection: {e}")).ok()))
            .map(BaseChannel::<ControllerRequest, ControllerResponse, _>::with_defaults)
            .max_channels_per_key(MAX_CHANNELS_PER_IP, |channel| {
                channel.transport().peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip())
            });
        while let Some(channel) = incoming.next().await {
            while channels.try_join_next().is_some() {}
            let Ok(permit) = Arc::clone(&all_channels).try_acquire_owned() else {
                warn!("{MAX_CHANNELS} connections are open: refusing another");
                continue;
            };
            let service = service.clone();
            channels.spawn(async move {
                let _permit = permit;
                channel
                    .max_concurrent_requests(MAX_REQUESTS_PER_CHANNEL)
                    .execute(service.serve())
                    .for_each_concurrent(None, |request| request)
                    .await;
            });
        }
    });
    tasks.spawn(dispatch::run_scheduler(Arc::clone(&shared)));
    tasks.spawn(workers::run_reaper(Arc::clone(&shared)));
    info!(addr = %local_addr, data_dir = %data_dir.display(), "controller listening");
    Ok(RunningController { shared, local_addr, generated, tasks })
}

/// The given secret, or the one stored at `path`, or a new one stored there (mode 0600);
/// answers whether it was generated.
async fn load_secret(
    given: Option<Secret>,
    path: &Path,
    what: &'static str,
) -> Result<(Secret, bool), ControllerError> {
    let file_error = |source| ControllerError::SecretFile { path: path.to_owned(), source };
    let empty = || ControllerError::EmptySecret { what, path: path.to_owned() };
    if let Some(secret) = given {
        return if secret.expose().is_empty() { Err(empty()) } else { Ok((secret, false)) };
    }
    match tokio::fs::read_to_string(path).await {
        Ok(text) if text.trim().is_empty() => Err(empty()),
        Ok(text) => Ok((Secret::new(text.trim()), false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = Secret::generate();
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .await
                .map_err(file_error)?;
            file.write_all(format!("{}\n", secret.expose()).as_bytes()).await.map_err(file_error)?;
            file.sync_all().await.map_err(file_error)?;
            // The mode above is filtered by the umask; make sure of it.
            tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).await.map_err(file_error)?;
            Ok((secret, true))
        }
        Err(e) => Err(file_error(e)),
    }
}

/// Loads the jobs that had not ended: chunks with a stored partial stay done, the rest run
/// again.
async fn resume(shared: &Shared) -> Result<(), ControllerError> {
    let db = shared.data_dir.join("controller.db");
    let resume_error = |e: store::StoreError| ControllerError::Resume { path: db.clone(), message: e.to_string() };
    let rows = shared.store.unfinished_jobs().await.map_err(resume_error)?;
    for row in rows {
        let job_id = row.id;
        let state = row.state;
        let chunks = shared.store.chunks(job_id).await.map_err(resume_error)?;
        let combined = shared.store.combined_groups(job_id).await.map_err(resume_error)?;
        let mut chunks = chunks;
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
            job.bytes_total = received;
            job.publish();
        }
        info!(job = job_id, state = ?job.state, chunks_done = job.chunks_done, n_chunks = job.n_chunks, "job resumed");
        shared.with_state(|st| {
            st.run_queue.push(job_id);
            st.jobs.insert(job_id, job);
        });
        if let Some(message) = lost {
            dispatch::fail_internal(shared, job_id, message).await;
        }
    }
    Ok(())
}
