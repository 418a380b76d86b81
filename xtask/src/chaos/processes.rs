//! The chaos run's cluster: a `kiln controller` and worker slots, each daemon a child process
//! in a process group of its own (so that a Ctrl-C on the terminal reaches only xtask, which
//! then stops everything in order, and so that whatever a daemon leaves behind can be found
//! and ended), its log appended to a file in the run's directory.
//!
//! Faults are SIGKILLs: of the controller or a worker (restarted later by [`Cluster::revive`],
//! the controller on the same address and data directory, a worker with its own plugin cache)
//! or of an executor (a worker's `kiln exec` child, which the worker replaces by itself).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a daemon may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a daemon may take to stop after SIGTERM before its whole group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where the cluster's files and binaries are.
pub struct Layout {
    /// The `kiln` binary.
    pub kiln: PathBuf,
    /// The run's directory: the controller's data, the workers' caches, logs and inputs.
    pub dir: PathBuf,
    /// The cargo target directory the workers build plugins in, kept across runs.
    pub plugin_target: PathBuf,
    /// Worker slots, each with the given number of executor processes.
    pub workers: usize,
    pub processes: u32,
}

/// A running daemon.
struct Daemon {
    child: Child,
    /// Its process group (its own pid).
    group: libc::pid_t,
}

/// A controller and its workers; every process group is ended when dropped.
pub struct Cluster {
    layout: Layout,
    /// The address the controller listens on, kept across its restarts.
    addr: String,
    /// The whole API key and join token, as the controller stored them.
    api_key: String,
    join_token: String,
    controller: Option<Daemon>,
    workers: Vec<Option<Daemon>>,
    /// Every process group started, to find what is left at the end.
    groups: Vec<libc::pid_t>,
}

/// What a client needs to reach the cluster; cheap to clone into the threads that submit.
#[derive(Clone)]
pub struct Clients {
    kiln: PathBuf,
    addr: String,
    api_key: String,
}

impl Clients {
    /// A `kiln` client command for the cluster (`submit`, `result`, ...), in a process group
    /// of its own so that a Ctrl-C on the terminal reaches only xtask, which ends it.
    pub fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(&self.kiln);
        // No RUST_LOG: a client prints only its own messages, as a user sees them.
        command.env_remove("RUST_LOG").env("NO_COLOR", "1").arg(subcommand).args([
            "--controller",
            &self.addr,
            "--api-key",
            &self.api_key,
        ]);
        command.process_group(0);
        die_with_parent(&mut command);
        command
    }
}

/// What can be killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Controller,
    Worker(usize),
    /// An executor of the worker in that slot (its pid).
    Executor(usize, u32),
}

impl Cluster {
    /// Starts a controller on a free loopback port and the workers, and waits until all joined.
    pub fn start(layout: Layout) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(layout.dir.join("logs"))?;
        let mut cluster = Cluster {
            addr: "127.0.0.1:0".to_owned(),
            api_key: String::new(),
            join_token: String::new(),
            controller: None,
            workers: (0..layout.workers).map(|_| None).collect(),
            groups: Vec::new(),
            layout,
        };
        cluster.start_controller()?;
        let stored = |file: &str| {
            std::fs::read_to_string(cluster.data_dir().join(file))
                .map(|text| text.trim().to_owned())
                .with_context(|| format!("the controller stored no {file}"))
        };
        (cluster.api_key, cluster.join_token) = (stored("api_key")?, stored("join_token")?);
        for slot in 0..cluster.workers.len() {
            cluster.start_worker(slot)?;
        }
        cluster.wait_workers(cluster.workers.len(), START_TIMEOUT)?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.layout.dir.join("controller")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.layout.dir.join("logs").join(format!("{name}.log"))
    }

    /// Starts the controller on [`Cluster::addr`] (a free port the first time).
    fn start_controller(&mut self) -> anyhow::Result<()> {
        let mut command = self.daemon_command();
        command.arg("controller").args(["--listen", &self.addr]).arg("--data-dir").arg(self.data_dir());
        let log = self.log("controller");
        // A port freed by a killed controller is normally free again at once; a connection
        // still closing may hold it for a moment.
        let mut tries = 0;
        let (daemon, addr) = loop {
            let before = starts_logged(&log);
            let daemon = spawn(&mut command, &log)?;
            self.groups.push(daemon.group);
            match wait_listening(daemon, &log, before, "controller") {
                Ok(started) => break started,
                Err(error) if tries < 5 && self.addr != "127.0.0.1:0" => {
                    tries += 1;
                    eprintln!("chaos: the controller did not start again ({error:#}); retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(error) => return Err(error),
            }
        };
        if self.addr != "127.0.0.1:0" && addr != self.addr {
            bail!("the controller came back on {addr} instead of {}", self.addr);
        }
        self.addr = addr;
        self.controller = Some(daemon);
        Ok(())
    }

    /// Starts the worker of `slot`. The workers share one plugin cache (as workers of one
    /// machine would), kept across restarts, so each plugin is built once.
    fn start_worker(&mut self, slot: usize) -> anyhow::Result<()> {
        let cache = self.layout.dir.join("worker-cache");
        let mut command = self.daemon_command();
        command
            .arg("worker")
            .args(["--listen", "127.0.0.1:0", "--controller", &self.addr, "--join-token", &self.join_token])
            .args(["--processes", &self.layout.processes.to_string()])
            .arg("--cache-dir")
            .arg(cache);
        let log = self.log(&format!("worker-{slot}"));
        let before = starts_logged(&log);
        let daemon = spawn(&mut command, &log)?;
        self.groups.push(daemon.group);
        let (daemon, _) = wait_listening(daemon, &log, before, "worker")?;
        self.workers[slot] = Some(daemon);
        Ok(())
    }

    /// The `kiln` command of a daemon: plain info-level logs, plugins built in the shared
    /// target directory.
    fn daemon_command(&self) -> Command {
        let mut command = Command::new(&self.layout.kiln);
        for variable in ["KILN_API_KEY", "KILN_JOIN_TOKEN", "KILN_CONTROLLER", "KILN_DATA_DIR", "KILN_CACHE_DIR"] {
            command.env_remove(variable);
        }
        command.env("KILN_TARGET_DIR", &self.layout.plugin_target).env("RUST_LOG", "info").env("NO_COLOR", "1");
        command
    }

    /// What clients need to reach the cluster (as it is now: the address never changes).
    pub fn clients(&self) -> Clients {
        Clients { kiln: self.layout.kiln.clone(), addr: self.addr.clone(), api_key: self.api_key.clone() }
    }

    /// The processes that can be killed now: the controller and workers that run, and the
    /// executors of the workers.
    pub fn targets(&mut self) -> Vec<Target> {
        let mut targets = Vec::new();
        if running(&mut self.controller) {
            targets.push(Target::Controller);
        }
        for slot in 0..self.workers.len() {
            if !running(&mut self.workers[slot]) {
                continue;
            }
            targets.push(Target::Worker(slot));
            if let Some(worker) = &self.workers[slot] {
                for pid in crate::bench::process::children_of(worker.child.id()) {
                    if is_executor(pid) {
                        targets.push(Target::Executor(slot, pid));
                    }
                }
            }
        }
        targets
    }

    /// Kills `target` with SIGKILL, as a crash would: only that process, not its children.
    pub fn kill(&mut self, target: Target) {
        match target {
            Target::Controller => kill_daemon(&mut self.controller),
            Target::Worker(slot) => kill_daemon(&mut self.workers[slot]),
            Target::Executor(_, pid) => {
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    // The pid was a live child of the worker a moment ago; if it exited since,
                    // its zombie (not reaped until the worker waits) still holds the number.
                    // SAFETY: kill has no memory effects.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// Which daemons are down.
    pub fn down(&mut self) -> Vec<Target> {
        let mut down = Vec::new();
        if !running(&mut self.controller) {
            down.push(Target::Controller);
        }
        for slot in 0..self.workers.len() {
            if !running(&mut self.workers[slot]) {
                down.push(Target::Worker(slot));
            }
        }
        down
    }

    /// Starts a daemon that is down again (the controller on the same address and data).
    pub fn revive(&mut self, target: Target) -> anyhow::Result<()> {
        match target {
            Target::Controller if !running(&mut self.controller) => self.start_controller(),
            Target::Worker(slot) if !running(&mut self.workers[slot]) => self.start_worker(slot),
            _ => Ok(()),
        }
    }

    /// Waits until the controller lists `n` workers.
    pub fn wait_workers(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.clients().command("cluster").arg("--json").stdin(Stdio::null()).output()?;
            if output.status.success() {
                let info: serde_json::Value = serde_json::from_slice(&output.stdout).context("kiln cluster's JSON")?;
                if info["workers"].as_array().map_or(0, Vec::len) >= n {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{n} workers did not join within {} s; see the logs in {}",
                    timeout.as_secs(),
                    self.logs().display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The directory of the daemons' logs.
    pub fn logs(&self) -> PathBuf {
        self.layout.dir.join("logs")
    }

    /// Stops every daemon as Ctrl-C would (workers first), kills the groups of those that do
    /// not stop in time and of everything they left, and answers the processes still alive in
    /// any group the run started (there should be none).
    pub fn stop(&mut self) -> Vec<u32> {
        for worker in &mut self.workers {
            stop_daemon(worker);
        }
        stop_daemon(&mut self.controller);
        for &group in &self.groups {
            // SAFETY: kill has no memory effects; a group with no process left gives ESRCH.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        // Killed processes are reaped by their parents (or init) a moment later.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = in_groups(&self.groups);
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let left = self.stop();
        if !left.is_empty() {
            eprintln!("chaos: processes {left:?} of the run are still alive after SIGKILL");
        }
    }
}

/// Starts `command` in a process group of its own, its stderr appended to `log`, killed if
/// xtask dies.
fn spawn(command: &mut Command, log: &Path) -> anyhow::Result<Daemon> {
    let file =
        File::options().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).process_group(0);
    die_with_parent(command);
    let child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
    let group = libc::pid_t::try_from(child.id()).context("a pid fits a pid_t")?;
    Ok(Daemon { child, group })
}

/// Has the process `command` starts killed when the thread that started it ends (xtask
/// killed, or a panic), so that nothing of the run outlives it.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits until the daemon logs `listening on ADDR`; answers ADDR. The log is appended to
/// across restarts, so the start's address is the first one beyond those logged before it.
fn wait_listening(mut daemon: Daemon, log: &Path, before: usize, name: &str) -> anyhow::Result<(Daemon, String)> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = addresses(&text).nth(before) {
            return Ok((daemon, addr.to_owned()));
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            bail!("the {name} exited ({status}) before it listened; see {}", log.display());
        }
        if Instant::now() >= deadline {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
            bail!(
                "the {name} did not say where it listens within {} s; see {}",
                START_TIMEOUT.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The addresses of the `listening on ADDR` lines of a log, in order.
fn addresses(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| line.strip_prefix("listening on ")).map(str::trim)
}

/// How many times the daemon of `log` said where it listens so far.
fn starts_logged(log: &Path) -> usize {
    addresses(&std::fs::read_to_string(log).unwrap_or_default()).count()
}

/// Whether the daemon runs; reaps it if it exited.
fn running(daemon: &mut Option<Daemon>) -> bool {
    let alive = daemon.as_mut().is_some_and(|d| matches!(d.child.try_wait(), Ok(None)));
    if !alive {
        *daemon = None;
    }
    alive
}

fn kill_daemon(daemon: &mut Option<Daemon>) {
    if let Some(mut d) = daemon.take() {
        let _ = d.child.kill();
        let _ = d.child.wait();
    }
}

/// Stops a daemon with SIGTERM, then kills its group if it does not stop in time.
fn stop_daemon(daemon: &mut Option<Daemon>) {
    let Some(mut d) = daemon.take() else { return };
    if let Ok(None) = d.child.try_wait() {
        // SAFETY: kill has no memory effects; the pid is our own unreaped child's.
        unsafe { libc::kill(d.group, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && matches!(d.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // SAFETY: as above; the group's leader is our child, reaped just below.
    unsafe { libc::kill(-d.group, libc::SIGKILL) };
    let _ = d.child.wait();
}

/// Whether `pid` is an executor (`kiln exec`), from its command line.
fn is_executor(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).nth(1) == Some(b"exec"))
}

/// The processes whose process group is one of `groups`.
fn in_groups(groups: &[libc::pid_t]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // After the command name in parentheses: state, parent, process group.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                let mut fields = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace()).into_iter().flatten();
                let state = fields.next();
                let group = fields.nth(1).and_then(|g| g.parse::<libc::pid_t>().ok());
                // A zombie is already dead; its parent reaps it.
                state != Some("Z") && group.is_some_and(|g| groups.contains(&g))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_of_a_log_has_its_address() {
        let log = "listening on 127.0.0.1:1\nINFO something\nlistening on 127.0.0.1:2\nINFO more\n";
        assert_eq!(addresses(log).collect::<Vec<_>>(), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(addresses("INFO nothing\n").count(), 0);
    }

    #[test]
    fn a_group_is_found_until_it_is_killed() {
        let mut child = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let group = child.id() as libc::pid_t;
        assert_eq!(in_groups(&[group]), vec![child.id()]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(in_groups(&[group]).is_empty());
    }
}
