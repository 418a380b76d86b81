//! `cargo xtask chaos --minutes N`: a stream of jobs of the example plugins over a controller
//! and three workers on this machine while random processes (the controller, workers,
//! executors) are killed with SIGKILL and the daemons restarted after a random pause. Every
//! job's result is checked against the result computed here from how its input was generated
//! ([`jobs`]), in order where the output has one (grep's lines). It prints the jobs run, the
//! faults injected by kind, and the jobs whose result was wrong, missing (failed, lost) or that
//! did not end within a generous deadline (stuck), and fails unless those are all 0. After the
//! faults stop, every result is fetched again with `kiln result`, so that results stored
//! before controller restarts are checked to be still readable, and no process of the run may
//! be left when it ends ([`processes`]).
//!
//! The same seed gives the same jobs and the same choice of faults and pauses; what a fault
//! hits still depends on timing (which executor runs which chunk at that moment).

mod jobs;
mod processes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use self::jobs::{Outcome, Plugin, Rng};
use self::processes::{Clients, Cluster, Layout, Target};

/// Kill processes of a cluster at random while jobs run, and check every result.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long faults are injected; jobs started by then are run to their end.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// The seed of the jobs' inputs and of the faults (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Workers in the cluster.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Executor processes per worker.
    #[arg(long, default_value_t = 2)]
    processes: u32,
    /// Jobs submitted at once (each by its own `kiln submit`).
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// The mean pause between two faults, in seconds (each pause is drawn between half and
    /// one and a half of it).
    #[arg(long, default_value_t = 6.0)]
    fault_interval: f64,
    /// The largest input of a job, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_input: u64,
    /// Seconds after which a job that has not ended counts as stuck.
    #[arg(long, default_value_t = 300)]
    stuck_after: u64,
    /// Run this `kiln` binary instead of building the debug one.
    #[arg(long)]
    kiln: Option<PathBuf>,
    /// The cargo target directory the workers build plugins in (default: target/chaos/plugins).
    #[arg(long)]
    plugin_target: Option<PathBuf>,
    /// Keep the run's directory (logs, inputs, the controller's data) even when it passes.
    #[arg(long)]
    keep: bool,
}

/// What a chaos run counted.
#[derive(Debug, Default)]
pub struct Figures {
    pub seed: u64,
    /// Jobs that ran to an outcome, by plugin.
    pub jobs: BTreeMap<&'static str, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Submissions refused before a job existed (the controller was down); submitted again.
    pub refused: u64,
    pub wrong: Vec<String>,
    pub missing: Vec<String>,
    pub stuck: Vec<String>,
    /// Results that `kiln result` no longer gave right after the faults stopped.
    pub unreadable: Vec<String>,
    /// Jobs the controller still had unfinished at the end (not the run's own submissions).
    pub unfinished: Vec<String>,
    /// Processes of the run still alive after it stopped them.
    pub left_behind: Vec<u32>,
    /// How long faults were injected, and the whole run.
    pub chaos_time: Duration,
    pub total_time: Duration,
    /// The load average (1, 5, 15 minutes) at the start and at the end.
    pub load_start: String,
    pub load_end: String,
    /// Where the run's logs and inputs are, when they were kept.
    pub kept: Option<PathBuf>,
}

impl Figures {
    pub fn passed(&self) -> bool {
        self.wrong.is_empty()
            && self.missing.is_empty()
            && self.stuck.is_empty()
            && self.unreadable.is_empty()
            && self.left_behind.is_empty()
    }

    /// The figures as the run prints them.
    pub fn render(&self) -> String {
        let total = |map: &BTreeMap<&str, u64>| map.values().sum::<u64>();
        let by_kind = |map: &BTreeMap<&str, u64>| {
            map.iter().map(|(kind, n)| format!("{kind} {n}")).collect::<Vec<_>>().join(", ")
        };
        let listed = |items: &[String]| items.iter().map(|item| format!("\n  - {item}")).collect::<String>();
        let mut text = format!(
            "chaos run, seed {}: {:.1} min of faults, {:.1} min in all; load average {} at the start, {} at the end\n",
            self.seed,
            self.chaos_time.as_secs_f64() / 60.0,
            self.total_time.as_secs_f64() / 60.0,
            self.load_start,
            self.load_end,
        );
        text += &format!("jobs run: {} ({})\n", total(&self.jobs), by_kind(&self.jobs));
        text += &format!("faults injected: {} ({})\n", total(&self.faults), by_kind(&self.faults));
        text += &format!("submissions refused while the controller was down (submitted again): {}\n", self.refused);
        text += &format!("wrong results: {}{}\n", self.wrong.len(), listed(&self.wrong));
        text += &format!("missing results (failed or lost): {}{}\n", self.missing.len(), listed(&self.missing));
        text += &format!("stuck jobs: {}{}\n", self.stuck.len(), listed(&self.stuck));
        text += &format!("results unreadable afterwards: {}{}\n", self.unreadable.len(), listed(&self.unreadable));
        text += &format!("other jobs left unfinished: {}{}\n", self.unfinished.len(), listed(&self.unfinished));
        text += &format!("processes left behind: {}\n", self.left_behind.len());
        if let Some(kept) = &self.kept {
            text += &format!("logs, inputs and the controller's data: {}\n", kept.display());
        }
        text
    }
}

/// Set by SIGINT or SIGTERM: the run stops injecting faults, ends its jobs and its processes.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let figures = drive(args)?;
    println!("{}", figures.render());
    if !figures.passed() {
        bail!("the chaos run found wrong, missing or stuck jobs, unreadable results or processes left behind");
    }
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// An example plugin's crate.
fn example(name: &str) -> PathBuf {
    root().join("examples/plugins").join(name)
}

/// Runs the chaos: builds kiln if need be, starts the cluster, runs jobs and faults, checks.
pub fn drive(args: &Args) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let seed = args
        .seed
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64 % 1_000_000));
    eprintln!("chaos: seed {seed} (run again with --seed {seed})");
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let kiln = match &args.kiln {
        Some(kiln) => std::path::absolute(kiln)?,
        None => build_kiln()?,
    };
    // Under the cargo target directory, whatever binary runs: a `--kiln` from elsewhere (say
    // /tmp/kiln) must not put the run's scratch space at the filesystem's root.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let work = target.join("chaos");
    std::fs::create_dir_all(&work)?;
    let dir = tempfile::Builder::new().prefix(&format!("run-{seed}-")).tempdir_in(&work)?;
    let layout = Layout {
        kiln,
        dir: dir.path().to_path_buf(),
        plugin_target: args.plugin_target.clone().unwrap_or_else(|| work.join("plugins")),
        workers: args.workers.max(1),
        processes: args.processes.max(1),
    };
    let mut figures = Figures { seed, load_start: load_average(), ..Figures::default() };
    let mut cluster = Cluster::start(layout)?;
    eprintln!("chaos: cluster up (logs in {}); warming up the plugins", cluster.logs().display());
    warm_up(&cluster.clients(), dir.path(), seed, args)?;

    let chaos_started = Instant::now();
    let chaos_end = chaos_started + Duration::from_secs_f64(args.minutes.max(0.0) * 60.0);
    let results = Mutex::new(Vec::new());
    let refused = std::sync::atomic::AtomicU64::new(0);
    let clients = cluster.clients();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut submitters = Vec::new();
        for index in 0..args.clients.max(1) {
            let (clients, results, refused, dir) = (&clients, &results, &refused, dir.path());
            let mut rng = Rng::new(seed.wrapping_mul(1000).wrapping_add(index as u64 + 1));
            submitters.push(
                scope.spawn(move || submit_until(&mut rng, clients, dir, index, chaos_end, args, results, refused)),
            );
        }
        let injected = inject_faults(&mut cluster, &mut Rng::new(seed), chaos_end, args);
        figures.chaos_time = chaos_started.elapsed();
        // Whatever happened, every daemon runs again before the last jobs are waited for.
        let revived = revive_all(&mut cluster, args.workers.max(1));
        if injected.is_err() || revived.is_err() {
            STOP.store(true, Ordering::Relaxed);
        }
        for submitter in submitters {
            submitter.join().map_err(|_| anyhow::anyhow!("a submitting thread panicked"))??;
        }
        figures.faults = injected?;
        revived
    })?;
    figures.refused = refused.into_inner();

    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let clients = cluster.clients();
    for result in &results {
        *figures.jobs.entry(result.plugin.name()).or_default() += 1;
        let about = |what: &str| {
            format!("{} ({} bytes, chunks of {}): {what}", result.describe(), result.input_bytes, result.chunk_size)
        };
        match &result.outcome {
            Outcome::Right { job } => {
                if let Err(why) = still_readable(&clients, *job, &result.expected) {
                    figures.unreadable.push(about(&why));
                }
            }
            Outcome::Wrong { got, .. } => figures.wrong.push(about(&format!("got {}", shorten(got)))),
            Outcome::Missing { stderr, .. } => figures.missing.push(about(&shorten(stderr))),
            Outcome::Stuck { stderr, .. } => {
                figures.stuck.push(about(&format!("not ended after {} s; {}", args.stuck_after, shorten(stderr))))
            }
            Outcome::Refused { .. } | Outcome::Interrupted => {}
        }
    }
    figures.unfinished = unfinished(&clients);
    figures.left_behind = cluster.stop();
    figures.load_end = load_average();
    figures.total_time = started.elapsed();
    if args.keep || !figures.passed() {
        figures.kept = Some(dir.keep());
    }
    Ok(figures)
}

/// Builds the debug `kiln` binary (the one the engine's tests run); answers its path.
fn build_kiln() -> anyhow::Result<PathBuf> {
    eprintln!("chaos: building kiln");
    let output = Command::new(env!("CARGO"))
        .args(["build", "-p", "kiln-engine", "--bin", "kiln", "--message-format", "json-render-diagnostics"])
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo build")?;
    if !output.status.success() {
        bail!("cargo build of kiln failed");
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "kiln")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo built no kiln executable")
}

/// Runs one small job of each plugin without faults, so that each is built before the chaos
/// starts (a build is not what this run is about), and checks their results.
fn warm_up(clients: &Clients, dir: &Path, seed: u64, args: &Args) -> anyhow::Result<()> {
    let mut rng = Rng::new(seed ^ 0x5EED);
    for plugin in Plugin::ALL {
        let job = jobs::make(&mut rng, plugin, 20_000, dir, &format!("warm-up-{}", plugin.name()))?;
        let stop = AtomicBool::new(false);
        match jobs::submit(&mut clients.command("submit"), &job, Duration::from_secs(args.stuck_after.max(600)), &stop)?
        {
            Outcome::Right { .. } => {}
            outcome => {
                bail!("the warm-up job of {} did not give its result, without any fault: {outcome:?}", plugin.name())
            }
        }
    }
    Ok(())
}

/// A job that ran during the chaos and how it ended.
struct Ran {
    plugin: Plugin,
    params: String,
    input: PathBuf,
    input_bytes: u64,
    chunk_size: u64,
    expected: serde_json::Value,
    outcome: Outcome,
}

impl Ran {
    fn describe(&self) -> String {
        let job = match &self.outcome {
            Outcome::Right { job } | Outcome::Wrong { job, .. } => Some(*job),
            Outcome::Missing { job, .. } | Outcome::Stuck { job, .. } => *job,
            Outcome::Refused { .. } | Outcome::Interrupted => None,
        };
        let job = job.map_or_else(|| "a job".to_owned(), |job| format!("job {job}"));
        format!("{job}, {} {:?} on {}", self.plugin.name(), self.params, self.input.display())
    }
}

/// Submits jobs one after another until `end`: each job to its end; a submission refused
/// before its job existed is made again after a pause.
#[allow(clippy::too_many_arguments)]
fn submit_until(
    rng: &mut Rng,
    clients: &Clients,
    dir: &Path,
    index: usize,
    end: Instant,
    args: &Args,
    results: &Mutex<Vec<Ran>>,
    refused: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    let mut n = 0;
    while Instant::now() < end && !STOP.load(Ordering::Relaxed) {
        n += 1;
        let plugin = Plugin::ALL[rng.below(3) as usize];
        let bytes = rng.between(1 << 14, args.max_input.max(1 << 14));
        let job = jobs::make(rng, plugin, bytes, dir, &format!("input-{index}-{n}"))?;
        let deadline = Duration::from_secs(args.stuck_after);
        let outcome = loop {
            match jobs::submit(&mut clients.command("submit"), &job, deadline, &STOP)? {
                Outcome::Refused { stderr } if !STOP.load(Ordering::Relaxed) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!("chaos: a submission was refused, submitting again: {}", shorten(&stderr));
                    std::thread::sleep(Duration::from_secs(1));
                }
                outcome => break outcome,
            }
        };
        if matches!(outcome, Outcome::Interrupted) {
            break;
        }
        if !matches!(outcome, Outcome::Right { .. }) {
            eprintln!("chaos: {} {} {:?}: {outcome:?}", job.input.display(), plugin.name(), job.params);
        }
        let ran = Ran {
            plugin,
            params: job.params,
            input: job.input,
            input_bytes: job.input_bytes,
            chunk_size: job.chunk_size,
            expected: job.expected,
            outcome,
        };
        results.lock().unwrap_or_else(|e| e.into_inner()).push(ran);
    }
    Ok(())
}

/// Kills a random process after each random pause until `end`, and starts the daemons it
/// killed again after a random pause of their own; answers the faults by kind.
fn inject_faults(
    cluster: &mut Cluster,
    rng: &mut Rng,
    end: Instant,
    args: &Args,
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut faults = BTreeMap::new();
    // Daemons down, and when each is to start again.
    let mut revivals: Vec<(Instant, Target)> = Vec::new();
    let mean_ms = (args.fault_interval.max(0.1) * 1000.0) as u64;
    let mut next_fault = Instant::now() + Duration::from_millis(rng.between(mean_ms / 2, mean_ms * 3 / 2));
    while Instant::now() < end && !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = revivals.into_iter().partition(|(at, _)| *at <= now);
        revivals = later;
        for (_, target) in due {
            cluster.revive(target)?;
        }
        if now < next_fault {
            continue;
        }
        next_fault = now + Duration::from_millis(rng.between(mean_ms / 2, mean_ms * 3 / 2));
        // The kind first (a controller in one fault of five, else a worker or an executor
        // alike), then one of that kind; another kind when none is running.
        let targets = cluster.targets();
        let wanted = match rng.below(5) {
            0 => "controller",
            1 | 2 => "worker",
            _ => "executor",
        };
        let of_kind: Vec<Target> = targets.iter().copied().filter(|t| kind(*t) == wanted).collect();
        let pool = if of_kind.is_empty() { &targets } else { &of_kind };
        let Some(&target) = pool.get(rng.below(pool.len().max(1) as u64) as usize) else { continue };
        cluster.kill(target);
        *faults.entry(kind(target)).or_default() += 1;
        eprintln!("chaos: killed {target:?}");
        if !matches!(target, Target::Executor(..)) {
            revivals.push((now + Duration::from_millis(rng.between(200, 3000)), target));
        }
    }
    Ok(faults)
}

fn kind(target: Target) -> &'static str {
    match target {
        Target::Controller => "controller",
        Target::Worker(_) => "worker",
        Target::Executor(..) => "executor",
    }
}

/// Starts every daemon that is down and waits until all workers joined again.
fn revive_all(cluster: &mut Cluster, workers: usize) -> anyhow::Result<()> {
    for target in cluster.down() {
        cluster.revive(target)?;
    }
    cluster.wait_workers(workers, Duration::from_secs(60))
}

/// Checks that `kiln result` still gives a job's expected result.
fn still_readable(clients: &Clients, job: u64, expected: &serde_json::Value) -> Result<(), String> {
    let output = clients
        .command("result")
        .arg(job.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run kiln result: {e}"))?;
    if !output.status.success() {
        return Err(format!("kiln result {job} failed: {}", shorten(&String::from_utf8_lossy(&output.stderr))));
    }
    match serde_json::from_slice::<serde_json::Value>(&output.stdout) {
        Ok(got) if &got == expected => Ok(()),
        _ => {
            Err(format!("kiln result {job} gave another result: {}", shorten(&String::from_utf8_lossy(&output.stdout))))
        }
    }
}

/// The controller's jobs that have not ended, other than those the run followed (a submission
/// whose job was created but whose answer was lost leaves one, failed once its upload is
/// abandoned).
fn unfinished(clients: &Clients) -> Vec<String> {
    let Ok(output) = clients.command("jobs").arg("--json").stdin(std::process::Stdio::null()).output() else {
        return vec!["kiln jobs could not be run".to_owned()];
    };
    let Ok(list) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        return vec![format!("kiln jobs gave no JSON: {}", shorten(&String::from_utf8_lossy(&output.stderr)))];
    };
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|job| !matches!(job["state"].as_str(), Some("Succeeded" | "Failed" | "Cancelled")))
        .map(|job| format!("job {} is {}", job["id"], job["state"]))
        .collect()
}

/// The first and last lines of a long text.
fn shorten(text: &str) -> String {
    let text = text.trim();
    if text.len() <= 600 {
        return text.replace('\n', " | ");
    }
    let head: String = text.chars().take(300).collect();
    let tail: String = text.chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{} … {}", head.replace('\n', " | "), tail.replace('\n', " | "))
}

/// The 1, 5 and 15-minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// Three quarters of a minute of chaos with a fixed seed, faults every 3 s on average: no
    /// job may be wrong, missing or stuck, every result must be readable afterwards and no
    /// process left.
    #[test]
    fn chaos_for_most_of_a_minute_loses_no_job() {
        // The plugins build where the engine's tests build them, warm when those ran first.
        let target = root().join("target/tmp/plugin-target");
        let cli = Cli::parse_from([
            "chaos",
            "--minutes",
            "0.75",
            "--seed",
            "42",
            "--fault-interval",
            "3",
            "--max-input",
            "262144",
            "--stuck-after",
            "120",
            "--plugin-target",
            target.to_str().unwrap(),
        ]);
        let figures = drive(&cli.args).unwrap();
        eprintln!("{}", figures.render());
        assert!(figures.passed(), "{}", figures.render());
        assert!(figures.jobs.values().sum::<u64>() >= 5, "{}", figures.render());
        assert!(figures.faults.values().sum::<u64>() >= 5, "{}", figures.render());
    }
}
