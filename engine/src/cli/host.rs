//! The flags of a host that builds and runs plugins, shared by `kiln worker` and
//! `kiln run-local`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kiln_engine::rules::deadlines::DEFAULT_CALL_TIMEOUT;
use kiln_engine::worker::builder::BuilderConfig;
use kiln_engine::worker::executor::ExecutorConfig;
use kiln_engine::worker::host_configs;

/// How this host builds plugins and runs their chunks.
#[derive(clap::Args)]
pub struct HostArgs {
    /// How many chunks run at once (default: the number of CPUs).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Where built plugins are cached (default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[arg(long, env = "KILN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Where each owner's cargo target directory and cargo home go (default: CACHE_DIR/target).
    #[arg(long, env = "KILN_TARGET_DIR")]
    target_dir: Option<PathBuf>,
    /// The longest one chunk may run, in seconds.
    #[arg(long, default_value_t = DEFAULT_CALL_TIMEOUT.as_secs())]
    timeout: u64,
    /// A limit on each executor's address space, e.g. 2GiB (default: none).
    #[arg(long, value_parser = crate::parse_memory_limit)]
    memory_limit: Option<usize>,
    /// Run plugins without the sandbox, with the rights of this command: only where the host
    /// cannot sandbox and every plugin is trusted. Every job is logged with a warning.
    #[arg(long)]
    insecure_no_sandbox: bool,
}

impl HostArgs {
    /// The builder's and the executors' configurations these flags ask for, and the number of
    /// chunks that run at once.
    pub fn configs(self) -> anyhow::Result<(BuilderConfig, ExecutorConfig, usize)> {
        let cache_dir = match self.cache_dir {
            Some(dir) => dir,
            None => crate::default_cache_dir().context("no cache directory: set --cache-dir or KILN_CACHE_DIR")?,
        };
        let program = std::env::current_exe().context("cannot find the kiln executable")?;
        let processes =
            self.processes.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
        let (builder, mut executor) =
            host_configs(cache_dir, self.target_dir, program, processes, !self.insecure_no_sandbox);
        executor.call_timeout = Duration::from_secs(self.timeout.max(1));
        executor.memory_limit = self.memory_limit.map(|bytes| bytes as u64);
        Ok((builder, executor, processes))
    }
}
