//! What an operator sees of a running cluster: JSON log lines that carry the job on its chunk
//! events, and `/metrics` endpoints on the controller and the workers whose figures match the
//! job's own status.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use cluster::{Cluster, Daemon};
use serde_json::Value;
use util::{example, word_counts, word_text, write_input};

/// Small chunks, so that a test input of a few hundred KiB makes dozens of chunks.
const CHUNK: &str = "16KiB";

/// The address a daemon printed for its metrics (`metrics on http://ADDR/metrics`).
fn metrics_addr(daemon: &Daemon) -> SocketAddr {
    let stderr = daemon.stderr();
    let line = stderr
        .lines()
        .find_map(|line| line.strip_prefix("metrics on http://"))
        .unwrap_or_else(|| panic!("the daemon printed no metrics address:\n{stderr}"));
    line.trim_end_matches("/metrics").parse().expect("an address")
}

/// `GET path` over HTTP/1.1: the status line and the body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` (exactly as exposed, labels sorted as registered)
/// in a scrape; `None` when absent.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Fails unless every metric family of the scrape is named in `docs/metrics.md` (counters with
/// their `_total`), and every metric the Grafana dashboard queries is one of them.
fn assert_documented(scrape: &str) {
    let docs = std::fs::read_to_string(util::repo_root().join("docs/metrics.md")).expect("docs/metrics.md");
    for line in scrape.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').expect("a TYPE line");
        let shown = if kind == "counter" { format!("`{name}_total`") } else { format!("`{name}`") };
        assert!(docs.contains(&shown), "docs/metrics.md does not document {shown}");
    }
    let dashboard = std::fs::read_to_string(util::repo_root().join("deploy/grafana/kiln-cluster.json"))
        .expect("the Grafana dashboard");
    let _: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let names = regex::Regex::new(r"\b(?:kiln|process)_[a-z_]+").expect("a regex");
    for name in names.find_iter(&dashboard).map(|m| m.as_str()) {
        let base = name.trim_end_matches("_bucket");
        assert!(docs.contains(&format!("`{base}`")), "the dashboard queries {name}, which docs/metrics.md lacks");
    }
}

#[test]
fn json_log_lines_parse_and_carry_the_job_on_its_chunk_events() {
    let cluster = Cluster::start_with_daemon_settings(
        1,
        &["--log-format", "json"],
        &[("RUST_LOG", "info,kiln_engine::controller=debug,kiln_engine::worker=debug")],
    );
    cluster.wait_workers(1);
    let text = word_text(5, 6_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let job = cluster.submit_detached(&example("wordcount"), &input, &["--chunk-size", CHUNK]);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    assert_eq!(cluster.result(job), word_counts(&text));
    let n_chunks = status["n_chunks"].as_u64().expect("n_chunks");
    assert!(n_chunks > 3, "the input spans several chunks");

    for (who, daemon) in [("controller", &cluster.controller), ("worker", &cluster.workers[0])] {
        let stderr = daemon.stderr();
        // The daemons' own lines for people (`listening on`, the CA fingerprint) are not logs.
        let logs: Vec<Value> = stderr
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {line}")))
            .collect();
        assert!(logs.len() > 5, "{who} logged in JSON:\n{stderr}");
        for log in &logs {
            assert!(log["timestamp"].is_string() && log["level"].is_string(), "{who}: {log}");
            assert!(log["fields"].is_object(), "{who}: {log}");
        }
        // Every event inside a call's span names the job in the span, whatever the event.
        let in_calls: Vec<&Value> =
            logs.iter().filter(|log| log["span"]["name"] == "call" || log["span"]["name"] == "run_chunks").collect();
        assert!(!in_calls.is_empty(), "{who} logged events inside calls:\n{stderr}");
        for log in &in_calls {
            assert_eq!(log["span"]["job"].as_u64(), Some(job), "{who}: {log}");
        }
        if who == "controller" {
            let done: Vec<&&Value> = in_calls.iter().filter(|log| log["fields"]["message"] == "chunk done").collect();
            assert_eq!(done.len() as u64, n_chunks, "one event per chunk done:\n{stderr}");
            for log in done {
                assert_eq!(log["fields"]["job"].as_u64(), Some(job), "{log}");
                assert_eq!(log["span"]["owner"], "cli", "{log}");
                assert!(log["fields"]["chunk"].as_u64().is_some_and(|chunk| chunk < n_chunks), "{log}");
            }
        }
    }
}

#[test]
fn the_controller_and_worker_metrics_count_what_the_job_status_says() {
    let cluster = Cluster::start_with_daemon_settings(2, &["--metrics-listen", "127.0.0.1:0"], &[]);
    cluster.wait_workers(2);
    let controller = metrics_addr(&cluster.controller);
    let workers: Vec<SocketAddr> = cluster.workers.iter().map(metrics_addr).collect();

    let (status_line, scrape) = http_get(controller, "/metrics");
    assert!(status_line.ends_with("200 OK"), "{status_line}");
    assert_eq!(sample(&scrape, "kiln_controller_workers_live"), Some(2.0), "{scrape}");
    assert_eq!(sample(&scrape, "kiln_controller_jobs{state=\"running\"}"), Some(0.0), "{scrape}");
    assert!(sample(&scrape, "process_resident_memory_bytes").is_some_and(|bytes| bytes > 1e6), "{scrape}");
    assert!(scrape.ends_with("# EOF\n"), "the OpenMetrics text ends with # EOF");
    let (status_line, _) = http_get(controller, "/other");
    assert!(status_line.ends_with("404 Not Found"), "{status_line}");

    let text = word_text(8, 8_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let job = cluster.submit_detached(&example("wordcount"), &input, &["--chunk-size", CHUNK]);
    let status = cluster.wait_ended(job);
    assert_eq!(status["state"], "Succeeded", "{status:#}");
    let n_chunks = status["n_chunks"].as_u64().expect("n_chunks") as f64;

    let (_, scrape) = http_get(controller, "/metrics");
    assert_eq!(sample(&scrape, "kiln_controller_chunks_done_total"), Some(n_chunks), "{scrape}");
    assert_eq!(sample(&scrape, "kiln_controller_jobs{state=\"succeeded\"}"), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, "kiln_controller_input_bytes_total{source=\"upload\"}"), Some(text.len() as f64));
    assert_eq!(sample(&scrape, "kiln_controller_input_done_bytes_total"), Some(text.len() as f64), "{scrape}");
    assert_eq!(
        sample(&scrape, "kiln_controller_rpc_calls_total{method=\"create_job\",outcome=\"ok\"}"),
        Some(1.0),
        "{scrape}"
    );
    assert!(sample(&scrape, "kiln_controller_chunk_seconds_count").is_some_and(|n| n >= n_chunks), "{scrape}");
    assert_documented(&scrape);

    // The workers together ran every chunk at least once (a speculative copy may run one twice).
    let mut chunks_on_workers = 0.0;
    let (mut starts, mut prepared) = (0.0, 0.0);
    for worker in workers {
        let (_, scrape) = http_get(worker, "/metrics");
        chunks_on_workers += sample(&scrape, "kiln_worker_chunks_done_total").expect("chunks done on a worker");
        starts += sample(&scrape, "kiln_worker_executor_starts_total").expect("executor starts");
        assert_eq!(sample(&scrape, "kiln_worker_executor_crashes_total"), Some(0.0), "{scrape}");
        assert_eq!(sample(&scrape, "kiln_worker_chunks_failed_total"), Some(0.0), "{scrape}");
        assert_documented(&scrape);
        prepared += sample(&scrape, "kiln_worker_rpc_calls_total{method=\"prepare\",outcome=\"ok\"}").unwrap_or(0.0);
    }
    assert!(chunks_on_workers >= n_chunks, "{chunks_on_workers} < {n_chunks}");
    assert!(starts >= 1.0 && prepared >= 1.0, "{starts} executor starts, {prepared} prepares");
}
