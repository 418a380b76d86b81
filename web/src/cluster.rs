//! The embedded cluster: a controller and a few workers started inside the web server through
//! the engine crate, so that a newcomer can run a task with nothing else set up. Every user is
//! offered it as the cluster named "local".
//!
//! The controller keeps its jobs in `<data_dir>/cluster/controller` (so a restarted web server
//! finds its runs' jobs again) and listens on a free loopback port; workers build plugins in
//! one shared cache and target directory. Plugin code runs in executor processes, started as
//! `<executor program> exec`: the `kiln-web` binary serves that subcommand itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use kiln_engine::controller::{self, ControllerConfig, ControllerError, RunningController};
use kiln_engine::input::allow::UrlPrefix;
use kiln_engine::worker::host_configs;
use kiln_engine::worker::service::{self, RunningWorker, WorkerConfig, WorkerError};

use crate::runs::ClusterTarget;

/// How the embedded cluster runs.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where the controller's data and the workers' caches live.
    pub dir: PathBuf,
    /// The program started as `PROGRAM exec` to run plugin code.
    pub executor_program: PathBuf,
    /// The cargo target directory of plugin builds (default: `<dir>/plugin-target`).
    pub plugin_target_dir: Option<PathBuf>,
    /// How many workers to start.
    pub workers: usize,
    /// Chunks each worker runs at once.
    pub processes: u32,
    /// Whether plugins run in the sandbox (the workers refuse to start where the host cannot).
    pub sandbox: bool,
    /// Directories whose files runs may name as `file://` inputs (none: refused).
    pub file_input_roots: Vec<PathBuf>,
    /// Prefixes below which runs may name `s3://` and `http(s)://` inputs (none: refused).
    pub input_url_allow: Vec<UrlPrefix>,
    /// The longest result a job may have (the controller's `--max-result-size`).
    pub max_result_bytes: u64,
}

/// Why the embedded cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The controller did not start.
    #[error("cannot start the embedded controller: {0}")]
    Controller(#[from] ControllerError),
    /// A worker did not start.
    #[error("cannot start an embedded worker: {0}")]
    Worker(#[from] WorkerError),
}

/// A running embedded cluster.
pub struct EmbeddedCluster {
    controller: RunningController,
    workers: Vec<RunningWorker>,
}

impl EmbeddedCluster {
    /// Where its controller is and its API key.
    pub fn target(&self) -> ClusterTarget {
        ClusterTarget {
            address: self.controller.local_addr().to_string(),
            api_key: self.controller.client_key().to_secret(),
        }
    }

    /// Stops the workers, then the controller, and waits for them.
    pub async fn shutdown(self) {
        for worker in self.workers {
            worker.shutdown().await;
        }
        self.controller.shutdown().await;
    }
}

/// Starts a controller on a free loopback port and `config.workers` workers joined to it.
pub async fn start(config: &EmbeddedConfig) -> Result<EmbeddedCluster, EmbeddedError> {
    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let mut controller_config = ControllerConfig::new(loopback, config.dir.join("controller"));
    controller_config.file_input_roots = config.file_input_roots.clone();
    controller_config.input_url_allow = config.input_url_allow.clone();
    controller_config.max_result_bytes = config.max_result_bytes;
    let controller = controller::start(controller_config).await?;
    let processes = config.processes.max(1);
    let (builder, executor) = host_configs(
        config.dir.join("plugin-cache"),
        Some(config.plugin_target_dir.clone().unwrap_or_else(|| config.dir.join("plugin-target"))),
        config.executor_program.clone(),
        processes as usize,
        config.sandbox,
    );
    let mut workers = Vec::new();
    for _ in 0..config.workers {
        let mut worker_config = WorkerConfig::new(
            controller.local_addr().to_string(),
            controller.worker_token().to_secret(),
            builder.clone(),
            executor.clone(),
        );
        // The web's runs belong to its users (`web:<id>`), each with a target directory of
        // their own, so there is no one owner to warm up ahead of them.
        worker_config.warm_owner = None;
        match service::start(worker_config).await {
            Ok(worker) => workers.push(worker),
            Err(e) => {
                for worker in workers {
                    worker.shutdown().await;
                }
                controller.shutdown().await;
                return Err(e.into());
            }
        }
    }
    tracing::info!(controller = %controller.local_addr(), workers = workers.len(), processes, "embedded cluster started");
    Ok(EmbeddedCluster { controller, workers })
}
