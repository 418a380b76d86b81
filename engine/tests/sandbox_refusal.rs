//! Where the host cannot sandbox plugins, `kiln worker` and `kiln run-local` refuse to run
//! them and name the missing feature; `--insecure-no-sandbox` runs them anyway, with a warning
//! for every job. The host is simulated with `KILN_TEST_SANDBOX_UNAVAILABLE`, a switch that
//! only tests use.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, Daemon, JOIN_TOKEN};
use serde_json::Value;
use util::{example, word_counts, word_text, write_input};

const UNAVAILABLE: &str = "KILN_TEST_SANDBOX_UNAVAILABLE";

/// How long a refusing command may take to give up.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `command` to its end (killing it after [`REFUSAL_TIMEOUT`]); answers whether it
/// succeeded and its stderr.
fn finish(mut command: Command) -> (bool, String) {
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("kiln runs");
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command did not end within {REFUSAL_TIMEOUT:?}: it did not refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status.success(), stderr)
}

#[test]
fn a_worker_on_a_host_without_landlock_refuses_naming_it_and_the_flag() {
    let cluster = Cluster::start(0);
    let mut worker = cluster.joining_worker(JOIN_TOKEN, 1);
    worker.env(UNAVAILABLE, "landlock");
    let (success, stderr) = finish(worker);
    assert!(!success, "the worker ran without a sandbox:\n{stderr}");
    assert!(stderr.contains("cannot sandbox plugins: landlock unavailable"), "{stderr}");
    assert!(stderr.contains("--insecure-no-sandbox"), "{stderr}");
    assert_eq!(cluster.cluster_info()["workers"].as_array().map(Vec::len), Some(0), "the worker joined");
}

#[test]
fn a_worker_without_user_namespaces_refuses_naming_them() {
    let cluster = Cluster::start(0);
    let mut worker = cluster.joining_worker(JOIN_TOKEN, 1);
    worker.env(UNAVAILABLE, "user-namespaces");
    let (success, stderr) = finish(worker);
    assert!(!success, "the worker ran without a sandbox:\n{stderr}");
    assert!(stderr.contains("unprivileged user namespaces unavailable"), "{stderr}");
}

#[test]
fn with_insecure_no_sandbox_a_worker_runs_jobs_and_warns_for_each() {
    let mut cluster = Cluster::start(0);
    let mut command = cluster.joining_worker(JOIN_TOKEN, 2);
    command.env(UNAVAILABLE, "landlock").arg("--insecure-no-sandbox");
    cluster.workers.push(Daemon::start(command));
    cluster.wait_workers(1);

    let mut jobs = Vec::new();
    for seed in [3, 4] {
        let text = word_text(seed, 2_000);
        let input = write_input(cluster.dir.path(), &format!("words-{seed}.txt"), &text);
        let run = cluster.submit(&example("wordcount"), &input, &["--chunk-size", "16KiB"]);
        assert!(run.success, "the job failed:\n{}", run.stderr);
        assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), word_counts(&text));
        let status: Value = serde_json::from_str(&cluster.kiln(&["jobs", "--json"]).stdout).unwrap();
        jobs.push(status[0]["id"].as_u64().expect("the job is listed"));
    }
    let stderr = without_colours(&cluster.workers[0].stderr());
    for job in jobs {
        let warned = stderr.lines().any(|line| {
            line.contains("WARN") && line.contains("without a sandbox") && line.contains(&format!("job={job}"))
        });
        assert!(warned, "no warning for job {job}:\n{stderr}");
    }
}

/// The text without ANSI colour sequences (the logs colour field names).
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn run_local_on_a_host_without_landlock_refuses_naming_it_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "words.txt", "a b c\n");
    let mut command = util::kiln();
    command.arg("run-local").arg("--plugin").arg(example("wordcount")).arg("--input").arg(&input);
    command.env(UNAVAILABLE, "landlock");
    let (success, stderr) = finish(command);
    assert!(!success, "run-local ran without a sandbox:\n{stderr}");
    assert!(stderr.contains("cannot sandbox plugins: landlock unavailable"), "{stderr}");
    assert!(stderr.contains("--insecure-no-sandbox"), "{stderr}");
}

#[test]
fn run_local_with_insecure_no_sandbox_runs_and_warns_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let text = word_text(5, 1_000);
    let input = write_input(dir.path(), "words.txt", &text);
    let run = {
        let mut command = util::kiln();
        command.arg("run-local").arg("--plugin").arg(example("wordcount")).arg("--input").arg(&input);
        command.arg("--insecure-no-sandbox").env(UNAVAILABLE, "landlock");
        util::Run::from(command.output().expect("kiln runs"))
    };
    assert!(run.success, "run-local failed:\n{}", run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), word_counts(&text));
    assert!(run.stderr.contains("without a sandbox"), "no warning on stderr:\n{}", run.stderr);
}
