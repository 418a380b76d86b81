//! What a user sees when their plugin misbehaves: a panic, a segfault, an abort, an endless
//! loop, a crate that does not compile, a plugin built against another API. The runner always
//! survives to say so in words, and exits non-zero.

mod util;

use std::path::{Path, PathBuf};

use util::{Run, fixture, run_local};

/// An input of `n` numbered lines, cut into chunks of about 100 lines (each line is 9 bytes).
fn numbered_lines(dir: &Path, n: usize) -> PathBuf {
    let text: String = (1..=n).map(|i| format!("line{i:04}\n")).collect();
    let path = dir.join("lines.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn check(params: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let input = numbered_lines(dir.path(), 1000);
    let mut args = vec!["--params", params, "--chunk-size", "900", "--processes", "2"];
    args.extend_from_slice(extra);
    let run = run_local(&fixture("misbehave"), &input, &args);
    assert!(!run.success, "the run should fail; stderr:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "no result on failure: {}", run.stdout);
    run
}

#[test]
fn a_well_behaved_run_of_the_fixture_succeeds() {
    // The failures below are the directives' doing, not the fixture's.
    let dir = tempfile::tempdir().unwrap();
    let input = numbered_lines(dir.path(), 1000);
    let run = run_local(&fixture("misbehave"), &input, &["--chunk-size", "900"]);
    assert!(run.success, "{}", run.stderr);
    let output: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(output["lines"], 1000);
    assert_eq!(output["sum"], 8000);
}

#[test]
fn a_panic_fails_the_run_with_its_message_location_and_line_range() {
    let run = check("panic-at=250", &[]);
    assert!(run.stderr.contains("deliberate panic at line 250"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("panicked at src/lib.rs:"), "stderr: {}", run.stderr);
    // 900-byte chunks of 9-byte lines: lines 201-300 make the third chunk, of the one file.
    let chunk = regex::Regex::new(r"chunk 2 \(\S+/lines\.txt lines 201-300\) failed").unwrap();
    assert!(chunk.is_match(&run.stderr), "stderr: {}", run.stderr);
}

#[test]
fn a_segfault_is_reported_and_the_runner_survives() {
    let run = check("segfault-at=10", &[]);
    assert!(run.stderr.contains("segmentation fault (SIGSEGV)"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("lines 1-100"), "stderr: {}", run.stderr);
}

#[test]
fn an_abort_is_reported_and_the_runner_survives() {
    let run = check("abort-at=990", &[]);
    assert!(run.stderr.contains("aborted (SIGABRT)"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("lines 901-1000"), "stderr: {}", run.stderr);
}

#[test]
fn an_endless_loop_is_killed_by_the_call_timeout() {
    let run = check("loop-at=500", &["--timeout", "2"]);
    assert!(run.stderr.contains("did not finish within 2 s"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("lines 401-500"), "stderr: {}", run.stderr);
}

#[test]
fn unknown_params_are_refused_by_the_plugin() {
    let run = check("explode=1", &[]);
    assert!(run.stderr.contains("refused its parameters"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("explode"), "stderr: {}", run.stderr);
}

#[test]
fn a_crate_that_does_not_compile_shows_cargos_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let input = numbered_lines(dir.path(), 10);
    let run = run_local(&fixture("no-compile"), &input, &[]);
    assert!(!run.success);
    assert!(run.stderr.contains("mismatched types"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("src/lib.rs:"), "stderr: {}", run.stderr);
}

#[test]
fn a_plugin_built_against_another_api_version_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let input = numbered_lines(dir.path(), 10);
    let run = run_local(&fixture("old-api"), &input, &[]);
    assert!(!run.success);
    assert!(run.stderr.contains("kiln-plugin-api 0.0.1"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains(kiln_plugin_api::API_VERSION), "stderr: {}", run.stderr);
}

#[test]
fn a_plugin_that_exceeds_the_memory_limit_is_stopped_with_a_clear_error() {
    let run = check("hog-at=300:4096", &["--memory-limit", "1GiB"]);
    assert!(run.stderr.contains("ran out of memory"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("lines 201-300"), "stderr: {}", run.stderr);
}
