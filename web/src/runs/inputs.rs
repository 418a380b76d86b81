//! Inputs kept for "Run again": a run's uploaded input is moved into `<data_dir>/inputs/` and
//! kept for the configured time (`--keep-inputs-hours`), named in the run's row; a run started
//! again gets a hard link of its own to the same bytes. Files are removed when their time has
//! passed, when their account is deleted, and (within the next sweep) when their run's task or
//! cluster is deleted and nothing names them any more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempPath;

use crate::security::new_token;
use crate::store::{Store, StoreError, now_ms};

/// How long a file no run names is left alone: it may be a run's input being recorded.
const ORPHAN_GRACE_SECONDS: i64 = 600;

/// A run's input on its way to the controller.
pub enum RunInput {
    /// An upload that is not kept: deleted once submitted.
    Temporary(TempPath),
    /// A kept input: stays for "Run again".
    Kept(PathBuf),
    /// A URL the cluster's workers read themselves (`file://`, ...): no byte passes through
    /// the web server.
    Url(String),
}

impl RunInput {
    /// Where the bytes are, for an uploaded input; `None` for a URL.
    pub fn path(&self) -> Option<&Path> {
        match self {
            RunInput::Temporary(path) => Some(path),
            RunInput::Kept(path) => Some(path),
            RunInput::Url(_) => None,
        }
    }
}

/// Where kept inputs live, and for how long.
#[derive(Debug, Clone)]
pub struct InputKeeper {
    dir: PathBuf,
    keep_for: Duration,
}

impl InputKeeper {
    /// Keeps inputs in `dir` for `keep_for` (zero: not kept at all).
    pub fn new(dir: PathBuf, keep_for: Duration) -> InputKeeper {
        InputKeeper { dir, keep_for }
    }

    /// Whether inputs are kept at all.
    pub fn keeps(&self) -> bool {
        !self.keep_for.is_zero()
    }

    /// Keeps the upload `upload` as run `run_id`'s input (on the same file system: a rename);
    /// answers it as kept, or as the temporary upload when inputs are not kept or the move
    /// failed (logged: the run goes on without "Run again").
    pub async fn keep_upload(&self, store: &Store, run_id: i64, upload: TempPath) -> RunInput {
        if !self.keeps() {
            return RunInput::Temporary(upload);
        }
        let (name, path) = self.new_name(run_id);
        if let Err(e) = tokio::fs::rename(&upload, &path).await {
            tracing::warn!(run = run_id, "cannot keep the run's input: {e}");
            return RunInput::Temporary(upload);
        }
        // The upload's guard must not delete the moved file's old name (already gone).
        let _ = upload.keep();
        self.record(store, run_id, name, path).await
    }

    /// Gives run `run_id` its own name for the kept input `file` of an earlier run; `None` when
    /// that file is gone.
    pub async fn link(&self, store: &Store, run_id: i64, file: &str) -> Option<RunInput> {
        let (name, path) = self.new_name(run_id);
        match tokio::fs::hard_link(self.dir.join(base_name(file)), &path).await {
            Ok(()) => Some(self.record(store, run_id, name, path).await),
            Err(e) => {
                tracing::warn!(run = run_id, file, "cannot reuse a kept input: {e}");
                None
            }
        }
    }

    async fn record(&self, store: &Store, run_id: i64, name: String, path: PathBuf) -> RunInput {
        let until = now_ms().saturating_add(i64::try_from(self.keep_for.as_millis()).unwrap_or(i64::MAX));
        if let Err(e) = store.keep_run_input(run_id, &name, until).await {
            tracing::warn!(run = run_id, "cannot record the run's kept input: {e}");
        }
        RunInput::Kept(path)
    }

    fn new_name(&self, run_id: i64) -> (String, PathBuf) {
        let name = format!("run-{run_id}-{}.txt", &new_token()[..16]);
        let path = self.dir.join(&name);
        (name, path)
    }

    /// Removes the kept input files `files` (names from the store).
    pub async fn remove(&self, files: &[String]) {
        for file in files {
            match tokio::fs::remove_file(self.dir.join(base_name(file))).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file, "cannot remove a kept input: {e}"),
            }
        }
    }

    /// Removes the inputs whose time has passed, and files no run names (their run was deleted
    /// with its task or cluster); answers how many files went.
    pub async fn sweep(&self, store: &Store) -> Result<usize, StoreError> {
        let expired = store.expire_run_inputs(now_ms()).await?;
        self.remove(&expired).await;
        let named = store.run_input_files().await?.into_iter().collect();
        let orphans = unnamed_files(&self.dir, &named).await;
        self.remove(&orphans).await;
        Ok(expired.len() + orphans.len())
    }
}

/// The files of `dir` that no run names (`named`), leaving out any changed within
/// [`ORPHAN_GRACE_SECONDS`]: a file moved or written a moment ago may not be in its run's row
/// yet. Shared by the sweeps of kept inputs and of results.
pub(super) async fn unnamed_files(dir: &Path, named: &std::collections::HashSet<String>) -> Vec<String> {
    let mut orphans = Vec::new();
    if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let changed_lately = entry.metadata().await.is_ok_and(|meta| {
                use std::os::unix::fs::MetadataExt;
                now_ms() / 1000 - meta.ctime() < ORPHAN_GRACE_SECONDS
            });
            if !named.contains(&name) && !changed_lately {
                orphans.push(name);
            }
        }
    }
    orphans
}

/// The last component of a stored name: names are made here, but a row is data from disk.
fn base_name(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}
