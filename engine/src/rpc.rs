//! The tarpc services between clients, the controller and workers, and their wire types.
//!
//! Two services:
//! - [`Controller`], served by `kiln controller`: clients (with the cluster's API key) upload
//!   plugins and inputs, create, watch, cancel and list jobs and fetch results; workers (with
//!   the join token, then the secret they were given) register, send heartbeats and fetch
//!   plugin archives.
//! - [`Worker`], served by `kiln worker`: the controller (with the worker's secret) prepares
//!   jobs, pushes chunks, asks for aggregation and cancels.
//!
//! Every method checks credentials first and returns a typed [`RpcError`]. All traffic uses
//! tarpc's bincode transport in [`MAX_FRAME_BYTES`] frames over TLS 1.3 (see [`crate::tls`];
//! plain TCP only behind `--insecure-plaintext`); bulk data (archives, input pieces, chunks,
//! partials) travels as `serde_bytes` buffers. Worker calls to the controller (`heartbeat`,
//! `fetch_plugin`, `activate`, `renew`) also need the link's client certificate to be the one
//! the controller issued to that worker.

pub mod build;
pub mod input;
pub mod logs;
pub mod pieces;
mod secret;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use self::input::ChunkSpan;
use self::pieces::{ResultPiece, SharedBytes};
pub use self::secret::Secret;

/// The version of this protocol; a worker of another version is refused at registration.
/// Version 2: `prepare` carries the job's [`ExecLimits`]; [`TaskError::Interrupted`].
/// Version 3: chunks travel in batches (`run_chunks` with [`ChunkInput`]s, not `run_chunk`).
/// Version 4: TLS on every link; a worker sends its public key at registration, gets a
/// certificate, and is dialled back on `activate`; `renew`, `remove_worker`.
/// Version 5: a job carries its owner ([`JobSpec::owner`]), which `prepare` passes to the
/// worker, and summaries and statuses show it.
/// Version 6: an input is an ordered list of files: a job names its uploaded files
/// ([`JobSpec::input_files`]), each piece of input says its file, and a chunk carries its
/// file's name ([`ChunkInput::file`]) and numbers its lines within that file. Version 7: inputs
/// read by reference ([`JobSpec::input_urls`], [`ChunkInput::source`]).
/// Version 8: partials and results travel in pieces (`stage_partials`, `aggregate` answering a
/// length, `fetch_output`, `result_piece`).
/// Version 9: `run_chunks` answers what the plugin printed per chunk beside the partials, and
/// `plugin_output` returns it; a worker of version 8 would answer without it.
/// Version 10: a worker answers the lines of the chunks it read by reference
/// (`ChunkResults::lines`). Version 11: a chunk read by reference carries the longest line
/// accepted (`ChunkSource::max_line`).
/// Version 12: `aggregate` answers what the plugin printed with the length ([`logs::Aggregated`]).
/// Version 13: a chunk read by reference carries the job's chunk size, by which a worker cuts a
/// compressed object as it streams it (`ChunkSource::chunk_size`).
/// Version 14: `aggregate` carries the input's file count, which a plugin that streams its
/// output needs before its first partial (`Partials::input_files`).
pub const PROTOCOL_VERSION: u32 = 14;

/// The largest frame on any connection: a batch of chunks or a piece of input (a few MiB), with
/// room to spare; partials and results travel in pieces ([`pieces`]).
pub const MAX_FRAME_BYTES: usize = 512 << 20;

/// The largest piece of input or plugin archive a client sends in one call.
pub const MAX_PIECE_BYTES: usize = 8 << 20;

/// How often workers send heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long `watch` waits for news before answering with the unchanged status.
pub const WATCH_WAIT: Duration = Duration::from_secs(10);

/// A job's number on its controller.
pub type JobId = u64;

/// A worker's number on its controller, given at registration.
pub type WorkerId = u64;

/// Why a call failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The API key, join token or worker secret was wrong or missing.
    #[error("access denied: {0}")]
    Unauthorized(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: controller speaks {controller}, worker speaks {worker}")]
    VersionMismatch { controller: u32, worker: u32 },
    /// No such job, plugin or worker.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request was malformed or not allowed in the current state.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The plugin did not build; carries cargo's diagnostics.
    #[error("{0}")]
    Build(String),
    /// The controller or worker failed internally.
    #[error("internal error: {0}")]
    Internal(String),
    /// The answering side could not reach a peer it needs for the call (the controller
    /// dialling a registering worker back): the link may come back, so the caller retries.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The controller's disk is full: what was asked is not recorded; it works again once
    /// space is freed. The message names the data directory.
    #[error("{0}")]
    NoSpace(String),
}

/// What a worker tells the controller when it registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Where the worker's service listens, as the controller should dial it.
    pub address: String,
    /// How many chunks the worker runs at once.
    pub processes: u32,
    /// The worker's host name, for display.
    pub hostname: String,
    /// The worker's public key (an uncompressed P-256 point), for its certificate; its
    /// private key never leaves the worker. Empty on a plaintext cluster.
    #[serde(default)]
    pub public_key: ByteBuf,
}

/// A certificate the controller issued to a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerCertificate {
    /// The worker's certificate (DER), for `worker-<id>.kiln`, for the public key it sent.
    pub cert: ByteBuf,
    /// The cluster CA's certificate (DER), whose fingerprint the join token carries.
    pub ca: ByteBuf,
    /// When the certificate expires, in milliseconds since the Unix epoch: renew it before.
    pub expires_ms: u64,
}

/// What the controller answers a registration with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    /// The worker's number, used in heartbeats.
    pub worker_id: WorkerId,
    /// The secret the worker must see on every call from the controller, and must send with
    /// its own calls.
    pub worker_secret: Secret,
    /// The worker's certificate: it serves the controller's calls with it and presents it on
    /// its own link to the controller. `None` on a plaintext cluster.
    pub certificate: Option<WorkerCertificate>,
}

/// What a client asks the controller to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    /// Who the job belongs to (an [`Owner`](crate::owner::Owner) name, checked by the
    /// controller): workers keep each owner's builds and executors apart.
    #[serde(default)]
    pub owner: String,
    /// The plugin's content hash, as returned by `upload_plugin`.
    pub plugin_hash: String,
    /// Parameters passed to the plugin's `new`.
    pub params: String,
    /// Chunks in flight per worker (the old "processes per worker").
    pub processes: u32,
    /// The input's name, for display.
    pub input_name: String,
    /// The names of the uploaded input's files, in the order they are uploaded (a chunk's
    /// file is named to its plugin); empty: one file, named `input_name`.
    #[serde(default)]
    pub input_files: Vec<String>,
    /// URLs of an input the workers read by reference, listed at `create_job`, instead of an upload.
    #[serde(default)]
    pub input_urls: Vec<String>,
    /// How many times a chunk may be tried before the job fails (0: the default, 4).
    pub max_attempts: u32,
    /// The chunk size in bytes (0: the default, 4 MiB).
    pub chunk_size: u64,
    /// A limit on each executor's address space in bytes, within the worker's own limit
    /// (0: the worker's). A chunk that exceeds it costs an attempt.
    #[serde(default)]
    pub memory_limit: u64,
    /// The longest one chunk may run in milliseconds, within the worker's own timeout (0: the
    /// worker's). A chunk that exceeds it costs an attempt.
    #[serde(default)]
    pub chunk_timeout_ms: u64,
    /// Whether a chunk that runs far longer than the job's others gets a speculative copy on
    /// an idle slot (on by default).
    #[serde(default = "speculation_default")]
    pub speculative: bool,
}

fn speculation_default() -> bool {
    true
}

/// How a job's executors are confined on a worker: the job's limits from its [`JobSpec`],
/// applied within the worker's own (0: the worker's).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExecLimits {
    /// A limit on each executor's address space, in bytes.
    pub memory_limit: u64,
    /// The longest one chunk may run, in milliseconds.
    pub chunk_timeout_ms: u64,
}

impl JobSpec {
    /// The executor limits the job asks for.
    pub fn limits(&self) -> ExecLimits {
        ExecLimits { memory_limit: self.memory_limit, chunk_timeout_ms: self.chunk_timeout_ms }
    }
}

/// What a worker needs to prepare a job: whose it is, its plugin, parameters and limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobPlugin {
    /// The job's owner ([`JobSpec::owner`]).
    pub owner: String,
    /// The plugin's content hash.
    pub plugin_hash: String,
    /// Parameters passed to the plugin's `new`.
    pub params: String,
    /// The executor limits the job asks for.
    pub limits: ExecLimits,
}

impl JobSpec {
    /// What a worker needs to prepare this job.
    pub fn plugin(&self) -> JobPlugin {
        JobPlugin {
            owner: self.owner.clone(),
            plugin_hash: self.plugin_hash.clone(),
            params: self.params.clone(),
            limits: self.limits(),
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Created; its input is being uploaded.
    Uploading,
    /// Waiting for a worker, or for jobs ahead of it.
    Queued,
    /// Chunks are being run.
    Running,
    /// One worker is folding the partials.
    Aggregating,
    /// Done; the result is stored.
    Succeeded,
    /// Failed; see the job's failure.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    /// Every state, in the order a job goes through them.
    pub const ALL: [JobState; 7] = [
        JobState::Uploading,
        JobState::Queued,
        JobState::Running,
        JobState::Aggregating,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// Whether the job has ended and will not change again.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// The state's one name: what the controller's database stores and people read.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Uploading => "uploading",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Aggregating => "aggregating",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A name that is no job state's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{0}`")]
pub struct UnknownJobState(pub String);

impl std::str::FromStr for JobState {
    type Err = UnknownJobState;

    /// Reads the name [`JobState::as_str`] gives.
    fn from_str(name: &str) -> Result<JobState, UnknownJobState> {
        JobState::ALL.into_iter().find(|state| state.as_str() == name).ok_or_else(|| UnknownJobState(name.to_owned()))
    }
}

/// Why a job failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobFailure {
    /// What kind of failure this is.
    pub kind: FailureKind,
    /// The message: the plugin's own, cargo's diagnostics, or the controller's.
    pub message: String,
    /// The chunk that failed, if one did.
    pub chunk: Option<ChunkSpan>,
    /// How many attempts were made at that chunk.
    pub attempts: u32,
}

/// The kinds of job failure.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum FailureKind {
    /// The plugin did not compile (the message holds cargo's diagnostics).
    Build,
    /// The plugin refused its parameters, returned an error, panicked or crashed.
    Plugin,
    /// The input could not be used (not UTF-8, a line too long).
    Input,
    /// Something in Kiln failed.
    Internal,
}

/// One worker's share of a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerProgress {
    /// The worker.
    pub worker_id: WorkerId,
    /// Its address.
    pub address: String,
    /// Chunks it completed for this job.
    pub chunks_done: u64,
    /// Lines and bytes in those chunks.
    pub lines_done: u64,
    pub bytes_done: u64,
    /// Chunks sent to it for this job and not answered yet (a call may carry several).
    pub in_flight: u32,
    /// Whether the worker was lost (it died or stopped answering) while running this job; a
    /// worker that comes back registers under a new id.
    #[serde(default)]
    pub lost: bool,
}

/// A job's status and progress, as watchers see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobStatus {
    /// The job.
    pub id: JobId,
    /// Who the job belongs to.
    #[serde(default)]
    pub owner: String,
    /// Incremented on every change, for long-polling with `watch`.
    pub seq: u64,
    /// Where the job is.
    pub state: JobState,
    /// The plugin's hash and the job's parameters.
    pub plugin_hash: String,
    pub params: String,
    pub input_name: String,
    pub processes: u32,
    /// Chunks in the input (known once the input is complete) and chunks done.
    pub n_chunks: u64,
    pub chunks_done: u64,
    /// Lines and bytes done, and the input's size.
    pub lines_done: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Chunk attempts that failed and were retried.
    pub retries: u64,
    /// Workers lost (dead or silent) while running this job's chunks; their chunks ran
    /// elsewhere without costing an attempt.
    #[serde(default)]
    pub lost_workers: u64,
    /// Speculative copies started of chunks that ran far longer than the job's others.
    #[serde(default)]
    pub speculative: u64,
    /// Of those, the copies that finished first (their partial is the one kept).
    #[serde(default)]
    pub speculative_won: u64,
    /// Per worker figures.
    pub workers: Vec<WorkerProgress>,
    /// Milliseconds since the Unix epoch: creation, start of running, end.
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Why it failed, when it did.
    pub failure: Option<JobFailure>,
    /// The plugin's build: the building phase, before any chunk (`started_ms`) runs.
    #[serde(default)]
    pub build: Option<build::BuildProgress>,
}

/// A line of `kiln jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSummary {
    pub id: JobId,
    /// Who the job belongs to.
    #[serde(default)]
    pub owner: String,
    pub state: JobState,
    pub input_name: String,
    pub n_chunks: u64,
    pub chunks_done: u64,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
}

/// A live worker, as `cluster_info` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerSummary {
    pub worker_id: WorkerId,
    pub address: String,
    pub hostname: String,
    pub processes: u32,
    /// Chunks running there now, over all jobs, with those sent ahead.
    pub in_flight: u32,
    /// Calls sent to it ahead of its free slots, waiting there for one (pipelined slots).
    pub held_ahead: u32,
    /// Chunks it completed since it registered.
    pub chunks_done: u64,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
}

/// The cluster as a client sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The controller's version.
    pub version: String,
    /// Workers alive now.
    pub workers: Vec<WorkerSummary>,
    /// Jobs queued or running.
    pub active_jobs: u64,
}

/// One chunk of a batch sent to a worker with `run_chunks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkInput {
    /// The name of the chunk's file, as the user gave it.
    pub file: String,
    /// The chunk's first line within its file, 1-based.
    pub first_line: u64,
    /// The chunk's text: whole lines of UTF-8 (empty when the worker reads it from `source`).
    pub text: ByteBuf,
    /// Where the worker reads the chunk of an input read by reference.
    pub source: Option<input::ChunkSource>,
}

/// Why a chunk (or an aggregation) failed on a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The plugin panicked.
    #[error("{0}")]
    Plugin(String),
    /// The executor crashed, was killed or timed out; the message says which.
    #[error("{0}")]
    Crashed(String),
    /// The plugin could not be started (load error, API version, parameters refused), or it
    /// returned `Err` (its own decision): no retry can help.
    #[error("{0}")]
    Fatal(String),
    /// The executor was ended for a reason that is not this chunk's (another chunk timed out
    /// or crashed it, the worker is stopping): run the chunk again without counting an attempt.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// Reading the chunk from storage failed (the store's message); another worker may succeed.
    #[error("{0}")]
    Storage(String),
    /// The worker has not prepared this job (it restarted, or was never asked).
    #[error("job {0} is not prepared on this worker")]
    NotPrepared(JobId),
    /// The call itself was refused or failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// The controller's service.
#[tarpc::service]
pub trait Controller {
    /// Registers a worker with the cluster's join token; answers its id, secret and certificate.
    /// The worker then connects again presenting the certificate and calls `activate`.
    async fn register(token: Secret, info: WorkerInfo) -> Result<Registration, RpcError>;

    /// Makes a registered worker live: the controller dials it back at its address (checking
    /// its certificate) and starts sending it work.
    async fn activate(worker_id: WorkerId, secret: Secret) -> Result<(), RpcError>;

    /// Issues a worker a fresh certificate for `public_key` before its current one expires.
    async fn renew(worker_id: WorkerId, secret: Secret, public_key: ByteBuf) -> Result<WorkerCertificate, RpcError>;

    /// Tells the controller a worker is alive. An unknown worker (for example after the
    /// controller restarted) gets `NotFound` and registers again.
    async fn heartbeat(worker_id: WorkerId, secret: Secret) -> Result<(), RpcError>;

    /// Sends a worker the plugin archive (`.tar.gz`) with this hash.
    async fn fetch_plugin(worker_id: WorkerId, secret: Secret, hash: String) -> Result<ByteBuf, RpcError>;

    /// Stores a plugin archive (`.tar.gz` of a crate, at most 50 MiB) and answers its hash.
    /// The archive is validated first; an unsafe or malformed one is refused.
    async fn upload_plugin(key: Secret, archive: ByteBuf) -> Result<String, RpcError>;

    /// Creates a job whose input is then uploaded with `upload_input` and `finish_input`.
    async fn create_job(key: Secret, spec: JobSpec) -> Result<JobId, RpcError>;

    /// Appends a piece of input (at most [`MAX_PIECE_BYTES`]) at `offset`, which must be the
    /// number of bytes uploaded so far (a repeated piece is acknowledged and ignored). The
    /// piece belongs to the input's file number `file` (see [`JobSpec::input_files`]): files
    /// are uploaded one after another, a piece never spans two, and no chunk will.
    async fn upload_input(key: Secret, job: JobId, file: u32, offset: u64, piece: SharedBytes) -> Result<(), RpcError>;

    /// Ends the input of a job, `total_bytes` long; the job is queued.
    async fn finish_input(key: Secret, job: JobId, total_bytes: u64) -> Result<(), RpcError>;

    /// The job's status once its `seq` is greater than `seen_seq`, or after [`WATCH_WAIT`].
    async fn watch(key: Secret, job: JobId, seen_seq: u64) -> Result<JobStatus, RpcError>;

    /// A piece of the output JSON of a job that succeeded, from byte `offset`.
    async fn result_piece(key: Secret, job: JobId, offset: u64) -> Result<ResultPiece, RpcError>;

    /// Cancels a job: dispatching stops at once and running chunks are abandoned.
    async fn cancel(key: Secret, job: JobId) -> Result<JobStatus, RpcError>;
    /// What the job's plugin printed, per chunk and for its aggregate, in chunk order
    /// (bounded per job: `rpc::logs::JOB_OUTPUT_BYTES`).
    async fn plugin_output(key: Secret, job: JobId) -> Result<Vec<logs::PluginOutput>, RpcError>;

    /// Lists the jobs, newest first.
    async fn list_jobs(key: Secret) -> Result<Vec<JobSummary>, RpcError>;

    /// The cluster's live workers and load.
    async fn cluster_info(key: Secret) -> Result<ClusterInfo, RpcError>;

    /// Removes a worker: its work goes elsewhere, its certificate is revoked, and its key is
    /// refused if it registers again.
    async fn remove_worker(key: Secret, worker_id: WorkerId) -> Result<(), RpcError>;
}

/// A worker's service; only the controller it registered with may call it.
#[tarpc::service]
pub trait Worker {
    /// Makes the job's plugin ready for its owner: fetches the archive if the owner's cache
    /// lacks the hash, builds it in the owner's directories, and starts an executor with the
    /// job's parameters and limits. A build failure comes back as `RpcError::Build` with
    /// cargo's diagnostics.
    async fn prepare(secret: Secret, job: JobId, plugin: JobPlugin) -> Result<(), TaskError>;

    /// Runs a batch of chunks of a prepared job, one after another in the job's executor (the
    /// batch takes one of the worker's slots), and answers one result per chunk, in order: the
    /// encoded partial, or why that chunk failed; and what the plugin printed for each chunk
    /// that printed anything (bounded, see `rpc::logs`). The outer error refuses the whole call
    /// (`NotPrepared`, `Rpc(Unauthorized)`). When the executor crashes with several chunks in
    /// flight, each runs again alone in a fresh executor, so that only the chunk that crashes
    /// alone fails (`Crashed`) and the others answer normally; the chunks after it in the batch
    /// go on in a fresh executor. Cancelling the call abandons the chunks not yet answered
    /// (ending the executor if nothing else runs there).
    async fn run_chunks(secret: Secret, job: JobId, chunks: Vec<ChunkInput>) -> Result<logs::ChunkResults, TaskError>;

    /// Merges encoded partials of consecutive chunks with the plugin's `combine`; `None` when
    /// the plugin does not combine.
    async fn combine(secret: Secret, job: JobId, partials: Vec<ByteBuf>) -> Result<Option<ByteBuf>, TaskError>;

    /// Appends encoded partials, in input order, to those staged (on disk) for the job's
    /// aggregate; `first` is the count staged so far (0 starts afresh).
    async fn stage_partials(secret: Secret, job: JobId, first: u64, partials: Vec<ByteBuf>) -> Result<(), TaskError>;

    /// Folds the job's `n_partials` staged partials into the output JSON, kept on disk until the
    /// job is released; answers its length and what the plugin printed meanwhile (bounded as a
    /// chunk's is). `input_files` is how many of the input's files have chunks, which the
    /// plugin may need before its first partial. A longer output than `max_result_bytes` is
    /// `Fatal`.
    async fn aggregate(
        secret: Secret,
        job: JobId,
        n_partials: u64,
        input_files: u64,
        max_result_bytes: u64,
    ) -> Result<logs::Aggregated, TaskError>;

    /// A piece of the job's output from byte `offset`, empty at its end.
    async fn fetch_output(secret: Secret, job: JobId, offset: u64) -> Result<ByteBuf, TaskError>;

    /// Forgets a job: stops its executor once nothing else needs it.
    async fn release(secret: Secret, job: JobId) -> Result<(), TaskError>;

    /// How far this worker's build of the job's plugin (in `prepare`) has come; `None`: none.
    async fn build_progress(secret: Secret, job: JobId) -> Result<Option<build::BuildProgress>, TaskError>;
}

#[cfg(test)]
mod tests;
