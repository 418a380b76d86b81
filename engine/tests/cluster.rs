//! A real cluster (a `kiln controller` and workers, each its own process) computes what
//! `kiln run-local` and an independent implementation in this file compute, for each example
//! plugin, over inputs of dozens of chunks; runs two jobs at once; and reports a plugin that
//! does not compile with cargo's own diagnostics.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::path::Path;

use cluster::{API_KEY, Cluster, client_key};
use futures::StreamExt;
use kiln_engine::client::{Client, ClientError, SubmitOptions};
use kiln_engine::rpc::{JobState, Secret};
use serde_json::Value;
use util::{Rng, example, fixture, run_local, word_counts, word_text, write_input};

/// Small chunks, so that test inputs of a few hundred KiB make dozens of chunks.
const CHUNK: &str = "16KiB";

/// Runs the plugin through the cluster with `kiln submit` and through `kiln run-local`; checks
/// both succeed with the same JSON and answers it.
fn check(cluster: &Cluster, plugin: &Path, input: &Path, params: &str) -> Value {
    check_outputs(cluster, plugin, input, params).0
}

/// [`check`], answering also the outputs as they were written: the cluster's and run-local's.
fn check_outputs(cluster: &Cluster, plugin: &Path, input: &Path, params: &str) -> (Value, [String; 2]) {
    let submitted = cluster.submit(plugin, input, &["--params", params, "--chunk-size", CHUNK]);
    assert!(submitted.success, "kiln submit failed:\n{}", submitted.stderr);
    let local = run_local(plugin, input, &["--params", params, "--chunk-size", CHUNK, "--processes", "2"]);
    assert!(local.success, "kiln run-local failed:\n{}", local.stderr);
    let parse = |what: &str, text: &str| -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} output is not JSON ({e}): {text}"))
    };
    let (cluster_output, local_output) = (parse("submit", &submitted.stdout), parse("run-local", &local.stdout));
    assert_eq!(cluster_output, local_output, "the cluster and run-local disagree");
    (cluster_output, [submitted.stdout, local.stdout])
}

fn grep(text: &str, pattern: &str) -> Value {
    let regex = regex::Regex::new(pattern).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| regex.is_match(line))
        .map(|(i, line)| serde_json::json!({"line": i + 1, "text": line}))
        .collect();
    Value::from(lines)
}

#[test]
fn wordcount_on_a_cluster_equals_run_local_and_a_plain_hashmap() {
    let cluster = Cluster::start(2);
    let text = word_text(21, 20_000);
    assert!(text.len() > 10 * 16 * 1024, "the input spans many chunks");
    let input = write_input(cluster.dir.path(), "words.txt", &text);

    assert_eq!(check(&cluster, &example("wordcount"), &input, ""), word_counts(&text));
}

#[test]
fn grep_on_a_cluster_equals_run_local_and_a_regex_scan_in_line_order() {
    let cluster = Cluster::start(3);
    let text = word_text(23, 20_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let pattern = r"^Word0\b|日本14 |w4[0-2]$";
    let expected = grep(&text, pattern);
    assert!(expected.as_array().unwrap().len() > 50, "the pattern matches lines across many chunks");

    let (output, written) = check_outputs(&cluster, &example("grep"), &input, pattern);
    assert_eq!(output, expected);
    // Byte for byte as grep's whole `aggregate` wrote it, though it now streams: compact, and
    // no match names the one file (a `Value`'s keys are sorted: `line` before `text`).
    let exact = serde_json::to_string(&expected).unwrap();
    for output in written {
        assert!(output.trim_end() == exact, "grep's output, exactly");
    }
}

#[test]
fn csv_stats_on_a_cluster_equals_run_local_and_direct_sums() {
    let cluster = Cluster::start(2);
    let mut rng = Rng::new(29);
    let mut text = String::from("id,value,label\n");
    let mut values = Vec::new();
    for i in 0..30_000 {
        // Halves and integers add up exactly in f64, so any summing order gives the same sum.
        let value = (rng.below(20_001) as f64 - 10_000.0) / 2.0;
        if i % 11 == 0 {
            text.push_str(&format!("{i},n/a,x\n"));
        } else {
            text.push_str(&format!("{i}, {value} ,label{i}\n"));
            values.push(value);
        }
    }
    let input = write_input(cluster.dir.path(), "data.csv", &text);

    let stats = check(&cluster, &example("csv-stats"), &input, "1");
    let sum: f64 = values.iter().sum();
    assert_eq!(stats["count"], Value::from(values.len() as u64));
    assert_eq!(stats["skipped"], Value::from(30_000 / 11 + 1 + 1), "the header and the n/a lines");
    assert_eq!(stats["sum"].as_f64(), Some(sum));
    assert_eq!(stats["min"].as_f64(), values.iter().copied().reduce(f64::min));
    assert_eq!(stats["max"].as_f64(), values.iter().copied().reduce(f64::max));
}

#[test]
fn two_jobs_submitted_at_once_both_complete_correctly() {
    let cluster = Cluster::start(2);
    let words = word_text(31, 15_000);
    let words_input = write_input(cluster.dir.path(), "words.txt", &words);
    let pattern = r"w1[0-9]\b";
    let (wordcount, grep_plugin) = (example("wordcount"), example("grep"));

    let (counted, grepped) = std::thread::scope(|scope| {
        let counted = scope.spawn(|| cluster.submit(&wordcount, &words_input, &["--chunk-size", CHUNK]));
        let grepped =
            scope.spawn(|| cluster.submit(&grep_plugin, &words_input, &["--params", pattern, "--chunk-size", CHUNK]));
        (counted.join().unwrap(), grepped.join().unwrap())
    });
    assert!(counted.success, "the wordcount job failed:\n{}", counted.stderr);
    assert!(grepped.success, "the grep job failed:\n{}", grepped.stderr);
    assert_eq!(serde_json::from_str::<Value>(&counted.stdout).unwrap(), word_counts(&words));
    assert_eq!(serde_json::from_str::<Value>(&grepped.stdout).unwrap(), grep(&words, pattern));

    let jobs = cluster.kiln(&["jobs", "--json"]);
    let jobs: Value = serde_json::from_str(&jobs.stdout).unwrap();
    let states: Vec<&str> = jobs.as_array().unwrap().iter().map(|job| job["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["Succeeded", "Succeeded"]);
    let owners: Vec<&str> = jobs.as_array().unwrap().iter().map(|job| job["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, ["cli", "cli"], "jobs submitted with the key belong to its holder by default");
    let table = cluster.kiln(&["jobs"]);
    assert!(table.stdout.contains("OWNER") && table.stdout.contains(" cli "), "{}", table.stdout);
    let refused = cluster.submit(&wordcount, &words_input, &["--owner", "../x"]);
    assert!(!refused.success && refused.stderr.contains("owner name `../x`"), "{}", refused.stderr);
}

#[test]
fn a_plugin_that_does_not_compile_fails_the_job_with_cargos_diagnostics() {
    let cluster = Cluster::start(2);
    let input = write_input(cluster.dir.path(), "words.txt", &word_text(37, 2_000));

    let run = cluster.submit(&fixture("no-compile"), &input, &["--chunk-size", CHUNK]);
    assert!(!run.success, "a job whose plugin does not compile succeeded:\n{}", run.stdout);
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
    assert!(run.stderr.contains("mismatched types"), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("src/lib.rs:"), "stderr: {}", run.stderr);

    let jobs: Value = serde_json::from_str(&cluster.kiln(&["jobs", "--json"]).stdout).unwrap();
    assert_eq!(jobs[0]["state"], "Failed");
}

#[test]
fn the_client_library_streams_progress_until_the_result() {
    let cluster = Cluster::start(2);
    let text = word_text(41, 10_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let addr = cluster.controller.addr.to_string();
        let wrong = client_key(&cluster.controller, "not the key");
        let refused = Client::connect(&addr, Secret::new(wrong)).await;
        assert!(matches!(refused, Err(ClientError::Unauthorized(_))), "{refused:?}");
        let old = Client::connect(&addr, Secret::new(API_KEY)).await;
        assert!(matches!(&old, Err(ClientError::Key(e)) if e.to_string().contains("old format")), "{old:?}");

        let client = Client::connect(&addr, Secret::new(cluster.api_key())).await.unwrap();
        let options =
            SubmitOptions { chunk_size: 16 << 10, input_name: "words".to_owned(), ..SubmitOptions::default() };
        // Any reader will do: here, the text in memory.
        let job = client.submit(&example("wordcount"), text.as_bytes(), options).await.unwrap();

        let statuses: Vec<_> = client.watch(job).map(|status| status.unwrap()).collect().await;
        let last = statuses.last().expect("at least the final status");
        assert_eq!(last.state, JobState::Succeeded);
        assert!(last.n_chunks > 10, "{} chunks", last.n_chunks);
        assert_eq!(
            (last.chunks_done, last.bytes_done, last.input_name.as_str()),
            (last.n_chunks, text.len() as u64, "words")
        );
        assert!(statuses.windows(2).all(|pair| pair[0].seq < pair[1].seq), "each status is news");
        assert!(statuses.windows(2).all(|pair| pair[0].chunks_done <= pair[1].chunks_done));

        let output: Value = serde_json::from_str(&client.outcome(job).await.unwrap()).unwrap();
        assert_eq!(output, word_counts(&text));
        assert_eq!(client.wait(job).await.unwrap().state, JobState::Succeeded);
        assert_eq!(client.list().await.unwrap()[0].id, job);
    });
}

#[test]
fn the_controller_and_workers_shut_down_cleanly_on_sigterm() {
    let mut cluster = Cluster::start(2);
    cluster.wait_workers(2);
    let mut daemons: Vec<&mut cluster::Daemon> = cluster.workers.iter_mut().collect();
    daemons.push(&mut cluster.controller);
    for daemon in daemons {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGTERM) }, 0);
        assert_eq!(daemon.wait_exit(std::time::Duration::from_secs(10)), Some(true), "{}", daemon.stderr());
    }
}
