//! Inputs read by reference from real servers the tests start: an S3-compatible store (moto's
//! standalone server, with authentication on) and an HTTP server with range support
//! (`util/range_server.rs`). Word count and grep over several objects, one gzip- and one
//! zstd-compressed, give what the same files give uploaded and what an independent computation
//! here gives, with 1 and 3 workers and splits that cut lines; the controller receives no input
//! byte. An S3 object replaced during the job fails it clearly; wrong credentials, a missing
//! key, an HTTP prefix its server cannot list and a URL outside the operator's allow-list fail
//! the submission naming the input, and leave no job.

#[path = "util/by_reference.rs"]
mod by_reference;
#[path = "util/cluster.rs"]
mod cluster;
#[path = "util/moto.rs"]
mod moto;
#[path = "util/range_server.rs"]
mod range_server;
mod util;

use std::path::Path;

use by_reference::{
    PATTERN, bytes_received, concatenated, grep_expected, newest_status, objects, parsed, submit, submit_inputs,
};
use cluster::Cluster;
use moto::Moto;
use range_server::RangeServer;
use serde_json::Value;
use util::{example, word_counts, word_text};

const BUCKET: &str = "kiln-data";

/// Runs word count and grep over `inputs` read by reference on clusters of 1 and 3 workers
/// (`cluster(n)`), and checks them against the computation here, against the same files
/// uploaded from `data`, and that no input byte reached the controller. `names` is the prefix
/// of the objects' names as grep reports them.
fn check_by_reference(
    cluster: impl Fn(usize) -> Cluster,
    inputs: &[&str],
    names: &str,
    data: &Path,
    files: &[(&str, String)],
) {
    let expected = word_counts(&concatenated(files));
    let expected_grep = grep_expected(names, files);
    for n_workers in [1, 3] {
        let cluster = cluster(n_workers);
        cluster.wait_workers(n_workers);
        let counts = parsed(&submit_inputs(&cluster, "wordcount", inputs, &[]), "word count by reference");
        assert_eq!(counts, expected, "{n_workers} workers: the counts computed here");
        let status = newest_status(&cluster);
        assert!(status["n_chunks"].as_u64().unwrap() > 8, "splits cut the objects: {status:#}");
        // grep declares LINE_NUMBERS: chunks in the middle of an object get their true numbers.
        let grep = submit_inputs(&cluster, "grep", inputs, &["--params", PATTERN]);
        assert_eq!(parsed(&grep, "grep by reference"), expected_grep, "{n_workers} workers: matches, objects, lines");
        assert_eq!(bytes_received(&cluster), None, "{n_workers} workers: no input byte reached the controller");
        if n_workers == 1 {
            let uploaded = parsed(&submit(&cluster, "wordcount", data.to_str().unwrap(), &[]), "uploaded");
            assert_eq!(counts, uploaded, "the same as the same files uploaded");
            assert!(bytes_received(&cluster).is_some_and(|bytes| bytes > 0.0), "the upload is counted");
        }
    }
}

fn s3_cluster(n_workers: usize, moto: &Moto, secret: &str) -> Cluster {
    let env = moto.env(secret);
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
    let flags = ["--input-url-allow", "s3://kiln-data", "--input-url-allow", "s3://absent-bucket/", "--metrics-listen"];
    let mut flags = flags.to_vec();
    flags.push("127.0.0.1:0");
    Cluster::start_with_env(n_workers, &flags, &env)
}

#[test]
fn a_prefix_in_s3_gives_what_its_files_give_uploaded_and_sends_no_byte_through_the_controller() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = objects(&data);
    moto.put(BUCKET, &data, "data/");
    let prefix = format!("s3://{BUCKET}/data");
    check_by_reference(|n| s3_cluster(n, &moto, &moto.secret), &[&prefix], &format!("{prefix}/"), &data, &files);
}

#[test]
fn objects_of_an_http_server_with_ranges_give_what_their_files_give_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = objects(&data);
    let server = RangeServer::start(dir.path());
    // A server without WebDAV cannot list: each object is named.
    let urls: Vec<String> = files.iter().map(|(path, _)| server.url(&format!("data/{path}"))).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let allow = server.url("data/");
    let cluster = |n| Cluster::start_with(n, &["--input-url-allow", &allow, "--metrics-listen", "127.0.0.1:0"]);
    check_by_reference(cluster, &urls, &server.url("data/"), &data, &files);
    assert!(server.range_requests() > 8, "the workers read byte ranges");
}

#[test]
fn an_s3_object_replaced_during_the_job_fails_it_clearly() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (before, after) = (dir.path().join("before"), dir.path().join("after"));
    std::fs::create_dir_all(&before).unwrap();
    std::fs::create_dir_all(&after).unwrap();
    std::fs::write(before.join("words.txt"), word_text(26, 3_000)).unwrap();
    std::fs::write(after.join("words.txt"), word_text(27, 2_000)).unwrap();
    moto.put(BUCKET, &before, "one/");
    // No worker yet: the job waits with its objects listed.
    let mut cluster = s3_cluster(0, &moto, &moto.secret);
    let plugin = example("wordcount");
    let url = format!("s3://{BUCKET}/one/words.txt");
    let args = ["submit", "--plugin", plugin.to_str().unwrap(), "--input", &url, "--chunk-size", "7KiB", "--detach"];
    let run = cluster.kiln(&args);
    assert!(run.success, "{}", run.stderr);
    let job: u64 = run.stdout.trim().parse().unwrap();

    moto.put(BUCKET, &after, "one/");
    cluster.add_worker(2);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Failed", "{status:#}");
    let message = status["failure"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("the input object {url} changed during the job")), "{message}");
}

fn refused(run: &util::Run, what: &str, says: &str) {
    assert!(!run.success, "{what} is refused");
    assert!(run.stderr.contains(says), "{what}: {}", run.stderr);
}

/// A bucket holding `data/words.txt`, in a directory of the test whose `data/` holds it too.
fn one_object(moto: &Moto) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("words.txt"), word_text(25, 100)).unwrap();
    moto.put(BUCKET, &data, "data/");
    dir
}

#[test]
fn wrong_credentials_fail_the_submission_naming_the_input() {
    let Some(moto) = Moto::start_authenticating() else { return };
    let _dir = one_object(&moto);
    let url = format!("s3://{BUCKET}/data/words.txt");
    let right = s3_cluster(0, &moto, &moto.secret);
    let run = submit(&right, "wordcount", &url, &["--detach"]);
    assert!(run.success, "the right key reads the object: {}", run.stderr);

    let wrong = s3_cluster(0, &moto, "not-the-secret");
    refused(&submit(&wrong, "wordcount", &url, &[]), "a wrong secret", &format!("cannot read the input {url}"));
    let jobs = parsed(&wrong.kiln(&["jobs", "--json"]), "jobs");
    assert_eq!(jobs, Value::Array(Vec::new()), "no job was created");
}

#[test]
fn missing_objects_and_urls_outside_the_allow_list_fail_before_any_job_exists() {
    let Some(moto) = Moto::start() else { return };
    let dir = one_object(&moto);
    let server = RangeServer::start(dir.path());
    let url = format!("s3://{BUCKET}/data/words.txt");

    let cluster = s3_cluster(0, &moto, &moto.secret);
    let missing = format!("s3://{BUCKET}/data/missing.txt");
    refused(
        &submit(&cluster, "wordcount", &missing, &[]),
        "a missing key",
        &format!("the input {missing} names no object"),
    );
    let absent = "s3://absent-bucket/data";
    refused(
        &submit(&cluster, "wordcount", absent, &[]),
        "a missing bucket",
        &format!("cannot read the input {absent}"),
    );
    let outside = format!("s3://{BUCKET}-private/data");
    refused(
        &submit(&cluster, "wordcount", &outside, &[]),
        "another bucket",
        "below no prefix this controller reads (--input-url-allow)",
    );
    let metadata = "http://169.254.169.254/latest/meta-data/";
    refused(&submit(&cluster, "wordcount", metadata, &[]), "an internal URL", "below no prefix");
    let with_key = format!("s3://AKIDEXAMPLE:hunter2@{BUCKET}/data/words.txt");
    let run = submit(&cluster, "wordcount", &with_key, &[]);
    refused(&run, "a URL with credentials", "carries credentials");
    assert!(!run.stderr.contains("hunter2"), "the secret is not echoed: {}", run.stderr);
    let jobs = parsed(&cluster.kiln(&["jobs", "--json"]), "jobs");
    assert_eq!(jobs, Value::Array(Vec::new()), "no job was created");

    // A controller the operator gave no allow-list reads no URL at all.
    let closed = Cluster::start(0);
    refused(&submit(&closed, "wordcount", &url, &[]), "an s3:// URL", "start it with --input-url-allow PREFIX");
    refused(&submit(&closed, "wordcount", &server.url("data/words.txt"), &[]), "an http:// URL", "--input-url-allow");

    // An HTTP server without WebDAV cannot list a prefix.
    let http = Cluster::start_with(0, &["--input-url-allow", &server.url("")]);
    let prefix = server.url("data/");
    refused(
        &submit(&http, "wordcount", &prefix, &[]),
        "an HTTP prefix",
        &format!("the input {prefix} names no object"),
    );
    let missing = server.url("data/missing.txt");
    refused(&submit(&http, "wordcount", &missing, &[]), "a missing HTTP object", &format!("the input {missing}"));
    for cluster in [&closed, &http] {
        let jobs = parsed(&cluster.kiln(&["jobs", "--json"]), "jobs");
        assert_eq!(jobs, Value::Array(Vec::new()), "no job was created");
    }
}
