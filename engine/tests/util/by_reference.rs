//! Helpers of the tests of inputs read by reference (`file://`, `s3://`, `http(s)://`): a
//! directory of plain, gzip, zstd and empty files, what word count and grep must answer for
//! it (computed here, independently of Kiln), submitting with small splits, and the metrics a
//! daemon serves. Used as `#[path = "util/by_reference.rs"] mod by_reference;` beside `mod
//! util;` and `mod cluster;`.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use serde_json::{Value, json};

use crate::cluster::{Cluster, Daemon};
use crate::util::{Run, example, word_text};

/// Small splits, so that every file makes several and most cut a line.
pub const CHUNK: &str = "7KiB";

/// The grep example's pattern: matches lines in many chunks of [`objects`].
pub const PATTERN: &str = r"^Word0\b|日本14 |w4[0-2]$";

pub fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

/// A directory of plain, gzip, zstd and empty files, one without a final newline, and a hidden
/// file a prefix leaves out; answers the files it takes, in path order: path and plain text.
pub fn objects(dir: &Path) -> Vec<(&'static str, String)> {
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
pub fn concatenated(files: &[(&str, String)]) -> String {
    files
        .iter()
        .filter(|(_, text)| !text.is_empty())
        .map(|(_, text)| format!("{}\n", text.trim_end_matches('\n')))
        .collect()
}

/// What grep finds in the files (named `prefix` + path), computed here: each match with its
/// file's name and its line within that file.
pub fn grep_expected(prefix: &str, files: &[(&str, String)]) -> Value {
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

/// `kiln submit` of an example plugin over `inputs` (each given with `--input`), in
/// [`CHUNK`] splits.
pub fn submit_inputs(cluster: &Cluster, plugin: &str, inputs: &[&str], extra: &[&str]) -> Run {
    let plugin = example(plugin);
    let mut args = vec!["submit", "--plugin", plugin.to_str().unwrap(), "--chunk-size", CHUNK];
    for input in inputs {
        args.extend_from_slice(&["--input", input]);
    }
    args.extend_from_slice(extra);
    cluster.kiln(&args)
}

/// `kiln submit` of an example plugin over one input, in [`CHUNK`] splits.
pub fn submit(cluster: &Cluster, plugin: &str, input: &str, extra: &[&str]) -> Run {
    submit_inputs(cluster, plugin, &[input], extra)
}

pub fn parsed(run: &Run, what: &str) -> Value {
    assert!(run.success, "{what} failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{what}: output is not JSON ({e}): {}", run.stdout))
}

/// The address a daemon printed for its metrics, and one sample of a scrape of it.
pub fn metric(daemon: &Daemon, series: &str) -> Option<f64> {
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

/// The controller's count of input bytes it received (uploads); `None` when it received none.
pub fn bytes_received(cluster: &Cluster) -> Option<f64> {
    metric(&cluster.controller, "kiln_controller_input_bytes_total{source=\"upload\"}")
}

/// The newest job's status.
pub fn newest_status(cluster: &Cluster) -> Value {
    let jobs = parsed(&cluster.kiln(&["jobs", "--json"]), "jobs");
    let newest = jobs.as_array().unwrap().iter().filter_map(|job| job["id"].as_u64()).max().expect("a job");
    cluster.status(newest)
}
