//! Runs' results as files: `<data_dir>/results/<name>`, named in the run's row
//! (`runs.result_file`, with the length in `runs.result_bytes`), never in the database and never
//! whole in memory. A result is written piece by piece as the engine's client reads it from the
//! controller (`Client::result_to`, pieces of a few MiB), to a `.part` file renamed once
//! complete; the run page reads its first [`PREVIEW_BYTES`] and the download streams the file.
//! A result longer than the server's maximum (`kiln-web --max-result-bytes`, the engine's
//! default of 4 GiB; the embedded controller gets the same) fails the run with the reason.
//!
//! Files go with their runs: when the account, the task or the cluster is deleted, and (within
//! the next sweep) any file no run names, such as one whose run was deleted while the result
//! was being read.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use kiln_engine::client::{Client, ClientError};
use kiln_engine::rpc::JobId;
use tokio::io::{AsyncReadExt, AsyncWrite};

use crate::security::new_token;
use crate::store::runs::{ResultFile, RunsOf};
use crate::store::{Store, StoreError};

/// How much of a result the run page shows; the whole is a download away.
pub const PREVIEW_BYTES: usize = 64 << 10;

/// How a result could not be stored: the kind and message a failed run shows.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// Longer than this server keeps.
    #[error(
        "the result is longer than {limit} bytes, the most this web server keeps: raise kiln-web \
         --max-result-bytes, or make the plugin's output smaller"
    )]
    TooLarge {
        /// The server's maximum.
        limit: u64,
    },
    /// The file could not be made or written.
    #[error("cannot store the result in {dir}: {source}: check the space and permissions of the data directory")]
    Disk {
        /// The results directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The controller did not give it.
    #[error("the job succeeded but its result could not be fetched: {0}")]
    Fetch(ClientError),
}

impl ResultError {
    /// The kind a failed run records (see `store::runs::Run::error_kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            ResultError::TooLarge { .. } => "result",
            ResultError::Disk { .. } => "internal",
            ResultError::Fetch(_) => "cluster",
        }
    }
}

/// Where results live, and the longest one kept.
#[derive(Debug, Clone)]
pub struct ResultFiles {
    dir: PathBuf,
    max_bytes: u64,
}

impl ResultFiles {
    /// Results in `dir`, each at most `max_bytes` long.
    pub fn new(dir: PathBuf, max_bytes: u64) -> ResultFiles {
        ResultFiles { dir, max_bytes }
    }

    /// The path of the stored result `file` (a name from the store).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(base_name(file))
    }

    /// Reads the result of `job` from the controller into a new file for run `run_id`, a piece
    /// at a time; answers its name and length.
    pub async fn fetch(&self, client: &Client, run_id: i64, job: JobId) -> Result<ResultFile, ResultError> {
        let disk = |source| ResultError::Disk { dir: self.dir.clone(), source };
        let name = format!("run-{run_id}-{}.json", &new_token()[..16]);
        let part = self.dir.join(format!("{name}.part"));
        let file =
            tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&part).await.map_err(disk)?;
        let mut out = Bounded { inner: tokio::io::BufWriter::new(file), written: 0, limit: self.max_bytes };
        let fetched = match client.result_to(job, &mut out).await {
            Ok(len) => out.inner.get_ref().sync_all().await.map(|()| len).map_err(disk),
            Err(_) if out.written > self.max_bytes => Err(ResultError::TooLarge { limit: self.max_bytes }),
            Err(ClientError::Output { source, .. }) => Err(disk(source)),
            Err(error) => Err(ResultError::Fetch(error)),
        };
        let stored = match fetched {
            Ok(len) => tokio::fs::rename(&part, self.dir.join(&name)).await.map(|()| len).map_err(disk),
            Err(error) => Err(error),
        };
        match stored {
            Ok(len) => Ok(ResultFile { file: name, bytes: i64::try_from(len).unwrap_or(i64::MAX) }),
            Err(error) => {
                remove_quietly(&part).await;
                Err(error)
            }
        }
    }

    /// The beginning of the stored result `file`: at most [`PREVIEW_BYTES`], cut at a
    /// character boundary.
    pub async fn preview(&self, file: &str) -> io::Result<String> {
        let mut bytes = Vec::with_capacity(PREVIEW_BYTES);
        let opened = tokio::fs::File::open(self.path(file)).await?;
        opened.take(PREVIEW_BYTES as u64).read_to_end(&mut bytes).await?;
        Ok(utf8_prefix(&bytes))
    }

    /// Opens the stored result `file` to send it.
    pub async fn open(&self, file: &str) -> io::Result<tokio::fs::File> {
        tokio::fs::File::open(self.path(file)).await
    }

    /// Removes the stored results `files` (names from the store).
    pub async fn remove(&self, files: &[String]) {
        for file in files {
            remove_quietly(&self.path(file)).await;
        }
    }

    /// Removes the files no run names (their run was deleted, or the server stopped while it
    /// read them); answers how many went.
    pub async fn sweep(&self, store: &Store) -> Result<usize, StoreError> {
        let named = store.run_result_files(RunsOf::All).await?.into_iter().collect();
        let orphans = super::inputs::unnamed_files(&self.dir, &named).await;
        self.remove(&orphans).await;
        Ok(orphans.len())
    }
}

/// The file's bytes as a stream of pieces, for a response body.
pub fn stream(file: tokio::fs::File) -> impl futures::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static {
    const PIECE: usize = 64 << 10;
    futures::stream::try_unfold(file, |mut file| async move {
        let mut piece = vec![0; PIECE];
        let n = file.read(&mut piece).await?;
        piece.truncate(n);
        Ok::<_, io::Error>((n > 0).then(|| (bytes::Bytes::from(piece), file)))
    })
}

/// The longest prefix of `bytes` that is whole characters: a piece of a UTF-8 result may end
/// inside one. Bytes that are not UTF-8 at all (results are checked by the cluster) are shown
/// replaced.
pub fn utf8_prefix(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(e) if e.error_len().is_none() => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

async fn remove_quietly(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "cannot remove a run's result: {e}"),
    }
}

/// The last component of a stored name: names are made here, but a row is data from disk.
fn base_name(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// A writer that refuses to go past `limit` bytes.
struct Bounded<W> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Bounded<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.written.saturating_add(buf.len() as u64) > self.limit {
            self.written = self.written.saturating_add(buf.len() as u64);
            return Poll::Ready(Err(io::Error::other("the result is longer than this web server keeps")));
        }
        let this = &mut *self;
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.written += written as u64;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_ends_at_a_whole_character() {
        let text = "aé火";
        let bytes = text.as_bytes();
        assert_eq!(utf8_prefix(bytes), text);
        assert_eq!(utf8_prefix(&bytes[..bytes.len() - 1]), "aé", "the cut 火 is left out");
        assert_eq!(utf8_prefix(&bytes[..2]), "a", "the cut é is left out");
        assert_eq!(utf8_prefix(b"a\xffb"), "a\u{fffd}b");
    }
}
