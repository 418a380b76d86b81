//! Results on the controller's disk: fetched from the worker that aggregated the job, piece by
//! piece ([`fetch`]), into `results/<job>.json` in the data directory, and read by clients
//! piece by piece ([`read_piece`]). No result is ever held whole in memory or sent in one
//! frame; a result's size is bounded only by `--max-result-size` (checked by the worker, which
//! stops writing past it) and the disk.

use std::path::PathBuf;
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::Shared;
use super::calls::{Failure, classify, deadline_in};
use super::state::workers::WorkerHandle;
use crate::rpc::pieces::{ResultPiece, result_piece_bytes};
use crate::rpc::{JobId, RpcError};

/// How long a worker may take to send one piece of a result (a few MiB from its disk).
const FETCH_PIECE_DEADLINE: Duration = Duration::from_secs(60);

/// Why a result could not be fetched.
#[derive(Debug)]
pub(super) enum FetchError {
    /// The worker did not give it: as for any failed call.
    Worker(Failure),
    /// The controller could not write it: the message says where and why.
    Disk(String),
}

/// Where a job's result is kept once complete.
pub(super) fn result_path(shared: &Shared, job: JobId) -> PathBuf {
    shared.data_dir.join("results").join(format!("{job}.json"))
}

/// Fetches the `len` bytes of the job's output that `worker` aggregated into the job's result
/// file, a piece per call; the file appears (renamed from its `.part-<worker>`) only once
/// complete.
pub(super) async fn fetch(shared: &Shared, worker: &WorkerHandle, job: JobId, len: u64) -> Result<(), FetchError> {
    let path = result_path(shared, job);
    let part = part_path(shared, job, worker);
    let disk = |e: std::io::Error, what: &str| {
        FetchError::Disk(format!(
            "cannot {what} the result of job {job} at {}: {e}: free space in the controller's data directory and \
             run the job again",
            part.display()
        ))
    };
    let mut file = tokio::fs::File::create(&part).await.map_err(|e| disk(e, "create"))?;
    let mut offset = 0u64;
    while offset < len {
        let answer = worker.client.fetch_output(deadline_in(FETCH_PIECE_DEADLINE), worker.secret(), job, offset).await;
        let piece = classify(answer, FETCH_PIECE_DEADLINE).map_err(FetchError::Worker)?;
        if piece.is_empty() || offset + piece.len() as u64 > len {
            return Err(FetchError::Worker(Failure::Attempt(format!(
                "the worker's output of job {job} does not have the {len} bytes it announced"
            ))));
        }
        file.write_all(&piece).await.map_err(|e| disk(e, "write"))?;
        offset += piece.len() as u64;
    }
    file.sync_all().await.map_err(|e| disk(e, "write"))?;
    drop(file);
    tokio::fs::rename(&part, &path).await.map_err(|e| disk(e, "keep"))
}

/// Where a result fetched from `worker` is written until complete: a file per worker, since a
/// lost worker's fetch may still be unwinding when another worker's begins.
fn part_path(shared: &Shared, job: JobId, worker: &WorkerHandle) -> PathBuf {
    shared.data_dir.join("results").join(format!("{job}.json.part-{}", worker.id))
}

/// Deletes what a failed fetch from `worker` left of the job's result.
pub(super) async fn discard_part(shared: &Shared, job: JobId, worker: &WorkerHandle) {
    let _ = tokio::fs::remove_file(part_path(shared, job, worker)).await;
}

/// A piece of the stored result of `job` from `offset`: from its file, or from the database
/// row of a job that ended before results moved to files (`stored`).
pub(super) async fn read_piece(
    shared: &Shared,
    job: JobId,
    offset: u64,
    stored: Option<String>,
) -> Result<ResultPiece, RpcError> {
    let max = result_piece_bytes() as u64;
    if let Some(text) = stored {
        let total = text.len() as u64;
        let start = offset.min(total) as usize;
        let end = offset.saturating_add(max).min(total) as usize;
        return Ok(ResultPiece { total, bytes: ByteBuf::from(text.as_bytes()[start..end].to_vec()) });
    }
    let path = result_path(shared, job);
    let unreadable = |e: std::io::Error| {
        RpcError::Internal(format!("cannot read the result of job {job} at {}: {e}", path.display()))
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(unreadable)?;
    let total = file.metadata().await.map_err(unreadable)?.len();
    if offset > total {
        return Err(RpcError::Invalid(format!(
            "offset {offset} is beyond the end of job {job}'s result ({total} bytes)"
        )));
    }
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(unreadable)?;
    let want = (total - offset).min(max) as usize;
    let mut bytes = vec![0u8; want];
    file.read_exact(&mut bytes).await.map_err(unreadable)?;
    Ok(ResultPiece { total, bytes: ByteBuf::from(bytes) })
}
