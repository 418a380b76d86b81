//! Running a batch of chunks on a worker in one call and applying its answers.
//!
//! The worker answers one result per chunk. Under one lock: the call's copies end, partials of
//! chunks not yet done are marked as being stored, and failures are sorted per chunk into an
//! attempt (retried, elsewhere when possible, until the job's `max_attempts`), an interruption
//! or a lost worker (queued again without an attempt), or the end of the job. The partials are
//! then stored in one transaction (the first one stored for a chunk wins), and only then, under
//! the lock again, do their chunks count as done. Other copies of those chunks are not
//! cancelled: a worker's executor goes on with a call whatever the controller does, so the
//! call keeps its slot until it answers, and its partials are dropped as duplicates. Each step
//! publishes the job's status once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::sync::Notify;
use tracing::{Instrument, debug, error, info, warn};

use super::super::Shared;
use super::super::calls::{Failure, classify, deadline_in};
use super::super::ending::{end_job, fail_internal};
use super::super::state::State;
use super::super::state::chunk::RunningCopy;
use super::super::state::direct::read_ranges;
use super::super::state::job::Job;
use super::super::state::workers::WorkerHandle;
use super::super::store::{ChunkMeta, NewPartial};
use crate::input::reference::InputObject;
use crate::input::split::Split;
use crate::rpc::logs::{ChunkPrinted, PluginOutput};
use crate::rpc::{ChunkInput, FailureKind, JobFailure, JobId, JobState, WorkerId};
use crate::rules::retry;

/// One call carrying a batch of chunks to a worker: what its task knows of it.
pub(in crate::controller) struct BatchCall {
    pub job: JobId,
    /// The chunks, in the order the worker runs them.
    pub chunks: Vec<(u64, ChunkMeta)>,
    pub worker: WorkerHandle,
    /// The call's cancellation, shared by the copies of its chunks, which also tells them from
    /// other copies of the same chunks.
    pub cancel: Arc<Notify>,
    /// How long the call may take.
    pub deadline: Duration,
}

/// Runs the call until the worker answers or the call is cancelled, and applies the answers,
/// in a span naming the job, its owner, the worker and the call's chunks.
pub(super) async fn run_batch(shared: &Shared, call: BatchCall) {
    let owner = shared.with_state(|st| st.job(call.job).map(|job| job.spec.owner.clone())).unwrap_or_default();
    let first_chunk = call.chunks.first().map_or(0, |(index, _)| *index);
    let span = tracing::info_span!(
        "call",
        job = call.job,
        owner,
        worker = call.worker.id,
        first_chunk,
        chunks = call.chunks.len()
    );
    run_batch_in_span(shared, call).instrument(span).await;
}

async fn run_batch_in_span(shared: &Shared, call: BatchCall) {
    let job_id = call.job;
    let Some((names, objects, chunk_size)) = shared.with_state(|st| {
        let job = st.job(job_id).filter(|_| st.is_active(job_id))?;
        Some((job.file_names(), job.objects(), job.spec.chunk_size))
    }) else {
        return drop_call(shared, &call);
    };
    let read = match objects.is_empty() {
        true => read_chunks(shared.input_path(job_id), call.chunks.clone(), names).await,
        false => {
            // The same longest line as an uploaded input's cutter accepts.
            let max_line = shared.max_line_bytes.clamp(1, crate::rules::chunk::MAX_LINE_BYTES) as u64;
            let max_line = max_line.max(chunk_size);
            Ok(referenced_chunks(&call.chunks, &names, &objects, chunk_size, max_line))
        }
    };
    let inputs = match read {
        Ok(inputs) => inputs,
        Err((index, e)) => {
            drop_call(shared, &call);
            let message = format!("cannot read chunk {index} of the spooled input: {e}");
            return fail_internal(shared, job_id, message).await;
        }
    };
    let worker = &call.worker;
    let answer = worker.client.run_chunks(deadline_in(call.deadline), worker.secret(), job_id, inputs);
    // Dropping the call cancels it on the worker, which abandons the chunks not yet answered.
    let result = tokio::select! {
        result = answer => result,
        () = call.cancel.notified() => {
            debug!(job = job_id, first_chunk = call.chunks[0].0, worker = worker.id, "call cancelled");
            return drop_call(shared, &call);
        }
    };
    let n_chunks = call.chunks.len();
    let (mut printed, mut lines) = (Vec::new(), Vec::new());
    let outcomes = match classify(result, call.deadline) {
        Ok(answer) if answer.results.len() == n_chunks => {
            (printed, lines) = (answer.printed, answer.lines);
            answer.results.into_iter().map(|result| classify(Ok(result), call.deadline)).collect()
        }
        Ok(answer) => {
            let message = format!("the worker answered {} results for {n_chunks} chunks", answer.results.len());
            vec![Err(Failure::Attempt(message)); n_chunks]
        }
        Err(Failure::Lost(reason)) => {
            shared.with_state(|st| st.lose_worker(worker.id, &reason));
            return drop_call(shared, &call);
        }
        // The whole call failed: each chunk shares the failure.
        Err(failure) => {
            let answers = Answers { outcomes: vec![Err(failure); n_chunks], printed, lines };
            return apply(shared, &call, answers, false).await;
        }
    };
    apply(shared, &call, Answers { outcomes, printed, lines }, true).await;
}

/// Frees the slot of a call that ended and forgets its copies; answers the job and the copies
/// (one per chunk, in order) if the job is still running.
fn end_call<'a>(st: &'a mut State, call: &BatchCall) -> Option<(&'a mut Job, Vec<Option<RunningCopy>>)> {
    let indices = call.chunks.iter().map(|(index, _)| *index);
    st.end_call(call.job, call.worker.id, indices, &call.cancel)
}

/// Forgets a call that ended without answers; its chunks are queued again unless another copy
/// runs or they are done.
fn drop_call(shared: &Shared, call: &BatchCall) {
    shared.with_state(|st| {
        let Some((job, _)) = end_call(st, call) else { return };
        for (index, _) in &call.chunks {
            job.requeue_if_idle(*index);
        }
        job.publish();
    });
    shared.wake();
}

/// Reads the chunks' text from the spooled input, in one blocking task; an error names the
/// chunk it failed on.
async fn read_chunks(
    path: std::path::PathBuf,
    chunks: Vec<(u64, ChunkMeta)>,
    names: Arc<[String]>,
) -> Result<Vec<ChunkInput>, (u64, std::io::Error)> {
    let first = chunks.first().map_or(0, |(index, _)| *index);
    tokio::task::spawn_blocking(move || {
        let ranges: Vec<(u64, u64)> = chunks.iter().map(|(_, meta)| (meta.offset, meta.len)).collect();
        let texts =
            read_ranges(&path, &ranges).map_err(|(at, e)| (chunks.get(at).map_or(first, |(index, _)| *index), e))?;
        Ok(chunks
            .iter()
            .zip(texts)
            .map(|((_, meta), text)| {
                let file = names.get(meta.file as usize).cloned().unwrap_or_default();
                ChunkInput { file, first_line: meta.first_line, text: ByteBuf::from(text), source: None }
            })
            .collect())
    })
    .await
    .map_err(|e| (first, std::io::Error::other(e)))?
}

/// The chunks of an input read by reference: where each worker reads its own, cutting a
/// compressed object into chunks of `chunk_size` bytes and refusing lines longer than
/// `max_line` bytes.
fn referenced_chunks(
    chunks: &[(u64, ChunkMeta)],
    names: &[String],
    objects: &[InputObject],
    chunk_size: u64,
    max_line: u64,
) -> Vec<ChunkInput> {
    chunks
        .iter()
        .filter_map(|(_, meta)| {
            let object = objects.get(meta.file as usize)?;
            let split = Split { start: meta.offset, end: meta.offset + meta.len };
            Some(ChunkInput {
                file: names.get(meta.file as usize).cloned().unwrap_or_default(),
                first_line: meta.first_line,
                text: ByteBuf::new(),
                source: Some(object.source(split, chunk_size, max_line)),
            })
        })
        .collect()
}

/// What a worker answered for the chunks of a call, in the call's order.
struct Answers {
    /// The partial of each chunk, or why it failed.
    outcomes: Vec<Result<ByteBuf, Failure>>,
    /// What the chunks printed (by position in the call).
    printed: Vec<ChunkPrinted>,
    /// The lines of each chunk the worker read by reference (0, or none at all, for the others).
    lines: Vec<u64>,
}

/// A partial that came back for a chunk not yet done, to store.
struct Answered {
    index: u64,
    attempts: u32,
    /// The chunk's lines: as the controller cut it, or as the worker read it by reference.
    n_lines: u64,
    partial: ByteBuf,
    copy: Option<RunningCopy>,
    /// What the plugin printed running it, kept with its partial.
    printed: Option<PluginOutput>,
}

/// What the answers of a call mean, decided under the lock.
#[derive(Default)]
struct Verdicts {
    answered: Vec<Answered>,
    /// Chunks charged an attempt and queued again: `(index, attempts)`.
    retried: Vec<(u64, u32)>,
    /// The job's retry count after them.
    retries: u64,
    /// Why the job fails, when a chunk failed for good.
    fails: Option<JobFailure>,
}

/// Applies one outcome per chunk of the call: `answered` says the worker answered (so the
/// call's time tells the job's pace), rather than the whole call failing.
async fn apply(shared: &Shared, call: &BatchCall, answers: Answers, answered: bool) {
    let Answers { outcomes, printed, lines } = answers;
    let (job_id, worker_id) = (call.job, call.worker.id);
    let mut printed: HashMap<u32, ChunkPrinted> = printed.into_iter().map(|p| (p.position, p)).collect();
    let verdicts = shared.with_state(|st| {
        let (job, copies) = end_call(st, call)?;
        if answered && let Some(since) = copies.iter().flatten().map(|copy| copy.since).min() {
            job.times.record_call(since.elapsed(), call.chunks.len());
            let each = since.elapsed().as_secs_f64() / call.chunks.len() as f64;
            for _ in &call.chunks {
                shared.metrics.chunk_seconds.observe(each);
            }
        }
        let mut verdicts = Verdicts::default();
        for (position, (((index, _), outcome), copy)) in call.chunks.iter().zip(outcomes).zip(copies).enumerate() {
            let index = *index;
            let kind = match outcome {
                Ok(partial) => {
                    let Some(chunk) = job.chunks.get_mut(index as usize) else { continue };
                    if chunk.done || chunk.storing {
                        debug!(job = job_id, chunk = index, worker = worker_id, "late or duplicate partial dropped");
                        continue;
                    }
                    chunk.storing = true;
                    // A chunk read by reference learns its lines from the worker that read it.
                    if let Some(&n_lines) = lines.get(position)
                        && n_lines > 0
                    {
                        chunk.meta.n_lines = n_lines;
                    }
                    let (attempts, n_lines) = (chunk.failures + 1, chunk.meta.n_lines);
                    job.queue.remove(&index);
                    let printed = printed.remove(&(position as u32)).map(|p| {
                        let span = job.span(index);
                        PluginOutput {
                            chunk: Some(index),
                            file: span.file,
                            first_line: span.first_line,
                            last_line: span.last_line,
                            stdout: p.stdout,
                            stderr: p.stderr,
                            cut: p.cut,
                        }
                    });
                    verdicts.answered.push(Answered { index, attempts, n_lines, partial, copy, printed });
                    continue;
                }
                Err(Failure::Interrupted(reason)) => {
                    debug!(
                        job = job_id,
                        chunk = index,
                        worker = worker_id,
                        "chunk interrupted, to run again: {reason}"
                    );
                    job.requeue_if_idle(index);
                    continue;
                }
                Err(Failure::NotPrepared | Failure::Lost(_)) => {
                    job.prepared.remove(&worker_id);
                    job.requeue_if_idle(index);
                    continue;
                }
                Err(Failure::Attempt(message)) => (None, message, false),
                Err(Failure::Fault(message)) => (None, message, true),
                Err(Failure::Fatal(message)) => (Some(FailureKind::Plugin), message, false),
                Err(Failure::Build(message)) => (Some(FailureKind::Build), message, false),
            };
            charge(job, index, worker_id, kind, &mut verdicts);
        }
        verdicts.retries = job.retries();
        shared.metrics.chunk_failures.inc_by(verdicts.retried.len() as u64 + u64::from(verdicts.fails.is_some()));
        // With partials to store, the status is published once they count.
        if verdicts.answered.is_empty() {
            job.publish();
        }
        Some(verdicts)
    });
    shared.wake();
    let Some(verdicts) = verdicts else { return };
    if let Some(failure) = verdicts.fails {
        end_job(shared, job_id, JobState::Failed, Some(failure), None).await;
        return;
    }
    if !verdicts.answered.is_empty() {
        store_partials(shared, job_id, worker_id, verdicts.answered).await;
    }
    if !verdicts.retried.is_empty()
        && let Err(e) = shared.store.save_attempts(job_id, &verdicts.retried, verdicts.retries).await
    {
        error!(job = job_id, "{e}");
    }
}

/// Charges a failed attempt to a chunk: it is retried (queued again, to go elsewhere when
/// possible) until the job's `max_attempts`, or until a fault (`fault`: a panic or crash)
/// repeats the chunk's previous one word for word; a failure of kind `kind` ends the job at once.
fn charge(
    job: &mut Job,
    index: u64,
    worker_id: WorkerId,
    (kind, message, fault): (Option<FailureKind>, String, bool),
    verdicts: &mut Verdicts,
) {
    let (job_id, max_attempts, span) = (job.id, job.max_attempts(), job.span(index));
    let Some(chunk) = job.chunks.get_mut(index as usize) else { return };
    if chunk.done || chunk.storing {
        return;
    }
    chunk.failures += 1;
    chunk.failed_on.push(worker_id);
    let attempts = chunk.failures;
    warn!(job = job_id, chunk = index, worker = worker_id, attempts, "chunk attempt failed: {message}");
    let repeated = fault && chunk.last_fault.as_deref() == Some(message.as_str());
    if fault {
        chunk.last_fault = Some(message.clone());
    }
    if let Some(kind) = kind.or(retry::gives_up(attempts, max_attempts, repeated).then_some(FailureKind::Plugin)) {
        // The first chunk to fail for good names the job's failure.
        if verdicts.fails.is_none() {
            verdicts.fails = Some(JobFailure { kind, message, chunk: Some(span), attempts });
        }
        return;
    }
    job.count_retry();
    job.requeue_if_idle(index);
    verdicts.retried.push((index, attempts));
}

/// Stores the call's partials in one transaction, then counts their chunks done (their other
/// copies run on to their answers, holding their slots).
async fn store_partials(shared: &Shared, job_id: JobId, worker_id: WorkerId, answered: Vec<Answered>) {
    let partials: Vec<NewPartial<'_>> = answered
        .iter()
        .map(|a| NewPartial { index: a.index, attempts: a.attempts, n_lines: a.n_lines, partial: a.partial.as_slice() })
        .collect();
    if let Err(e) = shared.store.save_partials(job_id, &partials).await {
        let first = answered[0].index;
        return fail_internal(shared, job_id, format!("cannot store the partials of chunks from {first}: {e}")).await;
    }
    let printed: Vec<&PluginOutput> = answered.iter().filter_map(|a| a.printed.as_ref()).collect();
    if !printed.is_empty()
        && let Err(e) = shared.store.save_plugin_output(job_id, &printed).await
    {
        // The partials count; what the plugin printed is lost, and the log says so.
        error!(job = job_id, "cannot store what the plugin printed: {e}");
    }
    shared.with_state(|st| {
        if let Some(worker) = st.workers_mut().get_mut(worker_id) {
            worker.count_done(answered.len() as u64);
        }
        let Some(job) = st.active_job_mut(job_id) else { return };
        for Answered { index, copy, .. } in answered {
            if job.chunks.get(index as usize).is_none_or(|chunk| chunk.done) {
                continue;
            }
            // Its other copies run on: their executors do not stop for a cancelled call, so
            // their slots stay counted until they answer (their partials are then dropped).
            job.count_done(index, Some(worker_id));
            debug!(job = job_id, chunk = index, worker = worker_id, "chunk done");
            if copy.is_some_and(|copy| copy.speculative) {
                job.count_speculative_win();
                info!(job = job_id, chunk = index, worker = worker_id, "the speculative copy finished first");
            }
        }
        debug!(job = job_id, worker = worker_id, chunks_done = job.chunks_done(), "partials stored");
        job.publish();
    });
    shared.wake();
}
