//! Each job's partials for its aggregate and its aggregate output on this worker, each kept in
//! an unnamed temporary file (gone when it is closed, whatever happens to the worker). The
//! controller sends the partials in pieces (`stage_partials`), which are appended to the file
//! and streamed from it to the executor by `aggregate`; the output is written to its file as the
//! executor sends it, and kept until the controller has fetched it piece by piece with
//! `fetch_output` and released the job. The worker never holds the partials or a result whole
//! in memory: each `fetch_output` reads at most [`result_piece_bytes`].

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;

use crate::rpc::logs::{ChunkPrinted, JOB_OUTPUT_BYTES, PluginOutput, trim};
use crate::rpc::pieces::{max_answer_bytes, max_frame_bytes, result_piece_bytes};
use crate::rpc::{JobId, RpcError, TaskError};
use crate::rules::limits::size;
use crate::worker::executor::capture::CapturedOutput;
use crate::worker::executor::staged::StagedPartials;

/// The staged partials and the outputs of the jobs aggregated here, by job.
#[derive(Default)]
pub(super) struct Outputs {
    staged: Mutex<HashMap<JobId, StagedPartials>>,
    outputs: Mutex<HashMap<JobId, Arc<Output>>>,
}

/// One job's output: its file and length.
struct Output {
    file: std::fs::File,
    len: u64,
}

impl Outputs {
    /// Appends partials to the job's staged ones; `first`, the number of the first of them,
    /// must be the count staged so far (0 starts afresh).
    pub(super) async fn stage(
        &self,
        dir: &Path,
        job: JobId,
        first: u64,
        partials: Vec<ByteBuf>,
    ) -> Result<(), TaskError> {
        let staged = lock(&self.staged).remove(&job);
        let mut staged = match staged {
            _ if first == 0 => StagedPartials::create(dir).map_err(|e| {
                internal(format!(
                    "cannot make a file for job {job}'s partials in {}: {e}: check that the worker can write there",
                    dir.display()
                ))
            })?,
            Some(staged) if staged.count() == first => staged,
            staged => {
                let have = staged.map_or(0, |staged| staged.count());
                return Err(TaskError::Rpc(RpcError::Invalid(format!(
                    "partials of job {job} from number {first} sent while {have} are staged: stage them again from 0"
                ))));
            }
        };
        let appended = tokio::task::spawn_blocking(move || {
            let appended = staged.append(partials.iter().map(|partial| &partial[..]));
            appended.map(|()| staged)
        })
        .await
        .map_err(|e| internal(e.to_string()))?;
        let staged = appended.map_err(|e| internal(format!("cannot write job {job}'s partials: {e}")))?;
        lock(&self.staged).insert(job, staged);
        Ok(())
    }

    /// Takes the job's staged partials for its aggregate, which must be `count`.
    pub(super) fn take_staged(&self, job: JobId, count: u64) -> Result<StagedPartials, TaskError> {
        let staged = lock(&self.staged).remove(&job);
        match staged {
            Some(staged) if staged.count() == count => Ok(staged),
            staged => Err(TaskError::Rpc(RpcError::Invalid(format!(
                "job {job} has {} partials staged, not {count}: stage them again",
                staged.map_or(0, |staged| staged.count())
            )))),
        }
    }

    /// A new unnamed file in `dir` for a job's output.
    pub(super) fn create_file(dir: &Path) -> Result<std::fs::File, TaskError> {
        tempfile::tempfile_in(dir).map_err(|e| {
            TaskError::Rpc(RpcError::Internal(format!(
                "cannot make a file for the result in {}: {e}: check that the worker can write there",
                dir.display()
            )))
        })
    }

    /// Keeps `file`, `len` bytes long, as the job's output (replacing an earlier one).
    pub(super) fn keep(&self, job: JobId, file: std::fs::File, len: u64) {
        lock(&self.outputs).insert(job, Arc::new(Output { file, len }));
    }

    /// Up to [`result_piece_bytes`] of the job's output from `offset`; empty at its end.
    pub(super) async fn read(&self, job: JobId, offset: u64) -> Result<ByteBuf, TaskError> {
        let output = lock(&self.outputs).get(&job).cloned().ok_or_else(|| {
            TaskError::Rpc(RpcError::NotFound(format!("no output of job {job} on this worker: aggregate it again")))
        })?;
        if offset > output.len {
            return Err(TaskError::Rpc(RpcError::Invalid(format!(
                "offset {offset} is beyond the end of job {job}'s output ({} bytes)",
                output.len
            ))));
        }
        let want = (output.len - offset).min(result_piece_bytes() as u64) as usize;
        let read = tokio::task::spawn_blocking(move || {
            let mut piece = vec![0u8; want];
            output.file.read_exact_at(&mut piece, offset).map(|()| piece)
        })
        .await
        .map_err(|e| TaskError::Rpc(RpcError::Internal(e.to_string())))?;
        read.map(ByteBuf::from).map_err(|e| {
            TaskError::Rpc(RpcError::Internal(format!("cannot read job {job}'s output at offset {offset}: {e}")))
        })
    }

    /// Forgets the job's partials and output (their files are deleted once no read holds them).
    pub(super) fn forget(&self, job: JobId) {
        lock(&self.staged).remove(&job);
        lock(&self.outputs).remove(&job);
    }

    /// Forgets every job's partials and output.
    pub(super) fn forget_all(&self) {
        lock(&self.staged).clear();
        lock(&self.outputs).clear();
    }
}

/// Keeps a batch's answer within [`max_answer_bytes`]: a partial larger than that alone fails
/// its chunk for good (no attempt can make it smaller), and the chunks whose partials would
/// overflow the answer are answered `Interrupted`, to run again in another call.
pub(super) fn bound_answers(results: Vec<Result<bytes::Bytes, TaskError>>) -> Vec<Result<ByteBuf, TaskError>> {
    let limit = max_answer_bytes();
    let mut carried = 0usize;
    results
        .into_iter()
        .map(|result| {
            let partial = result?;
            if partial.len() > limit {
                return Err(TaskError::Fatal(format!(
                    "the chunk's partial is {} ({} bytes), more than the {} one answer may carry: run the job \
                     with a smaller --chunk-size, or make the plugin's partials smaller",
                    size(partial.len() as u64),
                    partial.len(),
                    size(limit as u64)
                )));
            }
            carried += partial.len();
            if carried > limit {
                return Err(TaskError::Interrupted(
                    "the batch's partials are too large for one answer: the chunk runs again in another call"
                        .to_owned(),
                ));
            }
            Ok(ByteBuf::from(Vec::from(partial)))
        })
        .collect()
}

/// Refuses a merged partial larger than [`max_answer_bytes`]: the group's partials then stay
/// apart and go to `aggregate` as they are.
pub(super) fn bound_merged(merged: bytes::Bytes) -> Result<ByteBuf, TaskError> {
    let limit = max_answer_bytes();
    if merged.len() > limit {
        return Err(TaskError::Plugin(format!(
            "the merged partial is {}, more than the {} one answer may carry: the partials stay apart",
            size(merged.len() as u64),
            size(limit as u64)
        )));
    }
    Ok(ByteBuf::from(Vec::from(merged)))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn internal(message: String) -> TaskError {
    TaskError::Rpc(RpcError::Internal(message))
}

/// What the chunks of a batch printed, by their position in it, within a quarter of the frame
/// limit (and the job's bound): the partials' half of the frame stays theirs.
pub(super) fn bound_printed(outputs: Vec<(usize, CapturedOutput)>) -> Vec<ChunkPrinted> {
    let mut room = (max_frame_bytes() as u64 / 4).min(JOB_OUTPUT_BYTES);
    outputs
        .into_iter()
        .filter(|(_, output)| !output.is_empty())
        .map(|(position, output)| {
            let mut printed = PluginOutput {
                chunk: None,
                file: String::new(),
                first_line: 0,
                last_line: 0,
                stdout: output.stdout,
                stderr: output.stderr,
                cut: output.cut,
            };
            room -= trim(&mut printed, room);
            ChunkPrinted {
                position: u32::try_from(position).unwrap_or(u32::MAX),
                stdout: printed.stdout,
                stderr: printed.stderr,
                cut: printed.cut,
            }
        })
        .collect()
}
