//! What people are told while a job runs on a cluster: Ctrl-C on `kiln submit` says the job
//! goes on and how to cancel it (a second Ctrl-C, or `--cancel-on-interrupt`, cancels it), and
//! the controller's log says when jobs wait for want of workers and how many chunks a lost
//! worker gave back.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, JOB_TIMEOUT, misbehave_totals, slow_params};
use util::{fixture, write_input};

/// Lines whose chunks each sleep, so that a job runs long enough to be interrupted.
fn slow_input(cluster: &Cluster) -> (std::path::PathBuf, String, String) {
    let text: String = (0..400).map(|i| format!("line {i} of a slow input\n")).collect();
    let input = write_input(cluster.dir.path(), "slow.txt", &text);
    (input, text, slow_params(400, 20, 1_000))
}

/// `kiln submit` of the slow job, with its stderr piped.
fn start_submit(cluster: &Cluster, input: &std::path::Path, params: &str, extra: &[&str]) -> Child {
    let plugin = fixture("misbehave");
    let mut args = vec!["submit", "--plugin", plugin.to_str().unwrap(), "--input", input.to_str().unwrap()];
    args.extend_from_slice(&["--params", params, "--chunk-size", "1KiB"]);
    args.extend_from_slice(extra);
    cluster::kiln_command()
        .args(&args)
        .arg("--controller")
        .arg(cluster.controller.addr.to_string())
        .arg("--api-key")
        .arg(cluster.api_key())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln submit starts")
}

/// Waits until the job `kiln submit` follows is running on the cluster; answers its id.
fn running_job(cluster: &Cluster) -> u64 {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let run = cluster.kiln(&["jobs", "--json"]);
        let jobs: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        if let Some(job) = jobs.as_array().and_then(|jobs| jobs.first())
            && job["state"] == "Running"
            && job["chunks_done"].as_u64() > Some(0)
        {
            return job["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "no job got running: {jobs:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn interrupt(child: &Child) {
    // SAFETY: a plain signal to a child this test started and has not reaped.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0, "SIGINT was not sent");
}

/// Waits for the child to exit; answers its exit code and stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    (status.code(), stderr)
}

#[test]
fn ctrl_c_on_submit_leaves_the_job_running_and_says_how_to_follow_or_cancel_it() {
    let cluster = Cluster::start_unconfined(1);
    let (input, text, params) = slow_input(&cluster);
    let submit = start_submit(&cluster, &input, &params, &[]);
    let job = running_job(&cluster);
    interrupt(&submit);
    let (code, stderr) = finish(submit);
    assert_eq!(code, Some(130), "{stderr}");
    for hint in [format!("job {job} goes on"), format!("kiln status {job}"), format!("kiln cancel {job}")] {
        assert!(stderr.contains(&hint), "no {hint:?} in:\n{stderr}");
    }
    // The job went on to its exact result.
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    assert_eq!(cluster.result(job), misbehave_totals(&text));
}

#[test]
fn a_second_ctrl_c_or_cancel_on_interrupt_cancels_the_job() {
    let cluster = Cluster::start_unconfined(1);
    let (input, _, params) = slow_input(&cluster);
    for flags in [&[][..], &["--cancel-on-interrupt"][..]] {
        let submit = start_submit(&cluster, &input, &params, flags);
        let job = running_job(&cluster);
        interrupt(&submit);
        if flags.is_empty() {
            // The second Ctrl-C, once the first was heard.
            std::thread::sleep(Duration::from_millis(300));
            interrupt(&submit);
        }
        let (code, stderr) = finish(submit);
        assert_eq!(code, Some(130), "{flags:?}: {stderr}");
        assert!(stderr.contains(&format!("cancelled job {job}")), "{flags:?}: {stderr}");
        assert_eq!(cluster.status(job)["state"], "Cancelled", "{flags:?}");
    }
}

/// Waits until the daemon's log holds `text`; answers the log.
fn wait_logged(daemon: &cluster::Daemon, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = daemon.stderr();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "{text:?} was not logged:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_controller_warns_while_jobs_wait_without_workers_and_counts_a_lost_workers_chunks() {
    let mut cluster = Cluster::start_unconfined(0);
    let (input, text, params) = slow_input(&cluster);
    let args = ["--params", params.as_str(), "--chunk-size", "1KiB", "--processes", "2"];
    let job = cluster.submit_detached(&fixture("misbehave"), &input, &args);
    let log = wait_logged(&cluster.controller, "no worker has been registered for");
    let warning = log.lines().find(|line| line.contains("no worker has been registered")).unwrap();
    assert!(warning.contains(&format!("job {job} cannot run")), "{warning}");
    assert!(warning.contains("kiln worker --controller"), "{warning}");

    // A worker joins, takes chunks, and is killed while it runs them.
    cluster.add_worker(2);
    cluster.wait_status(job, JOB_TIMEOUT, |status| status["chunks_done"].as_u64() > Some(0));
    cluster.workers[0].kill();
    let log = wait_logged(&cluster.controller, "worker lost: ");
    let lost = log.lines().find(|line| line.contains("worker lost: ")).unwrap();
    assert!(lost.contains("went back to the queue"), "{lost}");
    let requeued: u64 = lost.split("worker lost: ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(requeued >= 1, "the worker was running chunks: {lost}");

    cluster.add_worker(2);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    assert_eq!(cluster.result(job), misbehave_totals(&text));
}
