//! How a cluster hands out work over time: a job waits for a worker, a worker that joins during
//! a job takes chunks at once, and a cancelled job stops dispatching while the cluster goes on
//! to the next job.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::process::Stdio;
use std::time::Duration;

use cluster::{Cluster, JOB_TIMEOUT, kiln_command, misbehave_totals, slow_params};
use serde_json::Value;
use util::{example, fixture, word_counts, word_text, write_input};

/// Small chunks, so that test inputs of a few hundred KiB make dozens of chunks.
const CHUNK: &str = "16KiB";

/// Numbered lines, about 22 bytes each: some 740 to a chunk.
fn numbered_lines(n_lines: usize) -> String {
    (0..n_lines).map(|i| format!("line {i} of the input\n")).collect()
}

#[test]
fn a_job_submitted_with_no_worker_waits_and_runs_when_one_joins() {
    let mut cluster = Cluster::start(0);
    let text = word_text(51, 5_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);

    let job = cluster.submit_detached(&example("wordcount"), &input, &["--chunk-size", CHUNK]);
    std::thread::sleep(Duration::from_secs(1));
    let status = cluster.status(job);
    assert_eq!((status["state"].as_str(), status["chunks_done"].as_u64()), (Some("Queued"), Some(0)), "{status:#}");

    cluster.add_worker(2);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    assert_eq!(cluster.result(job), word_counts(&text));
}

#[test]
fn a_worker_that_joins_mid_job_receives_chunks() {
    let mut cluster = Cluster::start(0);
    let first = cluster.add_worker(1);
    let text = numbered_lines(20_000);
    let input = write_input(cluster.dir.path(), "lines.txt", &text);
    // Every chunk sleeps 400 to 800 ms, so one worker alone takes about 16 s: time enough for
    // the late worker to start, register and build the plugin on a busy machine.
    let params = slow_params(20_000, 500, 400);

    let job = cluster.submit_detached(&fixture("misbehave"), &input, &["--params", &params, "--chunk-size", CHUNK]);
    let status = cluster.wait_status(job, JOB_TIMEOUT, |status| status["chunks_done"].as_u64() >= Some(2));
    let n_chunks = status["n_chunks"].as_u64().unwrap();
    assert!(n_chunks > 20, "{n_chunks} chunks");
    let late = cluster.add_worker(1);

    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    assert_eq!(cluster.result(job), misbehave_totals(&text));
    let done_by = |addr: std::net::SocketAddr| -> u64 {
        let workers = status["workers"].as_array().unwrap();
        workers.iter().filter(|w| w["address"] == addr.to_string()).map(|w| w["chunks_done"].as_u64().unwrap()).sum()
    };
    assert!(done_by(late) > 0, "the late worker got no chunk: {status:#}");
    assert_eq!(done_by(first) + done_by(late), n_chunks, "{status:#}");
}

#[test]
fn a_cancelled_job_stops_dispatching_at_once_and_the_next_job_completes() {
    let cluster = Cluster::start_unconfined(1);
    let text = numbered_lines(20_000);
    let input = write_input(cluster.dir.path(), "lines.txt", &text);
    let record = cluster.dir.path().join("runs");
    let params = format!("record={},{}", record.display(), slow_params(20_000, 500, 150));
    let runs = || std::fs::read_to_string(&record).map_or(0, |runs| runs.lines().count());

    // A `kiln submit` that follows the job, as a user would.
    let follower = kiln_command()
        .args(["submit", "--controller", &cluster.controller.addr.to_string(), "--api-key", &cluster.api_key()])
        .arg("--plugin")
        .arg(fixture("misbehave"))
        .arg("--input")
        .arg(&input)
        .args(["--params", &params, "--chunk-size", CHUNK])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = loop {
        let jobs: Value = serde_json::from_str(&cluster.kiln(&["jobs", "--json"]).stdout).unwrap();
        if let Some(job) = jobs[0]["id"].as_u64() {
            break job;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = cluster.wait_status(job, JOB_TIMEOUT, |status| status["chunks_done"].as_u64() >= Some(2));
    let n_chunks = status["n_chunks"].as_u64().unwrap() as usize;

    let cancel = cluster.kiln(&["cancel", &job.to_string()]);
    assert!(cancel.success, "kiln cancel failed:\n{}", cancel.stderr);
    assert!(cancel.stdout.contains("cancelled"), "{}", cancel.stdout);
    let runs_at_cancel = runs();
    std::thread::sleep(Duration::from_millis(1500));
    // Chunks already on their way may still start (at most the worker's 2 slots); no new ones.
    let runs_after = runs();
    assert!(runs_after <= runs_at_cancel + 2, "{runs_at_cancel} chunks had run at the cancel, {runs_after} later");
    assert!(runs_after < n_chunks, "every chunk ran");
    assert_eq!(cluster.status(job)["state"], "Cancelled");

    let followed = follower.wait_with_output().unwrap();
    assert!(!followed.status.success(), "kiln submit of a cancelled job succeeded");
    let stderr = String::from_utf8_lossy(&followed.stderr);
    assert!(stderr.contains(&format!("job {job} was cancelled")), "kiln submit said:\n{stderr}");
    assert!(followed.stdout.is_empty());

    // The cluster goes on to the next job.
    let words = word_text(53, 3_000);
    let next_input = write_input(cluster.dir.path(), "words.txt", &words);
    let run = cluster.submit(&example("wordcount"), &next_input, &["--chunk-size", CHUNK]);
    assert!(run.success, "the next job failed:\n{}", run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), word_counts(&words));
}
