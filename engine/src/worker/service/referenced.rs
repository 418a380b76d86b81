//! Chunks of an input read by reference, read by the worker itself: a plain object's split is
//! read before the call takes a slot ([`read_chunks`]); a compressed object, one split, is
//! streamed in the slot and run chunk by chunk ([`run_compressed`]), so the worker holds a few
//! chunks of it at a time whatever its size. Each chunk answers its lines for the job's
//! progress.

use std::sync::Arc;

use bytes::Bytes;

use super::state::State;
use crate::input::{compressed, reference};
use crate::rpc::input::ChunkSource;
use crate::rpc::{ChunkInput, JobId, TaskError};
use crate::rules::chunk::count_lines;
use crate::worker::executor::ChunkText;
use crate::worker::executor::capture::CapturedOutput;
use crate::worker::runner::{ChunkAnswer, JobRunner};

/// Where a chunk's answer comes from.
pub(super) enum Place {
    /// From the batch of texts, in order.
    Batched,
    /// It could not be read.
    Failed(TaskError),
    /// Already answered (a compressed object, streamed).
    Answered(ChunkAnswer),
}

/// The chunks of a call, ready to run.
pub(super) struct ReadChunks {
    /// The texts to run as one batch.
    pub texts: Vec<ChunkText>,
    /// Per chunk of the call, where its answer comes from.
    pub places: Vec<Place>,
    /// Per chunk of the call, its lines when the worker read it by reference (else 0).
    pub lines: Vec<u64>,
    /// The compressed objects to stream in the slot: `(position, file, source)`.
    pub streamed: Vec<(usize, Arc<str>, ChunkSource)>,
}

/// What streaming a compressed object read.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct StreamedRead {
    /// Its lines.
    pub lines: u64,
    /// Its bytes, decompressed.
    pub bytes: u64,
}

/// Reads the chunks of a call that are read by reference (but for compressed objects, which
/// are streamed when they run). A chunk in the middle of an object learns its line numbers by
/// counting, only for a plugin that declares it needs them.
pub(super) async fn read_chunks(state: &State, runner: &JobRunner, chunks: Vec<ChunkInput>) -> ReadChunks {
    let n_chunks = chunks.len();
    let mid_object = chunks.iter().any(|chunk| chunk.source.as_ref().is_some_and(|source| source.start > 0));
    let count_lines_before = mid_object && runner.line_numbers().await.unwrap_or(false);
    let mut read = ReadChunks {
        texts: Vec::with_capacity(n_chunks),
        places: Vec::with_capacity(n_chunks),
        lines: vec![0; n_chunks],
        streamed: Vec::new(),
    };
    for (position, chunk) in chunks.into_iter().enumerate() {
        let ChunkInput { file, first_line, text, source } = chunk;
        let Some(source) = source else {
            read.texts.push(ChunkText::new(file, first_line, Bytes::from(text.into_vec())));
            read.places.push(Place::Batched);
            continue;
        };
        if source.compressed {
            read.streamed.push((position, file.into(), source));
            // Answered once streamed.
            read.places.push(Place::Batched);
            continue;
        }
        let numbered = match read_chunk(&source).await {
            Ok(chunk) if count_lines_before && source.start > 0 => {
                let before = state.line_counts.before(&source, chunk.offset).await;
                before.map(|n| (n + 1, chunk.text)).map_err(task_error)
            }
            Ok(chunk) => Ok((first_line, chunk.text)),
            Err(error) => Err(error),
        };
        match numbered {
            Ok((first_line, text)) => {
                read.lines[position] = count_lines(&text);
                state.metrics.read_by_reference(text.len() as u64);
                read.texts.push(ChunkText::new(file, first_line, Bytes::from(text)));
                read.places.push(Place::Batched);
            }
            Err(error) => read.places.push(Place::Failed(error)),
        }
    }
    read
}

/// Runs the compressed object of `source` as the one chunk it is: its chunks, read as a stream
/// ([`compressed::chunks`]), run one after another and their partials are combined as they
/// come, so the worker holds a few chunks of the object at a time. A plugin that does not
/// combine gets the object's whole text as one chunk (without its compressed bytes).
pub(super) async fn run_compressed(
    runner: &JobRunner,
    job: JobId,
    file: Arc<str>,
    source: &ChunkSource,
) -> (ChunkAnswer, StreamedRead) {
    let mut output = CapturedOutput::default();
    let mut read = StreamedRead::default();
    let result = stream_and_run(runner, job, file, source, &mut output, &mut read).await;
    (ChunkAnswer { result, output }, read)
}

async fn stream_and_run(
    runner: &JobRunner,
    job: JobId,
    file: Arc<str>,
    source: &ChunkSource,
    output: &mut CapturedOutput,
    read: &mut StreamedRead,
) -> Result<Bytes, TaskError> {
    let combines = runner.combines().await?;
    let chunk_size = usize::try_from(source.chunk_size).unwrap_or(usize::MAX).max(1);
    let max_line = usize::try_from(source.max_line).unwrap_or(usize::MAX);
    let mut chunks =
        compressed::chunks(source, chunk_size, max_line).await.map_err(|error| read_failed(source, error))?;
    let mut partial: Option<Bytes> = None;
    let mut whole = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|error| read_failed(source, error))?;
        read.lines += chunk.n_lines;
        read.bytes += chunk.text.len() as u64;
        if !combines {
            whole.extend_from_slice(chunk.text.as_bytes());
            continue;
        }
        let text = ChunkText::new(Arc::clone(&file), chunk.first_line, Bytes::from(chunk.text.into_bytes()));
        let next = run_one(runner, job, text, output).await?;
        partial = Some(match partial.take() {
            None => next,
            Some(before) => runner
                .combine(vec![before, next])
                .await?
                .ok_or_else(|| TaskError::Crashed("the plugin stopped combining partials".into()))?,
        });
    }
    match partial {
        Some(partial) => Ok(partial),
        // An empty object, or a plugin that does not combine: one chunk.
        None => run_one(runner, job, ChunkText::new(file, 1, Bytes::from(whole)), output).await,
    }
}

/// Runs one chunk alone, adding what it printed to `output`.
async fn run_one(
    runner: &JobRunner,
    job: JobId,
    text: ChunkText,
    output: &mut CapturedOutput,
) -> Result<Bytes, TaskError> {
    let answer = runner.run_batch(job, vec![text]).await.pop();
    let answer = answer.unwrap_or_else(|| ChunkAnswer::silent(Err(TaskError::Crashed("the chunk was not run".into()))));
    output.append(answer.output);
    answer.result
}

fn read_failed(source: &ChunkSource, error: reference::ReferenceError) -> TaskError {
    tracing::warn!(url = %source.url, "cannot read a compressed object by reference: {error}");
    task_error(error)
}

/// Reads a chunk of a plain object read by reference. A changed object or unusable content
/// fails the job (no attempt can help); a store that refuses or fails the read fails this
/// attempt, with the store's message, and the chunk is tried again, on another worker where
/// one exists.
async fn read_chunk(source: &ChunkSource) -> Result<reference::ChunkRead, TaskError> {
    reference::read_chunk(source).await.map_err(|error| {
        tracing::warn!(url = %source.url, "cannot read a chunk by reference: {error}");
        task_error(error)
    })
}

fn task_error(error: reference::ReferenceError) -> TaskError {
    match error.is_final() {
        true => TaskError::Fatal(error.to_string()),
        false => TaskError::Storage(error.to_string()),
    }
}
