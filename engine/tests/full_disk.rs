//! A full disk under the controller's data directory (issue 15): the directory is a small
//! tmpfs mounted in a mount namespace of the controller's own (`unshare`, as root), filled by
//! a file written from inside that namespace (`nsenter`). A job submitted then fails with a
//! message that names the data directory and says what to do, and nothing is corrupted: the
//! result of a job that ended before is still read, and once the filler is deleted new jobs
//! run, under ids never handed out before.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::path::Path;
use std::process::{Command, Output};

use cluster::Cluster;
use serde_json::Value;
use util::{example, word_counts, word_text, write_input};

/// The controller's command, started in a mount namespace of its own where its data directory
/// (`dir/controller`) is a tmpfs of 16 MiB.
fn on_small_disk(command: Command, dir: &Path) -> Command {
    let data = dir.join("controller");
    std::fs::create_dir_all(&data).expect("the data directory is made");
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=16m none "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(&data)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// Runs `script` (`sh -c`, with the data directory as `$1`) in the controller's mount
/// namespace, where the data directory is the small disk.
fn in_controller_namespace(cluster: &Cluster, script: &str) -> Output {
    Command::new("nsenter")
        .args(["--target", &cluster.controller.pid().to_string(), "--mount", "--", "sh", "-c", script, "sh"])
        .arg(cluster.data_dir())
        .output()
        .expect("nsenter runs")
}

/// Why this machine cannot make a private mount namespace with a tmpfs, if it cannot.
fn cannot_mount() -> Option<String> {
    let tried = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt"])
        .output();
    match tried {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

/// The job `kiln submit` named on stderr (`submitted job N`, `job N was cancelled...`).
fn job_named(stderr: &str) -> Option<u64> {
    stderr.match_indices("job ").find_map(|(at, _)| {
        let digits: String = stderr[at + 4..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

#[test]
fn a_full_data_directory_fails_jobs_clearly_and_corrupts_nothing() {
    if let Some(reason) = cannot_mount() {
        // CI runs as root on a machine that makes namespaces: there, this must run.
        assert!(std::env::var_os("CI").is_none(), "CI must run the full-disk test, but: {reason}");
        eprintln!("skipped: this machine cannot mount a tmpfs in a mount namespace of its own: {reason}");
        return;
    }
    let cluster = Cluster::start_wrapped(1, on_small_disk);
    let text = word_text(41, 3_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let before = cluster.submit(&example("wordcount"), &input, &[]);
    assert!(before.success, "{}", before.stderr);
    let first = job_named(&before.stderr).expect("kiln submit names its job");
    assert_eq!(serde_json::from_str::<Value>(&before.stdout).unwrap(), word_counts(&text));

    let filled = in_controller_namespace(&cluster, r#"dd if=/dev/zero of="$1/filler" bs=64k 2>/dev/null; df -k "$1""#);
    let df = String::from_utf8_lossy(&filled.stdout);
    assert!(df.contains("100%"), "the data directory is full:\n{df}");

    let refused = cluster.submit(&example("wordcount"), &input, &[]);
    assert!(!refused.success, "a job on a full disk cannot run:\n{}", refused.stderr);
    let data_dir = cluster.data_dir().display().to_string();
    for words in ["the controller's disk is full", &data_dir, "free space on that disk, then try again"] {
        assert!(refused.stderr.contains(words), "the message says {words:?}:\n{}", refused.stderr);
    }
    assert_eq!(refused.stderr.matches("No space left").count(), 0, "said in words, once:\n{}", refused.stderr);
    // Results stored before are read as ever.
    assert_eq!(cluster.result(first), word_counts(&text));

    let freed = in_controller_namespace(&cluster, r#"rm "$1/filler""#);
    assert!(freed.status.success(), "{}", String::from_utf8_lossy(&freed.stderr));
    let after = cluster.submit(&example("wordcount"), &input, &[]);
    assert!(after.success, "jobs run again once there is space:\n{}", after.stderr);
    assert_eq!(serde_json::from_str::<Value>(&after.stdout).unwrap(), word_counts(&text));
    let second = job_named(&after.stderr).expect("kiln submit names its job");
    // A job created while the disk was full keeps its id: none is handed out twice.
    if let Some(refused_job) = job_named(&refused.stderr) {
        assert_ne!(second, refused_job, "the id of the refused job was handed out again:\n{}", refused.stderr);
    }
    assert!(second > first);
    let jobs: Value = serde_json::from_str(&cluster.kiln(&["jobs", "--json"]).stdout).expect("jobs are JSON");
    let mut ids: Vec<u64> = jobs.as_array().unwrap().iter().filter_map(|job| job["id"].as_u64()).collect();
    let listed = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), listed, "each job listed once: {jobs:#}");
    assert_eq!(cluster.result(first), word_counts(&text));
    assert_eq!(cluster.result(second), word_counts(&text));
}
