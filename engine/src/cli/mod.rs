//! The `kiln` commands beyond `run-local`: the cluster daemons ([`cluster`]) and the job
//! commands that talk to a controller ([`jobs`]).

pub mod cluster;
pub mod host;
pub mod jobs;
pub mod logs;
pub mod output;

use std::path::PathBuf;

use anyhow::Context;

/// The controller's address when none is given: a controller on this machine.
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:7700";

/// Where a controller keeps its data when no `--data-dir` is given: `$XDG_DATA_HOME/kiln` or
/// `~/.local/share/kiln`.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("kiln"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share/kiln"))
}

/// A key given on the command line or in the environment, else the one a controller on this
/// machine stored in its default data directory (`file` there).
pub fn key_or_stored(given: Option<String>, file: &str, flag: &str, env: &str) -> anyhow::Result<String> {
    if let Some(key) = given.filter(|key| !key.is_empty()) {
        return Ok(key);
    }
    let stored = default_data_dir().map(|dir| dir.join(file));
    if let Some(path) = &stored
        && let Ok(text) = std::fs::read_to_string(path)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().to_owned());
    }
    let hint = match &stored {
        Some(path) => format!(" (a controller on this machine stores it in {})", path.display()),
        None => String::new(),
    };
    Err(anyhow::anyhow!("no {flag} given: pass {flag} or set {env}{hint}"))
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
