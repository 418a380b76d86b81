//! A job's input: spooled to `<data_dir>/inputs/<job>.txt` piece by piece, then cut into
//! chunks of whole lines.
//!
//! Pieces are written where they belong as they arrive and never held beyond one call;
//! cutting streams the file through the [`Chunker`] in a blocking task and keeps only each
//! chunk's place (offset, length, lines). Chunks are read back from the file when dispatched.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tracing::info;

use super::Shared;
use super::dispatch::{end_job, fail_internal};
use super::store::ChunkMeta;
use crate::chunk::{ChunkError, Chunker};
use crate::rpc::{FailureKind, JobFailure, JobId, JobState, JobStatus, MAX_PIECE_BYTES, RpcError};

/// A job's input file as it is uploaded.
pub(super) struct Spool {
    path: PathBuf,
    /// Bytes received so far: the file's length.
    len: u64,
    file: Option<tokio::fs::File>,
    /// Set while the input is being finished: no piece may change it under the chunker.
    sealed: bool,
}

impl Spool {
    /// The spool of an input file that holds `len` bytes.
    pub fn new(path: PathBuf, len: u64) -> Spool {
        Spool { path, len, file: None, sealed: false }
    }

    /// Writes a piece at `offset`: the bytes past the current end are appended, a piece
    /// wholly received before is ignored, and a gap is refused.
    async fn write(&mut self, offset: u64, piece: &[u8]) -> Result<(), RpcError> {
        if self.sealed {
            return Err(RpcError::Invalid("the input is being finished: no more pieces".into()));
        }
        if offset > self.len {
            return Err(RpcError::Invalid(format!(
                "a piece at byte {offset} leaves a gap: {} bytes were received so far; resend from there",
                self.len
            )));
        }
        let end = offset + piece.len() as u64;
        if end <= self.len {
            return Ok(());
        }
        let new = &piece[usize::try_from(self.len - offset).unwrap_or(0)..];
        let io_error = |e: std::io::Error| RpcError::Internal(format!("cannot write the input to disk: {e}"));
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file =
                    tokio::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&self.path).await;
                self.file.insert(file.map_err(io_error)?)
            }
        };
        let written = async {
            file.seek(SeekFrom::Start(self.len)).await?;
            file.write_all(new).await?;
            file.flush().await
        }
        .await;
        if let Err(e) = written {
            // The file may hold part of the piece: count what is there, so a resent piece
            // continues where the disk stopped.
            self.file = None;
            if let Ok(meta) = tokio::fs::metadata(&self.path).await {
                self.len = meta.len();
            }
            return Err(io_error(e));
        }
        self.len = end;
        Ok(())
    }

    /// Makes the received bytes durable, closes the file and seals it; answers its length.
    async fn close(&mut self) -> std::io::Result<u64> {
        self.sealed = true;
        if let Some(file) = self.file.take() {
            file.sync_all().await?;
        }
        Ok(self.len)
    }
}

/// The error for a job that exists only in the store (it ended before this start).
async fn not_in_memory(shared: &Shared, job_id: JobId) -> RpcError {
    match shared.store.job(job_id).await {
        Ok(Some(row)) => RpcError::Invalid(format!("job {job_id} is {:?}: its input can no longer change", row.state)),
        Ok(None) => RpcError::NotFound(format!("job {job_id}")),
        Err(e) => RpcError::Internal(e.to_string()),
    }
}

/// Writes a piece of a job's input.
pub(super) async fn upload_input(shared: &Shared, job_id: JobId, offset: u64, piece: &[u8]) -> Result<(), RpcError> {
    if piece.len() > MAX_PIECE_BYTES {
        return Err(RpcError::Invalid(format!("a piece of input may be at most {MAX_PIECE_BYTES} bytes")));
    }
    let spool = shared.with_state(|st| {
        let job = st.jobs.get(&job_id)?;
        Some(match job.state {
            JobState::Uploading if !job.finishing_input => Ok(Arc::clone(&job.spool)),
            JobState::Uploading => Err(RpcError::Invalid(format!("job {job_id}'s input is being finished"))),
            state => Err(RpcError::Invalid(format!("job {job_id} is {state:?}: its input can no longer change"))),
        })
    });
    let spool = match spool {
        Some(spool) => spool?,
        None => return Err(not_in_memory(shared, job_id).await),
    };
    let mut spool = spool.lock().await;
    spool.write(offset, piece).await
}

/// What a `finish_input` call finds.
enum Claim {
    /// This call cuts the input (the spool, the chunk size).
    Cut(Arc<tokio::sync::Mutex<Spool>>, u64),
    /// The input was cut by an earlier call (the client did not see its answer).
    Done,
    /// An earlier call is cutting it now: wait for its outcome.
    Wait(tokio::sync::watch::Receiver<JobStatus>),
}

/// Ends a job's input: checks its size, cuts it into chunks and queues the job. The cutting
/// runs in a task of its own, so that a client giving up on the call does not leave the job
/// half cut; a repeated call waits for the outcome of the first.
pub(super) async fn finish_input(shared: &Arc<Shared>, job_id: JobId, total_bytes: u64) -> Result<(), RpcError> {
    let claimed = shared.with_state(|st| {
        let job = st.jobs.get_mut(&job_id)?;
        Some(match job.state {
            JobState::Uploading if job.finishing_input => Ok(Claim::Wait(job.subscribe())),
            JobState::Uploading => {
                job.finishing_input = true;
                Ok(Claim::Cut(Arc::clone(&job.spool), job.spec.chunk_size))
            }
            state if !state.is_final() && job.bytes_total == total_bytes => Ok(Claim::Done),
            _ => Err(input_ended(&job.published())),
        })
    });
    let (spool, chunk_size) = match claimed {
        Some(Ok(Claim::Cut(spool, chunk_size))) => (spool, chunk_size),
        Some(Ok(Claim::Done)) => return Ok(()),
        Some(Ok(Claim::Wait(mut receiver))) => {
            let seen = receiver.borrow().seq;
            let _ = receiver.wait_for(|status| status.seq != seen).await;
            let status = receiver.borrow().clone();
            return match status.state {
                JobState::Uploading => {
                    Err(RpcError::Invalid(format!("finishing job {job_id}'s input failed: call finish_input again")))
                }
                state if state.is_final() => Err(input_ended(&status)),
                _ => Ok(()),
            };
        }
        Some(Err(e)) => return Err(e),
        None => return Err(not_in_memory(shared, job_id).await),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let task_shared = Arc::clone(shared);
    shared.spawn_background(async move {
        let _ = done_tx.send(cut_and_queue(&task_shared, job_id, total_bytes, spool, chunk_size).await);
    });
    done_rx.await.map_err(|_| RpcError::Internal("the controller is shutting down".into()))?
}

/// The error for a finish of a job that has ended: its input's failure if it had one.
fn input_ended(status: &JobStatus) -> RpcError {
    match &status.failure {
        Some(failure) if failure.kind == FailureKind::Input => RpcError::Invalid(failure.message.clone()),
        _ => RpcError::Invalid(format!("job {} is {:?}: its input can no longer change", status.id, status.state)),
    }
}

async fn cut_and_queue(
    shared: &Shared,
    job_id: JobId,
    total_bytes: u64,
    spool: Arc<tokio::sync::Mutex<Spool>>,
    chunk_size: u64,
) -> Result<(), RpcError> {
    let unclaim = || async {
        spool.lock().await.sealed = false;
        // Published, so that a repeated call waiting on this one learns it failed.
        shared.with_state(|st| {
            if let Some(job) = st.jobs.get_mut(&job_id) {
                job.finishing_input = false;
                job.publish();
            }
        })
    };
    let received = spool.lock().await.close().await;
    match received {
        Ok(received) if received == total_bytes => {}
        Ok(received) => {
            unclaim().await;
            return Err(RpcError::Invalid(format!(
                "job {job_id} received {received} bytes of input, not {total_bytes}: upload the rest first"
            )));
        }
        Err(e) => {
            unclaim().await;
            return Err(RpcError::Internal(format!("cannot save the input to disk: {e}")));
        }
    }
    let path = shared.input_path(job_id);
    let chunk_size = usize::try_from(chunk_size).unwrap_or(usize::MAX);
    let cut = tokio::task::spawn_blocking(move || cut_input(&path, chunk_size)).await;
    let metas = match cut {
        Ok(Ok(metas)) => metas,
        Ok(Err(ChunkError::Read(e))) => {
            let message = format!("cannot read the spooled input: {e}");
            fail_internal(shared, job_id, message.clone()).await;
            return Err(RpcError::Internal(message));
        }
        Ok(Err(e)) => {
            let failure = JobFailure { kind: FailureKind::Input, message: e.to_string(), chunk: None, attempts: 0 };
            end_job(shared, job_id, JobState::Failed, Some(failure), None).await;
            return Err(RpcError::Invalid(e.to_string()));
        }
        Err(e) => {
            unclaim().await;
            return Err(RpcError::Internal(format!("cutting the input failed: {e}")));
        }
    };
    let group_size = crate::local::combine_group(chunk_size as u64);
    match shared.store.queue_job(job_id, &metas, total_bytes, group_size).await {
        Ok(true) => {}
        Ok(false) => return Err(RpcError::Invalid(format!("job {job_id} ended while its input was being cut"))),
        Err(e) => {
            unclaim().await;
            return Err(RpcError::Internal(e.to_string()));
        }
    }
    let n_chunks = metas.len();
    let queued = shared.with_state(|st| {
        let job = st.jobs.get_mut(&job_id).filter(|job| job.state == JobState::Uploading)?;
        job.install_chunks(metas, total_bytes, group_size);
        job.finishing_input = false;
        job.set_state(JobState::Queued);
        job.publish();
        st.run_queue.push(job_id);
        Some(())
    });
    if queued.is_none() {
        return Err(RpcError::Invalid(format!("job {job_id} ended while its input was being cut")));
    }
    info!(job = job_id, chunks = n_chunks, bytes = total_bytes, "job queued");
    shared.wake();
    Ok(())
}

/// Cuts the input file into chunks, keeping only where each one lies.
fn cut_input(path: &Path, chunk_size: usize) -> Result<Vec<ChunkMeta>, ChunkError> {
    let file = std::fs::File::open(path)?;
    Chunker::new(file, chunk_size)
        .map(|chunk| {
            chunk.map(|c| ChunkMeta {
                offset: c.offset,
                len: c.text.len() as u64,
                first_line: c.first_line,
                n_lines: c.n_lines,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pieces_append_repeats_are_ignored_and_gaps_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        let mut spool = Spool::new(path.clone(), 0);
        spool.write(0, b"abc").await.unwrap();
        spool.write(0, b"abc").await.unwrap();
        spool.write(2, b"cdef").await.unwrap();
        let gap = spool.write(10, b"x").await.unwrap_err();
        assert!(matches!(&gap, RpcError::Invalid(m) if m.contains("6 bytes")), "{gap}");
        assert_eq!(spool.close().await.unwrap(), 6);
        assert!(spool.write(6, b"late").await.is_err(), "a finished input takes no more pieces");
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
    }

    #[test]
    fn cutting_keeps_only_where_chunks_lie_and_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"one\ntwo\nthree\n").unwrap();
        let metas = cut_input(&path, 8).unwrap();
        assert_eq!(metas[0], ChunkMeta { offset: 0, len: 8, first_line: 1, n_lines: 2 });
        assert_eq!(metas[1], ChunkMeta { offset: 8, len: 6, first_line: 3, n_lines: 1 });
        std::fs::write(&path, b"ok\n\xff\n").unwrap();
        let error = cut_input(&path, 8).unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        std::fs::write(&path, b"").unwrap();
        assert!(cut_input(&path, 8).unwrap().is_empty());
    }
}
