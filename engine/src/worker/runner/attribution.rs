//! Charging a crash to the chunk that caused it.
//!
//! An executor runs several chunks at once. When it crashes (segfault, abort, the memory
//! limit), every chunk in flight fails with the same error, and the crash does not say whose
//! fault it was. A chunk that was alone in the executor is the culprit. Otherwise each chunk
//! runs again alone in a fresh executor of its own (one slot, same limits): the one that
//! fails alone is the culprit and costs an attempt, and the others answer their partials as if
//! nothing had happened. A chunk that times out is its own culprit; the chunks stopped with
//! it are innocent and come back [`TaskError::Interrupted`], which costs no attempt.
//!
//! A batch is one executor call whose chunks run one after another, so when the executor ends
//! mid-batch the chunk that was running is known: it is judged as a single call would be (a
//! batch counts as one call in flight), and the chunks after it run on in a fresh executor.

use std::collections::VecDeque;

use super::{ChunkAnswer, JobRunner, call_error, start_error};
use crate::rpc::{JobId, TaskError};
use crate::worker::executor::capture::CapturedOutput;
use crate::worker::executor::{ChunkText, Ending, ExecError};

/// Runs a batch of chunks one after another in the job's executor, as one executor call;
/// answers one result per chunk, in order. When the executor ends mid-batch, the chunk that
/// was running is judged as a single call would be (see [`verdict`]), and the chunks after it
/// go on in a fresh executor. Once the executor cannot start, the chunks left all get that
/// answer (`Fatal` when the plugin is at fault: no retry can help them either).
pub(super) async fn run_batch(warm: &JobRunner, job: JobId, chunks: Vec<ChunkText>) -> Vec<ChunkAnswer> {
    let mut results = Vec::with_capacity(chunks.len());
    let mut left: VecDeque<ChunkText> = chunks.into();
    while !left.is_empty() {
        let executor = match warm.executor().await {
            Ok(executor) => executor,
            Err(error) => {
                let error = start_error(error);
                results.extend(left.drain(..).map(|_| ChunkAnswer::silent(Err(error.clone()))));
                break;
            }
        };
        let outcome = executor.run_batch(left.iter().cloned().collect()).await;
        let mut outputs = outcome.outputs.into_iter();
        for answer in outcome.answers {
            left.pop_front();
            let output = outputs.next().unwrap_or_default();
            results.push(ChunkAnswer { result: answer.map_err(call_error), output });
        }
        let Some(error) = outcome.ended else { break };
        let Some(chunk) = left.pop_front() else { break };
        results.push(judge(warm, job, chunk, error, outcome.ended_output, executor.ending()).await);
    }
    results
}

/// Answers for a chunk whose call failed with `error` in an executor that ended as `ending`
/// says: its own failure, an interruption, or what it does when run again alone.
async fn judge(
    warm: &JobRunner,
    job: JobId,
    chunk: ChunkText,
    error: ExecError,
    output: CapturedOutput,
    ending: Option<Ending>,
) -> ChunkAnswer {
    let (file, first_line) = (&*chunk.file, chunk.first_line);
    match verdict(&error, ending) {
        Verdict::Culprit => {
            if !matches!(error, ExecError::Plugin(_) | ExecError::Refused(_)) {
                tracing::warn!(job, file, first_line, %error, "chunk crashed its executor");
            }
            ChunkAnswer { result: Err(call_error(error)), output }
        }
        Verdict::Bystander(why) => {
            tracing::info!(job, file, first_line, "chunk stopped with its executor, not by its fault: {why}");
            // It runs again: what it printed this time is not its output.
            ChunkAnswer::silent(Err(TaskError::Interrupted(why)))
        }
        Verdict::Suspect => {
            tracing::info!(job, file, first_line, %error, "executor crashed with several calls in flight: running this chunk alone");
            run_alone(warm, job, chunk).await
        }
    }
}

/// What a failed call says about its chunk.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The chunk failed by itself: it costs an attempt.
    Culprit,
    /// The executor was ended on purpose while the chunk ran (another chunk timed out).
    Bystander(String),
    /// The executor crashed with other chunks in flight: any of them may have done it.
    Suspect,
}

fn verdict(error: &ExecError, ending: Option<Ending>) -> Verdict {
    match error {
        ExecError::Crashed { .. } | ExecError::Stopped(_) => match ending {
            Some(Ending { cause: ExecError::Stopped(why), .. }) => Verdict::Bystander(why),
            Some(Ending { cause: ExecError::Crashed { .. }, calls_lost }) if calls_lost <= 1 => Verdict::Culprit,
            _ => Verdict::Suspect,
        },
        // Its own error or panic, its own timeout, or a plugin that cannot start at all.
        _ => Verdict::Culprit,
    }
}

/// Runs a suspect alone in a fresh executor, ended when done.
async fn run_alone(warm: &JobRunner, job: JobId, chunk: ChunkText) -> ChunkAnswer {
    let executor = match warm.start_alone().await {
        Ok(executor) => executor,
        Err(error) => return ChunkAnswer::silent(Err(start_error(error))),
    };
    let (file, first_line) = (chunk.file.clone(), chunk.first_line);
    let (result, output) = executor.run_with_output(chunk).await;
    match result {
        Ok(partial) => {
            tracing::info!(job, file = &*file, first_line, "chunk ran alone: it did not cause the crash");
            ChunkAnswer { result: Ok(partial), output }
        }
        Err(error) => {
            tracing::warn!(job, file = &*file, first_line, %error, "chunk failed alone too: it caused the crash");
            ChunkAnswer { result: Err(call_error(error)), output }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crashed() -> ExecError {
        ExecError::Crashed { reason: "crashed with a segmentation fault (SIGSEGV)".into(), stderr: String::new() }
    }

    #[test]
    fn a_crash_is_charged_only_when_the_chunk_was_alone() {
        let alone = Some(Ending { cause: crashed(), calls_lost: 1 });
        assert_eq!(verdict(&crashed(), alone), Verdict::Culprit);
        let crowded = Some(Ending { cause: crashed(), calls_lost: 3 });
        assert_eq!(verdict(&crashed(), crowded), Verdict::Suspect);
        assert_eq!(verdict(&ExecError::Stopped("its pipe is closed".into()), None), Verdict::Suspect);
    }

    #[test]
    fn a_timeout_is_its_own_chunks_fault_and_not_the_others() {
        let timeout = ExecError::Timeout(std::time::Duration::from_secs(2));
        assert_eq!(verdict(&timeout, None), Verdict::Culprit);
        let stopped = ExecError::Stopped("another call timed out".into());
        let ending = Some(Ending { cause: stopped.clone(), calls_lost: 2 });
        assert_eq!(verdict(&stopped, ending), Verdict::Bystander("another call timed out".into()));
        assert_eq!(verdict(&ExecError::Plugin("boom".into()), None), Verdict::Culprit);
    }
}
