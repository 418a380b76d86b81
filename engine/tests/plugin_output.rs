//! What a plugin prints reaches the user, per chunk and bounded, and never the result: the
//! `chatty` fixture prints on stdout and stderr in every chunk and in its aggregate, and is built
//! with `panic = "abort"`, whose panic message must still be reported. Through `run-local`
//! (printed on stderr after the result) and through a cluster (kept with the job by the
//! controller, shown by `kiln logs`).

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::path::{Path, PathBuf};

use cluster::Cluster;
use util::{fixture, run_local};

/// An input of `n` numbered lines (`line0001`...), cut into chunks of 100 lines by
/// `--chunk-size 900` (each line is 9 bytes).
fn numbered_lines(dir: &Path, n: usize) -> (PathBuf, String) {
    let text: String = (1..=n).map(|i| format!("line{i:04}\n")).collect();
    let path = dir.join("lines.txt");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// The chatty plugin's result, computed here: lines and their bytes without line endings.
fn expected_totals(text: &str) -> serde_json::Value {
    let lines: Vec<&str> = text.lines().collect();
    serde_json::json!({ "lines": lines.len(), "bytes": lines.iter().map(|l| l.len()).sum::<usize>() })
}

#[test]
fn run_local_shows_each_chunks_output_on_stderr_and_keeps_it_out_of_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let (input, text) = numbered_lines(dir.path(), 1000);
    let run = run_local(&fixture("chatty"), &input, &["--chunk-size", "900", "--processes", "2"]);
    assert!(run.success, "{}", run.stderr);
    let result: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is the result alone");
    assert_eq!(result, expected_totals(&text));
    let printed = run.stderr.split_once("plugin output:\n").map(|(_, printed)| printed).expect(&run.stderr);
    for chunk in 0..10u64 {
        let (first, last) = (100 * chunk + 1, 100 * chunk + 100);
        let origin = format!("chunk {chunk} ({} lines {first}-{last})", input.display());
        let stdout = format!("== {origin} stdout\nchunk at line {first}: 100 lines\n");
        let stderr = format!("== {origin} stderr\nstderr of chunk at line {first}\n");
        assert!(printed.contains(&(stdout + &stderr)), "chunk {chunk} in:\n{printed}");
    }
    assert!(printed.contains("== aggregate stdout\naggregating "), "{printed}");
    assert!(!printed.contains("bytes cut"), "{printed}");
}

#[test]
fn a_chunk_that_prints_too_much_is_cut_with_a_note_of_how_much() {
    let dir = tempfile::tempdir().unwrap();
    let (input, text) = numbered_lines(dir.path(), 1000);
    let flood = 200_000u64;
    let params = format!("flood={flood}");
    let run = run_local(&fixture("chatty"), &input, &["--chunk-size", "900", "--params", &params]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap(), expected_totals(&text));
    // Chunk 0 printed its line and the flood on stdout, of which 64 KiB is kept, and its
    // stderr line, kept whole.
    let printed = "chunk at line 1: 100 lines\n".len() as u64 + flood;
    let note = format!("stderr of chunk at line 1\n[... {} bytes cut]\n", printed - 64 * 1024);
    assert!(run.stderr.contains(&note), "no {note:?} in:\n{}", &run.stderr[run.stderr.len().saturating_sub(2000)..]);
    // The other chunks keep theirs whole.
    assert!(run.stderr.contains("stdout\nchunk at line 901: 100 lines\n"), "{}", run.stderr.len());
}

#[test]
fn a_panic_in_a_plugin_built_with_panic_abort_is_reported_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = numbered_lines(dir.path(), 1000);
    let run =
        run_local(&fixture("chatty"), &input, &["--chunk-size", "900", "--processes", "2", "--params", "panic-at=250"]);
    assert!(!run.success, "the run should fail:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "no result on failure: {}", run.stdout);
    assert!(run.stderr.contains("aborted (SIGABRT)"), "{}", run.stderr);
    assert!(run.stderr.contains("deliberate panic at line 250"), "{}", run.stderr);
    assert!(run.stderr.contains("panicked at src/lib.rs:"), "{}", run.stderr);
    assert!(run.stderr.contains("built with panic = \"abort\""), "{}", run.stderr);
    assert!(run.stderr.contains("lines 201-300"), "{}", run.stderr);
}

/// What `kiln logs` prints for chunk `chunk` of 100 numbered lines: its stdout and its stderr,
/// each after the end of its header.
fn chunk_blocks(chunk: u64) -> [String; 2] {
    let (first, last) = (100 * chunk + 1, 100 * chunk + 100);
    [
        format!("lines.txt lines {first}-{last}) stdout\nchunk at line {first}: 100 lines\n== chunk {chunk} ("),
        format!("lines.txt lines {first}-{last}) stderr\nstderr of chunk at line {first}\n"),
    ]
}

#[test]
fn a_cluster_keeps_each_chunks_output_with_the_job_and_kiln_logs_prints_it_after_a_restart() {
    let mut cluster = Cluster::start(2);
    let (input, text) = numbered_lines(cluster.dir.path(), 1000);
    let run = cluster.submit(&fixture("chatty"), &input, &["--chunk-size", "900"]);
    assert!(run.success, "{}", run.stderr);
    let result: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is the result alone");
    assert_eq!(result, expected_totals(&text));
    assert!(!run.stdout.contains("aggregating"), "what the aggregate printed is not in the result");
    assert!(
        run.stderr.contains("10 chunks and the aggregate printed output: kiln logs 1"),
        "{}\n{}",
        run.stderr,
        cluster.kiln(&["logs", "1"]).stdout
    );

    // Kept durably: a restarted controller still has it.
    cluster.kill_controller();
    cluster.restart_controller();
    let logs = cluster.kiln(&["logs", "1"]);
    assert!(logs.success, "{}", logs.stderr);
    for chunk in 0..10 {
        for block in chunk_blocks(chunk) {
            assert!(logs.stdout.contains(&block), "{block:?} in:\n{}", logs.stdout);
        }
    }
    assert_eq!(logs.stdout.matches("== chunk ").count(), 20, "{}", logs.stdout);
    // What the aggregate printed on the worker comes last, after every chunk's.
    let (chunks, aggregate) = logs.stdout.split_once("== aggregate stdout\n").expect(&logs.stdout);
    assert!(chunks.contains("== chunk 9 ("), "{}", logs.stdout);
    assert!(aggregate.starts_with("aggregating ") && aggregate.ends_with(" partials\n"), "{aggregate:?}");
    let json = cluster.kiln(&["logs", "1", "--json"]);
    let outputs: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).expect(&json.stdout);
    assert_eq!(outputs.len(), 11);
    assert_eq!(outputs[3]["first_line"], 301);
    assert_eq!(outputs[3]["stdout"], "chunk at line 301: 100 lines\n");
    assert_eq!(outputs[10]["chunk"], serde_json::Value::Null, "the aggregate's: {}", outputs[10]);
    let unknown = cluster.kiln(&["logs", "99"]);
    assert!(!unknown.success && unknown.stderr.contains("job 99"), "{}", unknown.stderr);
}

#[test]
fn a_cluster_keeps_what_an_aggregate_prints_bounded_with_a_note_of_what_was_cut() {
    let cluster = Cluster::start(1);
    let (input, text) = numbered_lines(cluster.dir.path(), 1000);
    let flood = 200_000u64;
    let params = format!("aggregate-flood={flood}");
    let run = cluster.submit(&fixture("chatty"), &input, &["--chunk-size", "900", "--params", &params]);
    assert!(run.success, "{}", run.stderr);
    let result: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is the result alone");
    assert_eq!(result, expected_totals(&text));
    assert!(run.stderr.contains("and the aggregate printed output: kiln logs 1"), "{}", run.stderr);
    let logs = cluster.kiln(&["logs", "1"]);
    assert!(logs.success, "{}", logs.stderr);
    // Of the flood on stderr, 64 KiB is kept and the rest counted; stdout's line is kept whole.
    let (_, aggregate) = logs.stdout.split_once("== aggregate stdout\n").expect(&logs.stdout);
    let (stdout, stderr) = aggregate.split_once("== aggregate stderr\n").expect(aggregate);
    assert!(stdout.starts_with("aggregating ") && stdout.ends_with(" partials\n"), "{stdout:?}");
    let note = format!("[... {} bytes cut]\n", flood - 64 * 1024);
    let kept = stderr.strip_suffix(&note).unwrap_or_else(|| panic!("no {note:?} at the end of {}", stderr.len()));
    // 64 KiB ends inside a line of the flood, so `kiln logs` ends the text with a line ending.
    let kept = kept.strip_suffix('\n').expect("a line ending after the text");
    assert_eq!(kept.len(), 64 * 1024);
    assert!(kept.bytes().all(|b| b == b'x' || b == b'\n'), "the aggregate's flood, nothing else");
}

#[test]
fn a_cluster_job_whose_panic_abort_plugin_panics_fails_with_the_panic_message() {
    let cluster = Cluster::start(1);
    let (input, _) = numbered_lines(cluster.dir.path(), 1000);
    let run = cluster.submit(&fixture("chatty"), &input, &["--chunk-size", "900", "--params", "panic-at=250"]);
    assert!(!run.success, "the job should fail:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "no result on failure: {}", run.stdout);
    assert!(run.stderr.contains("deliberate panic at line 250"), "{}", run.stderr);
    assert!(run.stderr.contains("built with panic = \"abort\""), "{}", run.stderr);
    assert!(run.stderr.contains("lines 201-300"), "{}", run.stderr);
}
