//! Strangers on the network, with no key, token or secret: whatever they send, a controller
//! or worker holds only a small, fixed amount of memory for them before any credential is
//! checked, caps how many such connections it keeps, logs their addresses, and goes on serving
//! real jobs.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::time::{Duration, Instant};

use cluster::{Cluster, Daemon};
use kiln_engine::tls::Fingerprint;
use kiln_engine::tls::key::Trust;
use kiln_engine::tls::link::{self, Link};
use kiln_engine::tls::verify::dial_controller;
use tokio::io::AsyncWriteExt;
use util::{example, word_counts, word_text, write_input};

/// What a frame header announces: just under the frame limit of an authenticated link.
const ANNOUNCED_BYTES: u32 = 511 << 20;

/// Zeros each stranger sends after its header (if the server still reads).
const ZEROS_PER_CONNECTION: usize = 128 << 20;

/// Connections each stranger opens to each server.
const CONNECTIONS: usize = 4;

/// How much a server's resident memory may grow while strangers push: generous, since what is
/// checked is a bound, not a figure (before the bound, each connection took its 128 MiB).
const GROWTH_BOUND_KIB: u64 = 64 << 10;

/// The resident memory of process `pid`, in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
}

/// Opens a connection as a stranger: TLS checked against `pinned` (anyone can learn the CA's
/// fingerprint), or plain TCP.
async fn open(addr: &str, pinned: Option<Fingerprint>) -> Link {
    let dial =
        pinned.map(|fingerprint| dial_controller(Trust::Pinned(fingerprint), addr, None, None).unwrap().unwrap());
    link::connect(addr, dial.as_ref(), Duration::from_secs(10)).await.expect("the stranger connects")
}

/// A frame header announcing [`ANNOUNCED_BYTES`], then zeros until [`ZEROS_PER_CONNECTION`] or
/// until the server stops reading; the links stay open for the caller to measure.
async fn push_huge_frames(addr: &str, pinned: Option<Fingerprint>) -> Vec<Link> {
    let mut links = Vec::new();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..CONNECTIONS {
        let mut link = open(addr, pinned).await;
        let mut sent = link.write_all(&ANNOUNCED_BYTES.to_be_bytes()).await;
        let mut pushed = 0;
        while sent.is_ok() && pushed < ZEROS_PER_CONNECTION {
            let write = tokio::time::timeout(Duration::from_secs(10), link.write_all(&zeros)).await;
            sent = write.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            pushed += zeros.len();
        }
        let _ = link.flush().await;
        links.push(link);
    }
    links
}

/// Pushes huge frames at each of `targets` (address, TLS pin, the server's daemon) and checks
/// each server's growth; answers the strangers' own addresses.
fn assert_bounded(
    runtime: &tokio::runtime::Runtime,
    targets: &[(String, Option<Fingerprint>, &Daemon)],
) -> Vec<String> {
    let mut strangers = Vec::new();
    for (addr, pinned, daemon) in targets {
        let before = rss_kib(daemon.pid());
        let links = runtime.block_on(push_huge_frames(addr, *pinned));
        // Let the server read what the kernel buffered.
        std::thread::sleep(Duration::from_millis(500));
        let after = rss_kib(daemon.pid());
        assert!(
            after < before + GROWTH_BOUND_KIB,
            "{addr} grew from {before} KiB to {after} KiB for {CONNECTIONS} strangers' connections"
        );
        strangers.extend(links.iter().map(|link| link.local_addr().to_string()));
    }
    strangers
}

/// Waits until the daemon's log holds `text`.
fn wait_logged(daemon: &Daemon, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.stderr().contains(text) {
        assert!(Instant::now() < deadline, "{text:?} was not logged:\n{}", daemon.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a word count on the cluster and checks it against the counts computed here.
fn assert_serves_a_job(cluster: &Cluster) {
    let text = word_text(7, 3_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let run = cluster.submit(&example("wordcount"), &input, &["--chunk-size", "16KiB"]);
    assert!(run.success, "the job failed after the strangers:\n{}", run.stderr);
    let result: serde_json::Value = serde_json::from_str(&run.stdout).expect("a JSON result");
    assert_eq!(result, word_counts(&text));
}

#[test]
fn huge_frames_from_strangers_cost_a_tls_controller_no_memory() {
    let cluster = Cluster::start(1);
    cluster.wait_workers(1);
    let fingerprint = Fingerprint::from_hex(&cluster::trust_of(&cluster.controller)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let worker = &cluster.workers[0];
    let targets = [
        (cluster.controller.addr.to_string(), Some(fingerprint), &cluster.controller),
        // A TLS worker takes only the controller's certificate: raw bytes end at the handshake.
        (worker.addr.to_string(), None, worker),
    ];
    let strangers = assert_bounded(&runtime, &targets);
    for stranger in &strangers[..CONNECTIONS] {
        wait_logged(&cluster.controller, stranger);
    }
    assert_serves_a_job(&cluster);
}

#[test]
fn huge_frames_from_strangers_cost_a_plaintext_controller_and_worker_no_memory() {
    let cluster = Cluster::start_with(1, &["--insecure-plaintext"]);
    cluster.wait_workers(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let worker = &cluster.workers[0];
    let targets =
        [(cluster.controller.addr.to_string(), None, &cluster.controller), (worker.addr.to_string(), None, worker)];
    let strangers = assert_bounded(&runtime, &targets);
    for stranger in &strangers[..CONNECTIONS] {
        wait_logged(&cluster.controller, stranger);
    }
    for stranger in &strangers[CONNECTIONS..] {
        wait_logged(worker, stranger);
    }
    assert_serves_a_job(&cluster);
}

#[test]
fn connections_that_never_authenticate_are_capped_per_address() {
    let cluster = Cluster::start(1);
    cluster.wait_workers(1);
    let addr = cluster.controller.addr;
    // Idle connections that never send a call: the controller keeps a bounded number of them.
    let idle: Vec<std::net::TcpStream> = (0..40).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    wait_logged(&cluster.controller, "connections from this address have made no authenticated call yet");
    drop(idle);
    assert_serves_a_job(&cluster);
}
