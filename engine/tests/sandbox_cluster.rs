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

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::{Cluster, Daemon, JOB_TIMEOUT, JOIN_TOKEN};
use hostile::{
    SECRET, SECRET_ENV, assert_all_stopped, eventually, expose, heartbeat_path, open_dir, outcome_of, outcomes,
    plant_secret, tasks_named, unique_name,
};
use serde_json::Value;
use util::{example, fixture, word_text};

/// How long the leftovers of a job may take to disappear once it has ended (the controller
/// releases the job on its workers right after).
const GONE: Duration = Duration::from_secs(10);

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

fn write_input(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn word_counts(text: &str) -> Value {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_default() += 1;
    }
    counts.into_iter().map(|(word, n)| (word.to_owned(), Value::from(n))).collect()
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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let planted = open_dir(&cluster.dir.path().join("open")).join("planted");
    let mut params: Vec<String> = secrets.iter().map(|path| format!("read={}", path.display())).collect();
    params.extend([
        "read=/etc/shadow".to_owned(),
        format!("connect={}", listener.local_addr().unwrap()),
        format!("connect={}", cluster.controller.addr),
        format!("write={}", planted.display()),
        format!("env={SECRET_ENV}"),
        "ptrace=1".to_owned(),
        "mount=1".to_owned(),
    ]);
    let params = params.join(",");
    let input = write_input(cluster.dir.path(), "one.txt", "one line\n");
    let run = cluster.submit(&fixture("hostile"), &input, &["--params", &params]);
    assert!(run.success, "the job failed:\n{}", run.stderr);
    let outcomes = outcomes(&run.stdout);
    assert_all_stopped(&outcomes, outcomes.len());
    for attack in ["read", "connect", "write", "env", "ptrace", "mount"] {
        assert!(!outcome_of(&outcomes, attack).is_empty(), "no outcome for {attack}: {outcomes:#?}");
    }
    assert!(outcome_of(&outcomes, "env").contains("not found"), "{outcomes:#?}");
    assert!(matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock), "the plugin connected");
    assert!(!planted.exists(), "the plugin wrote outside its directory");
    check_next_job(&mut cluster);
}

#[test]
fn no_thread_or_process_of_a_plugin_outlives_its_job_on_a_worker() {
    let (mut cluster, _) = hostile_cluster();
    let name = unique_name("hc");
    let (thread, process) = (format!("{name}-t"), format!("{name}-p"));
    let input = write_input(cluster.dir.path(), "one.txt", "one line\n");
    let params = format!("linger={name},hold=2000");
    let job = cluster.submit_detached(&fixture("hostile"), &input, &["--params", &params]);
    // While the job runs, the thread and the process are there: the check below can fail.
    let seen = eventually(JOB_TIMEOUT, || {
        let ended = cluster.status(job)["state"]
            .as_str()
            .is_some_and(|state| ["Succeeded", "Failed", "Cancelled"].contains(&state));
        ended || (!tasks_named(&thread).is_empty() && !tasks_named(&process).is_empty())
    });
    assert!(seen && !tasks_named(&process).is_empty(), "the lingering thread and process never showed up");
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    let result = cluster.kiln(&["result", &job.to_string()]);
    assert!(result.success, "{}", result.stderr);
    let heartbeat = heartbeat_path(&outcomes(&result.stdout));

    assert!(
        eventually(GONE, || tasks_named(&thread).is_empty() && tasks_named(&process).is_empty()),
        "the plugin's thread or process outlived its job"
    );
    assert!(eventually(GONE, || !heartbeat.exists()), "the private directory outlived its job");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!heartbeat.parent().is_some_and(Path::exists), "the heartbeat came back");
    check_next_job(&mut cluster);
}
