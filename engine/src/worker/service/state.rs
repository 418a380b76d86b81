//! The worker's state: its registration, the jobs it prepared and each one's executor, and
//! how a job is prepared (fetch, build, start).
//!
//! An executor serves one job: it stays warm across that job's chunks (and is restarted when
//! it dies), and is shut down when the job is released, or forgotten after a new
//! registration. In the sandbox that ends every thread and process the plugin started.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tarpc::context;
use tokio::sync::watch;

use super::build_error;
use super::metrics::{BuildLabels, WorkerMetrics};
use super::output::Outputs;
use super::slots::Slots;
use crate::owner::Owner;
use crate::plugin_source::SourceTree;
use crate::rpc::build::BuildProgress;
use crate::rpc::{ControllerClient, ExecLimits, JobId, Registration, RpcError, Secret, TaskError};
use crate::worker::builder::{BuildEvent, Builder};
use crate::worker::executor::ExecutorConfig;
use crate::worker::runner::{JOB_ENDED, JobRunner, start_error};

/// Deadline of fetching a plugin archive (at most 50 MiB) from the controller.
const FETCH_DEADLINE: Duration = Duration::from_secs(120);

/// How long a call with an unknown secret waits while a registration is being answered: the
/// controller may call the worker with the new secret before the worker has read the answer.
const REGISTRATION_GRACE: Duration = Duration::from_secs(5);

/// The worker's state shared by its service and its registration task.
pub(super) struct State {
    builder: Builder,
    /// How executors are started, with one thread per process.
    executor: ExecutorConfig,
    pub(super) link: Mutex<Link>,
    /// Bumped whenever the registration changes, for calls waiting in [`State::authorize`].
    link_changed: watch::Sender<u64>,
    /// Each prepared job's executor.
    jobs: Mutex<HashMap<JobId, JobEntry>>,
    /// The builds running for jobs being prepared, as `build_progress` answers them.
    builds: Mutex<HashMap<JobId, BuildProgress>>,
    /// The worker's metrics.
    pub(super) metrics: WorkerMetrics,
    /// The jobs' aggregate outputs, until the controller releases the job.
    pub(super) outputs: Outputs,
    /// Line ends counted in objects read by reference, for plugins that need line numbers.
    pub(super) line_counts: crate::input::reference::LineCounts,
    /// The calls that run at once (one per executor thread), and those waiting for a slot.
    pub(super) slots: Slots,
}

/// The current registration with the controller, and the connection to it.
#[derive(Default)]
pub(super) struct Link {
    pub(super) registration: Option<Registration>,
    pub(super) controller: Option<ControllerClient>,
    /// Whether a registration is being made, so a call with an unknown secret may be early.
    pub(super) registering: bool,
    /// How the service accepts the controller's calls (the worker's certificate, and only the
    /// controller's as a client); `None` before the first certificate or on plain TCP.
    pub(super) server_tls: Option<Arc<rustls::ServerConfig>>,
    /// The worker's certificate and key, presented on its link to the controller.
    pub(super) identity: Option<Arc<rustls::sign::CertifiedKey>>,
    /// When to renew the certificate.
    pub(super) renew_at: Option<std::time::SystemTime>,
}

/// A plugin hash, the job parameters and the job's limits an executor was started with.
type ExecutorKey = (String, String, ExecLimits);

/// A prepared job: what its executor was started with, and the executor.
struct JobEntry {
    key: ExecutorKey,
    executor: Arc<JobRunner>,
}

/// The worker's executor configuration with a job's limits applied: each limit the job sets
/// applies when it is tighter than the worker's own (the worker's operator has the last word).
pub(super) fn limited(config: &ExecutorConfig, limits: ExecLimits) -> ExecutorConfig {
    let mut config = config.clone();
    if limits.memory_limit > 0 {
        config.memory_limit = Some(config.memory_limit.map_or(limits.memory_limit, |own| own.min(limits.memory_limit)));
    }
    if limits.chunk_timeout_ms > 0 {
        config.call_timeout = config.call_timeout.min(Duration::from_millis(limits.chunk_timeout_ms));
    }
    config
}

impl State {
    pub(super) fn new(builder: Builder, executor: ExecutorConfig, metrics: WorkerMetrics) -> State {
        State {
            builder,
            slots: Slots::new(executor.threads, metrics.calls_waited.clone()),
            executor,
            link: Mutex::new(Link::default()),
            link_changed: watch::channel(0).0,
            jobs: Mutex::new(HashMap::new()),
            builds: Mutex::new(HashMap::new()),
            metrics,
            outputs: Outputs::default(),
            line_counts: Default::default(),
        }
    }

    /// How far the build of `job`'s plugin has come, while one runs here.
    pub(super) fn build_progress(&self, job: JobId) -> Option<BuildProgress> {
        lock(&self.builds).get(&job).cloned()
    }

    /// Checks `secret` against the current registration's, in constant time. A call that comes
    /// while a registration is being answered waits for it (briefly).
    pub(super) async fn authorize(&self, secret: &Secret) -> Result<(), TaskError> {
        let mut changes = self.link_changed.subscribe();
        let deadline = tokio::time::Instant::now() + REGISTRATION_GRACE;
        loop {
            let registering = {
                let link = lock(&self.link);
                if link.registration.as_ref().is_some_and(|r| r.worker_secret.matches(secret)) {
                    return Ok(());
                }
                link.registering
            };
            let refused = || {
                TaskError::Rpc(RpcError::Unauthorized(
                    "this worker takes calls only from the controller it registered with".to_owned(),
                ))
            };
            if !registering {
                return Err(refused());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(refused()),
            }
        }
    }

    pub(super) fn set_link(&self, change: impl FnOnce(&mut Link)) {
        change(&mut lock(&self.link));
        self.link_changed.send_modify(|generation| *generation += 1);
    }

    /// The connection and credentials to call the controller with.
    fn controller(&self) -> Result<(ControllerClient, Registration), RpcError> {
        let link = lock(&self.link);
        match (&link.controller, &link.registration) {
            (Some(client), Some(registration)) => Ok((client.clone(), registration.clone())),
            _ => Err(RpcError::Internal("the worker is not registered with its controller".to_owned())),
        }
    }

    /// Forgets every prepared job and stops their executors: after a new registration, the
    /// controller prepares again what it wants run.
    pub(super) fn forget_jobs(&self) {
        let jobs: Vec<JobEntry> = lock(&self.jobs).drain().map(|(_, entry)| entry).collect();
        self.metrics.jobs_prepared.set(0);
        self.outputs.forget_all();
        close_all(jobs, "the worker registered again");
    }

    pub(super) fn forget_everything(&self) {
        let jobs: Vec<JobEntry> = lock(&self.jobs).drain().map(|(_, entry)| entry).collect();
        self.outputs.forget_all();
        close_all(jobs, "the worker is shutting down");
    }

    /// The job's executor, made (not yet started) unless the job has one for the same plugin,
    /// parameters and limits; an executor the job had for others is stopped.
    fn use_executor(&self, job: JobId, key: ExecutorKey, library: PathBuf) -> Arc<JobRunner> {
        let mut jobs = lock(&self.jobs);
        if let Some(entry) = jobs.get(&job)
            && entry.key == key
        {
            return Arc::clone(&entry.executor);
        }
        let executor = Arc::new(JobRunner::new(limited(&self.executor, key.2), library, key.1.clone()));
        let previous = jobs.insert(job, JobEntry { key, executor: Arc::clone(&executor) });
        self.metrics.jobs_prepared.set(i64::try_from(jobs.len()).unwrap_or(i64::MAX));
        drop(jobs);
        close_all(previous.into_iter().collect(), "its job was prepared again");
        executor
    }

    /// The runner of a prepared job.
    pub(super) fn job_runner(&self, job: JobId) -> Result<Arc<JobRunner>, TaskError> {
        lock(&self.jobs).get(&job).map(|entry| Arc::clone(&entry.executor)).ok_or(TaskError::NotPrepared(job))
    }

    /// Where the job's aggregate output is written: beside the executors' private directories.
    pub(super) fn output_dir(&self) -> &std::path::Path {
        &self.executor.scratch_dir
    }

    /// Forgets the job and its output and stops its executor; returns once its processes are
    /// gone.
    pub(super) async fn release(&self, job: JobId) {
        self.outputs.forget(job);
        let entry = {
            let mut jobs = lock(&self.jobs);
            let entry = jobs.remove(&job);
            self.metrics.jobs_prepared.set(i64::try_from(jobs.len()).unwrap_or(i64::MAX));
            entry
        };
        if let Some(entry) = entry {
            entry.executor.close(JOB_ENDED).await;
        }
    }

    /// Builds the plugin `hash` (fetching its archive unless the cache has it) and starts the
    /// job's executor with the job's limits.
    pub(super) async fn prepare(
        &self,
        job: JobId,
        owner: Owner,
        hash: String,
        params: String,
        limits: ExecLimits,
    ) -> Result<(), TaskError> {
        if !self.executor.sandbox {
            tracing::warn!(
                job,
                "the job's plugin runs without a sandbox (--insecure-no-sandbox): it has this worker's rights"
            );
        }
        let library = match self.builder.cached(&owner, &hash).await {
            Some(built) => {
                self.metrics.builds.get_or_create(&BuildLabels { outcome: "cached" }).inc();
                built.library
            }
            None => self.fetch_and_build(job, &owner, &hash).await?,
        };
        let warm = self.use_executor(job, (hash.clone(), params, limits), library);
        match warm.executor().await {
            Ok(_) => {
                tracing::info!(job, %owner, hash = short(&hash), "job prepared");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(job, %owner, hash = short(&hash), %error, "cannot start the job's executor");
                self.release(job).await;
                Err(start_error(error))
            }
        }
    }

    async fn fetch_and_build(&self, job: JobId, owner: &Owner, hash: &str) -> Result<PathBuf, TaskError> {
        let (controller, registration) = self.controller()?;
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + FETCH_DEADLINE;
        tracing::info!(job, hash = short(hash), "fetching plugin");
        let archive = controller
            .fetch_plugin(ctx, registration.worker_id, registration.worker_secret, hash.to_owned())
            .await
            .map_err(|e| RpcError::Internal(format!("cannot fetch plugin {hash} from the controller: {e}")))??;
        let tree = tokio::task::spawn_blocking(move || SourceTree::from_tar_gz(&archive))
            .await
            .map_err(|e| RpcError::Internal(format!("unpacking the plugin failed: {e}")))?
            .map_err(|e| RpcError::Invalid(format!("the controller sent an unusable plugin archive: {e}")))?;
        if tree.hash() != hash {
            return Err(
                RpcError::Invalid(format!("the controller sent plugin {} when asked for {hash}", tree.hash())).into()
            );
        }
        let progress = |event: BuildEvent<'_>| match event {
            BuildEvent::Line(line) => tracing::info!(target: "kiln::build", "{line}"),
            BuildEvent::Crates { done, total, current } => {
                if let Some(build) = lock(&self.builds).get_mut(&job) {
                    (build.crates_done, build.crates_total) = (done, total);
                    current.clone_into(&mut build.current);
                }
            }
        };
        let started = Instant::now();
        let started_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let started_ms = u64::try_from(started_ms).unwrap_or(u64::MAX);
        lock(&self.builds).insert(job, BuildProgress { started_ms, ..BuildProgress::default() });
        // Gone when the build ends, or when the call preparing the job is dropped mid-build.
        let _building = scopeguard(|| {
            lock(&self.builds).remove(&job);
        });
        let built = self.builder.build(owner, &tree, &progress).await;
        let outcome = match &built {
            Ok(built) if built.cached => "cached",
            Ok(_) => "built",
            Err(_) => "failed",
        };
        self.metrics.builds.get_or_create(&BuildLabels { outcome }).inc();
        if outcome != "cached" {
            self.metrics.build_seconds.observe(started.elapsed().as_secs_f64());
        }
        match built {
            Ok(built) => Ok(built.library),
            Err(error) => {
                tracing::warn!(job, hash = short(hash), "plugin build failed");
                Err(build_error(error).into())
            }
        }
    }
}

/// Runs `on_drop` when dropped.
struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn scopeguard<F: FnMut()>(on_drop: F) -> Guard<F> {
    Guard(on_drop)
}

/// Stops the jobs' executors in the background (the callers cannot wait).
fn close_all(jobs: Vec<JobEntry>, why: &'static str) {
    for entry in jobs {
        // At once, so that no call starts the executor again before the task runs.
        entry.executor.refuse_new();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { entry.executor.close(why).await });
            }
            // Without a runtime the executors' own tasks are gone; dropping them kills them.
            Err(_) => drop(entry),
        }
    }
}

/// The first characters of a hash, for logs.
pub(super) fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::builder::BuilderConfig;
    use crate::worker::executor::ExecError;

    fn state() -> State {
        let cache = std::env::temp_dir().join("kiln-unused-cache");
        State::new(
            Builder::new(BuilderConfig::new(cache)),
            ExecutorConfig::new(PathBuf::from("kiln"), 1),
            WorkerMetrics::default(),
        )
    }

    fn key(n: u64) -> ExecutorKey {
        (format!("{n:064}"), String::new(), ExecLimits::default())
    }

    #[tokio::test]
    async fn each_job_has_its_own_executor_which_ends_with_it() {
        let state = state();
        let first = state.use_executor(1, key(3), PathBuf::from("plugin.so"));
        let second = state.use_executor(2, key(3), PathBuf::from("plugin.so"));
        assert!(!Arc::ptr_eq(&first, &second), "two jobs never share an executor");
        assert!(Arc::ptr_eq(&state.use_executor(1, key(3), PathBuf::from("plugin.so")), &first));
        assert!(Arc::ptr_eq(&state.job_runner(2).ok().unwrap(), &second));

        // Prepared again with other parameters, the job gets a new executor and the old one ends.
        let replaced = state.use_executor(2, key(4), PathBuf::from("plugin.so"));
        assert!(!Arc::ptr_eq(&replaced, &second));
        assert!(matches!(second.check_open(), Err(ExecError::Stopped(_))));

        state.release(1).await;
        assert!(matches!(state.job_runner(1), Err(TaskError::NotPrepared(1))));
        assert!(matches!(first.executor().await, Err(ExecError::Stopped(_))), "a released job's executor never starts");
        assert!(state.job_runner(2).is_ok());
    }

    #[test]
    fn a_jobs_limits_apply_only_where_tighter_than_the_workers() {
        let mut worker = ExecutorConfig::new(PathBuf::from("kiln"), 2);
        let none = limited(&worker, ExecLimits::default());
        assert_eq!((none.memory_limit, none.call_timeout), (None, worker.call_timeout));
        let job = ExecLimits { memory_limit: 1 << 30, chunk_timeout_ms: 2_000 };
        let tight = limited(&worker, job);
        assert_eq!((tight.memory_limit, tight.call_timeout), (Some(1 << 30), Duration::from_secs(2)));
        worker.memory_limit = Some(1 << 20);
        worker.call_timeout = Duration::from_secs(1);
        let capped = limited(&worker, job);
        assert_eq!((capped.memory_limit, capped.call_timeout), (Some(1 << 20), Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn a_new_registration_forgets_prepared_jobs_and_stops_their_executors() {
        let state = state();
        let executor = state.use_executor(1, key(1), PathBuf::from("plugin.so"));
        state.forget_jobs();
        assert!(matches!(state.job_runner(1), Err(TaskError::NotPrepared(1))));
        assert!(matches!(executor.start_alone().await, Err(ExecError::Stopped(_))));
    }
}
