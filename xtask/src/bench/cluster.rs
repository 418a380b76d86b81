//! A cluster on this machine for the cluster measures: a release `kiln controller` and `kiln
//! worker`s, each a child process that is stopped when its guard drops, also on error.
//!
//! Everything goes through the `kiln` command line as a user's would: `kiln submit` for jobs,
//! `kiln status --json` for a job's timings, `kiln cluster --json` to wait for workers. The
//! controller's log lines are kept, stamped with the time they arrived, because they say when a
//! job changed state (`Queued`, `Aggregating`), which its status does not.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use super::Bench;
use super::netsim::Host;
use super::process::{Peaks, descendants_of, peak_rss, run_measured, run_with_timeout};

/// How long a daemon may take to print its address, and a worker to join.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a daemon may take to stop after SIGTERM (it stops its executors first) before it
/// is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long one `kiln` client command may take before it is killed and the bench fails: a
/// 1 GiB word count or 100,000 chunks on a slow, busy machine stay well below it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// A controller and its workers, stopped when dropped.
pub struct Cluster {
    addr: String,
    /// The keys the controller generated (`kiln-key-v2.…`, `kiln-join-v2.…`), read from its
    /// data directory.
    api_key: String,
    join_token: String,
    /// The release `kiln` binary.
    kiln: PathBuf,
    /// Declared before the controller: fields drop in order, and workers stop first.
    workers: Vec<Daemon>,
    controller: Daemon,
    /// Where the processes run: all on this machine's loopback, or on simulated hosts.
    placement: Option<Placement>,
    /// More environment of the controller and every worker.
    env: Vec<(String, String)>,
    /// The controller's data directory; declared last so that it is removed after the daemons
    /// stopped.
    _data_dir: tempfile::TempDir,
}

/// Simulated hosts (network namespaces, see [`super::netsim`]) for the controller, the client
/// and each worker in turn.
#[derive(Debug, Clone)]
pub struct Placement {
    pub controller: Host,
    pub client: Host,
    pub workers: Vec<Host>,
}

/// How a bench cluster's links run: TLS (the default) or plain TCP (`--insecure-plaintext`),
/// to measure what TLS costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    #[default]
    Tls,
    PlainTcp,
}

/// How a cluster is set up beyond its workers; [`Options::default`] is TLS links on this
/// machine's loopback.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub link: Link,
    pub placement: Option<Placement>,
    /// More flags of the controller.
    pub controller_args: Vec<String>,
    /// More environment of the controller and every worker (an object store's `AWS_*`).
    pub env: Vec<(String, String)>,
}

/// A job that `kiln submit` ran to its end.
pub struct Submitted {
    pub job: u64,
    /// What `kiln submit` printed on stdout: the job's output.
    pub output: String,
    /// When the command was started, and how long it took to its exit.
    pub started: SystemTime,
    pub took: Duration,
    /// The peak resident memory of the `kiln submit` process ([`Peaks::polled`] is its own).
    pub client_peak: Peaks,
}

/// A job's timings from `kiln status --json`, in milliseconds since the Unix epoch.
pub struct JobTimes {
    pub n_chunks: u64,
    pub created_ms: u64,
    /// When the controller first dispatched work for the job (a prepare or a chunk).
    pub started_ms: u64,
    pub finished_ms: u64,
}

/// The peak resident memory (VmHWM) of the cluster's processes, in bytes.
pub struct PeakMemory {
    pub controller: u64,
    /// Each worker daemon.
    pub workers: Vec<u64>,
    /// The largest executor process (`kiln exec`, and the sandbox's processes around it) of
    /// any worker.
    pub executor: Option<u64>,
}

impl Cluster {
    /// Starts a controller with a fresh data directory under the bench's work directory and
    /// `n_workers` workers of `processes` each that share the bench's plugin cache, and waits
    /// until every worker has joined.
    pub fn start(bench: &Bench, n_workers: usize, processes: u32) -> anyhow::Result<Cluster> {
        Cluster::start_on(bench, n_workers, processes, Link::Tls)
    }

    /// [`Cluster::start`] with its links over `link`.
    pub fn start_on(bench: &Bench, n_workers: usize, processes: u32, link: Link) -> anyhow::Result<Cluster> {
        Cluster::start_placed(bench, n_workers, processes, link, None)
    }

    /// [`Cluster::start_on`] with the controller, the workers and the client on simulated hosts.
    pub fn start_placed(
        bench: &Bench,
        n_workers: usize,
        processes: u32,
        link: Link,
        placement: Option<Placement>,
    ) -> anyhow::Result<Cluster> {
        Cluster::start_with(bench, n_workers, processes, Options { link, placement, ..Options::default() })
    }

    /// [`Cluster::start`] set up as `options` say.
    pub fn start_with(bench: &Bench, n_workers: usize, processes: u32, options: Options) -> anyhow::Result<Cluster> {
        let Options { link, placement, controller_args, env } = options;
        let data_dir = tempfile::Builder::new()
            .prefix("cluster-")
            .tempdir_in(&bench.work)
            .context("cannot make the controller's data directory")?;
        let controller_host = placement.as_ref().map(|p| &p.controller);
        let mut command = daemon_command(bench, controller_host);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let listen = format!("{}:0", controller_host.map_or("127.0.0.1", |host| host.ip.as_str()));
        command.arg("controller").args(["--listen", &listen]).arg("--data-dir").arg(data_dir.path());
        // The bench's inputs may be named by reference (`file://`), read by the workers.
        command.arg("--file-input-root").arg(bench.inputs());
        if link == Link::PlainTcp {
            command.arg("--insecure-plaintext");
        }
        command.args(&controller_args);
        let (controller, addr) = Daemon::spawn(command, "controller")?;
        let stored = |file: &str| {
            std::fs::read_to_string(data_dir.path().join(file))
                .map(|text| text.trim().to_owned())
                .with_context(|| format!("the controller stored no {file}"))
        };
        let (api_key, join_token) = (stored("api_key")?, stored("join_token")?);
        let mut cluster = Cluster {
            addr,
            api_key,
            join_token,
            kiln: bench.kiln.clone(),
            workers: Vec::new(),
            controller,
            placement,
            env,
            _data_dir: data_dir,
        };
        for _ in 0..n_workers {
            cluster.add_worker(bench, processes)?;
        }
        Ok(cluster)
    }

    /// Starts one more worker of `processes` and waits until the controller lists it.
    pub fn add_worker(&mut self, bench: &Bench, processes: u32) -> anyhow::Result<()> {
        let controller = self.addr.clone();
        self.add_worker_via(bench, processes, &controller, None, |_| Ok(()))
    }

    /// [`Cluster::add_worker`] with the worker dialling the controller at `controller` and
    /// telling it to dial back at `advertise` (links, such as delaying proxies, that stand
    /// between them); `listening` gets the address the worker listens on before the bench
    /// waits for it to join.
    pub fn add_worker_via(
        &mut self,
        bench: &Bench,
        processes: u32,
        controller: &str,
        advertise: Option<&str>,
        listening: impl FnOnce(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let host = match &self.placement {
            Some(placement) => {
                Some(placement.workers.get(self.workers.len()).context("more workers than simulated hosts for them")?)
            }
            None => None,
        };
        let mut command = daemon_command(bench, host);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let listen = format!("{}:0", host.map_or("127.0.0.1", |host| host.ip.as_str()));
        command
            .arg("worker")
            .args(["--listen", &listen])
            .args(["--controller", controller, "--join-token", &self.join_token])
            .args(["--processes", &processes.to_string()]);
        if let Some(advertise) = advertise {
            command.args(["--advertise", advertise]);
        }
        let (worker, addr) = Daemon::spawn(command, "worker")?;
        self.workers.push(worker);
        listening(&addr)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let output = run_with_timeout(self.client("cluster").arg("--json"), START_TIMEOUT)?;
            if output.status.success() {
                let info: serde_json::Value = serde_json::from_slice(&output.stdout).context("kiln cluster's JSON")?;
                if info["workers"].as_array().map_or(0, Vec::len) >= self.workers.len() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "worker {} did not join the controller within {} s; its log:\n{}",
                    self.workers.len(),
                    START_TIMEOUT.as_secs(),
                    self.workers.last().map(Daemon::log_text).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `kiln submit` with the plugin, the input and `args` to the job's end, and checks
    /// that it succeeded.
    pub fn submit(&self, plugin: &Path, input: &Path, args: &[&str]) -> anyhow::Result<Submitted> {
        let mut command = self.client("submit");
        command.arg("--plugin").arg(plugin).arg("--input").arg(input).args(args);
        let started = SystemTime::now();
        let clock = Instant::now();
        let (output, client_peak) = run_measured(&mut command, COMMAND_TIMEOUT)?;
        let took = clock.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!("{command:?} failed:\n{stderr}\ncontroller log:\n{}", self.controller.log_tail(30));
        }
        // "submitted job N" is the first line kiln submit prints on stderr.
        let job = stderr
            .lines()
            .find_map(|line| line.strip_prefix("submitted job "))
            .and_then(|id| id.trim().parse().ok())
            .with_context(|| format!("kiln submit did not say which job it submitted:\n{stderr}"))?;
        let output = String::from_utf8(output.stdout).context("kiln submit's output is UTF-8")?;
        Ok(Submitted { job, output, started, took, client_peak })
    }

    /// The timings of a job that ended.
    pub fn times(&self, job: u64) -> anyhow::Result<JobTimes> {
        let mut command = self.client("status");
        command.arg(job.to_string()).arg("--json");
        let output = run_with_timeout(&mut command, COMMAND_TIMEOUT)?;
        if !output.status.success() {
            bail!("{command:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).context("kiln status's JSON")?;
        let field =
            |name: &str| status[name].as_u64().with_context(|| format!("job {job}'s status has no {name}: {status}"));
        Ok(JobTimes {
            n_chunks: field("n_chunks")?,
            created_ms: field("created_ms")?,
            started_ms: field("started_ms")?,
            finished_ms: field("finished_ms")?,
        })
    }

    /// When the controller logged that `job` changed to `state` (`Queued`, `Aggregating`...),
    /// in milliseconds since the Unix epoch; `None` if it did not log it.
    pub fn state_changed_ms(&self, job: u64, state: &str) -> Option<u64> {
        let (job, to) = (format!(" job={job} "), format!(" to={state}"));
        let lines = lock(&self.controller.lines);
        lines
            .iter()
            .find(|(_, line)| line.contains("job state changed") && line.contains(&job) && line.ends_with(&to))
            .map(|(at, _)| epoch_ms(*at))
    }

    /// The peak resident memory of the controller, each worker daemon and their executors so
    /// far; read while the processes run (VmHWM is gone with them).
    pub fn peak_memory(&self) -> anyhow::Result<PeakMemory> {
        let controller = peak_rss(self.controller.child.id())?;
        let mut workers = Vec::new();
        let mut executor = None;
        for worker in &self.workers {
            workers.push(peak_rss(worker.child.id())?);
            for child in descendants_of(worker.child.id()) {
                // An executor may exit between listing and reading; it has no figure then.
                if let Ok(bytes) = peak_rss(child) {
                    executor = executor.max(Some(bytes));
                }
            }
        }
        Ok(PeakMemory { controller, workers, executor })
    }

    /// The controller's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A `kiln` client command for this cluster.
    fn client(&self, subcommand: &str) -> Command {
        let mut command = kiln_on(&self.kiln, self.placement.as_ref().map(|p| &p.client));
        command.env("RUST_LOG", "warn").arg(subcommand).args(["--controller", &self.addr, "--api-key", &self.api_key]);
        command
    }
}

/// The `kiln` command of a daemon on `host` (this machine's own network if `None`): the
/// bench's plugin cache, plain log lines at info level.
fn daemon_command(bench: &Bench, host: Option<&Host>) -> Command {
    let mut command = kiln_on(&bench.kiln, host);
    command.env("KILN_CACHE_DIR", &bench.cache_dir).env("KILN_TARGET_DIR", &bench.target_dir);
    if host.is_some() {
        // A simulated host reaches only the other simulated hosts: cargo builds plugins from
        // the crates it has already downloaded (see `scaling`, which makes sure it has).
        command.env("CARGO_NET_OFFLINE", "true");
    }
    command.env("RUST_LOG", "info").env("NO_COLOR", "1");
    command
}

/// `kiln` run in `host`'s network namespace (`ip netns exec` enters it and then becomes
/// kiln, keeping the pid), or directly.
fn kiln_on(kiln: &Path, host: Option<&Host>) -> Command {
    match host {
        Some(host) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &host.netns]).arg(kiln);
            command
        }
        None => Command::new(kiln),
    }
}

/// A daemon: its process and its log lines, each with the time it arrived.
struct Daemon {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<(SystemTime, String)>>>,
}

impl Daemon {
    /// Starts a daemon and waits until it prints `listening on ADDR`; answers ADDR.
    fn spawn(mut command: Command, name: &'static str) -> anyhow::Result<(Daemon, String)> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start the {name}: {command:?}"))?;
        let stderr = child.stderr.take().context("the daemon's stderr is piped")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let daemon = Daemon { name, child, lines: Arc::clone(&lines) };
        let (addr_tx, addr_rx) = mpsc::channel();
        // Reads until the daemon's stderr closes, so that the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = addr_tx.send(addr.trim().to_owned());
                }
                lock(&lines).push((SystemTime::now(), line));
            }
        });
        match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ok((daemon, addr)),
            Err(_) => bail!("the {name} did not say where it listens; its log:\n{}", daemon.log_text()),
        }
    }

    fn log_text(&self) -> String {
        lock(&self.lines).iter().map(|(_, line)| format!("{line}\n")).collect()
    }

    fn log_tail(&self, n: usize) -> String {
        let lines = lock(&self.lines);
        lines.iter().skip(lines.len().saturating_sub(n)).map(|(_, line)| format!("{line}\n")).collect()
    }
}

impl Drop for Daemon {
    /// Stops the daemon as Ctrl-C would (a worker stops its executors), and kills it if it does
    /// not stop in time. Its executors also end when their pipes to it close.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill has no memory effects; the pid is our own unreaped child's.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!("the {} did not stop within {} s of SIGTERM: killing it", self.name, STOP_GRACE.as_secs());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Milliseconds since the Unix epoch, as the controller's timings are.
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The line without terminal colour codes (`ESC [ ... m`), in case the daemon adds them.
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped() {
        let line = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m job state changed job=3 to=Queued";
        assert_eq!(strip_ansi(line), "2026-01-01T00:00:00Z  INFO job state changed job=3 to=Queued");
    }
}
