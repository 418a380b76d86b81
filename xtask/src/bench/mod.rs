//! `cargo xtask bench`: measures Kiln end to end and writes BENCHMARKS.md.
//!
//! Everything runs the release `kiln` binary as a user would, on deterministic inputs
//! ([`corpus`]), each measure after a warm-up run, reporting the median and the spread. Word
//! count is compared with [`streaming`], a plain parallel program that reads its own byte ranges,
//! measured alternately with Kiln in the same run (and beside it [`baseline`], the earlier
//! read-then-split rayon program, for continuity); outputs are checked to be equal before any
//! figure is reported.
//! [`measures`] runs `kiln run-local`; [`cluster_measures`] runs a controller and workers on this
//! machine ([`cluster`]) and goes through `kiln submit`; so do [`scaling`] (on simulated hosts,
//! [`netsim`]), [`pipelining`] (behind delaying proxies), [`object_store`] (input in a local
//! S3-compatible server) and [`big_result`] (every process's peak memory for a ~400 MB result).

mod baseline;
mod big_result;
pub(crate) mod cluster;
mod cluster_measures;
mod corpus;
mod limits;
mod measures;
mod natural;
mod netsim;
mod object_store;
mod pipelining;
pub(crate) mod process;
mod quiet;
mod report;
mod scaling;
mod streaming;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use self::report::Report;

/// Measure Kiln's speed and write BENCHMARKS.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A smoke run: small inputs and fewer repetitions (under three minutes).
    #[arg(long)]
    quick: bool,
    /// The size of the word corpus, e.g. 1GiB or 256MiB (default: 1GiB, or 64MiB with --quick).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
    /// Measure this `kiln` binary instead of building the release one (to compare builds).
    #[arg(long)]
    kiln: Option<PathBuf>,
    /// Run only these measures (repeat or separate with commas); all of them by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Measure>,
    /// Measure even when the machine is busy (1-minute load above 0.5 at the start); every
    /// figure of the report is then marked as taken under load.
    #[arg(long)]
    allow_busy: bool,
}

/// The measures of the bench, each a section of BENCHMARKS.md (peak memory comes with the
/// cluster word count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    /// Word count: run-local and the cluster against the baseline, and peak memory (sections 1, 5).
    WordCount,
    /// Submit-to-result latency of tiny jobs (section 2).
    Tiny,
    /// The chunk dispatch rate (section 3).
    Dispatch,
    /// Plugin build times (section 4).
    Builds,
    /// The other example plugins through run-local.
    Plugins,
    /// The sandbox's set-up time per executor start (section 7).
    Sandbox,
    /// Word count over a directory of gzip files (section 8).
    Compressed,
    /// Uploaded and by-reference input on simulated hosts behind a limited link (section 9).
    Scaling,
    /// A naive word count as a plugin and as a plain program, and the API `Counter` plugin
    /// against the baseline (section 10).
    Natural,
    /// A job over delayed links to the workers, with and without pipelined slots (section 11).
    Pipelining,
    /// Word count with input by reference in a local S3-compatible server (moto), beside
    /// `file://` and the baseline (section 12).
    S3,
    /// Every process's peak memory for a result of about 400 MB (section 13).
    BigResult,
}

/// What every measure needs: where things are and how hard to try.
pub struct Bench {
    /// The repository's root.
    root: PathBuf,
    /// The release `kiln` binary.
    kiln: PathBuf,
    /// Inputs, caches and scratch space, under `target/bench`.
    work: PathBuf,
    /// The plugin cache and cargo target directory of the warm measures.
    cache_dir: PathBuf,
    target_dir: PathBuf,
    /// The size of the main word corpus.
    size: u64,
    /// Repetitions after the warm-up.
    runs: usize,
    quick: bool,
    /// The flags that choose what runs (`--quick`, `--only ...`), for the report's header.
    flags: String,
}

/// How long the bench waits for a busy machine to quieten before it refuses to measure.
const LOAD_PATIENCE: Duration = Duration::from_secs(120);

/// A section of the report: what chooses it, its name for `--only`, and what measures it.
type Section = (Measure, &'static str, fn(&Bench, &mut Report) -> anyhow::Result<()>);

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has a parent")?.to_path_buf();
    let started = Instant::now();
    // Looked at before anything of the bench runs, since building kiln loads the machine too.
    let ours = quiet::our_processes();
    let mut at_start = quiet::Snapshot::take(&ours);
    // `cargo xtask` has often just compiled this program, which alone lifts the 1-minute load
    // over the bar: wait a little for it to fall before refusing.
    let waited = Instant::now();
    while at_start.is_busy() && !args.allow_busy && waited.elapsed() < LOAD_PATIENCE {
        eprintln!("waiting for the load to fall below {} (now {})", quiet::BUSY_LOAD, at_start.describe());
        std::thread::sleep(Duration::from_secs(10));
        at_start = quiet::Snapshot::take(&ours);
    }
    if at_start.is_busy() && !args.allow_busy {
        bail!(
            "the machine is still busy after {} s (load average {}): figures taken now would not \
             hold; wait until the 1-minute load is below {} (watch `uptime`) and what loads it has \
             stopped, or pass --allow-busy to measure anyway with every figure marked as taken \
             under load",
            LOAD_PATIENCE.as_secs(),
            at_start.describe(),
            quiet::BUSY_LOAD
        );
    }
    let kiln = match &args.kiln {
        Some(kiln) => std::path::absolute(kiln)?,
        None => {
            eprintln!("building kiln (release)");
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--quiet", "-p", "kiln-engine", "--bin", "kiln"])
                .current_dir(&root)
                .status()?;
            if !status.success() {
                bail!("cargo build of kiln failed");
            }
            root.join("target/release/kiln")
        }
    };
    let work = root.join("target/bench");
    let bench = Bench {
        kiln,
        cache_dir: work.join("cache"),
        target_dir: work.join("plugin-target"),
        size: args.size.unwrap_or(if args.quick { 64 << 20 } else { 1 << 30 }),
        runs: if args.quick { 2 } else { 5 },
        quick: args.quick,
        flags: flags(args),
        work,
        root,
    };
    std::fs::create_dir_all(bench.work.join("inputs"))?;

    let wanted = |measure: Measure| args.only.is_empty() || args.only.contains(&measure);
    let mut report = Report::new(&bench, &at_start)?;
    // A section that fails is reported in place and the run goes on: one broken measure
    // must not throw away the half hour of figures the others took.
    let mut failed: Vec<&'static str> = Vec::new();
    let mut settle = |report: &mut Report, name: &'static str, result: anyhow::Result<()>| {
        if let Err(error) = result {
            eprintln!("bench section {name} failed: {error:#}");
            report.paragraph(&format!(
                "**This section failed:** {error:#}. Rerun it alone with `cargo xtask bench --only {name} \
                 --output /tmp/{name}.md` once the cause is fixed."
            ));
            failed.push(name);
        }
    };
    let mut memory = None;
    if wanted(Measure::WordCount) {
        let result = measures::word_count(&bench, &mut report)
            .and_then(|baseline| cluster_measures::word_count(&bench, &mut report, &baseline));
        match result {
            Ok(measured) => memory = Some(measured),
            Err(error) => settle(&mut report, "word-count", Err(error)),
        }
    }
    let sections: [Section; 11] = [
        (Measure::Tiny, "tiny", cluster_measures::tiny_jobs),
        (Measure::Dispatch, "dispatch", cluster_measures::dispatch_rate),
        (Measure::Builds, "builds", measures::builds),
        (Measure::Plugins, "plugins", measures::other_plugins),
        (Measure::Sandbox, "sandbox", measures::sandbox_setup),
        (Measure::Compressed, "compressed", measures::compressed),
        (Measure::Scaling, "scaling", scaling::scaling),
        (Measure::Natural, "natural", natural::natural_code),
        (Measure::Pipelining, "pipelining", pipelining::delayed_links),
        (Measure::S3, "s3", object_store::s3_word_count),
        (Measure::BigResult, "big-result", big_result::big_result),
    ];
    for (measure, name, measure_it) in sections {
        if wanted(measure) {
            let result = measure_it(&bench, &mut report);
            settle(&mut report, name, result);
        }
        // Section 5 reports the memory the word count measured, after the builds' section 4.
        if let (Measure::Builds, Some(memory)) = (measure, &memory) {
            cluster_measures::peak_memory(&mut report, memory);
        }
    }
    report.note_total(started.elapsed(), &quiet::Snapshot::take(&ours));

    let output = if args.output.is_absolute() { args.output.clone() } else { bench.root.join(&args.output) };
    std::fs::write(&output, report.render())?;
    eprintln!("wrote {} in {:.0} s", output.display(), started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("these sections failed (their errors are in the report): {}", failed.join(", "));
    }
    Ok(())
}

/// The flags of `args` that change what the report holds, as they would be typed.
fn flags(args: &Args) -> String {
    let mut flags = String::new();
    if args.quick {
        flags.push_str(" --quick");
    }
    if let Some(kiln) = &args.kiln {
        flags.push_str(&format!(" --kiln {}", kiln.display()));
    }
    if args.allow_busy {
        flags.push_str(" --allow-busy");
    }
    if !args.only.is_empty() {
        let names: Vec<String> = args
            .only
            .iter()
            .filter_map(|measure| clap::ValueEnum::to_possible_value(measure).map(|v| v.get_name().to_owned()))
            .collect();
        flags.push_str(&format!(" --only {}", names.join(",")));
    }
    flags
}

impl Bench {
    /// The `kiln` command, with this benchmark's plugin cache.
    fn kiln(&self) -> Command {
        let mut command = Command::new(&self.kiln);
        command.env("KILN_CACHE_DIR", &self.cache_dir).env("KILN_TARGET_DIR", &self.target_dir);
        command
    }

    fn example(&self, name: &str) -> PathBuf {
        self.root.join("examples/plugins").join(name)
    }

    fn inputs(&self) -> PathBuf {
        self.work.join("inputs")
    }
}

/// Runs a command to success, returning its output; fails with its stderr otherwise.
fn checked(command: &mut Command) -> anyhow::Result<Output> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(output)
}

/// Durations of repeated runs of one measure.
#[derive(Debug, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Runs `f` once to warm up (unless `warm_up` is false), then `runs` times, timing each.
    fn collect(runs: usize, warm_up: bool, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Samples> {
        if warm_up {
            f()?;
        }
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let started = Instant::now();
            f()?;
            samples.push(started.elapsed());
        }
        samples.sort();
        Ok(Samples(samples))
    }

    /// Runs each of `measures` once to warm up, then `runs` rounds of all of them in turn, so
    /// that each sees the same machine (a figure divided by another is only fair if both were
    /// taken under the same load); answers their samples in the order given.
    fn alternating(
        runs: usize,
        measures: &mut [&mut dyn FnMut() -> anyhow::Result<()>],
    ) -> anyhow::Result<Vec<Samples>> {
        for measure in measures.iter_mut() {
            measure()?;
        }
        let mut samples = vec![Vec::with_capacity(runs); measures.len()];
        for _ in 0..runs.max(1) {
            for (measure, samples) in measures.iter_mut().zip(&mut samples) {
                let started = Instant::now();
                measure()?;
                samples.push(started.elapsed());
            }
        }
        Ok(samples.into_iter().map(Samples::from_durations).collect())
    }

    /// Durations measured some other way (from a job's status).
    fn from_durations(mut durations: Vec<Duration>) -> Samples {
        durations.sort();
        if durations.is_empty() {
            durations.push(Duration::ZERO);
        }
        Samples(durations)
    }

    fn median(&self) -> Duration {
        self.0[self.0.len() / 2]
    }

    /// "median (min–max)" in seconds or milliseconds.
    fn describe(&self) -> String {
        let (min, max) = (self.0[0], self.0[self.0.len() - 1]);
        let runs = if self.0.len() == 1 { "1 run".to_owned() } else { format!("{} runs", self.0.len()) };
        format!("{} ({}–{}, {runs})", human(self.median()), human(min), human(max))
    }
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..split].parse().map_err(|_| format!("'{text}' is not a size"))?;
    let shift = match text[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => return Err(format!("unknown unit '{other}'")),
    };
    Ok(number << shift)
}
