//! Section 11: a job over delayed links, with and without pipelined slots.
//!
//! A controller and two workers of two processes each on this machine's loopback, each worker
//! behind two delaying TCP proxies (the tests' [`faulty_link`], in process): one on its
//! connection to the controller, one on the controller's dial-back to it (`--advertise`), each
//! delaying every byte by [`DELAY_MS`] each way, so every call to a worker costs a round trip
//! beside its run. The same word count of small chunks runs with the controller's default
//! `--prefetch` (calls wait on the worker ahead of its slots, so the next chunks are there when
//! a slot frees) and with `--prefetch 0` (a call is sent only when a slot is free, as before
//! pipelined slots). Outputs are checked against the streaming baseline's count.
//!
//! Proxies rather than `tc netem` on simulated hosts: they need no kernel module (this kind of
//! machine has no `sch_netem`) and no root.

#[path = "../../../engine/tests/util/faulty_link.rs"]
mod faulty_link;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use self::faulty_link::FaultyLink;
use super::cluster::{Cluster, Options};
use super::measures::{STREAMING_THREADS, throughput};
use super::report::{Report, Target};
use super::{Bench, Samples, corpus, streaming};

/// Added to each direction of each worker's links: a 200 ms round trip.
const DELAY_MS: u64 = 100;

/// Small chunks, so that the job is many calls and the link's latency counts.
const CHUNK_SIZE: &str = "64KiB";

/// Workers, and processes of each.
const WORKERS: usize = 2;
const PROCESSES: u32 = 2;

pub fn delayed_links(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    report.section(
        "11. Delayed links with and without pipelined slots",
        &format!(
            "A controller and {WORKERS} workers of {PROCESSES} processes each on this machine's \
             loopback; each worker's two links (its connection to the controller and the \
             controller's connection back to it) go through an in-process TCP proxy that delays \
             every byte by {DELAY_MS} ms each way (a {} ms round trip; the proxy holds at most \
             4 MiB in flight per direction of a connection, as a TCP window would, so one \
             connection carries at most about 40 MB/s at this delay). Word count in {CHUNK_SIZE} \
             chunks, TLS links, outputs checked against the streaming baseline's count; the \
             controller's default `--prefetch` (calls sent ahead of the workers' slots) against \
             `--prefetch 0` (a call only to a free slot).",
            2 * DELAY_MS
        ),
    );
    let input = corpus::words(&bench.inputs(), (bench.size / 16).max(4 << 20))?;
    let bytes = std::fs::metadata(&input)?.len();
    let expected = streaming::word_count(&input, STREAMING_THREADS)?;
    let tiny = bench.inputs().join("pipelining-tiny.txt");
    std::fs::write(&tiny, "warm up\n")?;
    let plugin = bench.example("wordcount");
    let args = ["--chunk-size", CHUNK_SIZE];
    let mut medians = Vec::new();
    for (name, prefetch) in [("pipelined slots (default `--prefetch`)", None), ("`--prefetch 0`", Some("0"))] {
        eprintln!("delayed links: {name}");
        let controller_args = prefetch.map(|n| vec!["--prefetch".to_owned(), n.to_owned()]).unwrap_or_default();
        // Declared before the cluster, so dropped after it, also on error: the workers stop
        // while their links still carry their goodbyes.
        let mut links = Vec::new();
        let mut cluster = Cluster::start_with(bench, 0, PROCESSES, Options { controller_args, ..Options::default() })?;
        for _ in 0..WORKERS {
            links.push(add_delayed_worker(bench, &mut cluster, Duration::from_millis(DELAY_MS))?);
        }
        // Builds (or loads) the plugin on every worker before anything is timed.
        cluster.submit(&plugin, &tiny, &args)?;
        let samples = Samples::collect(bench.runs.min(3), false, || {
            let submitted = cluster.submit(&plugin, &input, &args)?;
            let counted: BTreeMap<String, u64> =
                serde_json::from_str(&submitted.output).context("kiln submit's output is a word count")?;
            anyhow::ensure!(counted == expected, "the cluster's word count differs from the baseline's");
            Ok(())
        })?;
        drop(cluster);
        drop(links);
        report.figure(&format!("{name}, {} MiB", bytes >> 20), &throughput(bytes, &samples), Target::None);
        medians.push(samples.median());
    }
    if let [pipelined, unpipelined] = medians[..] {
        report.paragraph(&format!(
            "Job time with pipelined slots: {:.2}× that without.",
            pipelined.as_secs_f64() / unpipelined.as_secs_f64()
        ));
    }
    Ok(())
}

/// Starts one more worker of the cluster behind two links that delay every byte by `delay`
/// each way: "up" to the controller, "down" for the controller's dial-back (aimed at the
/// worker once it listens). Answers the links, which must outlive the worker.
fn add_delayed_worker(bench: &Bench, cluster: &mut Cluster, delay: Duration) -> anyhow::Result<[FaultyLink; 2]> {
    let controller = cluster.addr().parse().with_context(|| format!("the controller's address {}", cluster.addr()))?;
    let (up, down) = (FaultyLink::to(controller), FaultyLink::unaimed());
    up.delay(delay, delay);
    down.delay(delay, delay);
    cluster.add_worker_via(bench, PROCESSES, &up.addr.to_string(), Some(&down.addr.to_string()), |listening| {
        down.aim(listening.parse().with_context(|| format!("the worker's address {listening}"))?);
        Ok(())
    })?;
    Ok([up, down])
}
