//! The progress message relayed to browsers over the run's websocket, as JSON.

use serde::Serialize;

use kiln_engine::rpc::{JobState, JobStatus};

use crate::store::now_ms;
use crate::store::runs::{Run, RunState};

/// A run's progress as the page draws it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    /// The run.
    pub run_id: i64,
    /// Its state's name (`running`, `succeeded`, …).
    pub state: &'static str,
    /// Whether the run has ended: the page reloads to show the result or the error.
    pub finished: bool,
    /// How far it is, 0 to 100.
    pub percent: f64,
    /// Chunks done and in all (0 while the input is still being cut).
    pub chunks_done: u64,
    pub n_chunks: u64,
    /// Lines and bytes done, and the input's size.
    pub lines_done: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Chunk attempts that failed and were retried.
    pub retries: u64,
    /// Milliseconds since the job began running (or that it ran, once it ended).
    pub elapsed_ms: u64,
    /// Bytes per second over the last seconds, and over the whole run so far.
    pub throughput_bps: f64,
    pub average_bps: f64,
    /// Per worker figures.
    pub workers: Vec<WorkerRow>,
    /// The building phase, `Compiling (12/41): abi_stable`, while the plugin builds (before
    /// any chunk runs); empty otherwise.
    pub build: String,
}

/// One worker's share of a run.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WorkerRow {
    /// The worker's number on its controller, and its address.
    pub worker_id: u64,
    pub address: String,
    /// Chunks, lines and bytes it completed for this run.
    pub chunks_done: u64,
    pub lines_done: u64,
    pub bytes_done: u64,
    /// Chunks it is running now.
    pub in_flight: u32,
}

/// The most progress samples a run keeps: beyond, every other one is dropped, so a run of
/// hours keeps its shape in a few kilobytes.
const MAX_SAMPLES: usize = 512;

/// What a run keeps for its page once it ended: the per-worker table and its progress over
/// time, stored as JSON with the run.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Figures {
    /// The last per-worker figures.
    pub workers: Vec<WorkerRow>,
    /// `[milliseconds since the job began running, bytes done]`, in time order.
    pub samples: Vec<[u64; 2]>,
    /// Each state the run went through and when it entered it (ms since the epoch), in
    /// order: the phases of its timeline. States are names, so a phase the controller adds
    /// later (building) shows without a change here.
    #[serde(default)]
    pub phases: Vec<(String, u64)>,
    /// How long the plugin's build took, in milliseconds, once it ended: kept apart from the
    /// run's duration (which starts with the first chunk).
    #[serde(default)]
    pub build_ms: Option<u64>,
}

impl Figures {
    /// Takes in a status of the job: its workers, and a sample once the job runs.
    pub fn record(&mut self, status: &JobStatus) {
        let building = status.build.as_ref().filter(|build| !build.is_finished() && !status.state.is_final());
        if let Some(build) = status.build.as_ref().filter(|build| build.is_finished()) {
            self.build_ms = Some(build.elapsed_ms(0));
        }
        let state = match building {
            Some(_) => "building",
            None => run_state(status.state).as_str(),
        };
        if self.phases.last().is_none_or(|(last, _)| last != state) {
            let at = match status.state {
                _ if building.is_some() => building.map(|build| build.started_ms),
                JobState::Running => status.started_ms,
                _ if status.state.is_final() => status.finished_ms,
                _ => None,
            };
            self.phases.push((state.to_owned(), at.unwrap_or_else(|| u64::try_from(now_ms()).unwrap_or(0))));
        }
        if !status.workers.is_empty() {
            self.workers = Progress::from_status(0, status, 0, None).workers;
        }
        let Some(started) = status.started_ms else { return };
        let now = status.finished_ms.unwrap_or_else(|| u64::try_from(now_ms()).unwrap_or(0));
        let sample = [now.saturating_sub(started), status.bytes_done];
        if self.samples.last().is_some_and(|last| last[0] >= sample[0]) {
            // The same instant (or a clock step back): keep the later figure.
            if let Some(last) = self.samples.last_mut() {
                last[1] = last[1].max(sample[1]);
            }
            return;
        }
        self.samples.push(sample);
        if self.samples.len() > MAX_SAMPLES {
            let last = self.samples.pop();
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.samples.extend(last);
        }
    }

    /// The figures as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The figures stored as `json`; empty ones when there are none or they do not parse.
    pub fn from_json(json: Option<&str>) -> Figures {
        json.and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default()
    }
}

/// The run state a job state stands for.
pub fn run_state(state: JobState) -> RunState {
    match state {
        JobState::Uploading => RunState::Uploading,
        JobState::Queued => RunState::Queued,
        JobState::Running => RunState::Running,
        JobState::Aggregating => RunState::Aggregating,
        JobState::Succeeded => RunState::Succeeded,
        JobState::Failed => RunState::Failed,
        JobState::Cancelled => RunState::Cancelled,
    }
}

impl Progress {
    /// The progress a job status shows. `input_bytes` is the input's whole size (the status
    /// knows only what has arrived while the input uploads); `previous` is an earlier (time in
    /// ms, bytes done) sample, over which the recent throughput is measured.
    pub fn from_status(run_id: i64, status: &JobStatus, input_bytes: u64, previous: Option<(u64, u64)>) -> Progress {
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let state = run_state(status.state);
        let end = status.finished_ms.unwrap_or(now);
        let elapsed_ms = status.started_ms.map_or(0, |start| end.saturating_sub(start));
        let average_bps = if elapsed_ms > 0 { status.bytes_done as f64 * 1000.0 / elapsed_ms as f64 } else { 0.0 };
        let throughput_bps = match previous {
            Some((then, bytes)) if now > then && status.bytes_done >= bytes => {
                (status.bytes_done - bytes) as f64 * 1000.0 / (now - then) as f64
            }
            _ => average_bps,
        };
        Progress {
            run_id,
            state: state.as_str(),
            finished: state.is_final(),
            percent: match state {
                // Chunks run while the input uploads, but their number is not known yet.
                RunState::Uploading => percent(state, 0, 0, status.bytes_done, input_bytes.max(status.bytes_total)),
                _ => percent(state, status.chunks_done, status.n_chunks, status.bytes_done, status.bytes_total),
            },
            chunks_done: status.chunks_done,
            n_chunks: status.n_chunks,
            lines_done: status.lines_done,
            bytes_done: status.bytes_done,
            bytes_total: status.bytes_total,
            retries: status.retries,
            elapsed_ms,
            throughput_bps,
            average_bps,
            workers: status
                .workers
                .iter()
                .map(|worker| WorkerRow {
                    worker_id: worker.worker_id,
                    address: worker.address.clone(),
                    chunks_done: worker.chunks_done,
                    lines_done: worker.lines_done,
                    bytes_done: worker.bytes_done,
                    in_flight: worker.in_flight,
                })
                .collect(),
            build: match &status.build {
                Some(build) if !build.is_finished() && !state.is_final() => build.describe(now),
                _ => String::new(),
            },
        }
    }

    /// The progress a stored run shows (no per-worker figures).
    pub fn from_run(run: &Run) -> Progress {
        let p = &run.progress;
        let to_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
        let elapsed_ms = match (run.started_at, run.finished_at) {
            (Some(start), Some(end)) => end - start,
            (Some(start), None) => now_ms() - start,
            _ => 0,
        };
        let elapsed_ms = to_u64(elapsed_ms);
        let average_bps = if elapsed_ms > 0 { p.bytes_done as f64 * 1000.0 / elapsed_ms as f64 } else { 0.0 };
        Progress {
            run_id: run.id,
            state: run.state.as_str(),
            finished: run.state.is_final(),
            percent: percent(
                run.state,
                to_u64(p.chunks_done),
                to_u64(p.n_chunks),
                to_u64(p.bytes_done),
                to_u64(run.input_bytes),
            ),
            chunks_done: to_u64(p.chunks_done),
            n_chunks: to_u64(p.n_chunks),
            lines_done: to_u64(p.lines_done),
            bytes_done: to_u64(p.bytes_done),
            bytes_total: to_u64(run.input_bytes),
            retries: to_u64(p.retries),
            elapsed_ms,
            throughput_bps: average_bps,
            average_bps,
            workers: Vec::new(),
            build: String::new(),
        }
    }

    /// The message as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// How far a run is, 0 to 100: by chunks once they are known, else by bytes.
fn percent(state: RunState, chunks_done: u64, n_chunks: u64, bytes_done: u64, bytes_total: u64) -> f64 {
    let fraction = if state == RunState::Succeeded {
        1.0
    } else if n_chunks > 0 {
        chunks_done as f64 / n_chunks as f64
    } else if bytes_total > 0 {
        bytes_done as f64 / bytes_total as f64
    } else {
        0.0
    };
    (fraction * 100.0).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_goes_by_chunks_then_bytes_and_success_is_whole() {
        assert_eq!(percent(RunState::Running, 1, 4, 0, 0), 25.0);
        assert_eq!(percent(RunState::Running, 0, 0, 50, 200), 25.0);
        assert_eq!(percent(RunState::Queued, 0, 0, 0, 0), 0.0);
        assert_eq!(percent(RunState::Succeeded, 0, 0, 0, 0), 100.0);
    }

    #[test]
    fn the_build_shows_before_the_chunks_and_keeps_its_own_duration() {
        let mut status: JobStatus = serde_json::from_value(serde_json::json!({
            "id": 3, "seq": 9, "state": "Queued", "plugin_hash": "ab", "params": "", "input_name": "in.txt",
            "processes": 2, "n_chunks": 10, "chunks_done": 0, "lines_done": 0, "bytes_done": 0,
            "bytes_total": 1000, "retries": 0, "workers": [], "created_ms": 1000, "started_ms": null,
            "finished_ms": null, "failure": null,
            "build": {"crates_done": 12, "crates_total": 41, "current": "abi_stable", "started_ms": 2000,
                      "finished_ms": null}
        }))
        .unwrap();
        assert_eq!(Progress::from_status(1, &status, 1000, None).build, "Compiling (12/41): abi_stable");
        let mut figures = Figures::default();
        figures.record(&status);
        assert_eq!(figures.phases, [("building".to_owned(), 2000)]);

        status.state = JobState::Running;
        status.started_ms = Some(9000);
        if let Some(build) = status.build.as_mut() {
            build.finished_ms = Some(8400);
        }
        assert_eq!(Progress::from_status(1, &status, 1000, None).build, "");
        figures.record(&status);
        assert_eq!(figures.phases.last(), Some(&("running".to_owned(), 9000)));
        assert_eq!(figures.build_ms, Some(6400));
    }
}
