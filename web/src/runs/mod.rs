//! Runs in progress: submitting a task's plugin and input to a cluster, watching the job, and
//! relaying its progress to the browsers that look at it.
//!
//! The web server, never the browser, talks to controllers, through the engine's client
//! library. Each active run has one background task: it submits the job (for a new run), then
//! follows the job's statuses, writes them to the run's row (at most once a second, and at
//! every change of state) and broadcasts each as a [`progress::Progress`] message to the run's
//! websocket subscribers. When the job ends, the task stores the result (a file, see
//! [`results`]) or the error. At start, [`RunManager::resume`] watches again every run that had
//! not ended, from its stored job id, so restarting the web server loses no run.
//!
//! # Layout
//! - [`progress`]: the message browsers receive, and the figures a run keeps.
//! - [`inputs`]: inputs kept for "Run again", and their removal.
//! - [`results`]: results as files, fetched in pieces, previewed, streamed and removed.
//! - `watch`: the background task of a run: submitting, watching, recording the ending.

pub mod inputs;
pub mod progress;
pub mod results;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::client::{Client, ClientError};
use kiln_engine::rpc::{ClusterInfo, Secret};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use self::inputs::RunInput;
use self::results::ResultFiles;
use crate::metrics::WebMetrics;
use crate::store::clusters::Cluster;
use crate::store::runs::{Run, RunEnding, RunState};
use crate::store::tasks::Plugin;
use crate::store::{Store, StoreError, now_ms};

/// How many progress messages a slow subscriber may fall behind before it skips some.
const SUBSCRIBER_BACKLOG: usize = 64;

/// How long a page waits for a controller (cluster information, cancelling) before it says
/// the cluster cannot be reached: pages must not hang on a dead address.
pub const CLUSTER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a cluster's controller is and the key it wants.
#[derive(Debug, Clone)]
pub struct ClusterTarget {
    /// `host:port`.
    pub address: String,
    /// The API key.
    pub api_key: Secret,
}

/// Why a run could not be started, watched or cancelled.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cluster cannot be used now.
    #[error("{0}")]
    ClusterUnavailable(String),
    /// The run has ended already.
    #[error("the run has ended already")]
    Ended,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A websocket's view of an active run.
pub struct Subscription {
    /// The last message sent before this subscription, if any.
    pub last: Option<Arc<str>>,
    /// The messages from now on; closed after the run's last one.
    pub messages: broadcast::Receiver<Arc<str>>,
}

/// The live side of an active run: its subscribers and the last message sent to them.
struct Live {
    sender: broadcast::Sender<Arc<str>>,
    last: Option<Arc<str>>,
}

/// Active runs and their background tasks.
pub struct RunManager {
    store: Store,
    embedded: Option<ClusterTarget>,
    work_dir: PathBuf,
    plugin_dir: PathBuf,
    chunk_bytes: u64,
    results: ResultFiles,
    live: Mutex<HashMap<i64, Live>>,
    tasks: Mutex<JoinSet<()>>,
    metrics: WebMetrics,
}

impl RunManager {
    /// A manager storing runs in `store`, with the embedded cluster's controller if one runs,
    /// reading tasks' plugin files in `plugin_dir` and writing older tasks' plugins to submit
    /// under `work_dir`, cutting inputs into chunks of `chunk_bytes` (0: the controller's
    /// default), storing results in `results`, counting runs in `metrics`.
    pub fn new(
        store: Store,
        embedded: Option<ClusterTarget>,
        work_dir: PathBuf,
        plugin_dir: PathBuf,
        chunk_bytes: u64,
        results: ResultFiles,
        metrics: WebMetrics,
    ) -> Arc<RunManager> {
        Arc::new(RunManager {
            store,
            embedded,
            work_dir,
            plugin_dir,
            chunk_bytes,
            results,
            live: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            metrics,
        })
    }

    /// How many runs are being submitted or watched now.
    pub fn active(&self) -> usize {
        self.live.lock().unwrap_or_else(|poison| poison.into_inner()).len()
    }

    /// Where the cluster's controller is: the row's address and key, or the embedded
    /// controller's for the "local" cluster.
    pub fn target(&self, cluster: &Cluster) -> Result<ClusterTarget, RunError> {
        if cluster.embedded {
            return self.embedded.clone().ok_or_else(|| {
                RunError::ClusterUnavailable(
                    "the local cluster is not running: start kiln-web with its embedded cluster".to_owned(),
                )
            });
        }
        let api_key = cluster.api_key.clone().map_err(|e| RunError::ClusterUnavailable(e.to_string()))?;
        Ok(ClusterTarget { address: cluster.controller_address.clone(), api_key: Secret::new(api_key) })
    }

    /// Starts a new run (in state `Submitting`): submits the plugin and the input, then
    /// watches the job. A temporary input is deleted once submitted; a kept one stays.
    pub fn start(self: &Arc<Self>, run: &Run, plugin: Plugin, input: RunInput, target: ClusterTarget) {
        self.open_live(run.id);
        let manager = Arc::clone(self);
        let run = run.clone();
        self.spawn(async move { watch::submit_and_watch(manager, run, plugin, input, target).await });
    }

    /// Watches again every run that had not ended: from its job id, or, for one that was still
    /// being submitted when the server stopped, records that it failed. Answers how many are
    /// watched.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, RunError> {
        let mut watched = 0;
        for run in self.store.unfinished_runs().await? {
            let Some(job) = run.job_id.and_then(|job| u64::try_from(job).ok()) else {
                let ending =
                    failure(run.started_at, "cluster", "the web server stopped while the run was being submitted");
                self.store.finish_run(run.id, &ending).await?;
                continue;
            };
            let target = match self.store.cluster(run.user_id, run.cluster_id).await? {
                Some(cluster) => self.target(&cluster),
                None => continue,
            };
            let target = match target {
                Ok(target) => target,
                Err(e) => {
                    tracing::warn!(run = run.id, "cannot watch the run again: {e}");
                    continue;
                }
            };
            tracing::info!(run = run.id, job, "watching the run again");
            self.open_live(run.id);
            let manager = Arc::clone(self);
            self.spawn(async move { watch::watch(manager, run, job, target).await });
            watched += 1;
        }
        Ok(watched)
    }

    /// The last progress message of an active run and a receiver of the next ones; `None`
    /// when the run is not active here (it ended, or it never started).
    pub fn subscribe(&self, run_id: i64) -> Option<Subscription> {
        let live = self.live.lock().unwrap_or_else(|poison| poison.into_inner());
        live.get(&run_id).map(|live| Subscription { last: live.last.clone(), messages: live.sender.subscribe() })
    }

    /// Cancels a run: asks the controller to cancel its job (the watcher then records the
    /// ending), or, for a run still being submitted, records the cancellation at once.
    pub async fn cancel(&self, run: &Run, target: ClusterTarget) -> Result<(), RunError> {
        if run.state.is_final() {
            return Err(RunError::Ended);
        }
        let Some(job) = run.job_id.and_then(|job| u64::try_from(job).ok()) else {
            let ending = RunEnding {
                state: RunState::Cancelled,
                result: None,
                error_kind: None,
                error: None,
                started_at: run.started_at,
                finished_at: now_ms(),
                progress: None,
                plugin_output: None,
            };
            self.store.finish_run(run.id, &ending).await?;
            return Ok(());
        };
        let cancelled = tokio::time::timeout(CLUSTER_CALL_TIMEOUT, async {
            let client = Client::connect(&target.address, target.api_key.clone()).await?;
            client.cancel(job).await
        })
        .await;
        match cancelled {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RunError::ClusterUnavailable(format!("cannot cancel the job: {e}"))),
            Err(_) => Err(RunError::ClusterUnavailable(format!(
                "the controller at {} did not answer within {} s",
                target.address,
                CLUSTER_CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The cluster's live workers and load, or why they cannot be had.
    pub async fn cluster_info(&self, target: &ClusterTarget) -> Result<ClusterInfo, String> {
        let info = tokio::time::timeout(CLUSTER_CALL_TIMEOUT, async {
            let client = Client::connect(&target.address, target.api_key.clone()).await?;
            client.cluster_info().await
        })
        .await;
        match info {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the controller at {} did not answer within {} s",
                target.address,
                CLUSTER_CALL_TIMEOUT.as_secs()
            )),
        }
    }

    /// Stops every background task. Runs keep their state; [`RunManager::resume`] picks them
    /// up at the next start.
    pub async fn shutdown(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|poison| poison.into_inner()));
        tasks.shutdown().await;
        self.live.lock().unwrap_or_else(|poison| poison.into_inner()).clear();
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|poison| poison.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    fn open_live(&self, run_id: i64) {
        let (sender, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        let mut live = self.live.lock().unwrap_or_else(|poison| poison.into_inner());
        live.insert(run_id, Live { sender, last: None });
    }

    /// Sends a message to the run's subscribers and keeps it for those who come later.
    fn publish(&self, run_id: i64, message: String) {
        let message: Arc<str> = Arc::from(message);
        let mut live = self.live.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(live) = live.get_mut(&run_id) {
            live.last = Some(Arc::clone(&message));
            // No subscriber is no error.
            let _ = live.sender.send(message);
        }
    }

    /// Forgets an ended run: its subscribers get the messages already sent, then the end.
    fn close_live(&self, run_id: i64) {
        self.live.lock().unwrap_or_else(|poison| poison.into_inner()).remove(&run_id);
    }
}

/// The ending, now, of a run that failed before it began, with `message` of kind `kind`.
pub fn failure_now(kind: &str, message: impl Into<String>) -> RunEnding {
    failure(None, kind, message)
}

/// The ending of a run that failed with `message`, of kind `kind`.
fn failure(started_at: Option<i64>, kind: &str, message: impl Into<String>) -> RunEnding {
    RunEnding {
        state: RunState::Failed,
        result: None,
        error_kind: Some(kind.to_owned()),
        error: Some(message.into()),
        started_at,
        finished_at: now_ms(),
        progress: None,
        plugin_output: None,
    }
}

/// The error kind and message of a client error that ended a run.
fn client_failure(error: &ClientError) -> (&'static str, String) {
    match error {
        ClientError::Plugin(e) => ("plugin", format!("the plugin cannot be used: {e}")),
        ClientError::Input { .. } => ("input", error.to_string()),
        ClientError::Rpc(kiln_engine::rpc::RpcError::Build(diagnostics)) => ("build", diagnostics.clone()),
        _ => ("cluster", error.to_string()),
    }
}
