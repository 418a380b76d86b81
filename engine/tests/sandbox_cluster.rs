//! The sandbox stops a hostile plugin submitted to a real cluster (controller and worker
//! processes): it cannot read the controller's or the worker's data, a stand-in for the web
//! app's database or /etc/shadow, reach the controller's port or one the test opens, write
//! outside its temporary directory, see the worker's environment, trace or mount; nothing it
//! leaves outlives its job; the worker stays up and the next job is right.

#[path = "util/cluster.rs"]
mod cluster;
#[path = "util/hostile.rs"]
mod hostile;
mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::{Cluster, Daemon, JOB_TIMEOUT, JOIN_TOKEN};
use hostile::{
    GONE, Linger, SECRET, SECRET_ENV, assert_every_attack_stopped, assert_not_reached, bait_port, eventually,
    every_attack, expose, heartbeat_path, open_dir, outcomes, plant_secret, tasks_named,
};
use serde_json::Value;
use util::{example, fixture, word_counts, word_text, write_input};

/// A cluster of one worker that has a secret in its environment, with secrets in the
/// controller's and the worker's directories (readable by everybody, so that only the sandbox
/// keeps the plugin out).
fn hostile_cluster() -> (Cluster, Vec<PathBuf>) {
    let mut cluster = Cluster::start(0);
    let mut worker = cluster.joining_worker(JOIN_TOKEN, 2);
    worker.env(SECRET_ENV, SECRET);
    cluster.workers.push(Daemon::start(worker));
    cluster.wait_workers(1);
    expose(cluster.dir.path());
    let worker_dir = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("worker-cache-")))
        .expect("the worker's cache directory");
    let secrets = vec![
        plant_secret(&cluster.data_dir().join("secret.txt")),
        plant_secret(&worker_dir.join("secret.txt")),
        plant_secret(&cluster.dir.path().join("web").join("kiln.db")),
    ];
    (cluster, secrets)
}

/// The worker is still up and the next job is right.
fn check_next_job(cluster: &mut Cluster) {
    assert!(cluster.workers[0].is_running(), "the worker died:\n{}", cluster.workers[0].stderr());
    let text = word_text(12, 2_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let run = cluster.submit(&example("wordcount"), &input, &["--chunk-size", "16KiB"]);
    assert!(run.success, "the next job failed:\n{}", run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), word_counts(&text));
}

#[test]
fn a_plugin_on_a_cluster_reads_nothing_reaches_no_port_and_writes_nowhere() {
    let (mut cluster, secrets) = hostile_cluster();
    let listener = bait_port();
    let planted = open_dir(&cluster.dir.path().join("open")).join("planted");
    let connects = [listener.local_addr().unwrap().to_string(), cluster.controller.addr.to_string()];
    let params = every_attack(&secrets, &connects, std::slice::from_ref(&planted));
    let input = write_input(cluster.dir.path(), "one.txt", "one line\n");
    let run = cluster.submit(&fixture("hostile"), &input, &["--params", &params]);
    assert!(run.success, "the job failed:\n{}", run.stderr);
    let outcomes = outcomes(&run.stdout);
    assert_every_attack_stopped(&outcomes);
    assert_not_reached(&listener);
    assert!(!planted.exists(), "the plugin wrote outside its directory");
    check_next_job(&mut cluster);
}

#[test]
fn no_thread_or_process_of_a_plugin_outlives_its_job_on_a_worker() {
    let (mut cluster, _) = hostile_cluster();
    let linger = Linger::new("hc");
    let input = write_input(cluster.dir.path(), "one.txt", "one line\n");
    let job = cluster.submit_detached(&fixture("hostile"), &input, &["--params", &linger.params]);
    // While the job runs, the thread and the process are there: the check below can fail.
    let seen = eventually(JOB_TIMEOUT, || {
        let ended = cluster.status(job)["state"]
            .as_str()
            .is_some_and(|state| ["Succeeded", "Failed", "Cancelled"].contains(&state));
        ended || linger.both_running()
    });
    assert!(seen && !tasks_named(&linger.process).is_empty(), "the lingering thread and process never showed up");
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    let result = cluster.kiln(&["result", &job.to_string()]);
    assert!(result.success, "{}", result.stderr);
    let heartbeat = heartbeat_path(&outcomes(&result.stdout));

    linger.assert_gone();
    assert!(eventually(GONE, || !heartbeat.exists()), "the private directory outlived its job");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!heartbeat.parent().is_some_and(Path::exists), "the heartbeat came back");
    check_next_job(&mut cluster);
}
