//! A job's input: written to `<data_dir>/inputs/<job>.txt` piece by piece as it uploads, and
//! cut into chunks of whole lines on the way, so that chunks run while the rest still uploads.
//!
//! Each piece is written where it belongs and pushed through the job's [`Cutter`], which keeps
//! only the bytes after the last cut (less than a chunk); the chunks it completes are stored
//! (where they lie: offset, length, lines) and queued before the piece is acknowledged. A
//! piece's work runs in a task of its own, so a client giving up on the call never leaves a
//! piece written but its chunks unrecorded. Chunks are read back from the file when dispatched.
//! The file is not flushed to disk before the job runs (that cost ~1.8 s/GiB on the call's
//! path): it is synced in the background once complete, and a restart checks that it still
//! holds every stored chunk (see `resume_input`).
//!
//! The input's files are uploaded one after another into the one file. Where each begins is
//! stored before its first piece is written, so a restart cuts the bytes past the last stored
//! chunk at the same file boundaries.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{info, warn};

use super::Shared;
use super::ending::{end_job, fail_internal};
use super::metrics::SourceLabels;
use super::state::spool::{PieceError, Spool, chunk_size_of};
use super::store::{ChunkMeta, ChunkRow};
use crate::rpc::{FailureKind, JobFailure, JobId, JobState, JobStatus, MAX_PIECE_BYTES, RpcError};
use crate::rules::chunk::{ChunkError, ChunkPlace, Cutter, Resume};

fn meta_of(place: &ChunkPlace) -> ChunkMeta {
    ChunkMeta {
        file: place.file,
        offset: place.offset,
        len: place.len,
        first_line: place.first_line,
        n_lines: place.n_lines,
    }
}

/// The error for a job that exists only in the store (it ended before this start).
async fn not_in_memory(shared: &Shared, job_id: JobId) -> RpcError {
    match shared.store.job(job_id).await {
        Ok(Some(row)) => {
            RpcError::Invalid(format!("job {job_id} is {}: its input can no longer change", row.figures.state.as_str()))
        }
        Ok(None) => RpcError::NotFound(format!("job {job_id}")),
        Err(e) => RpcError::Internal(e.to_string()),
    }
}

/// Runs `work` in a task of its own and answers its outcome: a client giving up on the call
/// does not stop it halfway.
async fn detached<F>(shared: &Shared, work: F) -> Result<(), RpcError>
where
    F: Future<Output = Result<(), RpcError>> + Send + 'static,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    shared.spawn_background(async move {
        let _ = done_tx.send(work.await);
    });
    done_rx.await.map_err(|_| RpcError::Internal("the controller is shutting down".into()))?
}

/// Writes a piece of a job's input file number `file` and queues the chunks it completes.
pub(super) async fn upload_input(
    shared: &Arc<Shared>,
    job_id: JobId,
    file: u32,
    offset: u64,
    piece: bytes::Bytes,
) -> Result<(), RpcError> {
    if piece.len() > MAX_PIECE_BYTES {
        return Err(RpcError::Invalid(format!("a piece of input may be at most {MAX_PIECE_BYTES} bytes")));
    }
    let spool = shared.with_state(|st| {
        let job = st.job(job_id)?;
        Some(match job.state() {
            JobState::Uploading if !job.finishing_input() => Ok(job.spool()),
            JobState::Uploading => Err(RpcError::Invalid(format!("job {job_id}'s input is being finished"))),
            _ => Err(input_ended(job.id, job.state(), job.failure())),
        })
    });
    let spool = match spool {
        Some(spool) => spool?,
        None => return Err(not_in_memory(shared, job_id).await),
    };
    let task_shared = Arc::clone(shared);
    shared.metrics.input_bytes.get_or_create(&SourceLabels { source: "upload" }).inc_by(piece.len() as u64);
    detached(shared, async move {
        let spool = spool.lock_owned().await;
        // A file's start is stored before its first byte is written (see the module's doc).
        if file > spool.current_file() && offset == spool.received() {
            let stored = task_shared.store.start_file(job_id, file, offset).await;
            stored.map_err(|e| RpcError::Internal(format!("cannot record where input file {file} starts: {e}")))?;
        }
        let (spool, taken) = blocking(move || {
            let mut spool = spool;
            let taken = spool.take(file, offset, &piece);
            (spool, taken)
        })
        .await?;
        match taken {
            Ok(places) => queue_chunks(&task_shared, job_id, &spool, places).await,
            Err(PieceError::Refused(e)) => Err(e),
            Err(PieceError::Input(e)) => Err(refuse_input(&task_shared, job_id, spool.current_file(), e).await),
        }
    })
    .await
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| RpcError::Internal(format!("input task failed: {e}")))
}

/// Stores chunks cut from a job's uploading input, then queues them; the spool stays locked
/// meanwhile, so chunks are stored in order.
async fn queue_chunks(
    shared: &Shared,
    job_id: JobId,
    spool: &OwnedMutexGuard<Spool>,
    places: Vec<ChunkPlace>,
) -> Result<(), RpcError> {
    let received = spool.received();
    let Some(first) = places.first().map(|place| place.index) else {
        shared.with_state(|st| {
            if let Some(job) = st.job_mut(job_id) {
                job.received(received);
            }
        });
        return Ok(());
    };
    let metas: Vec<ChunkMeta> = places.iter().map(meta_of).collect();
    match shared.store.add_chunks(job_id, first, &metas).await {
        Ok(true) => {}
        Ok(false) => return Err(RpcError::Invalid(format!("job {job_id} ended: its input can no longer change"))),
        Err(e) => {
            let message = format!("cannot store the chunks of the input: {e}");
            fail_internal(shared, job_id, message.clone()).await;
            return Err(RpcError::Internal(message));
        }
    }
    shared.with_state(|st| {
        let Some(job) = st.job_mut(job_id).filter(|job| job.state() == JobState::Uploading) else { return };
        job.received(received);
        job.append_chunks(metas);
        job.publish();
    });
    shared.wake();
    Ok(())
}

/// Fails a job whose input cannot be cut, naming the file (when it has more than one), and
/// answers the error for the caller.
async fn refuse_input(shared: &Shared, job_id: JobId, file: u32, error: ChunkError) -> RpcError {
    let names = shared.with_state(|st| st.job(job_id).map(|job| job.file_names()));
    let message = match names {
        Some(names) if !names.is_empty() => {
            format!("input file {}: {error}", names.get(file as usize).map_or("?", String::as_str))
        }
        _ => error.to_string(),
    };
    let failure = JobFailure { kind: FailureKind::Input, message: message.clone(), chunk: None, attempts: 0 };
    end_job(shared, job_id, JobState::Failed, Some(failure), None).await;
    RpcError::Invalid(message)
}

/// What a `finish_input` call finds.
enum Claim {
    /// This call finishes the input.
    Finish(Arc<Mutex<Spool>>),
    /// The input was finished by an earlier call (the client did not see its answer).
    Done,
    /// An earlier call is finishing it now: wait for its outcome.
    Wait(tokio::sync::watch::Receiver<JobStatus>),
}

/// Ends a job's input: checks its size, cuts its last chunk and completes the job's chunks. A
/// repeated call waits for the outcome of the first.
pub(super) async fn finish_input(shared: &Arc<Shared>, job_id: JobId, total_bytes: u64) -> Result<(), RpcError> {
    let claimed = shared.with_state(|st| {
        let job = st.job_mut(job_id)?;
        Some(match job.state() {
            JobState::Uploading if job.finishing_input() => Ok(Claim::Wait(job.subscribe())),
            JobState::Uploading => {
                job.set_finishing_input(true);
                Ok(Claim::Finish(job.spool()))
            }
            state if !state.is_final() && job.bytes_total() == total_bytes => Ok(Claim::Done),
            _ => Err(input_ended(job.id, job.state(), job.failure())),
        })
    });
    let spool = match claimed {
        Some(Ok(Claim::Finish(spool))) => spool,
        Some(Ok(Claim::Done)) => return Ok(()),
        Some(Ok(Claim::Wait(mut receiver))) => {
            let seen = receiver.borrow().seq;
            let _ = receiver.wait_for(|status| status.seq != seen).await;
            let status = receiver.borrow().clone();
            return match status.state {
                JobState::Uploading => {
                    Err(RpcError::Invalid(format!("finishing job {job_id}'s input failed: call finish_input again")))
                }
                state if state.is_final() => Err(input_ended(job_id, state, status.failure.as_ref())),
                _ => Ok(()),
            };
        }
        Some(Err(e)) => return Err(e),
        None => return Err(not_in_memory(shared, job_id).await),
    };
    let task_shared = Arc::clone(shared);
    detached(shared, async move { complete(&task_shared, job_id, total_bytes, spool).await }).await
}

/// The error for a piece or finish of a job that has ended: its input's failure if it had one.
fn input_ended(job: JobId, state: JobState, failure: Option<&JobFailure>) -> RpcError {
    match failure {
        Some(failure) if failure.kind == FailureKind::Input => RpcError::Invalid(failure.message.clone()),
        _ => RpcError::Invalid(format!("job {job} is {}: its input can no longer change", state.as_str())),
    }
}

async fn complete(shared: &Shared, job_id: JobId, total_bytes: u64, spool: Arc<Mutex<Spool>>) -> Result<(), RpcError> {
    let unclaim = || {
        // Published, so that a repeated call waiting on this one learns it failed.
        shared.with_state(|st| {
            if let Some(job) = st.job_mut(job_id) {
                job.set_finishing_input(false);
                job.publish();
            }
        })
    };
    let mut spool = spool.lock_owned().await;
    if spool.received() != total_bytes {
        unclaim();
        return Err(RpcError::Invalid(format!(
            "job {job_id} received {} bytes of input, not {total_bytes}: upload the rest first",
            spool.received()
        )));
    }
    spool.seal();
    let (spool, cut) = blocking(move || {
        let mut spool = spool;
        let cut = spool.finish_cut();
        (spool, cut)
    })
    .await?;
    let places = match cut {
        Ok(places) => places,
        Err(e) => return Err(refuse_input(shared, job_id, spool.current_file(), e).await),
    };
    let first = spool.next_index() - places.len() as u64;
    let metas: Vec<ChunkMeta> = places.iter().map(meta_of).collect();
    let group_size = shared.with_state(|st| st.job(job_id).map(|job| job.group_size())).unwrap_or(1);
    match shared.store.finish_input(job_id, first, &metas, total_bytes, group_size).await {
        Ok(true) => {}
        Ok(false) => return Err(RpcError::Invalid(format!("job {job_id} ended: its input can no longer change"))),
        Err(e) => {
            let message = format!("cannot store the end of the input: {e}");
            fail_internal(shared, job_id, message.clone()).await;
            return Err(RpcError::Internal(message));
        }
    }
    let n_chunks = shared.with_state(|st| {
        let job = st.job_mut(job_id).filter(|job| job.state() == JobState::Uploading)?;
        job.input_finished(metas, total_bytes);
        job.publish();
        Some(job.n_chunks())
    });
    let Some(n_chunks) = n_chunks else {
        return Err(RpcError::Invalid(format!("job {job_id} ended: its input can no longer change")));
    };
    info!(job = job_id, chunks = n_chunks, bytes = total_bytes, "job's input complete");
    shared.wake();
    if let Some(file) = spool.file() {
        // Durable soon, off the job's path; a restart checks the file anyway.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = file.sync_data() {
                warn!(job = job_id, "cannot flush the job's input to disk: {e}");
            }
        });
    }
    Ok(())
}

/// What a restart needs to go on with a job's input.
pub(super) struct ResumedInput {
    pub spool: Spool,
    /// Chunks cut from bytes that had arrived but were not yet cut (stored already).
    pub new_chunks: Vec<ChunkMeta>,
}

/// Prepares the input of a job found in the store after a restart. A job still uploading goes
/// on from the bytes its file holds: those past its last stored chunk are cut again (and
/// their chunks stored), so the client resumes its upload where the file ends. Answers an
/// error message when the file lacks bytes of chunks that still have to run (it is gone, or
/// the machine stopped before it reached the disk).
pub(super) async fn resume_input(
    shared: &Shared,
    job_id: JobId,
    state: JobState,
    chunk_size: u64,
    chunks: &[ChunkRow],
) -> Result<ResumedInput, String> {
    let path = shared.input_path(job_id);
    let file_len = tokio::fs::metadata(&path).await.map(|meta| meta.len()).ok();
    let needed = chunks.iter().filter(|c| !c.done).map(|c| c.meta.offset + c.meta.len).max().unwrap_or(0);
    let cut_to = chunks.last().map_or(0, |c| c.meta.offset + c.meta.len);
    let file_starts = shared.store.file_starts(job_id).await.map_err(|e| e.to_string())?;
    let lost = |held: u64| {
        format!(
            "the job's spooled input holds {held} bytes, but its chunks need {}: it was lost (was the machine \
             stopped before it reached the disk?); submit the job again",
            needed.max(cut_to)
        )
    };
    let mut cutter =
        Cutter::resume(chunk_size_of(chunk_size), resume_at(chunks, &file_starts)).with_max_line(shared.max_line_bytes);
    if state != JobState::Uploading {
        let held = file_len.unwrap_or(0);
        if needed > 0 && held < needed {
            return Err(lost(held));
        }
        let mut spool = Spool::resume(path, held, cutter);
        spool.seal();
        return Ok(ResumedInput { spool, new_chunks: Vec::new() });
    }
    let held = file_len.unwrap_or(0);
    if held < cut_to {
        return Err(lost(held));
    }
    let cut = blocking(move || -> Result<(Cutter, Vec<ChunkPlace>), String> {
        let mut places = Vec::new();
        if held > cut_to {
            let file = std::fs::File::open(&path).map_err(|e| format!("cannot read the spooled input: {e}"))?;
            let mut rest = vec![0; usize::try_from(held - cut_to).unwrap_or(usize::MAX)];
            file.read_exact_at(&mut rest, cut_to).map_err(|e| format!("cannot read the spooled input: {e}"))?;
            // The files that began past the last chunk, each ending the one before.
            let mut fed = cut_to;
            let after = cutter.file();
            for &(index, start) in file_starts.iter().filter(|(index, _)| *index > after) {
                let upto = start.clamp(fed, held);
                let part = &rest[(fed - cut_to) as usize..(upto - cut_to) as usize];
                cutter.push(part, &mut places).map_err(|e| e.to_string())?;
                cutter.next_file(index, &mut places).map_err(|e| e.to_string())?;
                fed = upto;
            }
            cutter.push(&rest[(fed - cut_to) as usize..], &mut places).map_err(|e| e.to_string())?;
        }
        Ok((cutter, places))
    })
    .await
    .map_err(|e| e.to_string())??;
    let (cutter, places) = cut;
    let new_chunks: Vec<ChunkMeta> = places.iter().map(meta_of).collect();
    if !new_chunks.is_empty() {
        match shared.store.add_chunks(job_id, chunks.len() as u64, &new_chunks).await {
            Ok(true) => {}
            Ok(false) => return Err(format!("job {job_id} is no longer uploading")),
            Err(e) => return Err(format!("cannot store the chunks of the input: {e}")),
        }
    }
    Ok(ResumedInput { spool: Spool::resume(shared.input_path(job_id), held, cutter), new_chunks })
}

/// Where cutting goes on after the stored `chunks`: after the last one, in its file, unless
/// files began at or before its end (their starts are `file_starts`).
fn resume_at(chunks: &[ChunkRow], file_starts: &[(u32, u64)]) -> Resume {
    let start_of = |file: u32| file_starts.iter().find(|(index, _)| *index == file).map_or(0, |(_, start)| *start);
    let Some(last) = chunks.last().map(|c| c.meta) else {
        return Resume { index: 0, file: 0, line: 1, offset: 0, file_start: 0 };
    };
    Resume {
        index: chunks.len() as u64,
        file: last.file,
        line: last.first_line + last.n_lines,
        offset: last.offset + last.len,
        file_start: start_of(last.file),
    }
}
