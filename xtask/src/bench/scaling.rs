//! Section 9: how the cluster scales when the controller's link, not the CPU, is the limit.
//!
//! A controller, a client and up to three workers each on a simulated host ([`netsim`]), the
//! controller's link shaped to [`LINK_MBIT`] each way. An uploaded input crosses that link
//! twice (client → controller → worker), so its throughput stays at the link's speed however
//! many workers join; an input by reference (`file://`, on the filesystem every simulated host
//! shares, as data local to the workers would be) is read by each worker where it lives, and
//! only plans and results cross the controller's link.

use std::collections::BTreeMap;

use anyhow::Context;

use super::cluster::{Cluster, Link, Placement};
use super::cluster_measures::by_reference;
use super::measures::{STREAMING_THREADS, throughput};
use super::netsim::Network;
use super::report::{Report, Target};
use super::{Bench, Samples, checked, corpus, streaming};

/// The controller's link, in megabits per second each way: well below what one worker
/// process counts (about 1,000 Mbit/s of words), so the link is the limit of uploaded input.
const LINK_MBIT: u32 = 200;

/// Workers of the largest cluster; one process each.
const MAX_WORKERS: usize = 3;

pub fn scaling(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    report.section(
        "9. Scaling behind a bandwidth-limited controller link (simulated hosts)",
        &format!(
            "A controller, a client and 1–{MAX_WORKERS} workers of one process each, every one in a \
             network namespace of its own on one bridge; the controller's link is limited to \
             {LINK_MBIT} Mbit/s each way with `tc tbf`, the other links are not. Word count, TLS \
             links, outputs checked against the streaming baseline's count. All hosts share this \
             machine's two cores, so three workers have less CPU each than two."
        ),
    );
    if let Some(why) = Network::unavailable() {
        report.paragraph(&format!("Not measured on this machine: {why}."));
        return Ok(());
    }
    let input = corpus::words(&bench.inputs(), (bench.size / 4).max(1 << 20))?;
    let bytes = std::fs::metadata(&input)?.len();
    let expected = streaming::word_count(&input, STREAMING_THREADS)?;
    let tiny = bench.inputs().join("scaling-tiny.txt");
    std::fs::write(&tiny, "warm up\n")?;
    // The simulated hosts cannot reach crates.io: build the plugin once here first, which
    // downloads its dependencies into cargo's cache.
    checked(bench.kiln().arg("run-local").arg("--plugin").arg(bench.example("wordcount")).arg("--input").arg(&tiny))?;
    let network = Network::new(&["ctl", "cli", "w1", "w2", "w3"])?;
    network.limit(0, LINK_MBIT)?;
    let plugin = bench.example("wordcount");
    let args = ["--processes", "1"];
    let link_bytes_per_s = f64::from(LINK_MBIT) * 1e6 / 8.0;
    for n_workers in 1..=MAX_WORKERS {
        eprintln!("scaling: {n_workers} worker(s) behind a {LINK_MBIT} Mbit/s controller link");
        let placement = Placement {
            controller: network.host(0).clone(),
            client: network.host(1).clone(),
            workers: (0..n_workers).map(|i| network.host(2 + i).clone()).collect(),
        };
        let cluster = Cluster::start_placed(bench, n_workers, 1, Link::Tls, Some(placement))?;
        // Builds (or loads) the plugin on every worker before anything is timed.
        cluster.submit(&plugin, &tiny, &args)?;
        let uploaded = Samples::collect(bench.runs.min(3), false, || {
            let submitted = cluster.submit(&plugin, &input, &args)?;
            let counted: BTreeMap<String, u64> =
                serde_json::from_str(&submitted.output).context("kiln submit's output is a word count")?;
            anyhow::ensure!(counted == expected, "the cluster's word count differs from the baseline's");
            Ok(())
        })?;
        let url = by_reference(&input);
        let referenced = Samples::collect(bench.runs.min(3), false, || {
            let submitted = cluster.submit(&plugin, &url, &args)?;
            let counted: BTreeMap<String, u64> =
                serde_json::from_str(&submitted.output).context("kiln submit's output is a word count")?;
            anyhow::ensure!(counted == expected, "the cluster's word count differs from the baseline's");
            Ok(())
        })?;
        let of_link = |samples: &Samples| bytes as f64 / samples.median().as_secs_f64() / link_bytes_per_s;
        report.figure(
            &format!("{n_workers} of {MAX_WORKERS} workers, uploaded input (client → controller → worker)"),
            &format!(
                "{} = {:.2}× the link's {:.0} MB/s",
                throughput(bytes, &uploaded),
                of_link(&uploaded),
                link_bytes_per_s / 1e6
            ),
            Target::None,
        );
        report.figure(
            &format!("{n_workers} of {MAX_WORKERS} workers, by reference (`file://`, read by each worker)"),
            &format!("{} = {:.2}× the link's speed", throughput(bytes, &referenced), of_link(&referenced)),
            Target::None,
        );
    }
    Ok(())
}
