//! Inputs read by reference (`file://`): the controller lists the objects and plans byte-range
//! splits, the workers read their own splits, and the result is what the same files give when
//! uploaded and what an independent computation here gives, with 1 and 3 workers and split
//! sizes that cut lines; the controller receives no input byte. A missing object, or a path the
//! controller may not read, fails the submission naming the input and leaves no job; an object
//! replaced during the job fails it clearly; a worker that cannot read the store fails its
//! chunks with the store's message and they are retried on another.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Cluster, Daemon, JOIN_TOKEN};
use serde_json::{Value, json};
use util::{Run, example, word_counts, word_text};

/// Small splits, so that every file makes several and most cut a line.
const CHUNK: &str = "7KiB";

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// A directory of plain, gzip, zstd and empty files, one without a final newline, and a hidden
/// file a prefix leaves out; answers the files it takes, in path order: path and plain text.
fn objects(dir: &Path) -> Vec<(&'static str, String)> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let a = word_text(21, 2_000);
    let b = word_text(22, 1_500);
    let c = word_text(23, 900);
    let d = word_text(24, 1_200).trim_end().to_owned();
    std::fs::write(dir.join("a.txt"), &a).unwrap();
    std::fs::write(dir.join("b.log"), gzip(&b)).unwrap();
    std::fs::write(dir.join("c.empty"), "").unwrap();
    std::fs::write(dir.join("sub/c.zst"), zstd::encode_all(c.as_bytes(), 3).unwrap()).unwrap();
    std::fs::write(dir.join("sub/d.txt"), &d).unwrap();
    std::fs::write(dir.join(".hidden"), "never read\n").unwrap();
    vec![("a.txt", a), ("b.log", b), ("c.empty", String::new()), ("sub/c.zst", c), ("sub/d.txt", d)]
}

/// The files' text one after another; a file ends its last line (lines never join across
/// files).
fn concatenated(files: &[(&str, String)]) -> String {
    files
        .iter()
        .filter(|(_, text)| !text.is_empty())
        .map(|(_, text)| format!("{}\n", text.trim_end_matches('\n')))
        .collect()
}

const PATTERN: &str = r"^Word0\b|日本14 |w4[0-2]$";

/// What grep finds in the files (named `prefix` + path), computed here: each match with its
/// file's name and its line within that file.
fn grep_expected(prefix: &str, files: &[(&str, String)]) -> Value {
    let regex = regex::Regex::new(PATTERN).unwrap();
    let mut matches = Vec::new();
    for (path, text) in files {
        for (i, line) in text.lines().enumerate() {
            if regex.is_match(line) {
                matches.push(json!({"file": format!("{prefix}{path}"), "line": i + 1, "text": line}));
            }
        }
    }
    assert!(matches.len() > 20, "the pattern matches lines in many chunks");
    Value::from(matches)
}

fn url_of(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn submit(cluster: &Cluster, plugin: &str, input: &str, extra: &[&str]) -> Run {
    let plugin = example(plugin);
    let mut args = vec!["submit", "--plugin", plugin.to_str().unwrap(), "--input", input, "--chunk-size", CHUNK];
    args.extend_from_slice(extra);
    cluster.kiln(&args)
}

fn parsed(run: &Run, what: &str) -> Value {
    assert!(run.success, "{what} failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{what}: output is not JSON ({e}): {}", run.stdout))
}

/// The address a daemon printed for its metrics, and one sample of a scrape of it.
fn metric(daemon: &Daemon, series: &str) -> Option<f64> {
    let stderr = daemon.stderr();
    let addr: SocketAddr = stderr
        .lines()
        .find_map(|line| line.strip_prefix("metrics on http://"))
        .and_then(|line| line.trim_end_matches("/metrics").parse().ok())
        .unwrap_or_else(|| panic!("the daemon printed no metrics address:\n{stderr}"));
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(stream, "GET /metrics HTTP/1.1\r\nhost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
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
