//! The cluster measures of `cargo xtask bench`: word count through `kiln submit` with its
//! breakdown and peak memory, tiny-job latency, and the chunk dispatch rate.
//!
//! Each measure starts its own [`Cluster`] on this machine (one worker of 2 processes; two for
//! the dispatch rate) with the bench's plugin cache, so plugins are built before any timing,
//! and runs a warm-up job before it measures. The clusters stop when their guards drop.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::cluster::{Cluster, Link, PeakMemory, Submitted, epoch_ms};
use super::measures::{Baseline, ratio_of, throughput};
use super::report::{Report, Target};
use super::{Bench, Samples, baseline, checked, corpus, human};

/// Chunks in flight per worker for word count: as many as the worker runs at once.
pub const PROCESSES: u32 = 2;

/// Tiny jobs timed for the latency figures, after [`TINY_WARM_UP`] untimed ones.
const TINY_JOBS: usize = 200;
const TINY_WARM_UP: usize = 5;

/// The tiny job's input: one line.
const TINY_LINE: &str = "the quick brown fox jumps over the lazy dog the end\n";

/// Each line of the dispatch input is a chunk: eight bytes, `%07d\n`, cut with this chunk size.
const DISPATCH_LINE_BYTES: u64 = 8;

/// How much the controller's peak memory may grow while the input grows fourfold and still
/// count as flat: spooling and cutting stream the input, so growth means something is held.
const FLAT_GROWTH: f64 = 1.25;

/// The peak memory of the cluster word count at a quarter of the corpus size and at the full
/// size, for section 5.
pub struct WordCountMemory {
    quarter: (u64, PeakMemory),
    full: (u64, PeakMemory),
    /// One run at four times the size, for memory only.
    fourfold: (u64, PeakMemory),
    /// The full size read by reference.
    by_reference: PeakMemory,
}

/// The `file://` URL of a bench input, which the bench's controllers allow.
pub fn by_reference(input: &Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("file://{}", input.display()))
}

/// Word count through `kiln submit` against the streaming baseline (section 1, after
/// run-local), alternating with it: the ratio over TLS and plain TCP, the same at a quarter of
/// the size, and where the time of a run goes.
pub fn word_count(bench: &Bench, report: &mut Report, base: &Baseline) -> anyhow::Result<WordCountMemory> {
    let quarter_input = corpus::words(&bench.inputs(), (bench.size / 4).max(1 << 20))?;
    let quarter_bytes = std::fs::metadata(&quarter_input)?.len();
    eprintln!("word count: kiln submit, {} MiB (peak memory at a quarter of the size)", quarter_bytes >> 20);
    let quarter_expected = baseline::word_count(&quarter_input)?;
    let quarter = cluster_word_count(bench, &quarter_input, &quarter_expected, Link::Tls, None)?;

    eprintln!("word count: kiln submit, {} MiB, alternating with the streaming baseline", base.bytes >> 20);
    let tls = cluster_word_count(bench, &base.input, &base.expected, Link::Tls, Some(base))?;
    eprintln!(
        "word count: kiln submit --input file://…, {} MiB, alternating with the streaming baseline",
        base.bytes >> 20
    );
    let by_reference = cluster_word_count(bench, &by_reference(&base.input), &base.expected, Link::Tls, Some(base))?;
    eprintln!("word count: kiln submit, {} MiB, plain TCP, alternating with the streaming baseline", base.bytes >> 20);
    let plain = cluster_word_count(bench, &base.input, &base.expected, Link::PlainTcp, Some(base))?;

    report.figure(
        "`kiln submit --processes 2`, one local worker of 2 processes (uploaded input)",
        &throughput(base.bytes, &tls.samples),
        Target::None,
    );
    let ratio = ratio_of(&tls.streamed, &tls.samples);
    report.figure(
        "uploaded cluster ÷ streaming baseline",
        &format!("{ratio:.2}×"),
        Target::AtLeast(ratio, 0.7, "≥ 0.7×"),
    );
    report.figure(
        "`kiln submit --input file://…` (by reference: the worker reads the file, the controller plans)",
        &throughput(base.bytes, &by_reference.samples),
        Target::None,
    );
    let by_reference_ratio = ratio_of(&by_reference.streamed, &by_reference.samples);
    report.figure(
        "by-reference cluster ÷ streaming baseline",
        &format!("{by_reference_ratio:.2}×"),
        Target::AtLeast(by_reference_ratio, 0.9, "≥ 0.9×"),
    );
    report.figure(
        "the same over plain TCP (`kiln controller --insecure-plaintext`)",
        &throughput(base.bytes, &plain.samples),
        Target::None,
    );
    let plain_ratio = ratio_of(&plain.streamed, &plain.samples);
    report.figure("plain TCP cluster ÷ streaming baseline", &format!("{plain_ratio:.2}×"), Target::None);
    // Each divided by the baseline of its own rounds, so a change of load between the two runs
    // does not show as a cost of TLS.
    let tls_ratio = ratio / plain_ratio;
    report.figure(
        "TLS ÷ plain TCP (every link is TLS 1.3 by default)",
        &format!("{tls_ratio:.3}×"),
        Target::AtLeast(tls_ratio, 0.95, "≥ 0.95× (within 5 %)"),
    );
    report.figure(
        &format!("`kiln submit` over {} MiB, for comparison", quarter_bytes >> 20),
        &throughput(quarter_bytes, &quarter.samples),
        Target::None,
    );
    report.paragraph(
        "Where the time of a cluster run goes (median of each stage over the timed runs; the points \
         come from `kiln status --json`, the controller's log of state changes, and the client's own \
         clock, all to the millisecond):",
    );
    report.table(&["stage", "what happens", "median", "share"], tls.stages.rows());
    let fourfold_input = corpus::words(&bench.inputs(), bench.size * 4)?;
    let fourfold_bytes = std::fs::metadata(&fourfold_input)?.len();
    eprintln!("word count: kiln submit, {} MiB, once, for peak memory", fourfold_bytes >> 20);
    let fourfold = peak_of_one_run(bench, &fourfold_input)?;
    Ok(WordCountMemory {
        by_reference: by_reference.memory,
        quarter: (quarter_bytes, quarter.memory),
        full: (base.bytes, tls.memory),
        fourfold: (fourfold_bytes, fourfold),
    })
}

/// The peak memory of a fresh cluster after a warm-up job and one word count of `input`,
/// checked against the streaming baseline's count.
fn peak_of_one_run(bench: &Bench, input: &Path) -> anyhow::Result<PeakMemory> {
    let expected = super::streaming::word_count(input, super::measures::STREAMING_THREADS)?;
    let cluster = Cluster::start_on(bench, 1, PROCESSES, Link::Tls)?;
    let (plugin, processes) = (bench.example("wordcount"), PROCESSES.to_string());
    let args = ["--processes", processes.as_str()];
    cluster.submit(&plugin, &tiny_input(bench)?, &args)?;
    check_word_count(&cluster.submit(&plugin, input, &args)?.output, &expected)?;
    cluster.peak_memory()
}

/// What [`cluster_word_count`] measured.
struct ClusterWordCount {
    samples: Samples,
    /// The streaming baseline's times in the same rounds (empty without a reference).
    streamed: Samples,
    stages: Stages,
    memory: PeakMemory,
}

/// Runs the word count on a fresh cluster: a tiny warm-up job, a warm-up run, then the timed
/// runs, each checked against `expected`, alternating with the streaming baseline when
/// `reference` is given. Answers the times, their breakdown, and the peak memory read before
/// the cluster stops.
fn cluster_word_count(
    bench: &Bench,
    input: &Path,
    expected: &BTreeMap<String, u64>,
    link: Link,
    reference: Option<&Baseline>,
) -> anyhow::Result<ClusterWordCount> {
    let cluster = Cluster::start_on(bench, 1, PROCESSES, link)?;
    let plugin = bench.example("wordcount");
    let processes = PROCESSES.to_string();
    let args = ["--processes", processes.as_str()];
    cluster.submit(&plugin, &tiny_input(bench)?, &args)?;
    let mut stages = Stages::default();
    let mut warmed_up = false;
    let mut submit = || {
        let submitted = cluster.submit(&plugin, input, &args)?;
        check_word_count(&submitted.output, expected)?;
        // The warm-up run is not part of the breakdown.
        if std::mem::replace(&mut warmed_up, true) {
            stages.add(&cluster, &submitted)?;
        }
        Ok(())
    };
    let (samples, streamed) = match reference {
        Some(base) => {
            let both = Samples::alternating(bench.runs, &mut [&mut submit, &mut || base.stream()])?;
            let [samples, streamed] = <[Samples; 2]>::try_from(both).expect("two measures");
            (samples, streamed)
        }
        None => (Samples::collect(bench.runs, true, submit)?, Samples::from_durations(Vec::new())),
    };
    let memory = cluster.peak_memory()?;
    Ok(ClusterWordCount { samples, streamed, stages, memory })
}

pub fn check_word_count(output: &str, expected: &BTreeMap<String, u64>) -> anyhow::Result<()> {
    let counted: BTreeMap<String, u64> =
        serde_json::from_str(output).context("kiln submit's output is a word count")?;
    if &counted != expected {
        bail!("the cluster's word count differs from the baseline's: no figure reported");
    }
    Ok(())
}

/// Submit to result of a one-line job on a warm cluster, each `kiln submit` a new process
/// (section 2).
pub fn tiny_jobs(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("tiny jobs: {TINY_JOBS} through kiln submit");
    let input = tiny_input(bench)?;
    let mut expected = BTreeMap::new();
    for word in TINY_LINE.split_whitespace() {
        *expected.entry(word.to_owned()).or_insert(0u64) += 1;
    }
    // The bare cost of starting the binary, which every job pays twice over nothing else.
    let version = Samples::collect(20, true, || {
        checked(bench.kiln().arg("--version"))?;
        Ok(())
    })?;

    let (latencies, stages) = tiny_job_latencies(bench, &input, &expected, Link::Tls)?;
    let (plain, _) = tiny_job_latencies(bench, &input, &expected, Link::PlainTcp)?;
    let percentile =
        |latencies: &[Duration], p: usize| latencies[(latencies.len() * p).div_ceil(100).saturating_sub(1)];
    let (p50, p90, p99) = (percentile(&latencies, 50), percentile(&latencies, 90), percentile(&latencies, 99));
    let max = latencies[latencies.len() - 1];

    report.section(
        "2. Tiny job latency",
        &format!(
            "{TINY_JOBS} jobs of one line (wordcount, plugin cached, one worker), each a new `kiln \
             submit` process, from its start to its exit with the result printed; {TINY_WARM_UP} \
             untimed jobs first. Each job starts its own sandboxed executor, which ends with it."
        ),
    );
    report.figure("p50", &human(p50), Target::AtMost(p50, Duration::from_millis(20), "≤ 20 ms"));
    report.figure("p90", &human(p90), Target::None);
    report.figure("p99", &human(p99), Target::AtMost(p99, Duration::from_millis(50), "≤ 50 ms"));
    report.figure("max", &human(max), Target::None);
    report.figure("p50 over plain TCP (`--insecure-plaintext`)", &human(percentile(&plain, 50)), Target::None);
    report.figure("p99 over plain TCP", &human(percentile(&plain, 99)), Target::None);
    report.figure("`kiln --version` (starting the binary alone)", &version.describe(), Target::None);
    report.paragraph("Where the time of a tiny job goes (median of each stage):");
    report.table(&["stage", "what happens", "median", "share"], stages.rows());
    Ok(())
}

/// The sorted latencies of [`TINY_JOBS`] one-line jobs on a fresh cluster over `link`, after
/// [`TINY_WARM_UP`] untimed ones, and their breakdown.
fn tiny_job_latencies(
    bench: &Bench,
    input: &Path,
    expected: &BTreeMap<String, u64>,
    link: Link,
) -> anyhow::Result<(Vec<Duration>, Stages)> {
    let cluster = Cluster::start_on(bench, 1, PROCESSES, link)?;
    let plugin = bench.example("wordcount");
    let mut latencies = Vec::with_capacity(TINY_JOBS);
    let mut stages = Stages::default();
    for n in 0..TINY_WARM_UP + TINY_JOBS {
        let submitted = cluster.submit(&plugin, input, &[])?;
        check_word_count(&submitted.output, expected)?;
        if n >= TINY_WARM_UP {
            latencies.push(submitted.took);
            stages.add(&cluster, &submitted)?;
        }
    }
    drop(cluster);
    latencies.sort();
    Ok((latencies, stages))
}

/// Chunks per second through the controller with a plugin that does nothing, two workers
/// (section 3).
pub fn dispatch_rate(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let n_chunks: u64 = if bench.quick { 10_000 } else { 100_000 };
    let runs = bench.runs.min(3);
    eprintln!("dispatch rate: {n_chunks} chunks, 2 workers");
    let input = corpus::lines(&bench.inputs(), n_chunks)?;
    let warm_up = corpus::lines(&bench.inputs(), 1_000)?;
    let plugin = bench.root.join("xtask/bench-plugins/noop");
    let chunk_size = DISPATCH_LINE_BYTES.to_string();
    let args = ["--chunk-size", chunk_size.as_str()];

    let mut cluster = Cluster::start(bench, 1, PROCESSES)?;
    // The first job builds the noop plugin (into the shared cache) before a second worker joins.
    check_count(&cluster.submit(&plugin, &warm_up, &args)?, 1_000)?;
    cluster.add_worker(bench, PROCESSES)?;
    check_count(&cluster.submit(&plugin, &warm_up, &args)?, 1_000)?;

    let (mut whole, mut running, mut client) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let submitted = cluster.submit(&plugin, &input, &args)?;
        check_count(&submitted, n_chunks)?;
        let times = cluster.times(submitted.job)?;
        if times.n_chunks != n_chunks {
            bail!("the dispatch input was cut into {} chunks, not {n_chunks}", times.n_chunks);
        }
        whole.push(Duration::from_millis(times.finished_ms.saturating_sub(times.started_ms).max(1)));
        if let Some(aggregating) = cluster.state_changed_ms(submitted.job, "Aggregating") {
            running.push(Duration::from_millis(aggregating.saturating_sub(times.started_ms).max(1)));
        }
        client.push(submitted.took);
    }
    drop(cluster);
    let rate = |samples: &Samples| n_chunks as f64 / samples.median().as_secs_f64();
    let whole = Samples::from_durations(whole);
    let client = Samples::from_durations(client);

    report.section(
        "3. Chunk dispatch rate",
        &format!(
            "The noop plugin (`xtask/bench-plugins/noop`: `run` returns nothing, `aggregate` counts the \
             partials) over {n_chunks} lines of {DISPATCH_LINE_BYTES} bytes with `--chunk-size \
             {DISPATCH_LINE_BYTES}`, so each line is a chunk; two workers of 2 processes, each with at \
             most 2 calls in flight (a call carries a batch of up to 256 such chunks); output checked to \
             be {n_chunks}. The rate is chunks over the time from the job's start (its first dispatch) to \
             its end, from `kiln status --json`."
        ),
    );
    let whole_rate = rate(&whole);
    report.figure(
        "chunks per second, start to end (aggregate included)",
        &format!("{whole_rate:.0}/s — {}", whole.describe()),
        Target::AtLeast(whole_rate, 100_000.0, "≥ 100,000/s"),
    );
    if running.len() == whole.0.len() {
        let running = Samples::from_durations(running);
        report.figure(
            "chunks per second, start until every chunk is done",
            &format!("{:.0}/s — {}", rate(&running), running.describe()),
            Target::None,
        );
    }
    report.figure("`kiln submit` start to exit (upload and cutting included)", &client.describe(), Target::None);
    Ok(())
}

fn check_count(submitted: &Submitted, n_chunks: u64) -> anyhow::Result<()> {
    let counted: u64 = submitted.output.trim().parse().context("the noop plugin's output is a number")?;
    if counted != n_chunks {
        bail!("the noop plugin counted {counted} chunks, not {n_chunks}");
    }
    Ok(())
}

/// The controller's and worker's peak memory during the cluster word count, at a quarter of the
/// size and at the full size (section 5).
pub fn peak_memory(report: &mut Report, memory: &WordCountMemory) {
    let sizes = [&memory.quarter, &memory.full, &memory.fourfold];
    report.section(
        "5. Peak memory during the cluster word count",
        &format!(
            "VmHWM of each process, read just before the cluster stops, on a fresh cluster for each \
             input size: {} MiB and {} MiB after the word count runs of section 1 (a warm-up job, a \
             warm-up run and the timed runs), {} MiB after a warm-up job and one run. Uploaded input.",
            memory.quarter.0 >> 20,
            memory.full.0 >> 20,
            memory.fourfold.0 >> 20
        ),
    );
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let along = |of: &dyn Fn(&PeakMemory) -> Option<u64>| {
        let figures: Vec<String> =
            sizes.iter().map(|(_, peak)| of(peak).map_or("–".to_owned(), |b| format!("{:.0} MiB", mib(b)))).collect();
        figures.join(" → ")
    };
    let controller_max = sizes.iter().map(|(_, peak)| peak.controller).max().unwrap_or(0);
    report.figure(
        "controller",
        &along(&|peak| Some(peak.controller)),
        Target::AtMostNumber(mib(controller_max), 100.0, "≤ 100 MiB"),
    );
    let growth = memory.fourfold.1.controller as f64 / memory.quarter.1.controller.max(1) as f64;
    report.figure(
        "controller growth for 16× the input",
        &format!("{:+.0} %", (growth - 1.0) * 100.0),
        Target::AtMostNumber(growth, FLAT_GROWTH, "flat (≤ +25 %)"),
    );
    report.figure(
        &format!("controller, {} MiB by reference (`file://`)", memory.full.0 >> 20),
        &format!("{:.0} MiB", mib(memory.by_reference.controller)),
        Target::AtMostNumber(mib(memory.by_reference.controller), 100.0, "≤ 100 MiB"),
    );
    for n in 0..memory.full.1.workers.len() {
        report.figure(&format!("worker daemon {}", n + 1), &along(&|peak| peak.workers.get(n).copied()), Target::None);
    }
    report.figure("executor (`kiln exec`, plugin code)", &along(&|peak| peak.executor), Target::None);
}

/// The one-line input of the tiny jobs and warm-up jobs.
pub fn tiny_input(bench: &Bench) -> anyhow::Result<std::path::PathBuf> {
    let path = bench.inputs().join("tiny.txt");
    std::fs::write(&path, TINY_LINE)?;
    Ok(path)
}

/// The points in a job's life, in order, and what happens between one and the next.
const POINTS: [(&str, &str); 7] = [
    ("`kiln submit` starts", ""),
    ("job created", "start kiln, connect, read, pack and upload the plugin, create the job"),
    ("job queued", "upload the input, spool it, cut it into chunks"),
    ("first dispatch", "wait for the scheduler"),
    ("every chunk done", "prepare the worker, dispatch and run the chunks, store partials, combine"),
    ("job ended", "gather the partials, aggregate on the worker, store the result"),
    ("`kiln submit` exits", "notice the end, fetch and print the result, exit"),
];

/// The durations between the points of many jobs; a point the controller did not log is
/// skipped, and its stage merged into the next.
#[derive(Default)]
struct Stages {
    /// For each stage (from, to): its durations.
    durations: BTreeMap<(usize, usize), Vec<Duration>>,
    totals: Vec<Duration>,
}

impl Stages {
    fn add(&mut self, cluster: &Cluster, submitted: &Submitted) -> anyhow::Result<()> {
        let times = cluster.times(submitted.job)?;
        let started = epoch_ms(submitted.started);
        let ended = started + submitted.took.as_millis() as u64;
        let points = [
            Some(started),
            Some(times.created_ms),
            cluster.state_changed_ms(submitted.job, "Queued"),
            Some(times.started_ms),
            cluster.state_changed_ms(submitted.job, "Aggregating"),
            Some(times.finished_ms),
            Some(ended.max(times.finished_ms)),
        ];
        let mut last = 0;
        for (point, at) in points.iter().enumerate().skip(1) {
            let (Some(at), Some(from)) = (at, points[last]) else { continue };
            let took = Duration::from_millis(at.saturating_sub(from));
            self.durations.entry((last, point)).or_default().push(took);
            last = point;
        }
        self.totals.push(submitted.took);
        Ok(())
    }

    /// The table rows: stage, what happens, median, share of the median total.
    fn rows(&self) -> Vec<Vec<String>> {
        let median = |durations: &[Duration]| {
            let mut sorted = durations.to_vec();
            sorted.sort();
            sorted.get(sorted.len() / 2).copied().unwrap_or_default()
        };
        let total = median(&self.totals).as_secs_f64().max(1e-9);
        let mut rows: Vec<Vec<String>> = self
            .durations
            .iter()
            .map(|(&(from, to), durations)| {
                let what: Vec<&str> = POINTS[from + 1..=to].iter().map(|(_, what)| *what).collect();
                let took = median(durations);
                vec![
                    format!("{} → {}", POINTS[from].0, POINTS[to].0),
                    what.join("; "),
                    human(took),
                    format!("{:.0} %", took.as_secs_f64() / total * 100.0),
                ]
            })
            .collect();
        rows.push(vec![
            "total".into(),
            "`kiln submit`, start to exit".into(),
            human(median(&self.totals)),
            String::new(),
        ]);
        rows
    }
}
