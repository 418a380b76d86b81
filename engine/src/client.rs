//! The client library: submit jobs to a controller, watch them, fetch their results, cancel and
//! list them. `kiln submit` and the other job commands use it, and so does the web app.
//!
//! A [`Client`] holds one connection to the controller and opens a new one when it breaks.
//! Every connection is TLS, checked against the CA whose fingerprint the API key carries (or
//! the system roots, or a CA file, for a `pki` key) before the key's secret is sent;
//! watching a job ([`Client::watch`], [`Client::wait`]) keeps retrying for a while, so a watcher
//! survives a controller restart. Plugins and inputs are uploaded in pieces of at most
//! [`MAX_PIECE_BYTES`], read from disk (or any reader) as they go: an input is never held whole
//! in memory. An input is an ordered list of files ([`Client::submit_files`]: files,
//! directories, glob patterns), uploaded one after another, each decompressed as it is read
//! when it is gzip or zstd.
//!
//! # Example
//!
//! ```no_run
//! use futures::StreamExt;
//! use kiln_engine::client::{Client, SubmitOptions};
//! use kiln_engine::rpc::{JobState, Secret};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let key = Secret::new("kiln-key-v2.<the CA's fingerprint>.<secret>");
//!     let client = Client::connect("127.0.0.1:7700", key).await?;
//!     let options = SubmitOptions { processes: 2, ..SubmitOptions::default() };
//!     let plugin = std::path::Path::new("examples/plugins/wordcount");
//!     let input = std::path::Path::new("examples/inputs/sample.txt");
//!     let job = client.submit_file(plugin, input, options).await?;
//!
//!     // Each new status until the job ends.
//!     let mut statuses = std::pin::pin!(client.watch(job));
//!     while let Some(status) = statuses.next().await {
//!         let status = status?;
//!         eprintln!("{:?}: {} of {} chunks", status.state, status.chunks_done, status.n_chunks);
//!     }
//!
//!     // The output JSON, or the job's failure (cargo's diagnostics, the plugin's message).
//!     println!("{}", client.outcome(job).await?);
//!     assert_eq!(client.status(job).await?.state, JobState::Succeeded);
//!     Ok(())
//! }
//! ```

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use tarpc::context::{self, Context};
use tokio::io::AsyncRead;

use crate::owner::Owner;
use crate::plugin_source::read_source;
use crate::rpc::logs::PluginOutput;
use crate::rpc::{
    ClusterInfo, ControllerClient, JobId, JobSpec, JobStatus, JobSummary, RpcError, Secret, WATCH_WAIT, WorkerId,
};
use crate::tls::frames;
use crate::tls::key::{Credential, Role, Trust};
use crate::tls::link::{self, is_wrong_peer};
use crate::tls::verify::{Dial, dial_controller};

mod error;
mod results;
mod send;
mod upload;
mod watch;

pub use self::error::ClientError;

use self::watch::ended;

/// How long connecting to the controller may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline of the first call on a new connection: a controller answers it at once, from
/// memory, so a peer that does not is no controller (or a stalled one).
const HELLO_DEADLINE: Duration = Duration::from_secs(5);

/// Deadline of a plain call (status, cancel, list, create a job): the controller answers these
/// from its database at once.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Deadline of uploading one piece of a plugin or an input: 8 MiB that the controller writes
/// to disk, over a slow link if need be.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(120);

/// Beyond [`WATCH_WAIT`], how long a `watch` call may take before the controller counts as
/// unresponsive.
const WATCH_MARGIN: Duration = Duration::from_secs(10);

/// How long an upload or a watcher keeps trying to reach a controller that went away (a
/// restart on the same data directory takes seconds; a partition may take minutes) before it
/// gives up, unless [`Client::set_patience`] says otherwise. Below the controller's
/// `DEFAULT_UPLOAD_ABANDON`, so a retrying upload is never taken for an abandoned one.
pub const RECONNECT_PATIENCE: Duration = Duration::from_secs(300);

/// What an upload tells [`Client::on_retry`] while the controller cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrying {
    /// The job whose input is uploading.
    pub job: JobId,
    /// Input bytes the controller acknowledged so far.
    pub sent: u64,
    /// Why the last attempt failed.
    pub reason: String,
}

/// The first and the longest pause between attempts to reach the controller again.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How a job is to be run. The defaults leave each choice to the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitOptions {
    /// Who the job belongs to (an [`Owner`] name); empty: the API key's holder,
    /// [`Owner::key_holder`]. Holding the key entitles to any owner.
    pub owner: String,
    /// Parameters passed to the plugin's `new`.
    pub params: String,
    /// Chunks in flight per worker (0: the controller's default).
    pub processes: u32,
    /// The input's name, for display (`submit_file` and `submit_files` name it after the
    /// files when this is empty).
    pub input_name: String,
    /// The names of the input's files, in order; filled by `submit_files` and `submit_file`
    /// (empty for `submit`: one file named `input_name`).
    pub input_files: Vec<String>,
    /// How many times a chunk may be tried before the job fails (0: the default, 4).
    pub max_attempts: u32,
    /// The chunk size in bytes (0: the default: 4 MiB for an upload, fitted to the input and
    /// the cluster's slots for an input read by reference).
    pub chunk_size: u64,
    /// A limit on each executor's address space in bytes, within the workers' own (0: the
    /// workers'). A chunk that exceeds it costs an attempt.
    pub memory_limit: u64,
    /// The longest one chunk may run in milliseconds, within the workers' own timeout (0: the
    /// workers').
    pub chunk_timeout_ms: u64,
    /// Turns off speculative copies of chunks that run far longer than the job's others
    /// (on by default).
    pub no_speculation: bool,
}

/// A connection to a controller, with its API key. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    /// The key's secret, sent only over a link whose controller was verified.
    key: Secret,
    /// How the controller is checked; `None` for a plaintext key.
    dial: Option<Dial>,
    /// Whether the key pins the cluster's own CA (rather than trusting roots).
    pinned: bool,
    connection: Mutex<Option<ControllerClient>>,
    /// How long to keep trying to reach the controller (an upload, a watcher).
    patience: Mutex<Duration>,
    /// Told each time an upload retries.
    on_retry: Mutex<Option<RetryHook>>,
}

type RetryHook = Arc<dyn Fn(&Retrying) + Send + Sync>;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.inner.addr).finish_non_exhaustive()
    }
}

/// Whether a call may be sent again after its connection broke (it does the same thing twice).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    Never,
}

impl Client {
    /// Connects to the controller at `addr` (`host:port`) with an API key as the controller
    /// printed it (`kiln-key-v2.…`), checking the controller first and then the key.
    pub async fn connect(addr: &str, api_key: Secret) -> Result<Client, ClientError> {
        Client::connect_with(addr, api_key, None).await
    }

    /// [`Client::connect`], checking a controller with an operator's certificate (a `pki` key)
    /// against the CA certificates in `ca_file` (PEM) rather than the system roots.
    pub async fn connect_with(addr: &str, api_key: Secret, ca_file: Option<&Path>) -> Result<Client, ClientError> {
        let key = Credential::parse(Role::Client, api_key.expose()).map_err(ClientError::Key)?;
        let dial = dial_controller(key.trust, addr, ca_file, None).map_err(ClientError::Key)?;
        let pinned = matches!(key.trust, Trust::Pinned(_));
        let inner = Inner {
            addr: addr.to_owned(),
            key: key.secret,
            dial,
            pinned,
            connection: Mutex::new(None),
            patience: Mutex::new(RECONNECT_PATIENCE),
            on_retry: Mutex::new(None),
        };
        let client = Client { inner: Arc::new(inner) };
        client.connection().await?;
        Ok(client)
    }

    /// The controller's address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// How long uploads and watchers keep trying to reach a controller that went away
    /// (default [`RECONNECT_PATIENCE`]); shared by this client's clones.
    pub fn set_patience(&self, patience: Duration) {
        *lock(&self.inner.patience) = patience;
    }

    /// How long uploads and watchers keep trying to reach a controller that went away.
    pub fn patience(&self) -> Duration {
        *lock(&self.inner.patience)
    }

    /// Has `hook` told each time an upload retries a piece because the controller cannot be
    /// reached (for a progress line).
    pub fn on_retry(&self, hook: impl Fn(&Retrying) + Send + Sync + 'static) {
        *lock(&self.inner.on_retry) = Some(Arc::new(hook));
    }

    /// Uploads the plugin (a crate directory, a `.tar.gz` or `.zip` of one, or a single `.rs`
    /// file), creates a job and uploads its input from `input`, piece by piece (the job's
    /// chunks start running while it uploads). Returns the job's id once the input is
    /// complete, or once the job has ended during the upload (it failed: [`Client::wait`]
    /// says why).
    pub async fn submit(
        &self,
        plugin: &Path,
        input: impl AsyncRead + Unpin,
        options: SubmitOptions,
    ) -> Result<JobId, ClientError> {
        self.submit_with_progress(plugin, input, options, &|_| {}).await
    }

    /// [`Client::submit_files`] with one file, named by its file name unless `options` has an
    /// input name.
    pub async fn submit_file(&self, plugin: &Path, input: &Path, options: SubmitOptions) -> Result<JobId, ClientError> {
        self.submit_file_with_progress(plugin, input, options, &|_| {}).await
    }

    /// [`Client::submit_file`], telling `uploaded` how many input bytes the controller has
    /// after each piece.
    pub async fn submit_file_with_progress(
        &self,
        plugin: &Path,
        input: &Path,
        mut options: SubmitOptions,
        uploaded: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<JobId, ClientError> {
        if options.input_name.is_empty() {
            options.input_name = input.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        }
        let name = options.input_name.clone();
        let file = crate::input::InputFile { name, path: input.to_owned() };
        self.submit_listed(plugin, vec![file], options, uploaded).await
    }

    /// Uploads the plugin, creates a job and uploads its input: the files of `sources`, in
    /// order (a file, a directory's files sorted by path, a glob pattern's matches), each named
    /// to the plugin as the user gave it and decompressed as it is read when it is gzip or
    /// zstd. `uploaded` hears how many input bytes the controller has after each piece.
    /// Answers as [`Client::submit`] does.
    pub async fn submit_files(
        &self,
        plugin: &Path,
        sources: &[String],
        mut options: SubmitOptions,
        uploaded: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<JobId, ClientError> {
        if sources.iter().any(|source| crate::input::is_reference(source)) {
            return self.submit_references(plugin, sources, options).await;
        }
        let sources = sources.to_vec();
        let files = tokio::task::spawn_blocking(move || crate::input::expand(&sources))
            .await
            .map_err(|e| ClientError::Input { path: PathBuf::from("<input>"), source: io::Error::other(e) })??;
        if options.input_name.is_empty() {
            let names: Vec<String> = files.iter().map(|file| file.name.clone()).collect();
            options.input_name = crate::input::describe(&names);
        }
        self.submit_listed(plugin, files, options, uploaded).await
    }

    /// Submits a job whose input is `files`, uploaded one after another. Every file is opened
    /// before the job exists, so an input that cannot be read leaves no job behind.
    async fn submit_listed(
        &self,
        plugin: &Path,
        files: Vec<crate::input::InputFile>,
        mut options: SubmitOptions,
        uploaded: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<JobId, ClientError> {
        let files = tokio::task::spawn_blocking(move || upload::check_readable(files))
            .await
            .map_err(|e| ClientError::Input { path: PathBuf::from("<input>"), source: io::Error::other(e) })??;
        options.input_files = files.iter().map(|file| file.name.clone()).collect();
        let pieces = upload::Pieces::<tokio::io::Empty>::Files(upload::FilePieces::start(files));
        self.submit_pieces(plugin, options, pieces, uploaded).await
    }

    /// [`Client::submit`], telling `uploaded` how many input bytes the controller has after
    /// each piece.
    pub async fn submit_with_progress(
        &self,
        plugin: &Path,
        input: impl AsyncRead + Unpin,
        options: SubmitOptions,
        uploaded: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<JobId, ClientError> {
        self.submit_pieces(plugin, options, upload::Pieces::Stream(input), uploaded).await
    }

    /// Uploads the plugin, creates the job and uploads the input's pieces.
    async fn submit_pieces(
        &self,
        plugin: &Path,
        options: SubmitOptions,
        mut pieces: upload::Pieces<impl AsyncRead + Unpin>,
        uploaded: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<JobId, ClientError> {
        let owner = match options.owner.as_str() {
            "" => Owner::key_holder(),
            name => Owner::parse(name)?,
        };
        let plugin_hash = self.upload_plugin(plugin).await?;
        // The input's first piece is read before the job exists, so an input that cannot be
        // read at all (a directory, a file it may not open) fails the submission and leaves
        // no job behind.
        let first_piece = pieces.next().await?;
        let job = self.create_job(job_spec(owner, plugin_hash, options, Vec::new())).await?;
        match self.upload_input(job, first_piece, &mut pieces, uploaded).await {
            Ok(()) => Ok(job),
            // Chunks run while the input uploads, so the job may have failed already (the
            // plugin does not build, a chunk failed, bad input): its status says why.
            Err(error) if self.status(job).await.is_ok_and(|status| status.state.is_final()) => {
                tracing::debug!(job, "the job ended during its upload: {error}");
                Ok(job)
            }
            Err(error) => {
                // A job whose input will never be complete would wait forever.
                let _ = self.cancel(job).await;
                Err(match error {
                    ClientError::Rpc(source) => ClientError::InputRefused { job, source },
                    error => error,
                })
            }
        }
    }

    /// Submits a job whose input the workers read by reference: the controller lists the
    /// URLs' objects before the job exists (a missing one, refused credentials or an
    /// unreachable store fail the submission, naming the input); nothing is uploaded but the
    /// plugin.
    async fn submit_references(
        &self,
        plugin: &Path,
        urls: &[String],
        mut options: SubmitOptions,
    ) -> Result<JobId, ClientError> {
        if let Some(local) = urls.iter().find(|source| !crate::input::is_reference(source)) {
            return Err(crate::input::InputError::Reference {
                url: urls.iter().find(|source| crate::input::is_reference(source)).cloned().unwrap_or_default(),
                why: format!(
                    "an input is either URLs the workers read or files on this machine, and {local} is a file: \
                     submit them as two jobs"
                ),
            }
            .into());
        }
        // Credentials stay on this machine: a URL carrying them is refused before it is sent.
        for url in urls {
            crate::input::allow::checked(url).map_err(crate::input::InputError::BadUrl)?;
        }
        let owner = match options.owner.as_str() {
            "" => Owner::key_holder(),
            name => Owner::parse(name)?,
        };
        if options.input_name.is_empty() {
            options.input_name = crate::input::describe(urls);
        }
        let plugin_hash = self.upload_plugin(plugin).await?;
        self.create_job(job_spec(owner, plugin_hash, options, urls.to_vec())).await
    }

    async fn create_job(&self, spec: JobSpec) -> Result<JobId, ClientError> {
        let key = &self.inner.key;
        self.call(CALL_DEADLINE, Repeat::Never, |controller, ctx| {
            let (key, spec) = (key.clone(), spec.clone());
            async move { controller.create_job(ctx, key, spec).await }
        })
        .await
    }

    /// Reads, packs and uploads a plugin; answers its hash.
    pub async fn upload_plugin(&self, plugin: &Path) -> Result<String, ClientError> {
        let path = plugin.to_owned();
        let archive = tokio::task::spawn_blocking(move || read_source(&path).map(|tree| tree.to_tar_gz()))
            .await
            .map_err(|e| ClientError::Input { path: plugin.to_owned(), source: io::Error::other(e) })??;
        let key = &self.inner.key;
        self.call(UPLOAD_DEADLINE, Repeat::Safe, |controller, ctx| {
            let (key, archive) = (key.clone(), ByteBuf::from(archive.clone()));
            async move { controller.upload_plugin(ctx, key, archive).await }
        })
        .await
    }

    /// Waits for the job to end; answers its output JSON, or its failure or cancellation as
    /// an error.
    pub async fn outcome(&self, job: JobId) -> Result<String, ClientError> {
        let status = self.wait(job).await?;
        ended(&status)?;
        self.result(job).await
    }

    /// The job's current status.
    pub async fn status(&self, job: JobId) -> Result<JobStatus, ClientError> {
        let key = &self.inner.key;
        // Seen nothing yet: the controller answers at once.
        self.call(CALL_DEADLINE.max(WATCH_WAIT + WATCH_MARGIN), Repeat::Safe, |controller, ctx| {
            let key = key.clone();
            async move { controller.watch(ctx, key, job, 0).await }
        })
        .await
    }

    /// Cancels a job; answers its status after the cancellation.
    pub async fn cancel(&self, job: JobId) -> Result<JobStatus, ClientError> {
        let key = &self.inner.key;
        self.call(CALL_DEADLINE, Repeat::Safe, |controller, ctx| {
            let key = key.clone();
            async move { controller.cancel(ctx, key, job).await }
        })
        .await
    }

    /// What the job's plugin printed, per chunk and for its aggregate, in chunk order.
    pub async fn plugin_output(&self, job: JobId) -> Result<Vec<PluginOutput>, ClientError> {
        let key = &self.inner.key;
        self.call(CALL_DEADLINE, Repeat::Safe, |controller, ctx| {
            let key = key.clone();
            async move { controller.plugin_output(ctx, key, job).await }
        })
        .await
    }

    /// The controller's jobs, newest first.
    pub async fn list(&self) -> Result<Vec<JobSummary>, ClientError> {
        let key = &self.inner.key;
        self.call(CALL_DEADLINE, Repeat::Safe, |controller, ctx| {
            let key = key.clone();
            async move { controller.list_jobs(ctx, key).await }
        })
        .await
    }

    /// The cluster's live workers and load.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, ClientError> {
        let key = &self.inner.key;
        self.call(CALL_DEADLINE, Repeat::Safe, |controller, ctx| {
            let key = key.clone();
            async move { controller.cluster_info(ctx, key).await }
        })
        .await
    }

    /// Removes a worker from the cluster: its work goes elsewhere and it is refused from now on.
    pub async fn remove_worker(&self, worker_id: WorkerId) -> Result<(), ClientError> {
        let key = &self.inner.key;
        self.call(CALL_DEADLINE, Repeat::Safe, |controller, ctx| {
            let key = key.clone();
            async move { controller.remove_worker(ctx, key, worker_id).await }
        })
        .await
    }

    /// Makes a call with a deadline `deadline` from now, on the current connection or a new
    /// one. When the connection turns out broken, a call that is safe to repeat is sent once
    /// more on a fresh connection.
    async fn call<T, F, Fut>(&self, deadline: Duration, repeat: Repeat, call: F) -> Result<T, ClientError>
    where
        F: Fn(ControllerClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, RpcError>, tarpc::client::RpcError>>,
    {
        let mut attempts_left = if repeat == Repeat::Safe { 2 } else { 1 };
        loop {
            attempts_left -= 1;
            let controller = self.connection().await?;
            let mut ctx = context::current();
            ctx.deadline = Instant::now() + deadline;
            match call(controller, ctx).await {
                Ok(answer) => return answer.map_err(ClientError::from_rpc),
                Err(error) => {
                    let broken = !matches!(error, tarpc::client::RpcError::Server(_));
                    if broken {
                        *lock(&self.inner.connection) = None;
                    }
                    if !broken || attempts_left == 0 {
                        let message = match error {
                            tarpc::client::RpcError::DeadlineExceeded => {
                                format!("no answer within {} s", deadline.as_secs())
                            }
                            error => crate::errors::chain(&error),
                        };
                        return Err(ClientError::Connection { addr: self.inner.addr.clone(), message });
                    }
                }
            }
        }
    }

    /// The current connection, or a new one.
    async fn connection(&self) -> Result<ControllerClient, ClientError> {
        if let Some(controller) = lock(&self.inner.connection).clone() {
            return Ok(controller);
        }
        let addr = &self.inner.addr;
        let link = link::connect(addr, self.inner.dial.as_ref(), CONNECT_TIMEOUT).await.map_err(|source| {
            if is_wrong_peer(&source) && self.inner.pinned {
                ClientError::WrongController { addr: addr.clone() }
            } else if is_wrong_peer(&source) {
                ClientError::Untrusted { addr: addr.clone(), reason: crate::errors::chain(&source) }
            } else if error::is_foreign(&source) {
                ClientError::NotController { addr: addr.clone(), reason: "it does not speak TLS".to_owned() }
            } else if source.kind() == io::ErrorKind::TimedOut {
                ClientError::NoAnswer { addr: addr.clone(), seconds: CONNECT_TIMEOUT.as_secs() }
            } else {
                ClientError::Connect { addr: addr.clone(), source }
            }
        })?;
        let transport = frames::dialled(link);
        let controller = ControllerClient::new(tarpc::client::Config::default(), transport).spawn();
        self.hello(&controller).await?;
        *lock(&self.inner.connection) = Some(controller.clone());
        Ok(controller)
    }

    /// The first call on a new connection: small, and answered before anything large is sent,
    /// because the controller reads only small frames from a link until a call on it carried
    /// the key (see [`crate::tls::gate`]). It also checks the key.
    async fn hello(&self, controller: &ControllerClient) -> Result<(), ClientError> {
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + HELLO_DEADLINE;
        match controller.cluster_info(ctx, self.inner.key.clone()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(ClientError::from_rpc(error)),
            Err(tarpc::client::RpcError::DeadlineExceeded) => {
                Err(ClientError::NoAnswer { addr: self.inner.addr.clone(), seconds: HELLO_DEADLINE.as_secs() })
            }
            Err(error) if error::is_foreign(&error) => Err(ClientError::NotController {
                addr: self.inner.addr.clone(),
                reason: "its answer is not in Kiln's protocol".to_owned(),
            }),
            Err(error) => {
                Err(ClientError::Connection { addr: self.inner.addr.clone(), message: crate::errors::chain(&error) })
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The spec of a job of `owner` running `plugin_hash` as `options` say, over an uploaded input
/// (`input_urls` empty) or one read by reference.
fn job_spec(owner: Owner, plugin_hash: String, options: SubmitOptions, input_urls: Vec<String>) -> JobSpec {
    JobSpec {
        owner: owner.as_str().to_owned(),
        plugin_hash,
        params: options.params,
        processes: options.processes,
        input_name: options.input_name,
        input_files: options.input_files,
        input_urls,
        max_attempts: options.max_attempts,
        chunk_size: options.chunk_size,
        memory_limit: options.memory_limit,
        chunk_timeout_ms: options.chunk_timeout_ms,
        speculative: !options.no_speculation,
    }
}
