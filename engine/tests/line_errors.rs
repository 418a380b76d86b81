//! A plugin's failure points at the line. A panic while the plugin reads a chunk's lines with
//! the API's iterators names the line (its number in its file, the file, its first 200
//! characters escaped), the panic's message and its place in the source. A panic that happens
//! again the same way ends the job after two attempts; the plugin's own `Err` ends it after
//! one; a crash that happens once is retried and the job succeeds. Through `kiln run-local` and
//! `kiln submit`.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::path::{Path, PathBuf};

use cluster::Cluster;
use util::{fixture, run_local};

/// The line that fails, deep in a big input.
const TARGET: usize = 123_456;
const N_LINES: usize = 130_000;
/// Small chunks, so that the target line is in the middle of one of many.
const CHUNK: &str = "64KiB";

/// The start of the target line: control characters and quotes, which must reach the user
/// escaped; the rest of it is 300 `x`s, longer than the 200 characters quoted.
const HEAD: &str = "0123456 \u{1b}[2J bell\u{7} \"quoted\" ";

/// Writes the input: numbered lines, the target one special.
fn big_input(dir: &Path) -> PathBuf {
    let mut text = String::with_capacity(N_LINES * 16);
    for i in 1..=N_LINES {
        if i == TARGET {
            text.push_str(HEAD);
            text.push_str(&"x".repeat(300));
            text.push('\n');
        } else {
            text.push_str(&format!("{i:07} plain\n"));
        }
    }
    let path = dir.join("big.txt");
    std::fs::write(&path, text).unwrap();
    path
}

/// How the target line must be quoted, written out by hand: escapes for the escape and bell
/// characters and the quotes, then `x`s up to 200 characters, and a note that it was cut.
fn quoted_line() -> String {
    let head_chars = HEAD.chars().count();
    format!(r#""0123456 \u{{1b}}[2J bell\u{{7}} \"quoted\" {}" (cut)"#, "x".repeat(200 - head_chars))
}

/// Checks that `said` names the target line of `input` and the panic, as a readable block.
fn check_names_the_line(said: &str, input: &Path) {
    let place = format!("on line {TARGET} of {}: {}", input.display(), quoted_line());
    assert!(said.contains(&place), "no {place:?} in:\n{said}");
    assert!(said.contains("panicked at src/lib.rs:"), "no location in:\n{said}");
    assert!(said.contains("deliberate panic while reading a line"), "no message in:\n{said}");
    // (Log lines may be coloured; the line's own escape characters must not get through.)
    assert!(!said.contains("\u{1b}[2J") && !said.contains('\u{7}'), "a control character got through:\n{said}");
    // The panic and its line each on a line of their own, indented under what failed.
    assert!(said.contains("attempts:\n  panicked at src/lib.rs:"), "not a block:\n{said}");
    assert!(said.contains(&format!("\n  on line {TARGET} of ")), "not a block:\n{said}");
}

#[test]
fn run_local_names_the_line_a_panic_happened_on_and_stops_after_two_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_input(dir.path());
    let params = format!("panic={TARGET}");
    let run = run_local(&fixture("line-faults"), &input, &["--params", &params, "--chunk-size", CHUNK]);
    assert!(!run.success, "the run succeeded: {}", run.stdout);
    check_names_the_line(&run.stderr, &input);
    assert!(run.stderr.contains("failed after 2 attempts"), "{}", run.stderr);
}

#[test]
fn run_local_fails_at_once_on_the_plugins_own_error_and_retries_a_one_off_crash() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_input(dir.path());
    let params = format!("err={TARGET}");
    let run = run_local(&fixture("line-faults"), &input, &["--params", &params, "--chunk-size", CHUNK]);
    assert!(!run.success, "the run succeeded: {}", run.stdout);
    assert!(run.stderr.contains(&format!("failed after 1 attempt: refused line {TARGET}")), "{}", run.stderr);

    // The marker is written in the test's directory, which the sandbox hides.
    let markers = dir.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let params = format!("abort-once={TARGET}:{}", markers.display());
    let args = ["--params", &params, "--chunk-size", CHUNK, "--insecure-no-sandbox"];
    let run = run_local(&fixture("line-faults"), &input, &args);
    assert!(run.success, "the run failed:\n{}", run.stderr);
    assert!(markers.join("aborted").exists(), "the plugin did abort once");
    let output: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(output["lines"], N_LINES);
}

#[test]
fn submit_names_the_line_and_counts_two_attempts_for_a_panic_one_for_an_err_and_retries_a_crash() {
    let cluster = Cluster::start_unconfined(2);
    let input = big_input(cluster.dir.path());
    let plugin = fixture("line-faults");

    let params = format!("panic={TARGET}");
    let run = cluster.submit(&plugin, &input, &["--params", &params, "--chunk-size", CHUNK]);
    assert!(!run.success, "the job succeeded: {}", run.stdout);
    check_names_the_line(&run.stderr, &input);
    let job = cluster.submit_detached(&plugin, &input, &["--params", &params, "--chunk-size", CHUNK]);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Failed", "{status:#}");
    assert_eq!(status["failure"]["attempts"], 2, "{status:#}");
    assert_eq!(status["retries"], 1, "{status:#}");
    let message = status["failure"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("on line {TARGET} of ")), "{message}");

    let params = format!("err={TARGET}");
    let job = cluster.submit_detached(&plugin, &input, &["--params", &params, "--chunk-size", CHUNK]);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Failed", "{status:#}");
    assert_eq!(status["failure"]["attempts"], 1, "{status:#}");
    assert_eq!(status["failure"]["message"], format!("refused line {TARGET}"), "{status:#}");
    assert_eq!(status["retries"], 0, "{status:#}");

    let markers = cluster.dir.path().join("markers");
    std::fs::create_dir(&markers).unwrap();
    let params = format!("abort-once={TARGET}:{}", markers.display());
    let job = cluster.submit_detached(&plugin, &input, &["--params", &params, "--chunk-size", CHUNK]);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    assert!(markers.join("aborted").exists(), "the plugin did abort once");
    // Run again (alone, or on the other worker), it did not crash: the result is whole.
    assert_eq!(cluster.result(job)["lines"], N_LINES);
}
