//! The `kiln` commands behave like Unix tools: a reader that closes the pipe early
//! (`kiln jobs | head`) ends them quietly, limits are refused the same way by every command
//! that takes them, and a submission whose input cannot be read leaves no job behind.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::process::{Command, Stdio};

use cluster::Cluster;
use serde_json::Value;
use util::{example, word_counts, word_text, write_input};

/// Runs `command` with its stdout closed before it writes anything, as `| head -0` would;
/// answers its exit code and stderr.
fn with_stdout_closed(mut command: Command) -> (Option<i32>, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kiln starts");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("kiln ends");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `kiln ARGS` against the cluster's controller, with its key.
fn against(cluster: &Cluster, args: &[&str]) -> Command {
    let mut command = cluster::kiln_command();
    command
        .args(args)
        .arg("--controller")
        .arg(cluster.controller.addr.to_string())
        .arg("--api-key")
        .arg(cluster.api_key());
    command.env("KILN_TARGET_DIR", util::plugin_target_dir());
    command
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_and_successfully() {
    let cluster = Cluster::start(1);
    let text = word_text(3, 2_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let plugin = example("wordcount");
    let job = cluster.submit_detached(&plugin, &input, &[]);
    assert_eq!(cluster.wait_ended(job)["state"], "Succeeded");
    assert_eq!(cluster.result(job), word_counts(&text), "the job's result, read whole");

    let job = job.to_string();
    let (plugin, input) = (plugin.to_str().unwrap(), input.to_str().unwrap());
    let commands = [
        against(&cluster, &["jobs"]),
        against(&cluster, &["jobs", "--json"]),
        against(&cluster, &["status", &job]),
        against(&cluster, &["result", &job]),
        against(&cluster, &["cluster"]),
        against(&cluster, &["submit", "--plugin", plugin, "--input", input]),
        {
            let mut local = util::kiln();
            local.args(["run-local", "--plugin", plugin, "--input", input]);
            local
        },
    ];
    for command in commands {
        let shown = format!("{:?}", command.get_args().collect::<Vec<_>>());
        let (code, stderr) = with_stdout_closed(command);
        assert_eq!(code, Some(0), "{shown} exits quietly and successfully; its stderr:\n{stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("error"), "{shown} said:\n{stderr}");
    }
}

#[test]
fn a_memory_limit_too_small_is_refused_the_same_way_by_run_local_submit_and_worker() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "words.txt", "a b\n");
    let plugin = example("wordcount");
    let (plugin, input) = (plugin.to_str().unwrap(), input.to_str().unwrap());
    let runs = [
        vec!["run-local", "--plugin", plugin, "--input", input, "--memory-limit", "1MiB"],
        vec!["submit", "--plugin", plugin, "--input", input, "--memory-limit", "1MiB", "--api-key", "k"],
        vec!["worker", "--controller", "127.0.0.1:1", "--join-token", "t", "--memory-limit", "1MiB"],
    ];
    for args in runs {
        let output = util::kiln().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} is refused as a usage error: {stderr}");
        assert!(
            stderr.contains(
                "a memory limit of 1 MiB is too small: an executor needs at least 64 MiB of address space to start"
            ),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("segmentation fault") && !stderr.contains("SIGSEGV"), "{args:?}: {stderr}");
    }
}

#[test]
fn an_input_that_cannot_be_read_fails_the_submission_and_leaves_no_job_behind() {
    let cluster = Cluster::start(0);
    let empty = cluster.dir.path().join("a-directory");
    std::fs::create_dir(&empty).unwrap();
    let run = cluster.submit(&example("wordcount"), &empty, &[]);
    assert!(!run.success, "the submission fails");
    let said = format!("the input {} holds no file", empty.display());
    assert_eq!(run.stderr.matches(&said).count(), 1, "the cause said once: {}", run.stderr);
    let missing = cluster.dir.path().join("missing.txt");
    let run = cluster.submit(&example("wordcount"), &missing, &[]);
    assert!(!run.success, "the submission fails");
    assert!(run.stderr.contains(&format!("cannot read the input {}", missing.display())), "{}", run.stderr);
    assert_eq!(run.stderr.matches("No such file or directory").count(), 1, "the cause said once: {}", run.stderr);

    let jobs = cluster.kiln(&["jobs", "--json"]);
    assert!(jobs.success, "{}", jobs.stderr);
    let jobs: Value = serde_json::from_str(&jobs.stdout).unwrap();
    assert_eq!(jobs, Value::Array(Vec::new()), "no job was created, not even a cancelled one");
}

#[test]
fn commands_that_exit_leave_no_library_warning_in_the_controllers_log() {
    // Every `kiln` command closes its TLS connection by exiting, without a close_notify alert;
    // the controller used to log tarpc's "Requests stream errored out ... close_notify" warning
    // for each, so an operator's log filled with what looked like faults.
    let cluster = Cluster::start(1);
    let text = word_text(5, 500);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let job = cluster.submit_detached(&example("wordcount"), &input, &[]);
    assert_eq!(cluster.wait_ended(job)["state"], "Succeeded");
    let job = job.to_string();
    for args in [&["jobs"][..], &["status", &job], &["result", &job], &["cluster"]] {
        let output = against(&cluster, args).output().expect("kiln runs");
        assert!(output.status.success(), "kiln {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    // The controller logs a disconnect as it happens; give it a moment to see the last one.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = cluster.controller.stderr();
    let noisy: Vec<&str> = log.lines().filter(|line| line.contains("tarpc") || line.contains("close_notify")).collect();
    assert!(noisy.is_empty(), "the controller logged library errors for clients that exited:\n{}", noisy.join("\n"));
}
