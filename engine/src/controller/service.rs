//! The controller's tarpc service: checks credentials, then hands each call to the module
//! that owns it.
//!
//! Client calls need the API key, `register` the join token, and `heartbeat` and
//! `fetch_plugin` the worker's own secret; a wrong one is refused before anything else
//! happens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use tarpc::context::Context;
use tracing::info;

use super::ending::{end_job, fail_internal};
use super::input::{finish_input, upload_input};
use super::state::job::Job;
use super::state::spool::Spool;
use super::workers::{activate, fetch_plugin, heartbeat, is_plugin_hash, register, remove, renew};
use super::{Shared, now_ms};
use super::{disk, results};
use crate::owner::Owner;
use crate::plugin_source::{MAX_BYTES, SourceTree};
use crate::rpc::logs::PluginOutput;
use crate::rpc::pieces::{ResultPiece, SharedBytes};
use crate::rpc::{
    ClusterInfo, Controller, JobId, JobSpec, JobState, JobStatus, JobSummary, Registration, RpcError, Secret,
    WATCH_WAIT, WorkerCertificate, WorkerId, WorkerInfo,
};
use crate::rules::chunk::{DEFAULT_CHUNK_SIZE, MAX_LINE_BYTES};
use crate::tls::Fingerprint;
use crate::tls::gate::Gate;

/// The largest plugin archive accepted: no more than the source it may unpack to.
const MAX_ARCHIVE_BYTES: usize = MAX_BYTES as usize;

/// The largest chunk size a job may ask for: a chunk travels in one frame.
const MAX_CHUNK_SIZE: u64 = MAX_LINE_BYTES as u64;

/// Bounds on what a job spec may carry, so that one spec cannot bloat every status.
const MAX_PARAMS_BYTES: usize = 1 << 20;
const MAX_INPUT_NAME_BYTES: usize = 4096;

/// The most files one job's input may name, and the most bytes their names may take in all: a
/// job's spec is one row of the controller's database.
const MAX_INPUT_FILES: usize = 100_000;
const MAX_INPUT_FILE_NAMES_BYTES: usize = 16 << 20;
const MAX_PROCESSES: u32 = 4096;
const MAX_ATTEMPTS: u32 = 100;

/// How many jobs `list_jobs` returns at most, newest first.
const MAX_LISTED_JOBS: u64 = 10_000;

/// A watch answers this long before the caller's deadline, so the answer arrives in time.
const WATCH_MARGIN: Duration = Duration::from_millis(500);

/// The tarpc `Controller` service.
#[derive(Clone)]
pub(super) struct ControllerService {
    pub shared: Arc<Shared>,
    /// The fingerprint of the client certificate of the link this service answers on (a
    /// worker's), if it presented one.
    pub peer: Option<Fingerprint>,
    /// The link's gate, opened by the first call that passes its credential check.
    pub gate: Gate,
}

impl ControllerService {
    fn check_key(&self, key: &Secret) -> Result<(), RpcError> {
        if self.shared.api_key.matches(key) {
            self.gate.open();
            Ok(())
        } else {
            Err(RpcError::Unauthorized(
                "wrong API key: use the key the controller printed on its first start (--api-key or KILN_API_KEY)"
                    .into(),
            ))
        }
    }

    /// Opens the link's gate when a worker's call passed its credential check (it answered
    /// anything but a refusal of its token, secret or certificate).
    fn passed<T>(&self, answer: Result<T, RpcError>) -> Result<T, RpcError> {
        if !matches!(answer, Err(RpcError::Unauthorized(_) | RpcError::NotFound(_) | RpcError::VersionMismatch { .. }))
        {
            self.gate.open();
        }
        answer
    }

    /// The status of a job from the store (it ended before this start), or `NotFound`.
    async fn stored_status(&self, job_id: JobId) -> Result<JobStatus, RpcError> {
        match self.shared.store.job(job_id).await {
            Ok(Some(row)) => Ok(row.status()),
            Ok(None) => Err(RpcError::NotFound(format!("job {job_id}"))),
            Err(e) => Err(RpcError::Internal(e.to_string())),
        }
    }
}

/// Checks a job spec and fills in its defaults.
fn normalize(mut spec: JobSpec) -> Result<JobSpec, RpcError> {
    // The owner becomes part of directory names on workers; the client library always sends one.
    if let Err(error) = Owner::parse(&spec.owner) {
        return Err(RpcError::Invalid(format!("the job's owner is not usable: {error}")));
    }
    if !is_plugin_hash(&spec.plugin_hash) {
        return Err(RpcError::Invalid(format!("`{}` is not a plugin hash: upload the plugin first", spec.plugin_hash)));
    }
    if spec.params.len() > MAX_PARAMS_BYTES || spec.input_name.len() > MAX_INPUT_NAME_BYTES {
        return Err(RpcError::Invalid(format!(
            "parameters may be at most {MAX_PARAMS_BYTES} bytes and the input's name {MAX_INPUT_NAME_BYTES}"
        )));
    }
    let names_bytes: usize = spec.input_files.iter().chain(&spec.input_urls).map(String::len).sum();
    if spec.input_files.len() + spec.input_urls.len() > MAX_INPUT_FILES || names_bytes > MAX_INPUT_FILE_NAMES_BYTES {
        return Err(RpcError::Invalid(format!(
            "an input may hold at most {MAX_INPUT_FILES} files whose names take at most {} MiB: submit fewer, \
             larger files, or several jobs",
            MAX_INPUT_FILE_NAMES_BYTES >> 20
        )));
    }
    if spec.processes > MAX_PROCESSES || spec.max_attempts > MAX_ATTEMPTS || spec.chunk_size > MAX_CHUNK_SIZE {
        return Err(RpcError::Invalid(format!(
            "processes may be at most {MAX_PROCESSES}, max_attempts {MAX_ATTEMPTS} and the chunk size \
             {MAX_CHUNK_SIZE} bytes"
        )));
    }
    if spec.memory_limit != 0
        && let Err(error) = crate::rules::limits::check_memory_limit(spec.memory_limit)
    {
        return Err(RpcError::Invalid(error.to_string()));
    }
    if spec.max_attempts == 0 {
        spec.max_attempts = crate::rules::retry::DEFAULT_MAX_ATTEMPTS;
    }
    // An input read by reference has its size known once it is listed, and gets its chunk size
    // fitted to it then (`reference::create_job`); an upload streams in before its size is
    // known.
    if spec.chunk_size == 0 && spec.input_urls.is_empty() {
        spec.chunk_size = DEFAULT_CHUNK_SIZE as u64;
    }
    Ok(spec)
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::Internal(e.to_string())
}

impl Controller for ControllerService {
    async fn register(self, _: Context, token: Secret, info: WorkerInfo) -> Result<Registration, RpcError> {
        self.passed(register(&self.shared, &token, info))
    }

    async fn activate(self, _: Context, worker_id: WorkerId, secret: Secret) -> Result<(), RpcError> {
        self.passed(activate(&self.shared, self.peer, worker_id, &secret).await)
    }

    async fn renew(
        self,
        _: Context,
        worker_id: WorkerId,
        secret: Secret,
        public_key: ByteBuf,
    ) -> Result<WorkerCertificate, RpcError> {
        self.passed(renew(&self.shared, self.peer, worker_id, &secret, &public_key))
    }

    async fn heartbeat(self, _: Context, worker_id: WorkerId, secret: Secret) -> Result<(), RpcError> {
        self.passed(heartbeat(&self.shared, self.peer, worker_id, &secret))
    }

    async fn fetch_plugin(
        self,
        _: Context,
        worker_id: WorkerId,
        secret: Secret,
        hash: String,
    ) -> Result<ByteBuf, RpcError> {
        self.passed(fetch_plugin(&self.shared, self.peer, worker_id, &secret, &hash).await)
    }

    async fn upload_plugin(self, _: Context, key: Secret, archive: ByteBuf) -> Result<String, RpcError> {
        self.check_key(&key)?;
        if archive.len() > MAX_ARCHIVE_BYTES {
            return Err(RpcError::Invalid(format!("a plugin archive may be at most {} MiB", MAX_ARCHIVE_BYTES >> 20)));
        }
        // Validating unpacks the whole archive: CPU work, off the async threads. The stored
        // archive is the tree packed again, holding nothing the validation did not accept.
        let checked = tokio::task::spawn_blocking(move || {
            SourceTree::from_tar_gz(&archive).map(|tree| (tree.hash(), tree.to_tar_gz()))
        })
        .await
        .map_err(internal)?;
        let (hash, packed) = checked.map_err(|e| RpcError::Invalid(e.to_string()))?;
        let path = self.shared.plugin_path(&hash);
        let data_dir = &self.shared.data_dir;
        if tokio::fs::metadata(&path).await.is_err() {
            // Written under a temporary name and renamed, so a half-written archive is never
            // served, and deleted if it could not be written whole (a full disk).
            let temporary = path.with_extension(format!("{}.tmp", rand::random::<u64>()));
            let written = match tokio::fs::write(&temporary, &packed).await {
                Ok(()) => tokio::fs::rename(&temporary, &path).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                let _ = tokio::fs::remove_file(&temporary).await;
                return Err(disk::io_refusal(data_dir, &format!("storing the plugin at {}", path.display()), &e));
            }
        }
        let recorded = self.shared.store.add_plugin(&hash, packed.len() as u64, now_ms()).await;
        recorded.map_err(|e| e.refusal(data_dir, "recording the plugin"))?;
        info!(hash = %hash, bytes = packed.len(), "plugin stored");
        Ok(hash)
    }

    async fn create_job(self, _: Context, key: Secret, spec: JobSpec) -> Result<JobId, RpcError> {
        self.check_key(&key)?;
        let spec = normalize(spec)?;
        if !self.shared.store.has_plugin(&spec.plugin_hash).await.map_err(internal)? {
            return Err(RpcError::NotFound(format!("plugin {}: upload it first", spec.plugin_hash)));
        }
        let created_ms = now_ms();
        if !spec.input_urls.is_empty() {
            return super::reference::create_job(&self.shared, spec, created_ms).await;
        }
        let data_dir = &self.shared.data_dir;
        let inserted = self.shared.store.insert_job(&spec, created_ms).await;
        let job_id = inserted.map_err(|e| e.refusal(data_dir, "recording a new job"))?;
        let path = self.shared.input_path(job_id);
        if let Err(e) = tokio::fs::File::create(&path).await {
            let refusal = disk::io_refusal(data_dir, &format!("creating the input file of job {job_id}"), &e);
            fail_internal(&self.shared, job_id, refusal.to_string()).await;
            return Err(refusal);
        }
        info!(job = job_id, owner = %spec.owner, plugin = %spec.plugin_hash, input = %spec.input_name, "job created");
        let spool = Spool::new(path, spec.chunk_size).with_max_line(self.shared.max_line_bytes);
        let job = Job::new(job_id, spec, created_ms, spool);
        // Queued from the start: its chunks run as soon as they are cut from its input.
        self.shared.with_state(|st| st.add_job(job));
        Ok(job_id)
    }

    async fn upload_input(
        self,
        _: Context,
        key: Secret,
        job: JobId,
        file: u32,
        offset: u64,
        piece: SharedBytes,
    ) -> Result<(), RpcError> {
        self.check_key(&key)?;
        upload_input(&self.shared, job, file, offset, piece.0).await
    }

    async fn finish_input(self, _: Context, key: Secret, job: JobId, total_bytes: u64) -> Result<(), RpcError> {
        self.check_key(&key)?;
        finish_input(&self.shared, job, total_bytes).await
    }

    async fn watch(self, ctx: Context, key: Secret, job: JobId, seen_seq: u64) -> Result<JobStatus, RpcError> {
        self.check_key(&key)?;
        let wait = WATCH_WAIT.min(ctx.deadline.saturating_duration_since(Instant::now()).saturating_sub(WATCH_MARGIN));
        let receiver = self.shared.with_state(|st| st.job(job).map(Job::subscribe));
        // Any seq other than the one seen is news: a smaller one comes from before a restart.
        let Some(mut receiver) = receiver else {
            let status = self.stored_status(job).await?;
            if status.seq == seen_seq {
                tokio::time::sleep(wait).await;
            }
            return Ok(status);
        };
        let _ = tokio::time::timeout(wait, receiver.wait_for(|status| status.seq != seen_seq)).await;
        let status = receiver.borrow().clone();
        Ok(status)
    }

    async fn result_piece(self, _: Context, key: Secret, job: JobId, offset: u64) -> Result<ResultPiece, RpcError> {
        self.check_key(&key)?;
        let published = self.shared.with_state(|st| st.job(job).map(Job::published));
        if let Some(status) = &published
            && status.state != JobState::Succeeded
        {
            return Err(not_succeeded(status));
        }
        match self.shared.store.result(job).await.map_err(internal)? {
            None => Err(RpcError::NotFound(format!("job {job}"))),
            Some((JobState::Succeeded, stored)) => results::read_piece(&self.shared, job, offset, stored).await,
            Some(_) => Err(not_succeeded(&self.stored_status(job).await?)),
        }
    }

    async fn cancel(self, _: Context, key: Secret, job: JobId) -> Result<JobStatus, RpcError> {
        self.check_key(&key)?;
        let known = self.shared.with_state(|st| st.job(job).is_some());
        if !known {
            return self.stored_status(job).await;
        }
        if end_job(&self.shared, job, JobState::Cancelled, None, None).await {
            info!(job, "job cancelled");
        }
        let status = self.shared.with_state(|st| st.job(job).map(Job::published));
        status.ok_or_else(|| RpcError::NotFound(format!("job {job}")))
    }

    async fn plugin_output(self, _: Context, key: Secret, job: JobId) -> Result<Vec<PluginOutput>, RpcError> {
        self.check_key(&key)?;
        let known = self.shared.with_state(|st| st.job(job).is_some());
        if !known && self.shared.store.job(job).await.map_err(internal)?.is_none() {
            return Err(RpcError::NotFound(format!("job {job}")));
        }
        self.shared.store.plugin_output(job).await.map_err(internal)
    }

    async fn list_jobs(self, _: Context, key: Secret) -> Result<Vec<JobSummary>, RpcError> {
        self.check_key(&key)?;
        let mut jobs = self.shared.store.list_jobs(MAX_LISTED_JOBS).await.map_err(internal)?;
        // Jobs in memory have fresher figures than the store keeps while they run.
        self.shared.with_state(|st| {
            for summary in &mut jobs {
                if let Some(job) = st.job(summary.id) {
                    let status = job.published();
                    summary.state = status.state;
                    summary.n_chunks = status.n_chunks;
                    summary.chunks_done = status.chunks_done;
                    summary.finished_ms = status.finished_ms;
                }
            }
        });
        Ok(jobs)
    }

    async fn cluster_info(self, _: Context, key: Secret) -> Result<ClusterInfo, RpcError> {
        self.check_key(&key)?;
        let now = Instant::now();
        Ok(self.shared.with_state(|st| ClusterInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            workers: st.workers().iter().map(|w| w.summary(now)).collect(),
            active_jobs: st
                .jobs()
                .filter(|job| matches!(job.state(), JobState::Queued | JobState::Running | JobState::Aggregating))
                .count() as u64,
        }))
    }

    async fn remove_worker(self, _: Context, key: Secret, worker_id: WorkerId) -> Result<(), RpcError> {
        self.check_key(&key)?;
        remove(&self.shared, worker_id).await
    }
}

fn not_succeeded(status: &JobStatus) -> RpcError {
    match &status.failure {
        Some(failure) => RpcError::Invalid(format!("job {} failed: {}", status.id, failure.message)),
        None => RpcError::Invalid(format!("job {} has no result: it is {:?}", status.id, status.state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            owner: "cli".into(),
            plugin_hash: "ab12".into(),
            params: String::new(),
            processes: 2,
            input_name: "in".into(),
            input_files: Vec::new(),
            input_urls: Vec::new(),
            max_attempts: 0,
            chunk_size: 0,
            memory_limit: 0,
            chunk_timeout_ms: 0,
            speculative: true,
        }
    }

    #[test]
    fn specs_get_defaults_and_bounds() {
        let spec = normalize(spec()).unwrap();
        assert_eq!((spec.max_attempts, spec.chunk_size), (4, DEFAULT_CHUNK_SIZE as u64));
        let bad_hash = normalize(JobSpec { plugin_hash: "../x".into(), ..spec.clone() }).unwrap_err();
        assert!(matches!(bad_hash, RpcError::Invalid(_)));
        let huge = normalize(JobSpec { chunk_size: u64::MAX, ..spec.clone() }).unwrap_err();
        assert!(matches!(huge, RpcError::Invalid(m) if m.contains("chunk size")));
        for owner in ["", "../a", "a/b"] {
            let bad_owner = normalize(JobSpec { owner: owner.into(), ..spec.clone() }).unwrap_err();
            assert!(matches!(bad_owner, RpcError::Invalid(m) if m.contains("owner")), "{owner:?}");
        }
        let tiny = normalize(JobSpec { memory_limit: 1 << 20, ..spec }).unwrap_err();
        assert!(matches!(tiny, RpcError::Invalid(m) if m.contains("memory limit of 1 MiB is too small")));
    }
}
