//! The worker role: building plugins ([`builder`]), running their code in executor processes
//! ([`executor`]), one job's calls with crashes charged to their chunks ([`runner`]), and the
//! worker daemon's RPC service ([`service`]).

pub mod builder;
pub mod executor;
pub mod runner;
pub mod service;

use std::path::PathBuf;

use self::builder::BuilderConfig;
use self::executor::ExecutorConfig;

/// How this host builds and runs plugins: where builds are cached (`cache_dir`) and compiled
/// (`target_dir`, default `<cache_dir>/target`), the program whose `exec` subcommand runs plugin
/// code, how many chunks run at once, and whether plugins (and their builds) run in the sandbox.
/// `kiln worker`, `kiln run-local` and kiln-web's embedded workers all wire a host this way.
pub fn host_configs(
    cache_dir: PathBuf,
    target_dir: Option<PathBuf>,
    program: PathBuf,
    processes: usize,
    sandbox: bool,
) -> (BuilderConfig, ExecutorConfig) {
    let mut builder = BuilderConfig::new(cache_dir);
    if let Some(target_dir) = target_dir {
        builder.target_dir = target_dir;
    }
    let mut executor = ExecutorConfig::new(program, processes.max(1));
    executor.sandbox = sandbox;
    (builder, executor)
}
