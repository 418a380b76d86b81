//! Inputs read by reference (`file://`): the controller lists the objects and plans byte-range
//! splits, the workers read their own splits, and the result is what the same files give when
//! uploaded and what an independent computation here gives, with 1 and 3 workers and split
//! sizes that cut lines; the controller receives no input byte. A missing object, or a path the
//! controller may not read, fails the submission naming the input and leaves no job; an object
//! replaced during the job fails it clearly; a worker that cannot read the store fails its
//! chunks with the store's message and they are retried on another.

#[path = "util/by_reference.rs"]
mod by_reference;
#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use by_reference::{CHUNK, PATTERN, concatenated, grep_expected, metric, newest_status, objects, parsed, submit};
use cluster::{Cluster, Daemon, JOIN_TOKEN};
use serde_json::Value;
use util::{example, word_counts, word_text};

fn url_of(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// A cluster of `n_workers` whose controller reads `file://` inputs below `root` and serves
/// its metrics.
fn cluster(n_workers: usize, root: &Path) -> Cluster {
    let root = root.to_str().unwrap();
    Cluster::start_with(n_workers, &["--file-input-root", root, "--metrics-listen", "127.0.0.1:0"])
}

#[test]
fn a_prefix_read_by_reference_gives_what_its_files_give_uploaded_and_sends_no_byte_through_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = objects(&data);
    let expected = word_counts(&concatenated(&files));
    let prefix = url_of(&data);
    let expected_grep = grep_expected(&format!("{prefix}/"), &files);
    let mut uploaded = None;
    for n_workers in [1, 3] {
        let cluster = cluster(n_workers, dir.path());
        cluster.wait_workers(n_workers);
        let by_reference = parsed(&submit(&cluster, "wordcount", &prefix, &[]), "by reference");
        assert_eq!(by_reference, expected, "{n_workers} workers: same counts as computed here");
        // Its progress counts every line and byte, as an upload's does (`kiln status --json`).
        let status = newest_status(&cluster);
        let n_lines = files.iter().map(|(_, text)| text.lines().count() as u64).sum::<u64>();
        let n_bytes = files.iter().map(|(path, _)| std::fs::metadata(data.join(path)).unwrap().len()).sum::<u64>();
        assert_eq!(status["lines_done"], n_lines, "{n_workers} workers: {status:#}");
        assert_eq!((&status["bytes_done"], &status["bytes_total"]), (&n_bytes.into(), &n_bytes.into()), "{status:#}");
        let upload = uploaded
            .get_or_insert_with(|| parsed(&submit(&cluster, "wordcount", data.to_str().unwrap(), &[]), "uploaded"));
        assert_eq!(&by_reference, upload, "same counts as the same files uploaded");
        // grep declares LINE_NUMBERS: chunks in the middle of an object get their true numbers.
        let grep = parsed(&submit(&cluster, "grep", &prefix, &["--params", PATTERN]), "grep by reference");
        assert_eq!(grep, expected_grep, "{n_workers} workers: every match with its object and line");
        if n_workers == 1 {
            let uploaded_grep = submit(&cluster, "grep", data.to_str().unwrap(), &["--params", PATTERN]);
            let uploaded_grep = parsed(&uploaded_grep, "grep uploaded").to_string();
            assert_eq!(uploaded_grep.replace(data.to_str().unwrap(), &prefix), grep.to_string(), "same as uploaded");
        }

        let controller = &cluster.controller;
        let received = metric(controller, "kiln_controller_input_bytes_total{source=\"upload\"}");
        if n_workers == 1 {
            // The uploaded run above counted its bytes: the counter is there.
            assert!(received.is_some_and(|bytes| bytes > 0.0), "{received:?}");
        } else {
            assert_eq!(received, None, "no input byte reached the controller");
        }
        let jobs = parsed(&cluster.kiln(&["jobs", "--json"]), "jobs");
        let job = &jobs[jobs.as_array().unwrap().len() - 1];
        let status = cluster.status(job["id"].as_u64().unwrap());
        assert!(status["n_chunks"].as_u64().unwrap() > 8, "splits cut the files: {status:#}");
    }
}

#[test]
fn a_missing_object_or_a_path_the_controller_may_not_read_fails_the_submission_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("words.txt"), word_text(25, 100)).unwrap();
    let outside = dir.path().join("secret.txt");
    std::fs::write(&outside, "not for jobs\n").unwrap();
    let cluster = cluster(1, &root);

    let missing = url_of(&root.join("missing.txt"));
    let run = submit(&cluster, "wordcount", &missing, &[]);
    assert!(!run.success, "a missing object fails the submission");
    assert!(run.stderr.contains(&format!("cannot read the input {missing}")), "{}", run.stderr);

    let empty_prefix = root.join("empty");
    std::fs::create_dir_all(&empty_prefix).unwrap();
    let run = submit(&cluster, "wordcount", &url_of(&empty_prefix), &[]);
    assert!(run.stderr.contains("names no object"), "{}", run.stderr);

    let escape = format!("{}/../secret.txt", url_of(&root));
    let run = submit(&cluster, "wordcount", &escape, &[]);
    assert!(!run.success, "a path outside the roots is refused");
    assert!(run.stderr.contains("outside the directories this controller reads (--file-input-root)"), "{}", run.stderr);

    let run = submit(&cluster, "wordcount", &url_of(&root.join("words.txt")), &["--input", outside.to_str().unwrap()]);
    assert!(run.stderr.contains("is a file: submit them as two jobs"), "{}", run.stderr);

    let jobs = parsed(&cluster.kiln(&["jobs", "--json"]), "jobs");
    assert_eq!(jobs, Value::Array(Vec::new()), "no job was created");
}

#[test]
fn an_object_replaced_during_the_job_fails_it_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("words.txt");
    std::fs::write(&file, word_text(26, 3_000)).unwrap();
    // No worker yet: the job waits with its objects listed.
    let mut cluster = cluster(0, dir.path());
    let plugin = example("wordcount");
    let url = url_of(&file);
    let args = ["submit", "--plugin", plugin.to_str().unwrap(), "--input", &url, "--chunk-size", CHUNK, "--detach"];
    let run = cluster.kiln(&args);
    assert!(run.success, "{}", run.stderr);
    let job: u64 = run.stdout.trim().parse().unwrap();

    let replacement = dir.path().join("new.txt");
    std::fs::write(&replacement, word_text(27, 2_000)).unwrap();
    std::fs::rename(&replacement, &file).unwrap();
    cluster.add_worker(2);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Failed", "{status:#}");
    let message = status["failure"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("the input object {url} changed during the job")), "{message}");
}

#[test]
fn a_worker_that_cannot_read_the_store_has_its_chunks_retried_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = objects(&data);
    let mut cluster = cluster(0, dir.path());
    // A worker in a mount namespace of its own, where an empty tmpfs hides the data: every
    // read it makes fails as a store's read fails when the store is out of reach.
    let worker = cluster.joining_worker(JOIN_TOKEN, 2);
    let mut blind = Command::new("unshare");
    blind
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(&data)
        .arg(worker.get_program())
        .args(worker.get_args());
    for (key, value) in worker.get_envs() {
        match value {
            Some(value) => blind.env(key, value),
            None => blind.env_remove(key),
        };
    }
    cluster.workers.push(Daemon::start(blind));
    cluster.add_worker(2);
    cluster.wait_workers(2);
    // The same files uploaded first, so that both workers build the plugin. The two builds take
    // turns on the host's build lock, and the first builder may finish this small job alone:
    // wait until the blind worker has built it too, so that it takes part in the next jobs
    // rather than building while the reading worker runs all their chunks.
    let warm_up = submit(&cluster, "wordcount", data.to_str().unwrap(), &[]);
    assert_eq!(parsed(&warm_up, "uploaded"), word_counts(&concatenated(&files)));
    let deadline = Instant::now() + Duration::from_secs(300);
    while !cluster.workers[0].stderr().contains("built plugin") {
        assert!(Instant::now() < deadline, "the blind worker never built the plugin: {}", cluster.workers[0].stderr());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Which worker gets which chunk is the scheduler's choice: the reading worker may finish
    // every chunk before the blind one asks for any. Each run must be exact; some run within a
    // few must have sent chunks to the blind worker and retried them.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let run = submit(&cluster, "wordcount", &url_of(&data), &["--processes", "2"]);
        assert_eq!(
            parsed(&run, "wordcount"),
            word_counts(&concatenated(&files)),
            "every chunk ran, on the worker that reads"
        );
        let jobs = parsed(&cluster.kiln(&["jobs", "--json"]), "jobs");
        let newest = jobs.as_array().unwrap().iter().filter_map(|job| job["id"].as_u64()).max().unwrap();
        let status = cluster.status(newest);
        let retried = status["retries"].as_u64().unwrap() > 0;
        statuses.push(status);
        if retried {
            break;
        }
    }
    let retried = statuses.last().is_some_and(|status| status["retries"].as_u64().unwrap() > 0);
    assert!(
        retried,
        "the blind worker's chunks were retried in some run: {statuses:#?}\nthe blind worker said: {}",
        cluster.workers[0].stderr()
    );
    let said = cluster.workers[0].stderr();
    assert!(said.contains("cannot read a chunk by reference") && said.contains("not found"), "{said}");
}

/// A process's peak resident memory, from `/proc/PID/status`.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
}

#[test]
fn a_large_compressed_object_is_streamed_in_chunks_and_the_worker_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    // A block of words 64 times over (about 1 MiB), gzipped once and written 240 times as
    // members of one gzip file, as pigz writes them: some 230 MiB of text in 22 MiB.
    let block = word_text(31, 330);
    let (repeats, n_members) = (64, 240);
    let member = by_reference::gzip(&block.repeat(repeats));
    let object = dir.path().join("big.gz");
    let mut file = std::fs::File::create(&object).unwrap();
    for _ in 0..n_members {
        std::io::Write::write_all(&mut file, &member).unwrap();
    }
    drop(file);
    let times = (repeats * n_members) as u64;
    let text_bytes = block.len() as u64 * times;
    let expected: Value = word_counts(&block)
        .as_object()
        .unwrap()
        .iter()
        .map(|(word, n)| (word.clone(), Value::from(n.as_u64().unwrap() * times)))
        .collect();
    let cluster = cluster(1, dir.path());
    cluster.wait_workers(1);
    let plugin = example("wordcount");
    let submit_url = |url: &str| {
        cluster.kiln(&["submit", "--plugin", plugin.to_str().unwrap(), "--input", url, "--chunk-size", "1MiB"])
    };
    // A small job first, so the worker has built the plugin and started its executor.
    let small = dir.path().join("small.txt");
    std::fs::write(&small, &block).unwrap();
    assert_eq!(parsed(&submit_url(&url_of(&small)), "small"), word_counts(&block));
    let worker = cluster.workers[0].pid();
    let before = peak_memory(worker);

    let run = submit_url(&url_of(&object));
    assert_eq!(parsed(&run, "the compressed object"), expected, "the counts of every copy of the block");
    let after = peak_memory(worker);
    eprintln!(
        "worker peak {} -> {} MiB for {} MiB of text ({} KiB compressed)",
        before >> 20,
        after >> 20,
        text_bytes >> 20,
        std::fs::metadata(&object).unwrap().len() >> 10
    );
    // A few chunks of 1 MiB at a time, with a generous margin: far from the object's size.
    assert!(
        after.saturating_sub(before) < 48 << 20,
        "the worker grew from {} to {} MiB for an object of {} MiB",
        before >> 20,
        after >> 20,
        text_bytes >> 20
    );
    let status = newest_status(&cluster);
    assert_eq!(status["lines_done"], block.lines().count() as u64 * times, "{status:#}");
}

#[test]
fn bad_compressed_data_read_by_reference_fails_the_job_naming_the_object_and_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = by_reference::gzip(&word_text(32, 5_000));
    let middle = bytes.len() / 2;
    bytes[middle..].iter_mut().for_each(|b| *b = !*b);
    let broken = dir.path().join("broken.gz");
    std::fs::write(&broken, &bytes).unwrap();
    let cluster = cluster(1, dir.path());
    cluster.wait_workers(1);
    let run = submit(&cluster, "wordcount", &url_of(&broken), &[]);
    assert!(!run.success, "a broken gzip object fails the job");
    let said = format!("input file {}: bad gzip data at byte ", url_of(&broken));
    assert!(run.stderr.contains(&said), "{}", run.stderr);
    assert_eq!(newest_status(&cluster)["state"], "Failed");
}

#[test]
fn an_input_read_by_reference_without_a_chunk_size_is_cut_into_about_four_splits_per_slot() {
    // Fitted like run-local's chunks (ARCHITECTURE.md, "inputs read by reference size their
    // chunks"): one worker of 2 processes makes 2 slots, so about 8 splits, where the upload
    // default of 4 MiB would make 10 or more of a 40 MiB object.
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut seed = 0;
    while text.len() < 40 << 20 {
        text.push_str(&word_text(seed, 20_000));
        seed += 1;
    }
    let path = dir.path().join("words.txt");
    std::fs::write(&path, &text).unwrap();
    let cluster = cluster(1, dir.path());
    cluster.wait_workers(1);
    let plugin = example("wordcount");
    let run = cluster.kiln(&["submit", "--plugin", plugin.to_str().unwrap(), "--input", &url_of(&path)]);
    assert_eq!(parsed(&run, "by reference"), word_counts(&text), "same counts as computed here");
    let status = newest_status(&cluster);
    let n_chunks = status["n_chunks"].as_u64().unwrap();
    assert!((8..=9).contains(&n_chunks), "{} bytes in {n_chunks} splits: {status:#}", text.len());
}
