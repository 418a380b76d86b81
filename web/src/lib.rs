//! Kiln's web application: users register, upload plugins as tasks, save the clusters they
//! own, start tasks on them with an input file, watch the progress live and read the results.
//!
//! [`start`] opens the database (SQLite in the data directory, or PostgreSQL), starts the
//! embedded cluster when asked, watches again the runs that had not ended, and serves HTTP;
//! [`run`] does the same until a shutdown future completes. `main.rs` only parses flags.
//!
//! # Layout
//! - [`http`]: routes, handlers, templates, sessions, CSRF, errors and their status codes.
//! - [`store`]: every SQL query, one module per resource, on SQLite and PostgreSQL alike.
//! - [`runs`]: submitting runs to controllers, watching their jobs, relaying progress.
//! - [`cluster`]: the embedded "local" cluster (a controller and workers in this process).
//! - [`security`]: password hashing, tokens and the login rate limit.
//! - [`sealing`]: the secret key, and cluster API keys sealed with it at rest.
//! - [`metrics`]: the web app's Prometheus metrics, on an address of their own.

pub mod cluster;
pub mod http;
pub mod metrics;
pub mod runs;
pub mod sealing;
pub mod security;
pub mod store;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_engine::input::allow::UrlPrefix;
use salvo::Server;
use salvo::conn::tcp::TcpAcceptor;
use salvo::server::ServerHandle;
use tokio::task::JoinHandle;

use crate::cluster::{EmbeddedCluster, EmbeddedConfig, EmbeddedError};
use crate::http::App;
use crate::metrics::WebMetrics;
use crate::runs::inputs::InputKeeper;
use crate::runs::results::ResultFiles;
use crate::runs::{RunError, RunManager};
use crate::sealing::{KeyError, KeyOrigin, SecretKey};
use crate::security::LoginLimiter;
use crate::store::{Store, StoreError};

/// The default largest input file: 1 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// The largest plugin file (a `lib.rs` or an archive of a crate): 50 MiB, the controller's own
/// limit on plugin archives.
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 50 << 20;

/// How long a login lasts.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// How long a login lasts without a request.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);

/// How long a run's input is kept for "Run again".
pub const DEFAULT_INPUT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How often expired sessions and kept inputs are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// How long in-flight requests may take to finish at shutdown.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(5);

/// How the web app runs.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Where to serve HTTP.
    pub listen: SocketAddr,
    /// Where the SQLite database, the secret key, uploads in progress and the embedded cluster
    /// live; readable by the server's user only (mode 0700).
    pub data_dir: PathBuf,
    /// The key that seals cluster API keys in the database; `None`: the one in
    /// `<data_dir>/secret.key`, made on first start.
    pub secret_key: Option<SecretKey>,
    /// A `postgres://` (or `sqlite://`) URL; `None`: SQLite at `<data_dir>/kiln.db`.
    pub database_url: Option<String>,
    /// Whether to start the embedded cluster and offer it to every user as "local".
    pub embedded_cluster: bool,
    /// The largest input file accepted.
    pub max_upload_bytes: u64,
    /// The largest plugin file accepted.
    pub max_plugin_bytes: u64,
    /// The longest result kept (in `<data_dir>/results/`); a longer one fails its run. The
    /// embedded controller gets the same limit (its `--max-result-size`).
    pub max_result_bytes: u64,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// How long a login lasts without a request (the idle timeout).
    pub session_idle: Duration,
    /// How long a run's input is kept in `<data_dir>/inputs/` for "Run again" (zero: not kept).
    pub input_retention: Duration,
    /// Whether cookies are marked `Secure` (set it when a proxy serves the app over HTTPS).
    pub secure_cookies: bool,
    /// The program the embedded workers start as `PROGRAM exec` to run plugin code; `None`:
    /// this executable (the `kiln-web` binary serves `exec`).
    pub executor_program: Option<PathBuf>,
    /// The cargo target directory of the embedded workers' plugin builds; `None`:
    /// `<data_dir>/cluster/plugin-target`.
    pub plugin_target_dir: Option<PathBuf>,
    /// How many embedded workers to start.
    pub embedded_workers: usize,
    /// Chunks each embedded worker runs at once.
    pub worker_processes: u32,
    /// The chunk size of every run, in bytes (0: the controller's default, 4 MiB).
    pub chunk_bytes: u64,
    /// Whether the embedded workers run plugins in the sandbox; without it (only by
    /// `--insecure-no-sandbox`) they run with the server's rights and warn on every job. With
    /// it, a host that cannot sandbox refuses to start the embedded cluster.
    pub sandbox: bool,
    /// Directories (resolved) whose files runs on the embedded cluster may name as `file://`
    /// inputs, read by its workers; none: such inputs are refused.
    pub file_input_roots: Vec<PathBuf>,
    /// Prefixes below which runs on the embedded cluster may name `s3://` and `http(s)://`
    /// inputs; none: such inputs are refused (a web user must not make it fetch any URL).
    pub input_url_allow: Vec<UrlPrefix>,
    /// Where to serve Prometheus metrics (`/metrics`), apart from the site; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
}

impl WebConfig {
    /// The defaults: http://127.0.0.1:8080, SQLite in `data_dir`, the embedded cluster with 2
    /// workers sharing the machine's cores, 1 GiB inputs.
    pub fn new(data_dir: impl Into<PathBuf>) -> WebConfig {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: data_dir.into(),
            secret_key: None,
            database_url: None,
            embedded_cluster: true,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES,
            max_result_bytes: kiln_engine::rules::limits::DEFAULT_MAX_RESULT_BYTES,
            session_ttl: DEFAULT_SESSION_TTL,
            session_idle: DEFAULT_SESSION_IDLE,
            input_retention: DEFAULT_INPUT_RETENTION,
            secure_cookies: false,
            executor_program: None,
            plugin_target_dir: None,
            embedded_workers: 2,
            worker_processes: u32::try_from((cores / 2).max(1)).unwrap_or(1),
            chunk_bytes: 0,
            sandbox: true,
            file_input_roots: Vec::new(),
            input_url_allow: Vec::new(),
            metrics_listen: None,
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| Store::sqlite_url(&self.data_dir.join("kiln.db")))
    }
}

/// Why the web app could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The data directory could not be made.
    #[error("cannot create {path}: {source}: check the permissions of the data directory")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The data directory could not be made private.
    #[error("cannot make the data directory {path} private (mode 0700): {source}: check who owns it")]
    DataDirMode {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The secret key could not be had.
    #[error(transparent)]
    SecretKey(#[from] KeyError),
    /// The database holds sealed API keys but the key that sealed them is gone.
    #[error(
        "the database holds {count} sealed cluster API keys but the secret key file {} is missing and \
         KILN_WEB_SECRET_KEY is not set: restore the file (or set the variable to the key) that sealed them; \
         to give them up, set KILN_WEB_SECRET_KEY to a new key (`openssl rand -hex 32`) and have users enter \
         their clusters' keys again",
        path.display()
    )]
    SecretKeyMissing {
        /// Where the file should be.
        path: PathBuf,
        /// How many keys are sealed.
        count: i64,
    },
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded cluster did not start.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// Runs could not be resumed.
    #[error("cannot watch the unfinished runs again: {0}")]
    Resume(#[from] RunError),
    /// The executable's path is unknown (for the embedded workers' executors).
    #[error("cannot find this executable to run plugins with: {0}: set the executor program")]
    CurrentExe(io::Error),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}: is another server running there?")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
}

/// A running web app, until [`RunningWeb::shutdown`].
pub struct RunningWeb {
    local_addr: SocketAddr,
    store: Store,
    runs: Arc<RunManager>,
    embedded: Option<EmbeddedCluster>,
    server: ServerHandle,
    serving: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    metrics: Option<kiln_engine::telemetry::metrics::MetricsEndpoint>,
}

impl RunningWeb {
    /// The address HTTP is served on (with the real port when given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address metrics are served on, when they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(kiln_engine::telemetry::metrics::MetricsEndpoint::local_addr)
    }

    /// The app's database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops serving (letting requests in flight finish), stops watching runs (they are picked
    /// up again at the next start), stops the embedded cluster and closes the database.
    pub async fn shutdown(self) {
        drop(self.metrics);
        self.server.stop_graceful(GRACEFUL_SHUTDOWN);
        let _ = self.serving.await;
        self.sweeper.abort();
        self.runs.shutdown().await;
        if let Some(embedded) = self.embedded {
            embedded.shutdown().await;
        }
        self.store.close().await;
        tracing::info!(addr = %self.local_addr, "web server stopped");
    }
}

/// Starts the web app and returns once it serves.
pub async fn start(config: WebConfig) -> Result<RunningWeb, WebError> {
    let upload_dir = config.data_dir.join("uploads");
    let plugin_dir = config.data_dir.join("plugins");
    let input_dir = config.data_dir.join("inputs");
    let result_dir = config.data_dir.join("results");
    make_private_dir(&config.data_dir).await?;
    for dir in [&upload_dir, &plugin_dir, &input_dir, &result_dir] {
        tokio::fs::create_dir_all(dir).await.map_err(|source| WebError::DataDir { path: dir.clone(), source })?;
    }
    remove_stale_uploads(&upload_dir).await;
    let store = open_store(&config).await?;
    let embedded = match start_embedded(&config).await {
        Ok(embedded) => embedded,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    if embedded.is_some() {
        // Users who registered while the embedded cluster was off get it too.
        for user_id in store.user_ids().await? {
            store.ensure_local_cluster(user_id).await?;
        }
    }
    let web_metrics = WebMetrics::default();
    let results = ResultFiles::new(result_dir, config.max_result_bytes);
    let runs = RunManager::new(
        store.clone(),
        embedded.as_ref().map(EmbeddedCluster::target),
        upload_dir.clone(),
        plugin_dir.clone(),
        config.chunk_bytes,
        results.clone(),
        web_metrics.clone(),
    );
    let resumed = runs.resume().await?;
    let mut registry = kiln_engine::telemetry::metrics::new_registry();
    web_metrics.register(&mut registry, &runs);
    let metrics = match config.metrics_listen {
        Some(addr) => match kiln_engine::telemetry::metrics::serve(addr, registry).await {
            Ok(endpoint) => Some(endpoint),
            Err(source) => {
                runs.shutdown().await;
                if let Some(embedded) = embedded {
                    embedded.shutdown().await;
                }
                store.close().await;
                return Err(WebError::Listen { addr, source });
            }
        },
        None => None,
    };
    let app = Arc::new(App {
        store: store.clone(),
        runs: Arc::clone(&runs),
        limiter: LoginLimiter::default(),
        upload_dir,
        plugin_dir,
        max_input_bytes: config.max_upload_bytes,
        max_plugin_bytes: config.max_plugin_bytes,
        session_ttl: config.session_ttl,
        session_idle: config.session_idle,
        inputs: InputKeeper::new(input_dir, config.input_retention),
        results: results.clone(),
        secure_cookies: config.secure_cookies,
        embedded_cluster: embedded.is_some(),
        metrics: web_metrics,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebError::Listen { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| WebError::Listen { addr: config.listen, source })?;
    let acceptor =
        TcpAcceptor::try_from(listener).map_err(|source| WebError::Listen { addr: config.listen, source })?;
    let server = Server::new(acceptor);
    let handle = server.handle();
    let inputs = app.inputs.clone();
    let service = http::service(app);
    let serving = tokio::spawn(async move { server.serve(service).await });
    let sweeper = tokio::spawn(sweep(store.clone(), config.session_idle, inputs, results));
    tracing::info!(addr = %local_addr, resumed, "serving http://{local_addr}");
    Ok(RunningWeb { local_addr, store, runs, embedded, server: handle, serving, sweeper, metrics })
}

/// Runs the web app until `shutdown` completes, then stops it cleanly.
pub async fn run(config: WebConfig, shutdown: impl Future<Output = ()>) -> Result<(), WebError> {
    let web = start(config).await?;
    shutdown.await;
    web.shutdown().await;
    Ok(())
}

async fn start_embedded(config: &WebConfig) -> Result<Option<EmbeddedCluster>, WebError> {
    if !config.embedded_cluster {
        return Ok(None);
    }
    let executor_program = match &config.executor_program {
        Some(program) => program.clone(),
        None => std::env::current_exe().map_err(WebError::CurrentExe)?,
    };
    let embedded = EmbeddedConfig {
        dir: config.data_dir.join("cluster"),
        executor_program,
        plugin_target_dir: config.plugin_target_dir.clone(),
        workers: config.embedded_workers,
        processes: config.worker_processes,
        sandbox: config.sandbox,
        file_input_roots: config.file_input_roots.clone(),
        input_url_allow: config.input_url_allow.clone(),
        max_result_bytes: config.max_result_bytes,
    };
    Ok(Some(cluster::start(&embedded).await?))
}

/// Makes the data directory (mode 0700) or tightens an existing one to 0700: it holds the
/// database, the secret key and users' uploads.
async fn make_private_dir(dir: &Path) -> Result<(), WebError> {
    let create = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)).await
    };
    create
        .map_err(io::Error::other)
        .and_then(|created| created)
        .map_err(|source| WebError::DataDir { path: dir.to_owned(), source })?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(|source| WebError::DataDirMode { path: dir.to_owned(), source })
}

/// Opens the database with the secret key, writing a new key only when the database holds no
/// key sealed with another, then seals any API key still in plain text.
async fn open_store(config: &WebConfig) -> Result<Store, WebError> {
    let (secret_key, origin) =
        match &config.secret_key {
            Some(key) => (key.clone(), KeyOrigin::Environment),
            None => {
                let data_dir = config.data_dir.clone();
                tokio::task::spawn_blocking(move || SecretKey::load(&data_dir)).await.map_err(|e| {
                    KeyError::File { action: "read", path: config.data_dir.clone(), source: io::Error::other(e) }
                })??
            }
        };
    let store = Store::open(&config.database_url(), secret_key.clone()).await?;
    let checked = check_secret_key(&store, &secret_key, &origin).await;
    if let Err(e) = checked {
        store.close().await;
        return Err(e);
    }
    Ok(store)
}

async fn check_secret_key(store: &Store, secret_key: &SecretKey, origin: &KeyOrigin) -> Result<(), WebError> {
    if let KeyOrigin::New(path) = origin {
        let count = store.sealed_api_key_count().await?;
        if count > 0 {
            return Err(WebError::SecretKeyMissing { path: path.clone(), count });
        }
        let (key, path) = (secret_key.clone(), path.clone());
        tokio::task::spawn_blocking(move || key.write_new(&path)).await.map_err(|e| KeyError::File {
            action: "create",
            path: PathBuf::new(),
            source: io::Error::other(e),
        })??;
        tracing::info!("made a new secret key to seal cluster API keys with");
    }
    let sealed = store.seal_plain_api_keys().await?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed the cluster API keys stored in plain text");
    }
    for unreadable in store.unreadable_api_keys().await? {
        tracing::error!(cluster = unreadable.cluster_id, "{unreadable}");
    }
    Ok(())
}

/// Deletes uploads left by a server that stopped while receiving them.
async fn remove_stale_uploads(dir: &std::path::Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        let removed =
            if path.is_dir() { tokio::fs::remove_dir_all(&path).await } else { tokio::fs::remove_file(&path).await };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), "cannot remove a stale upload: {e}");
        }
    }
}

/// Deletes expired and idle sessions, the kept inputs whose time has passed and the results
/// no run names, now and then.
async fn sweep(store: Store, idle: Duration, inputs: InputKeeper, results: ResultFiles) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    let idle_ms = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
    loop {
        interval.tick().await;
        match store.delete_expired_sessions(idle_ms).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, "expired sessions deleted"),
            Err(e) => tracing::warn!("cannot delete expired sessions: {e}"),
        }
        match inputs.sweep(&store).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, "kept inputs removed"),
            Err(e) => tracing::warn!("cannot remove the kept inputs whose time has passed: {e}"),
        }
        match results.sweep(&store).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, "results no run names removed"),
            Err(e) => tracing::warn!("cannot remove the results no run names: {e}"),
        }
    }
}
