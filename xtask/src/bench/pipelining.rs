//! Section 11: a job over delayed links, with and without pipelined slots.
//!
//! A controller, a client and two workers of two processes each, every one on a simulated host
//! ([`netsim`]); each worker's link is delayed by [`DELAY_MS`] each way with `tc netem`, so
//! every call to a worker costs a round trip beside its run. The same word count of small
//! chunks runs with the controller's default `--prefetch` (calls wait on the worker ahead of
//! its slots, so the next chunks are there when a slot frees) and with `--prefetch 0` (a call
//! is sent only when a slot is free, as before pipelined slots). Outputs are checked against
//! the streaming baseline's count.

use std::collections::BTreeMap;

use anyhow::Context;

use super::cluster::{Cluster, Link, Placement};
use super::measures::{STREAMING_THREADS, throughput};
use super::netsim::Network;
use super::report::{Report, Target};
use super::{Bench, Samples, checked, corpus, streaming};

/// Added to each direction of each worker's link: a 200 ms round trip.
const DELAY_MS: u32 = 100;

/// Small chunks, so that the job is many calls and the link's latency counts.
const CHUNK_SIZE: &str = "64KiB";

pub fn delayed_links(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    report.section(
        "11. Delayed links with and without pipelined slots (simulated hosts)",
        &format!(
            "A controller, a client and two workers of two processes each, every one in a network \
             namespace of its own on one bridge; each worker's link is delayed by {DELAY_MS} ms \
             each way with `tc netem` (a {} ms round trip). Word count in {CHUNK_SIZE} chunks, TLS \
             links, outputs checked against the streaming baseline's count; the controller's \
             default `--prefetch` (calls sent ahead of the workers' slots) against `--prefetch 0` \
             (a call only to a free slot).",
            2 * DELAY_MS
        ),
    );
    if let Some(why) = Network::unavailable() {
        report.paragraph(&format!("Not measured on this machine: {why}."));
        return Ok(());
    }
    let input = corpus::words(&bench.inputs(), (bench.size / 16).max(4 << 20))?;
    let bytes = std::fs::metadata(&input)?.len();
    let expected = streaming::word_count(&input, STREAMING_THREADS)?;
    let tiny = bench.inputs().join("pipelining-tiny.txt");
    std::fs::write(&tiny, "warm up\n")?;
    // The simulated hosts cannot reach crates.io: build the plugin here first.
    checked(bench.kiln().arg("run-local").arg("--plugin").arg(bench.example("wordcount")).arg("--input").arg(&tiny))?;
    let network = Network::new(&["ctl", "cli", "w1", "w2"])?;
    network.delay(2, DELAY_MS)?;
    network.delay(3, DELAY_MS)?;
    let plugin = bench.example("wordcount");
    let args = ["--chunk-size", CHUNK_SIZE];
    let mut medians = Vec::new();
    for (name, prefetch) in [("pipelined slots (default `--prefetch`)", None), ("`--prefetch 0`", Some("0"))] {
        eprintln!("delayed links: {name}");
        let placement = Placement {
            controller: network.host(0).clone(),
            client: network.host(1).clone(),
            workers: vec![network.host(2).clone(), network.host(3).clone()],
        };
        let controller_args: Vec<&str> = prefetch.map(|n| vec!["--prefetch", n]).unwrap_or_default();
        let cluster = Cluster::start_configured(bench, 2, 2, Link::Tls, Some(placement), &controller_args)?;
        // Builds (or loads) the plugin on every worker before anything is timed.
        cluster.submit(&plugin, &tiny, &args)?;
        let samples = Samples::collect(bench.runs.min(3), false, || {
            let submitted = cluster.submit(&plugin, &input, &args)?;
            let counted: BTreeMap<String, u64> =
                serde_json::from_str(&submitted.output).context("kiln submit's output is a word count")?;
            anyhow::ensure!(counted == expected, "the cluster's word count differs from the baseline's");
            Ok(())
        })?;
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
