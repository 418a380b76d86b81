//! The worker's state: its registration, the jobs it prepared and the executors kept warm for
//! them, and how a job is prepared (fetch, build, start).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tarpc::context;
use tokio::sync::{OnceCell, watch};

use super::{WARM_EXECUTORS, build_error, start_error};
use crate::owner::Owner;
use crate::rpc::{ControllerClient, ExecLimits, JobId, Registration, RpcError, Secret, TaskError};
use crate::worker::builder::{Builder, SourceTree};
use crate::worker::executor::{ExecError, Executor, ExecutorConfig};

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
    /// The executor each prepared job uses.
    jobs: Mutex<HashMap<JobId, ExecutorKey>>,
    executors: Mutex<HashMap<ExecutorKey, WarmEntry>>,
}

/// The current registration with the controller, and the connection to it.
#[derive(Default)]
pub(super) struct Link {
    pub(super) registration: Option<Registration>,
    pub(super) controller: Option<ControllerClient>,
    /// Whether a registration is being made, so a call with an unknown secret may be early.
    pub(super) registering: bool,
}

/// What an executor was started for: its owner, plugin hash, the job's parameters and limits.
/// Jobs share an executor only when all four are the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ExecutorKey {
    pub(super) owner: Owner,
    pub(super) hash: String,
    pub(super) params: String,
    pub(super) limits: ExecLimits,
}

struct WarmEntry {
    executor: Arc<WarmExecutor>,
    /// Prepared jobs using it; an entry without jobs is idle and may be evicted.
    jobs: usize,
    last_used: Instant,
}

/// One plugin instance's executor, restarted when it dies.
pub(super) struct WarmExecutor {
    library: PathBuf,
    params: String,
    /// The worker's executor configuration within the job's limits.
    config: ExecutorConfig,
    /// The current executor, started once by whichever call comes first.
    current: Mutex<Arc<OnceCell<Arc<Executor>>>>,
}

impl WarmExecutor {
    /// The live executor, starting a fresh one when there is none or the last one died.
    pub(super) async fn get(&self) -> Result<Arc<Executor>, ExecError> {
        // Twice at most: a fresh executor that is dead at once will not do better a third time.
        for _ in 0..2 {
            let cell = Arc::clone(&lock(&self.current));
            let executor = cell
                .get_or_try_init(|| async {
                    let executor = Executor::start(&self.config, &self.library, &self.params).await?;
                    Ok::<_, ExecError>(Arc::new(executor))
                })
                .await?;
            if executor.is_alive() {
                return Ok(Arc::clone(executor));
            }
            let mut current = lock(&self.current);
            // Unless another call replaced it already, the next one starts a fresh executor.
            if Arc::ptr_eq(&current, &cell) {
                *current = Arc::new(OnceCell::new());
            }
        }
        Err(ExecError::Crashed { reason: "died as soon as it started".to_owned(), stderr: String::new() })
    }

    /// A fresh executor of the same plugin with one slot, for a call that must run alone.
    pub(super) async fn start_alone(&self) -> Result<Executor, ExecError> {
        let config = ExecutorConfig { threads: 1, ..self.config.clone() };
        Executor::start(&config, &self.library, &self.params).await
    }

    fn kill(&self, why: &str) {
        if let Some(executor) = lock(&self.current).get() {
            executor.kill(why);
        }
    }
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
    pub(super) fn new(builder: Builder, executor: ExecutorConfig) -> State {
        State {
            builder,
            executor,
            link: Mutex::new(Link::default()),
            link_changed: watch::channel(0).0,
            jobs: Mutex::new(HashMap::new()),
            executors: Mutex::new(HashMap::new()),
        }
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

    /// Forgets every prepared job: after a new registration, the controller prepares again what
    /// it wants run. Executors stay warm.
    pub(super) fn forget_jobs(&self) {
        let jobs: Vec<ExecutorKey> = lock(&self.jobs).drain().map(|(_, key)| key).collect();
        let mut executors = lock(&self.executors);
        for key in jobs {
            if let Some(entry) = executors.get_mut(&key) {
                entry.jobs = entry.jobs.saturating_sub(1);
            }
        }
        evict_idle(&mut executors);
    }

    pub(super) fn forget_everything(&self) {
        lock(&self.jobs).clear();
        let executors: Vec<WarmEntry> = lock(&self.executors).drain().map(|(_, entry)| entry).collect();
        for entry in executors {
            entry.executor.kill("the worker is shutting down");
        }
    }

    /// The warm executor for `key`, made (not yet started) if there is none; records that `job`
    /// uses it.
    fn use_executor(&self, job: JobId, key: ExecutorKey, library: PathBuf) -> Arc<WarmExecutor> {
        let config = limited(&self.executor, key.limits);
        let previous = lock(&self.jobs).insert(job, key.clone());
        let mut executors = lock(&self.executors);
        if let Some(previous) = previous
            && let Some(entry) = executors.get_mut(&previous)
        {
            entry.jobs = entry.jobs.saturating_sub(1);
        }
        let entry = executors.entry(key.clone()).or_insert_with(|| WarmEntry {
            executor: Arc::new(WarmExecutor {
                library,
                params: key.params.clone(),
                config,
                current: Mutex::new(Arc::new(OnceCell::new())),
            }),
            jobs: 0,
            last_used: Instant::now(),
        });
        entry.jobs += 1;
        entry.last_used = Instant::now();
        let executor = Arc::clone(&entry.executor);
        evict_idle(&mut executors);
        executor
    }

    /// The executor of a prepared job.
    pub(super) fn job_executor(&self, job: JobId) -> Result<Arc<WarmExecutor>, TaskError> {
        let key = lock(&self.jobs).get(&job).cloned().ok_or(TaskError::NotPrepared(job))?;
        let mut executors = lock(&self.executors);
        let entry = executors.get_mut(&key).ok_or(TaskError::NotPrepared(job))?;
        entry.last_used = Instant::now();
        Ok(Arc::clone(&entry.executor))
    }

    pub(super) fn release(&self, job: JobId) {
        let Some(key) = lock(&self.jobs).remove(&job) else { return };
        let mut executors = lock(&self.executors);
        if let Some(entry) = executors.get_mut(&key) {
            entry.jobs = entry.jobs.saturating_sub(1);
            entry.last_used = Instant::now();
        }
        evict_idle(&mut executors);
    }

    /// Builds the plugin `hash` (fetching its archive unless the cache has it) and starts the
    /// job's executor with the job's limits.
    pub(super) async fn prepare(&self, job: JobId, key: ExecutorKey) -> Result<(), TaskError> {
        let library = match self.builder.cached(&key.hash).await {
            Some(built) => built.library,
            None => self.fetch_and_build(job, &key.hash).await?,
        };
        let (owner, hash) = (key.owner.clone(), key.hash.clone());
        let warm = self.use_executor(job, key, library);
        match warm.get().await {
            Ok(_) => {
                tracing::info!(job, %owner, hash = short(&hash), "job prepared");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(job, %owner, hash = short(&hash), %error, "cannot start the job's executor");
                self.release(job);
                Err(start_error(error))
            }
        }
    }

    async fn fetch_and_build(&self, job: JobId, hash: &str) -> Result<PathBuf, TaskError> {
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
        let progress = |line: &str| tracing::info!(target: "kiln::build", "{line}");
        match self.builder.build(&tree, &progress).await {
            Ok(built) => Ok(built.library),
            Err(error) => {
                tracing::warn!(job, hash = short(hash), "plugin build failed");
                Err(build_error(error).into())
            }
        }
    }
}

/// Stops the least recently used idle executors beyond [`WARM_EXECUTORS`].
fn evict_idle(executors: &mut HashMap<ExecutorKey, WarmEntry>) {
    loop {
        let idle: Vec<(&ExecutorKey, Instant)> =
            executors.iter().filter(|(_, entry)| entry.jobs == 0).map(|(key, entry)| (key, entry.last_used)).collect();
        if idle.len() <= WARM_EXECUTORS {
            return;
        }
        let Some(oldest) = idle.iter().min_by_key(|(_, used)| *used).map(|(key, _)| (*key).clone()) else { return };
        if let Some(entry) = executors.remove(&oldest) {
            tracing::debug!(owner = %oldest.owner, hash = short(&oldest.hash), "stopping an idle executor");
            entry.executor.kill("no job needs it any more");
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

    fn state() -> State {
        let cache = std::env::temp_dir().join("kiln-unused-cache");
        State::new(Builder::new(BuilderConfig::new(cache)), ExecutorConfig::new(PathBuf::from("kiln"), 1))
    }

    fn key(n: u64) -> ExecutorKey {
        ExecutorKey {
            owner: Owner::key_holder(),
            hash: format!("{n:064}"),
            params: String::new(),
            limits: ExecLimits::default(),
        }
    }

    fn warm_keys(state: &State) -> Vec<ExecutorKey> {
        let mut keys: Vec<ExecutorKey> = lock(&state.executors).keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn executors_of_running_jobs_are_kept_and_idle_ones_evicted_least_recently_used_first() {
        let state = state();
        for job in 1..=6 {
            state.use_executor(job, key(job), PathBuf::from("plugin.so"));
        }
        assert_eq!(warm_keys(&state).len(), 6, "executors that jobs use are never evicted");

        for job in 1..=6 {
            state.release(job);
        }
        assert_eq!(warm_keys(&state), (3..=6).map(key).collect::<Vec<_>>());

        // Two jobs with the same plugin and parameters share one executor.
        let first = state.use_executor(7, key(3), PathBuf::from("plugin.so"));
        let second = state.use_executor(8, key(3), PathBuf::from("plugin.so"));
        assert!(Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&state.job_executor(8).ok().unwrap(), &first));
        assert!(matches!(state.job_executor(1), Err(TaskError::NotPrepared(1))));

        // The same plugin and parameters of another owner get an executor of their own.
        let other = ExecutorKey { owner: Owner::web_user(1), ..key(3) };
        let others = state.use_executor(9, other, PathBuf::from("plugin.so"));
        assert!(!Arc::ptr_eq(&first, &others));
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

    #[test]
    fn a_new_registration_forgets_prepared_jobs_but_keeps_executors_warm() {
        let state = state();
        state.use_executor(1, key(1), PathBuf::from("plugin.so"));
        state.forget_jobs();
        assert!(matches!(state.job_executor(1), Err(TaskError::NotPrepared(1))));
        assert_eq!(warm_keys(&state), [key(1)]);
    }
}
