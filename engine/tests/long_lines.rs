//! Long lines: a chunk holds at least one whole line, so a line longer than a chunk is a chunk
//! of its own, and each process on its path holds a few copies of it. Lines are accepted up to
//! `--max-line-size` (64 MiB unless the operator sets it, on the controller and on run-local);
//! a longer one fails the job while its input is read, naming the file, the line and the flag,
//! before it can make the controller hold it (the controller once went from 174 MB to 940 MB
//! for one line of 200 MB). The workers apply the controller's limit to the inputs they read
//! by reference, with the same message (naming the line's byte offset in its object).

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::path::Path;
use std::time::Instant;

use cluster::Cluster;
use serde_json::Value;
use util::{example, run_local, word_counts, word_text, write_input};

/// A line of `bytes` bytes of words, without its line end.
fn long_line(bytes: usize) -> String {
    let mut line = "lengthy words ".repeat(bytes / 14 + 1);
    line.truncate(bytes);
    line
}

/// Two files: `first.txt` of ordinary lines, then `second.txt` whose third line is
/// `long_bytes` long; answers the directory and the concatenated text.
fn two_files(dir: &Path, long_bytes: usize) -> (std::path::PathBuf, String) {
    let input = dir.join(format!("input-{long_bytes}"));
    std::fs::create_dir_all(&input).unwrap();
    let first = word_text(41, 2_000);
    let second = format!("one two\nthree\n{}\nfour five\n", long_line(long_bytes));
    write_input(&input, "first.txt", &first);
    write_input(&input, "second.txt", &second);
    (input, first + &second)
}

fn parsed(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("the result is JSON ({e}): {stdout}"))
}

#[test]
fn a_line_over_the_limit_fails_naming_its_file_line_and_the_flag_and_one_under_it_runs_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = example("wordcount");
    let (too_long, _) = two_files(dir.path(), 3 << 20);
    let (long, long_text) = two_files(dir.path(), (3 << 20) / 2);
    let flags = ["--chunk-size", "64KiB", "--max-line-size", "2MiB"];

    let run = run_local(&plugin, &too_long, &flags);
    assert!(!run.success, "a line of 3 MiB is over a limit of 2 MiB");
    let second = too_long.join("second.txt");
    for said in
        [format!("input file {}", second.display()), "line 3 is longer than 2 MiB".into(), "--max-line-size".into()]
    {
        assert!(run.stderr.contains(&said), "run-local says {said:?}: {}", run.stderr);
    }
    let run = run_local(&plugin, &long, &flags);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(parsed(&run.stdout), word_counts(&long_text));

    let cluster = Cluster::start_with(1, &["--max-line-size", "2MiB"]);
    cluster.wait_workers(1);
    let run = cluster.submit(&plugin, &too_long, &["--chunk-size", "64KiB"]);
    assert!(!run.success, "a line of 3 MiB is over the controller's limit of 2 MiB");
    for said in ["input file ", "second.txt: line 3 is longer than 2 MiB", "--max-line-size"] {
        assert!(run.stderr.contains(said), "submit says {said:?}: {}", run.stderr);
    }
    let status = cluster.status(1);
    assert_eq!(status["state"], "Failed", "{status:#}");
    assert_eq!(status["chunks_done"], 0, "no chunk ran: {status:#}");
    let run = cluster.submit(&plugin, &long, &["--chunk-size", "64KiB"]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(parsed(&run.stdout), word_counts(&long_text));
}

#[test]
fn a_line_read_by_reference_over_the_limit_fails_naming_its_object_offset_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = example("wordcount");
    let (too_long, _) = two_files(dir.path(), 3 << 20);
    let (long, long_text) = two_files(dir.path(), (3 << 20) / 2);
    let root = dir.path().to_str().unwrap();
    let cluster = Cluster::start_with(1, &["--max-line-size", "2MiB", "--file-input-root", root]);
    cluster.wait_workers(1);
    let url = |path: &Path| format!("file://{}", path.display());

    let run = cluster.submit(&plugin, Path::new(&url(&too_long)), &["--chunk-size", "64KiB"]);
    assert!(!run.success, "a line of 3 MiB is over the controller's limit of 2 MiB");
    // The long line follows "one two\nthree\n": it starts at byte 14 of its object.
    let second = url(&too_long.join("second.txt"));
    for said in [format!("input file {second}: the line at byte 14 is longer than 2 MiB"), "--max-line-size".into()] {
        assert!(run.stderr.contains(&said), "submit says {said:?}: {}", run.stderr);
    }
    let status = cluster.status(1);
    assert_eq!(status["state"], "Failed", "{status:#}");

    let run = cluster.submit(&plugin, Path::new(&url(&long)), &["--chunk-size", "64KiB"]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(parsed(&run.stdout), word_counts(&long_text));
}

/// The controller's peak resident memory, from `/proc/PID/status`.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
}

#[test]
fn a_line_of_a_hundred_megabytes_fails_by_default_and_leaves_the_controller_small() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("a first line\n{}\n", long_line(100 << 20));
    let input = write_input(dir.path(), "one-long-line.txt", &text);
    drop(text);
    let cluster = Cluster::start(1);
    cluster.wait_workers(1);
    let before = peak_memory(cluster.controller.pid());

    let started = Instant::now();
    let run = cluster.submit(&example("wordcount"), &input, &[]);
    assert!(!run.success, "a line of 100 MiB is over the default limit");
    assert!(run.stderr.contains("line 2 is longer than 64 MiB"), "{}", run.stderr);
    let after = peak_memory(cluster.controller.pid());
    eprintln!("controller peak {} -> {} MiB in {:?}", before >> 20, after >> 20, started.elapsed());
    // The line is refused once 64 MiB of it are held: the controller never holds the whole
    // line, nor the copies a chunk of it would take on its way to a worker.
    assert!(
        after.saturating_sub(before) < 200 << 20,
        "the controller grew from {} to {} MiB",
        before >> 20,
        after >> 20
    );
    let status = cluster.status(1);
    assert_eq!(status["state"], "Failed", "{status:#}");
}
