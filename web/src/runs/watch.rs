//! The background task of one run: submit the plugin and the input, follow the job's
//! statuses, record and relay them, and record how the job ended.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_engine::client::{Client, ClientError, SubmitOptions};
use kiln_engine::owner::Owner;
use kiln_engine::rpc::{FailureKind, JobFailure, JobId, JobState, JobStatus, RpcError};

use super::inputs::RunInput;
use super::progress::{Figures, Progress, run_state};
use super::results::ResultError;
use super::{ClusterTarget, RunManager, client_failure, failure};
use crate::metrics::RunLabels;
use crate::store::now_ms;
use crate::store::runs::{Run, RunEnding, RunProgress, RunState};
use crate::store::tasks::{Plugin, PluginContent};

/// How often, at most, a run's progress is written to the database while nothing but the
/// counters change (every message still goes to the browsers).
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The window over which the recent throughput is measured: long enough to smooth the steps
/// of chunks finishing, short enough to show a change within a few seconds.
const THROUGHPUT_WINDOW_MS: u64 = 2000;

/// The pause before watching again a controller that could not be reached; the client itself
/// already retried for a minute.
const REWATCH_PAUSE: Duration = Duration::from_secs(5);

/// Submits a new run's job, then watches it.
pub(super) async fn submit_and_watch(
    manager: Arc<RunManager>,
    run: Run,
    plugin: Plugin,
    input: RunInput,
    target: ClusterTarget,
) {
    let submitted = submit(&manager, &run, &plugin, &input, &target).await;
    drop(input);
    let job = match submitted {
        Ok(job) => job,
        Err((kind, message)) => {
            tracing::info!(run = run.id, "the run could not be submitted: {message}");
            end(&manager, &run, failure(None, kind, message)).await;
            return;
        }
    };
    match manager.store.set_run_job(run.id, job as i64, RunState::Queued).await {
        Ok(true) => watch(manager, run, job, target).await,
        Ok(false) => {
            // Cancelled (or deleted) while it was being submitted: the job must not run.
            tracing::info!(run = run.id, job, "run cancelled during submission; cancelling its job");
            if let Ok(client) = Client::connect(&target.address, target.api_key.clone()).await {
                let _ = client.cancel(job).await;
            }
            manager.close_live(run.id);
        }
        Err(e) => {
            tracing::error!(run = run.id, "cannot record the run's job: {e}");
            manager.close_live(run.id);
        }
    }
}

/// Writes the plugin where the builder can read it and hands plugin and input to the
/// controller; answers the job's id, or the failure's kind and message.
async fn submit(
    manager: &RunManager,
    run: &Run,
    plugin: &Plugin,
    input: &RunInput,
    target: &ClusterTarget,
) -> Result<JobId, (&'static str, String)> {
    let internal = |e: std::io::Error| ("internal", format!("cannot prepare the plugin for submission: {e}"));
    let dir = tempfile::Builder::new().prefix("submit-").tempdir_in(&manager.work_dir).map_err(internal)?;
    let plugin_path = match &plugin.content {
        // Named with the kind's ending, which the builder goes by.
        PluginContent::File { file, .. } => manager.plugin_dir.join(file),
        PluginContent::Bytes(bytes) => {
            let path = dir.path().join(plugin.kind.file_name());
            tokio::fs::write(&path, bytes).await.map_err(internal)?;
            path
        }
    };
    let client = Client::connect(&target.address, target.api_key.clone()).await.map_err(|e| client_failure(&e))?;
    let options = SubmitOptions {
        // The user who started the run owns its job: workers keep users' builds and executors
        // apart. Users never choose their owner name.
        owner: Owner::web_user(run.user_id).as_str().to_owned(),
        params: run.params.clone(),
        processes: u32::try_from(run.processes).unwrap_or(1),
        input_name: run.input_name.clone(),
        chunk_size: manager.chunk_bytes,
        ..SubmitOptions::default()
    };
    let job = match input {
        RunInput::Url(url) => client.submit_files(&plugin_path, std::slice::from_ref(url), options, &|_| {}).await,
        uploaded => {
            let path = uploaded.path().unwrap_or(std::path::Path::new(""));
            let input_file =
                tokio::fs::File::open(path).await.map_err(|e| ("internal", format!("cannot read the input: {e}")))?;
            client.submit(&plugin_path, input_file, options).await
        }
    };
    let job = job.map_err(|e| client_failure(&e))?;
    tracing::info!(run = run.id, job, cluster = %target.address, "run submitted");
    Ok(job)
}

/// Follows the job until it ends, recording and relaying its statuses, then records the
/// ending. A controller that cannot be reached is tried again until the server stops.
pub(super) async fn watch(manager: Arc<RunManager>, run: Run, job: JobId, target: ClusterTarget) {
    let mut window = VecDeque::new();
    let mut saved: Option<(Instant, RunState)> = None;
    let mut figures = Figures::default();
    loop {
        let outcome = follow(&manager, &run, job, &target, &mut window, &mut saved, &mut figures).await;
        let error = match outcome {
            Ok(status) => {
                figures.record(&status);
                save_figures(&manager, &run, &status, &figures, true).await;
                let ending = ending(&manager, &run, &target, job, &status).await;
                end(&manager, &run, ending).await;
                return;
            }
            Err(error) => error,
        };
        match &error {
            ClientError::Rpc(RpcError::NotFound(_)) => {
                let message = format!("the controller at {} no longer knows job {job}", target.address);
                end(&manager, &run, failure(run.started_at, "cluster", message)).await;
                return;
            }
            ClientError::Unauthorized(_) => {
                let message = format!("the controller at {} refused the cluster's API key", target.address);
                end(&manager, &run, failure(run.started_at, "cluster", message)).await;
                return;
            }
            _ => {
                tracing::warn!(run = run.id, job, "cannot watch the job: {error}; trying again");
                tokio::time::sleep(REWATCH_PAUSE).await;
            }
        }
    }
}

/// Watches the job until a final status (answered) or an error.
async fn follow(
    manager: &RunManager,
    run: &Run,
    job: JobId,
    target: &ClusterTarget,
    window: &mut VecDeque<(u64, u64)>,
    saved: &mut Option<(Instant, RunState)>,
    figures: &mut Figures,
) -> Result<JobStatus, ClientError> {
    let client = Client::connect(&target.address, target.api_key.clone()).await?;
    let mut statuses = std::pin::pin!(client.watch(job));
    while let Some(status) = statuses.next().await {
        let status = status?;
        // (time, bytes done) samples of the last few seconds, for the recent throughput.
        let now = u64::try_from(now_ms()).unwrap_or(0);
        while window.len() > 1 && window.front().is_some_and(|(t, _)| now.saturating_sub(*t) > THROUGHPUT_WINDOW_MS) {
            window.pop_front();
        }
        let input_bytes = u64::try_from(run.input_bytes).unwrap_or(0);
        let progress = Progress::from_status(run.id, &status, input_bytes, window.front().copied());
        window.push_back((now, status.bytes_done));
        if status.state.is_final() {
            return Ok(status);
        }
        figures.record(&status);
        manager.publish(run.id, progress.to_json());
        let state = run_state(status.state);
        let due = saved.is_none_or(|(at, last_state)| last_state != state || at.elapsed() >= SAVE_INTERVAL);
        if due {
            let started_at = status.started_ms.and_then(|ms| i64::try_from(ms).ok());
            if let Err(e) = manager.store.update_run_progress(run.id, state, &run_progress(&status), started_at).await {
                tracing::warn!(run = run.id, "cannot record the run's progress: {e}");
            }
            save_figures(manager, run, &status, figures, false).await;
            *saved = Some((Instant::now(), state));
        }
    }
    Err(ClientError::Connection { addr: target.address.clone(), message: "the job's status stream ended".to_owned() })
}

/// Stores the run's figures and its plugin's hash, so that its page shows them once it ended.
async fn save_figures(manager: &RunManager, run: &Run, status: &JobStatus, figures: &Figures, ended: bool) {
    let saved = manager.store.save_run_figures(run.id, &status.plugin_hash, &figures.to_json(), ended).await;
    if let Err(e) = saved {
        tracing::warn!(run = run.id, "cannot record the run's figures: {e}");
    }
}

/// How the job ended, with its result fetched into a file when it succeeded.
async fn ending(manager: &RunManager, run: &Run, target: &ClusterTarget, job: JobId, status: &JobStatus) -> RunEnding {
    let started_at = status.started_ms.and_then(|ms| i64::try_from(ms).ok());
    let finished_at = status.finished_ms.and_then(|ms| i64::try_from(ms).ok()).unwrap_or_else(now_ms);
    let mut ending = RunEnding {
        state: run_state(status.state),
        result: None,
        error_kind: None,
        error: None,
        started_at,
        finished_at,
        progress: Some(run_progress(status)),
        plugin_output: plugin_output(target, job).await,
    };
    match status.state {
        JobState::Succeeded => {
            let result = match Client::connect(&target.address, target.api_key.clone()).await {
                Ok(client) => manager.results.fetch(&client, run.id, job).await,
                Err(e) => Err(ResultError::Fetch(e)),
            };
            match result {
                Ok(file) => ending.result = Some(file),
                Err(e) => {
                    tracing::warn!(run = run.id, job, "cannot store the run's result: {e}");
                    ending.state = RunState::Failed;
                    ending.error_kind = Some(e.kind().to_owned());
                    ending.error = Some(e.to_string());
                }
            }
        }
        JobState::Failed => {
            let (kind, message) = match &status.failure {
                Some(failure) => describe(failure),
                None => ("internal", "the controller gave no reason".to_owned()),
            };
            // The built-in controller's limit is this server's flag: name the one to raise.
            let embedded = manager.embedded.as_ref().is_some_and(|local| local.address == target.address);
            let message = if embedded {
                message.replace("raise the controller's --max-result-size", "raise kiln-web --max-result-bytes")
            } else {
                message
            };
            ending.error_kind = Some(kind.to_owned());
            ending.error = Some(message);
        }
        _ => {}
    }
    ending
}

/// What the job's plugin printed, as `kiln logs` prints it; `None` when nothing (or when the
/// controller cannot say: the run's ending does not wait on it).
async fn plugin_output(target: &ClusterTarget, job: JobId) -> Option<String> {
    let outputs = match Client::connect(&target.address, target.api_key.clone()).await {
        Ok(client) => client.plugin_output(job).await,
        Err(e) => Err(e),
    };
    match outputs {
        Ok(outputs) if outputs.is_empty() => None,
        Ok(outputs) => Some(outputs.iter().map(kiln_engine::rpc::logs::PluginOutput::render).collect()),
        Err(e) => {
            tracing::warn!(job, "cannot fetch what the run's plugin printed: {e}");
            None
        }
    }
}

/// The kind and message of a job's failure: cargo's diagnostics for a build, the plugin's
/// message with the chunk and its lines for a plugin failure.
pub(super) fn describe(failure: &JobFailure) -> (&'static str, String) {
    let message = failure.message.trim_end().to_owned();
    match (failure.kind, &failure.chunk) {
        (FailureKind::Build, _) => ("build", message),
        (FailureKind::Input, _) => ("input", format!("the input cannot be used: {message}")),
        (kind, Some(chunk)) => (
            if kind == FailureKind::Plugin { "plugin" } else { "internal" },
            format!(
                "{chunk} failed after {} attempt{}{}",
                failure.attempts,
                if failure.attempts == 1 { "" } else { "s" },
                kiln_engine::errors::colon_block(&message),
            ),
        ),
        (FailureKind::Plugin, None) => ("plugin", message),
        (_, None) => ("internal", message),
    }
}

/// Records a run's ending, tells its subscribers, and forgets it.
async fn end(manager: &RunManager, run: &Run, ending: RunEnding) {
    let recorded = manager.store.finish_run(run.id, &ending).await;
    if let Err(e) = &recorded {
        tracing::error!(run = run.id, "cannot record the run's ending: {e}");
    }
    // A result no row names (the run was deleted or ended meanwhile) would only take space.
    if !matches!(recorded, Ok(true))
        && let Some(result) = &ending.result
    {
        manager.results.remove(std::slice::from_ref(&result.file)).await;
    }
    tracing::info!(run = run.id, state = ending.state.as_str(), "run ended");
    manager.metrics.runs_ended.get_or_create(&RunLabels { state: ending.state.as_str() }).inc();
    let message = match manager.store.run_by_id(run.id).await {
        Ok(Some(stored)) => Progress::from_run(&stored).to_json(),
        _ => {
            let mut ended = run.clone();
            ended.state = ending.state;
            ended.finished_at = Some(ending.finished_at);
            Progress::from_run(&ended).to_json()
        }
    };
    manager.publish(run.id, message);
    manager.close_live(run.id);
}

fn run_progress(status: &JobStatus) -> RunProgress {
    let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    RunProgress {
        n_chunks: to_i64(status.n_chunks),
        chunks_done: to_i64(status.chunks_done),
        lines_done: to_i64(status.lines_done),
        bytes_done: to_i64(status.bytes_done),
        retries: to_i64(status.retries),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::rpc::input::ChunkSpan;

    #[test]
    fn a_plugin_failure_names_its_chunk_and_lines() {
        let failure = JobFailure {
            kind: FailureKind::Plugin,
            message: "bad line\n".into(),
            chunk: Some(ChunkSpan { index: 2, file: "in.txt".into(), first_line: 21, last_line: 30 }),
            attempts: 4,
        };
        let expected = "chunk 2 (in.txt lines 21-30) failed after 4 attempts: bad line";
        assert_eq!(describe(&failure), ("plugin", expected.into()));
        let build = JobFailure { kind: FailureKind::Build, message: "error[E0308]".into(), chunk: None, attempts: 1 };
        assert_eq!(describe(&build), ("build", "error[E0308]".into()));
    }
}
