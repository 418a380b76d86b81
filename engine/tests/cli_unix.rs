//! The `kiln` commands behave like Unix tools: a reader that closes the pipe early
//! (`kiln jobs | head`) ends them quietly, limits are refused the same way by every command
//! that takes them, and a submission whose input cannot be read leaves no job behind.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use cluster::Cluster;
use serde_json::Value;
use util::{example, write_input};

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
    let unreadable = cluster.dir.path().join("a-directory");
    std::fs::create_dir(&unreadable).unwrap();
    let run = cluster.submit(&example("wordcount"), &unreadable, &[]);
    assert!(!run.success, "the submission fails");
    assert!(run.stderr.contains(&format!("cannot read the input {}", unreadable.display())), "{}", run.stderr);
    assert_eq!(run.stderr.matches("Is a directory").count(), 1, "the cause said once: {}", run.stderr);

    let jobs = cluster.kiln(&["jobs", "--json"]);
    assert!(jobs.success, "{}", jobs.stderr);
    let jobs: Value = serde_json::from_str(&jobs.stdout).unwrap();
    assert_eq!(jobs, Value::Array(Vec::new()), "no job was created, not even a cancelled one");
}
