//! Results of any size with memory of bounded size: a result travels from the worker to the
//! controller's disk and on to the client in pieces, never in one frame or one buffer, so a
//! result far larger than the frame limit arrives exact while the controller, the worker and
//! the client stay small; a result over `--max-result-size` fails its job with a message naming
//! the sizes and the flag; a chunk whose partial cannot fit in an answer fails clearly; and a
//! plugin that streams its output (grep) keeps the executor small however large its result.
//!
//! The frame limit is lowered to 16 MiB for these processes (`KILN_MAX_FRAME_BYTES`), so that
//! a result of ~45 MiB is several frames' worth without a large input.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster::Cluster;
use serde::Deserialize;
use util::{example, run_local, write_input};

/// The frame limit of the test's processes.
const FRAME_BYTES: u64 = 16 << 20;

/// A line of the grep example's output.
#[derive(Deserialize)]
struct Match {
    line: u64,
    text: String,
}

/// `n_lines` lines of about 70 bytes, each different.
fn lines_text(n_lines: usize) -> String {
    let mut rng = util::Rng::new(7);
    let mut text = String::with_capacity(n_lines * 72);
    for line in 0..n_lines {
        let word = rng.next();
        text.push_str(&format!("line {line:09} of the input, with a number {word:020} and é\n"));
    }
    text
}

/// Checks that `output` is grep `.`'s result for `text`: each line, numbered from 1, in order,
/// computed here from the text itself.
fn check(output: &[u8], text: &str) {
    let matches: Vec<Match> = serde_json::from_slice(output).expect("the result is JSON");
    let expected: Vec<&str> = text.lines().collect();
    assert_eq!(matches.len(), expected.len(), "one match per line");
    for (position, (found, line)) in matches.iter().zip(&expected).enumerate() {
        assert_eq!((found.line, found.text.as_str()), (position as u64 + 1, *line), "match {position}");
    }
}

/// The peak resident memory of a running process, from `/proc/PID/status` (bytes).
fn peak_memory(pid: u32) -> u64 {
    read_peak_memory(pid).expect("the process is running and reports VmHWM")
}

/// [`peak_memory`], or `None` once the process is gone.
fn read_peak_memory(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Runs `command` with its stdout written to `stdout`; answers whether it succeeded, its
/// stderr and its peak resident memory in bytes, read from `/proc/PID/status` (`VmHWM`, which
/// counts only the process since its `exec`) as it runs.
fn run_measured(command: Command, stdout: &Path) -> (bool, String, u64) {
    run_polling(command, stdout, |pid| vec![pid], Duration::from_millis(5))
}

/// The processes below `ancestor`, at any depth (a sandboxed executor's plugin process is a
/// grandchild of the `kiln exec` its parent started).
fn descendants_of(ancestor: u32) -> Vec<u32> {
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name, which is in parentheses and may hold spaces: state, parent.
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let pids: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| Some((pid, parent_of(pid)?)))
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![ancestor];
    let mut at = 0;
    while at < found.len() {
        let parent = found[at];
        found.extend(pids.iter().filter(|(_, p)| *p == parent).map(|(pid, _)| *pid));
        at += 1;
    }
    found.split_off(1)
}

/// Runs `command` with its stdout written to `stdout`, reading the peaks of its descendants
/// (its executors) as it runs; answers whether it succeeded, its stderr and the largest peak
/// seen in bytes.
fn run_measuring_descendants(command: Command, stdout: &Path) -> (bool, String, u64) {
    run_polling(command, stdout, descendants_of, Duration::from_millis(2))
}

/// Runs `command` with its stdout written to `stdout`, reading every `every` the peaks of the
/// processes `measured` names for its pid; answers whether it succeeded, its stderr and the
/// largest peak seen in bytes (the kernel's high-water mark only grows, so the last reading
/// of each process is its peak so far).
fn run_polling(
    mut command: Command,
    stdout: &Path,
    measured: impl Fn(u32) -> Vec<u32>,
    every: Duration,
) -> (bool, String, u64) {
    let stderr_path = stdout.with_extension("stderr");
    let mut child = command
        .stdout(File::create(stdout).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("kiln starts");
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        for pid in measured(child.id()) {
            peak = peak.max(read_peak_memory(pid).unwrap_or(0));
        }
        std::thread::sleep(every);
    };
    (status.success(), std::fs::read_to_string(&stderr_path).unwrap(), peak)
}

/// `kiln ARGS` against the cluster's controller, with its key and the lowered frame limit.
fn kiln(cluster: &Cluster, args: &[&str]) -> Command {
    let mut command = cluster::kiln_command();
    command
        .args(args)
        .arg("--controller")
        .arg(cluster.controller.addr.to_string())
        .arg("--api-key")
        .arg(cluster.api_key())
        .env("KILN_MAX_FRAME_BYTES", FRAME_BYTES.to_string());
    command
}

/// Submits `plugin` with `params` over `text` (as job `job`) and fetches the result again with
/// `kiln result`; answers the result and the peak memory of `kiln submit` and `kiln result`.
fn submit_measured(cluster: &Cluster, plugin: &str, params: &str, text: &str, job: u64) -> (Vec<u8>, u64, u64) {
    let input = write_input(cluster.dir.path(), &format!("input-{job}.txt"), text);
    let plugin = example(plugin);
    let plugin = if plugin.exists() { plugin } else { util::fixture("misbehave") };
    let args = ["submit", "--plugin", plugin.to_str().unwrap(), "--input", input.to_str().unwrap(), "--params", params];
    let submitted = cluster.dir.path().join(format!("submitted-{job}.json"));
    let (success, stderr, submit_peak) = run_measured(kiln(cluster, &args), &submitted);
    assert!(success, "kiln submit failed:\n{stderr}");
    let output = std::fs::read(&submitted).unwrap();
    let fetched = cluster.dir.path().join(format!("fetched-{job}.json"));
    let (success, stderr, result_peak) = run_measured(kiln(cluster, &["result", &job.to_string()]), &fetched);
    assert!(success, "kiln result failed:\n{stderr}");
    assert!(std::fs::read(&fetched).unwrap() == output, "kiln result gives the same result again");
    (output, submit_peak, result_peak)
}

/// Asserts that each process grew by less than `bound` bytes: `(name, before, after)`.
fn assert_grew_less_than(bound: u64, result_bytes: u64, peaks: &[(&str, u64, u64)]) {
    let mib = |bytes: u64| bytes >> 20;
    let shown: Vec<String> =
        peaks.iter().map(|(name, before, after)| format!("{name} {} -> {} MiB", mib(*before), mib(*after))).collect();
    eprintln!("a result of {} MiB; peaks: {}", mib(result_bytes), shown.join(", "));
    for (name, before, after) in peaks {
        assert!(
            after.saturating_sub(*before) < bound,
            "{name} grew from {} to {} MiB for a result of {} MiB",
            mib(*before),
            mib(*after),
            mib(result_bytes)
        );
    }
}

/// A cluster of one worker whose processes (and clients) use the lowered frame limit.
fn small_frames_cluster() -> Cluster {
    let frame = FRAME_BYTES.to_string();
    let cluster = Cluster::start_with_daemon_settings(1, &[], &[("KILN_MAX_FRAME_BYTES", frame.as_str())]);
    cluster.wait_workers(1);
    cluster
}

#[test]
fn grep_over_every_line_gives_a_result_many_frames_long_exactly_and_clients_stay_small() {
    let cluster = small_frames_cluster();
    // A job half as large first: the plugin is built, and each client's peak then is what it
    // needs anyway (the upload's pieces in flight, a few result pieces).
    let half = lines_text(260_000);
    let (first, half_submit, half_result) = submit_measured(&cluster, "grep", ".", &half, 1);
    check(&first, &half);
    drop((first, half));

    let text = lines_text(520_000);
    let (output, submit_peak, result_peak) = submit_measured(&cluster, "grep", ".", &text, 2);
    let result_bytes = output.len() as u64;
    assert!(result_bytes > 2 * FRAME_BYTES, "the result ({result_bytes} bytes) is several frames long");
    check(&output, &text);
    // Pieces are a few MiB: twice the input and result cost a client far less than the result
    // (what grows is the upload's pieces in flight).
    assert_grew_less_than(
        result_bytes / 2,
        result_bytes,
        &[("kiln submit", half_submit, submit_peak), ("kiln result", half_result, result_peak)],
    );
    eprintln!(
        "controller {} MiB, worker {} MiB",
        peak_memory(cluster.controller.pid()) >> 20,
        peak_memory(cluster.workers[0].pid()) >> 20
    );
}

#[test]
fn a_large_result_of_a_small_input_leaves_every_process_small() {
    let cluster = small_frames_cluster();
    let text = lines_text(1_000);
    let sum: usize = text.lines().map(str::len).sum();
    let expected = |pad: usize| format!(r#"{{"lines":1000,"sum":{sum},"pad":"{}"}}"#, "k".repeat(pad));
    let pad = 24 << 20;
    let (first, first_submit, first_result) = submit_measured(&cluster, "misbehave", &format!("pad={pad}"), &text, 1);
    assert!(String::from_utf8(first).unwrap().trim_end() == expected(pad), "the padded result, exact");
    let (controller_base, worker_base) = (peak_memory(cluster.controller.pid()), peak_memory(cluster.workers[0].pid()));

    // Four times the result: each process's peak stays where it was, give or take a few pieces.
    let pad = 96 << 20;
    let (output, submit_peak, result_peak) = submit_measured(&cluster, "misbehave", &format!("pad={pad}"), &text, 2);
    assert!(String::from_utf8(output).unwrap().trim_end() == expected(pad), "the padded result, exact");
    assert_grew_less_than(
        pad as u64 / 4,
        pad as u64,
        &[
            ("controller", controller_base, peak_memory(cluster.controller.pid())),
            ("worker", worker_base, peak_memory(cluster.workers[0].pid())),
            ("kiln submit", first_submit, submit_peak),
            ("kiln result", first_result, result_peak),
        ],
    );
}

#[test]
fn a_result_over_the_limit_fails_its_job_naming_its_size_and_the_flag() {
    let cluster = Cluster::start_with(1, &["--max-result-size", "1MiB"]);
    cluster.wait_workers(1);
    let text = lines_text(30_000);
    let input = write_input(cluster.dir.path(), "lines.txt", &text);
    let run = cluster.submit(&example("grep"), &input, &["--params", "."]);
    assert!(!run.success, "a 2 MiB result passed a 1 MiB limit: {}", run.stdout.len());
    assert!(
        run.stderr.contains("more than the 1 MiB allowed: raise the controller's --max-result-size"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("the result is ") && run.stderr.contains(" bytes), more than"), "{}", run.stderr);

    let local = run_local(&example("grep"), &input, &["--params", ".", "--max-result-size", "1MiB"]);
    assert!(!local.success, "run-local passed a 1 MiB limit");
    assert!(local.stderr.contains("more than the 1 MiB allowed: raise --max-result-size"), "{}", local.stderr);
    let local = run_local(&example("grep"), &input, &["--params", "."]);
    assert!(local.success, "{}", local.stderr);
    check(local.stdout.as_bytes(), &text);
}

#[test]
fn a_partial_too_large_for_an_answer_fails_its_chunk_with_a_clear_message() {
    let frame = FRAME_BYTES.to_string();
    let cluster = Cluster::start_with_daemon_settings(1, &[], &[("KILN_MAX_FRAME_BYTES", frame.as_str())]);
    cluster.wait_workers(1);
    // One 12 MiB chunk: its request fits in a 16 MiB frame, its partial (every line) not in
    // the 8 MiB an answer may carry.
    let text = lines_text(170_000);
    let input = write_input(cluster.dir.path(), "lines.txt", &text);
    let grep = example("grep");
    let args = ["submit", "--plugin", grep.to_str().unwrap(), "--input", input.to_str().unwrap()];
    let mut submit = kiln(&cluster, &args);
    submit.args(["--params", ".", "--chunk-size", "12MiB"]);
    let output = submit.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the job succeeded");
    assert!(stderr.contains("more than the 8 MiB one answer may carry"), "{stderr}");
    assert!(stderr.contains("smaller --chunk-size"), "{stderr}");
    let info = cluster.cluster_info();
    assert_eq!(info["workers"].as_array().map(Vec::len), Some(1), "no worker was lost: {info:#}");
}

#[test]
fn partials_too_large_to_combine_stay_apart_and_the_controller_stays_small() {
    // Default frames: a combine of a whole group would fit in one call.
    let cluster = Cluster::start_with(1, &[]);
    cluster.wait_workers(1);
    // Chunks of 96 KiB make combine groups of 256 chunks, 24 MiB of input: grep's partials of
    // every line of a group hold about 25 MiB, more than one combine may merge; those of a
    // few lines are tiny and are merged.
    let text = lines_text(800_000);
    let input = write_input(cluster.dir.path(), "lines.txt", &text);
    let grep = example("grep");
    // Answers the result, from stdout or from `--output`, and `kiln submit`'s peak memory.
    let submit = |pattern: &str, job: u64, to_file: bool| {
        let args = ["submit", "--plugin", grep.to_str().unwrap(), "--input", input.to_str().unwrap()];
        let mut command = cluster::kiln_command();
        command.args(args).args(["--params", pattern, "--chunk-size", "96KiB"]).args([
            "--controller",
            &cluster.controller.addr.to_string(),
            "--api-key",
            &cluster.api_key(),
        ]);
        let result = cluster.dir.path().join(format!("result-{job}.json"));
        let stdout = match to_file {
            true => {
                command.arg("--output").arg(&result);
                cluster.dir.path().join(format!("stdout-{job}.txt"))
            }
            false => result.clone(),
        };
        let (success, stderr, peak) = run_measured(command, &stdout);
        assert!(success, "kiln submit failed:\n{stderr}");
        (std::fs::read(&result).unwrap(), peak)
    };
    // The same input and chunks, ten matches: the upload, the chunks and the merges of small
    // partials cost the controller what they cost.
    let (few, few_submit) = submit("line 00000000", 1, false);
    let matches: Vec<Match> = serde_json::from_slice(&few).expect("the result is JSON");
    let lines: Vec<u64> = matches.iter().map(|found| found.line).collect();
    assert_eq!(lines, (1..=10).collect::<Vec<u64>>(), "lines 0 to 9 of the text, numbered from 1");
    let controller_base = peak_memory(cluster.controller.pid());

    let (output, submit_peak) = submit(".", 2, true);
    check(&output, &text);
    let result_bytes = output.len() as u64;
    assert!(result_bytes > 64 << 20, "a large result: {result_bytes} bytes");
    // Left apart, the partials pass through a few MiB at a time: the chunks' answers in flight
    // (now 4 MiB of matches each, not a few bytes), a page of partials for `aggregate`, a piece
    // of the result (8 MiB each); 48 to 63 MiB more when measured. Merging each group would
    // hold its 25 MiB of partials, the call, the merged partial and its answer at once: 259 MiB
    // more.
    assert_grew_less_than(
        128 << 20,
        result_bytes,
        &[("controller", controller_base, peak_memory(cluster.controller.pid()))],
    );
    // `kiln submit --output` writes each piece of the result as it comes: beyond the upload
    // both jobs made, a piece or two in flight (8 MiB each).
    assert_grew_less_than(24 << 20, result_bytes, &[("kiln submit --output", few_submit, submit_peak)]);
}

#[test]
fn the_executor_holds_an_aggregates_output_once_and_sends_its_json_in_pieces_as_it_is_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let text = lines_text(1_000);
    let sum: usize = text.lines().map(str::len).sum();
    let input = write_input(dir.path(), "lines.txt", &text);
    let plugin = util::fixture("misbehave");
    let executor_peak = |pad: usize| {
        let mut command = util::kiln();
        command.arg("run-local").arg("--plugin").arg(&plugin).arg("--input").arg(&input);
        command.args(["--processes", "1", "--params", &format!("pad={pad}")]);
        let stdout = dir.path().join(format!("pad-{pad}.json"));
        let (success, stderr, peak) = run_measuring_descendants(command, &stdout);
        assert!(success, "run-local failed:\n{stderr}");
        let output = std::fs::read_to_string(&stdout).unwrap();
        let expected = format!(r#"{{"lines":1000,"sum":{sum},"pad":"{}"}}"#, "k".repeat(pad));
        assert!(output.trim_end() == expected, "the padded result, exact");
        assert!(peak > 0, "the executor was seen");
        peak
    };
    let small = executor_peak(8 << 20);
    let large = executor_peak(72 << 20);
    // The output's padding grew by 64 MiB: the plugin's own `Output` holds it once, and its
    // JSON goes out in pieces as it is encoded. Encoded whole beside the value (as before API
    // 0.1.2), the executor grew by twice that.
    let grew = large.saturating_sub(small);
    eprintln!("executor {} -> {} MiB for 64 MiB more output", small >> 20, large >> 20);
    assert!(grew < 96 << 20, "the executor grew by {} MiB for 64 MiB more output", grew >> 20);
}

#[test]
fn a_streaming_aggregate_keeps_the_executor_small_whatever_the_results_size() {
    let cluster = small_frames_cluster();
    // A one-line job first: the plugin is built (cargo runs below the worker too).
    let (warm_up, _, _) = submit_measured(&cluster, "grep", ".", "one line\n", 1);
    check(&warm_up, "one line\n");

    let text = lines_text(1_500_000);
    let input = write_input(cluster.dir.path(), "lines.txt", &text);
    let grep = example("grep");
    let args = ["submit", "--plugin", grep.to_str().unwrap(), "--input", input.to_str().unwrap(), "--params", "."];
    let result = cluster.dir.path().join("result.json");
    let worker = cluster.workers[0].pid();
    let executors = |_submit: u32| descendants_of(worker);
    let (success, stderr, executor_peak) =
        run_polling(kiln(&cluster, &args), &result, executors, Duration::from_millis(2));
    assert!(success, "kiln submit failed:\n{stderr}");
    let output = std::fs::read(&result).unwrap();
    check(&output, &text);
    let result_bytes = output.len() as u64;
    assert!(result_bytes > 128 << 20, "a large result: {result_bytes} bytes");
    drop(output);

    // Run-local, the same way, with the cluster's chunks (it fits larger ones to a large input,
    // and the executor holds each running chunk and its partial): its last merges leave
    // partials apart as the controller does.
    let local = |input: &Path, name: &str| {
        let mut command = util::kiln();
        command.arg("run-local").arg("--plugin").arg(&grep).arg("--input").arg(input);
        command.args(["--processes", "2", "--chunk-size", "4MiB", "--params", "."]);
        let stdout = cluster.dir.path().join(name);
        let (success, stderr, peak) = run_measuring_descendants(command, &stdout);
        assert!(success, "run-local failed:\n{stderr}");
        (std::fs::read(&stdout).unwrap(), peak)
    };
    let one_line = write_input(cluster.dir.path(), "one.txt", "one line\n");
    check(&local(&one_line, "warm-up.json").0, "one line\n");
    let (output, local_peak) = local(&input, "local.json");
    assert!(output.len() as u64 == result_bytes, "run-local gives the cluster's result");
    check(&output, &text);

    // grep's `aggregate_into` writes each partial's matches as it is decoded: the executor holds
    // a partial or two (a chunk's matches decoded) beside what running the chunks took, however
    // many matches there are: 57 MiB on the cluster and 54 MiB in run-local for this 137 MiB
    // result when measured (53 MiB on the cluster for one of 36 MiB). Through `aggregate`
    // (`STREAMS_OUTPUT` false), which holds every match decoded and merged, 306 and 307 MiB;
    // run-local streaming but merging its partials into one per slot first, as it did, 568 MiB.
    let mib = |bytes: u64| bytes >> 20;
    eprintln!(
        "a result of {} MiB; executor peaks {} MiB (cluster), {} MiB (run-local)",
        mib(result_bytes),
        mib(executor_peak),
        mib(local_peak)
    );
    assert!(executor_peak < 96 << 20, "the cluster's executor peaked at {} MiB", mib(executor_peak));
    assert!(local_peak < 96 << 20, "run-local's executor peaked at {} MiB", mib(local_peak));
}
