//! A real cluster for tests: `kiln controller` and `kiln worker` processes on loopback ports
//! from 127.0.0.1:0, each in its own temporary directory, each killed when the test ends (even
//! when it fails). Included by the cluster test files with
//! `#[path = "util/cluster.rs"] mod cluster;` beside `mod util;`.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Run, plugin_target_dir};

/// The secrets of the API key and join token of test clusters; clients and workers are given
/// them inside whole keys that carry the controller's CA fingerprint ([`Cluster::api_key`]).
pub const API_KEY: &str = "test-api-key-5f1c0a9e";
pub const JOIN_TOKEN: &str = "test-join-token-77b2d4e1";

/// How long a daemon may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a job may take in these tests: a cold plugin build is part of the first one.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// A `kiln` daemon started by a test, killed when dropped.
pub struct Daemon {
    child: Child,
    /// The address it printed (`listening on ADDR`).
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

/// The key-or-token's trust part a controller printed: `cluster CA fingerprint: HEX`, or
/// `plaintext` for a controller without TLS.
pub fn trust_of(controller: &Daemon) -> String {
    let stderr = controller.stderr();
    match stderr.lines().find_map(|line| line.strip_prefix("cluster CA fingerprint: ")) {
        Some(fingerprint) => fingerprint.trim().to_owned(),
        None if stderr.contains("--insecure-plaintext") => "plaintext".to_owned(),
        None => panic!("the controller printed no CA fingerprint:\n{stderr}"),
    }
}

/// A whole API key for `secret` (unchanged when it already is one).
pub fn client_key(controller: &Daemon, secret: &str) -> String {
    if secret.starts_with("kiln-key-v2.") {
        secret.to_owned()
    } else {
        format!("kiln-key-v2.{}.{secret}", trust_of(controller))
    }
}

/// A whole join token for `secret` (unchanged when it already is one).
pub fn worker_token(controller: &Daemon, secret: &str) -> String {
    if secret.starts_with("kiln-join-v2.") {
        secret.to_owned()
    } else {
        format!("kiln-join-v2.{}.{secret}", trust_of(controller))
    }
}

impl Daemon {
    /// Starts `command` (a `kiln` daemon) and waits for its `listening on ADDR` line. Its stderr
    /// is read all along, so the process never blocks on a full pipe.
    pub fn start(mut command: Command) -> Daemon {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("kiln starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = addr_tx.send(addr.trim().to_owned());
                }
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut daemon = Daemon { child, addr: "0.0.0.0:0".parse().unwrap(), stderr };
        match addr_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => daemon.addr = addr.parse().unwrap_or_else(|e| panic!("bad address {addr:?}: {e}")),
            Err(_) => panic!("kiln did not print its address; its stderr:\n{}", daemon.stderr()),
        }
        daemon
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `timeout` for the daemon to exit by itself; answers whether it succeeded.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the stderr reader catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the daemon with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("the daemon can be killed");
        self.child.wait().expect("the killed daemon is reaped");
    }

    /// Whether the process is still running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A controller and its workers, in one temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub controller: Daemon,
    pub workers: Vec<Daemon>,
    /// Whether its workers run plugins without the sandbox (`--insecure-no-sandbox`).
    unconfined: bool,
    /// Extra flags of the controller, kept for restarts.
    controller_flags: Vec<String>,
    /// Extra flags and environment of every daemon (controller and workers).
    daemon_flags: Vec<String>,
    daemon_env: Vec<(String, String)>,
}

impl Cluster {
    /// A controller and `n_workers` workers of 2 processes each.
    pub fn start(n_workers: usize) -> Cluster {
        Cluster::start_with(n_workers, &[])
    }

    /// Like [`Cluster::start`], with workers that run plugins unconfined
    /// (`--insecure-no-sandbox`): for tests whose plugin reports what it did through files in
    /// the test's directory (`record=`, `fail-once-dir=`), which the sandbox forbids.
    pub fn start_unconfined(n_workers: usize) -> Cluster {
        Cluster::assemble(n_workers, &[], true)
    }

    /// [`Cluster::start`] with extra flags for the controller.
    pub fn start_with(n_workers: usize, controller_flags: &[&str]) -> Cluster {
        Cluster::assemble(n_workers, controller_flags, false)
    }

    /// [`Cluster::start`] with flags and environment given to the controller and every worker
    /// (`--log-format json`, `RUST_LOG`, `--metrics-listen 127.0.0.1:0`).
    pub fn start_with_daemon_settings(n_workers: usize, flags: &[&str], env: &[(&str, &str)]) -> Cluster {
        let flags: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Cluster::assemble_with(n_workers, &[], false, flags, env)
    }

    /// [`Cluster::start`] with the controller's command given to `wrap` first, with the
    /// cluster's directory (to start it in a mount namespace of its own, say). A restarted
    /// controller is not wrapped.
    pub fn start_wrapped(n_workers: usize, wrap: impl FnOnce(Command, &Path) -> Command) -> Cluster {
        Cluster::assemble_wrapped(n_workers, &[], false, Vec::new(), Vec::new(), wrap)
    }

    fn assemble(n_workers: usize, controller_flags: &[&str], unconfined: bool) -> Cluster {
        Cluster::assemble_with(n_workers, controller_flags, unconfined, Vec::new(), Vec::new())
    }

    fn assemble_with(
        n_workers: usize,
        controller_flags: &[&str],
        unconfined: bool,
        daemon_flags: Vec<String>,
        daemon_env: Vec<(String, String)>,
    ) -> Cluster {
        Cluster::assemble_wrapped(n_workers, controller_flags, unconfined, daemon_flags, daemon_env, |command, _| {
            command
        })
    }

    fn assemble_wrapped(
        n_workers: usize,
        controller_flags: &[&str],
        unconfined: bool,
        daemon_flags: Vec<String>,
        daemon_env: Vec<(String, String)>,
        wrap: impl FnOnce(Command, &Path) -> Command,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let controller_flags: Vec<String> = controller_flags.iter().map(|flag| flag.to_string()).collect();
        let mut command = controller_command(dir.path(), "127.0.0.1:0");
        command.args(&controller_flags).args(&daemon_flags).envs(daemon_env.iter().map(|(k, v)| (k, v)));
        let controller = Daemon::start(wrap(command, dir.path()));
        let mut cluster =
            Cluster { dir, controller, workers: Vec::new(), unconfined, controller_flags, daemon_flags, daemon_env };
        for _ in 0..n_workers {
            cluster.add_worker(2);
        }
        cluster
    }

    /// The controller's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("controller")
    }

    /// Kills the controller with SIGKILL (workers and clients are left to notice).
    pub fn kill_controller(&mut self) {
        self.controller.kill();
    }

    /// Starts the controller again on the same data directory and the same address, where its
    /// workers and clients look for it.
    pub fn restart_controller(&mut self) {
        let addr = self.controller.addr.to_string();
        let mut command = controller_command(self.dir.path(), &addr);
        command.args(&self.controller_flags).args(&self.daemon_flags).envs(self.daemon_env.iter().map(|(k, v)| (k, v)));
        self.controller = Daemon::start(command);
        assert_eq!(self.controller.addr.to_string(), addr, "the controller came back elsewhere");
    }

    /// Starts one more worker with `processes` slots; answers its address.
    pub fn add_worker(&mut self, processes: u32) -> SocketAddr {
        let worker = self.worker_with_token(JOIN_TOKEN, processes);
        let addr = worker.addr;
        self.workers.push(worker);
        addr
    }

    /// A worker of this cluster's controller presenting `token`, with its own plugin cache
    /// and the tests' shared cargo target directory.
    pub fn worker_with_token(&self, token: &str, processes: u32) -> Daemon {
        Daemon::start(self.joining_worker(token, processes))
    }

    /// The command [`Cluster::worker_with_token`] starts, for a test to add flags or
    /// environment to.
    pub fn joining_worker(&self, token: &str, processes: u32) -> Command {
        let controller = self.controller.addr.to_string();
        self.worker_command(&controller, &worker_token(&self.controller, token), processes, &[])
    }

    /// A `kiln worker` of 2 processes reaching the controller at `controller` with the whole
    /// join token `token`, with extra flags (`--listen 127.0.0.1:0` unless they give one).
    pub fn worker_command(&self, controller: &str, token: &str, processes: u32, extra: &[&str]) -> Command {
        let cache = tempfile::Builder::new().prefix("worker-cache-").tempdir_in(self.dir.path()).expect("cache dir");
        let mut worker = kiln_command();
        worker
            .arg("worker")
            .arg("--controller")
            .arg(controller)
            .arg("--join-token")
            .arg(token)
            .arg("--processes")
            .arg(processes.to_string())
            .arg("--cache-dir")
            .arg(cache.keep())
            .args(extra)
            .args(&self.daemon_flags)
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .env("KILN_TARGET_DIR", plugin_target_dir());
        if self.unconfined {
            worker.arg("--insecure-no-sandbox");
        }
        if !extra.contains(&"--listen") {
            worker.arg("--listen").arg("127.0.0.1:0");
        }
        worker
    }

    /// The whole API key of this cluster's clients.
    pub fn api_key(&self) -> String {
        client_key(&self.controller, API_KEY)
    }

    /// Runs `kiln ARGS --controller ADDR --api-key KEY`.
    pub fn kiln(&self, args: &[&str]) -> Run {
        self.kiln_with_key(args, API_KEY)
    }

    /// Runs `kiln ARGS --controller ADDR --api-key KEY` with the given key (a secret is given
    /// inside a whole key with this controller's fingerprint).
    pub fn kiln_with_key(&self, args: &[&str], key: &str) -> Run {
        kiln_command()
            .args(args)
            .arg("--controller")
            .arg(self.controller.addr.to_string())
            .arg("--api-key")
            .arg(client_key(&self.controller, key))
            .output()
            .expect("kiln runs")
            .into()
    }

    /// Runs `kiln submit` with the plugin, the input and extra flags, and waits for it.
    pub fn submit(&self, plugin: &Path, input: &Path, extra: &[&str]) -> Run {
        let (plugin, input) = (plugin.to_str().unwrap(), input.to_str().unwrap());
        let mut args = vec!["submit", "--plugin", plugin, "--input", input];
        args.extend_from_slice(extra);
        self.kiln(&args)
    }

    /// Submits with `--detach`; answers the job's id.
    pub fn submit_detached(&self, plugin: &Path, input: &Path, extra: &[&str]) -> u64 {
        let mut extra = extra.to_vec();
        extra.push("--detach");
        let run = self.submit(plugin, input, &extra);
        assert!(run.success, "kiln submit --detach failed:\n{}", run.stderr);
        run.stdout.trim().parse().unwrap_or_else(|e| panic!("no job id in {:?}: {e}", run.stdout))
    }

    /// `kiln status JOB --json`, parsed.
    pub fn status(&self, job: u64) -> Value {
        let run = self.kiln(&["status", &job.to_string(), "--json"]);
        assert!(run.success, "kiln status failed:\n{}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", run.stdout))
    }

    /// `kiln result JOB`, parsed; fails the test if the command fails.
    pub fn result(&self, job: u64) -> Value {
        let run = self.kiln(&["result", &job.to_string()]);
        assert!(run.success, "kiln result failed:\n{}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("the result is not JSON ({e}): {}", run.stdout))
    }

    /// Polls the job's status until `done` holds for it; fails the test after `timeout`.
    pub fn wait_status(&self, job: u64, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(job);
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "job {job} did not get there in time; last status: {status:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the job has ended; answers its final status.
    pub fn wait_ended(&self, job: u64) -> Value {
        self.wait_status(job, JOB_TIMEOUT, |status| {
            matches!(status["state"].as_str(), Some("Succeeded" | "Failed" | "Cancelled"))
        })
    }

    /// `kiln cluster --json`, parsed.
    pub fn cluster_info(&self) -> Value {
        let run = self.kiln(&["cluster", "--json"]);
        assert!(run.success, "kiln cluster failed:\n{}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("cluster info is not JSON ({e}): {}", run.stdout))
    }

    /// Waits until `n` workers are registered.
    pub fn wait_workers(&self, n: usize) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let info = self.cluster_info();
            if info["workers"].as_array().map_or(0, Vec::len) == n {
                return;
            }
            assert!(Instant::now() < deadline, "{n} workers did not register; cluster: {info:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `kiln controller` on `listen`, with its data in `dir/controller` and the test keys.
fn controller_command(dir: &Path, listen: &str) -> Command {
    let mut controller = kiln_command();
    controller
        .arg("controller")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(dir.join("controller"))
        .arg("--api-key")
        .arg(API_KEY)
        .arg("--join-token")
        .arg(JOIN_TOKEN);
    controller
}

/// The `kiln` binary with no keys or directories inherited from the environment: a key not
/// given is never found in this machine's data directory either.
pub fn kiln_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for variable in ["KILN_API_KEY", "KILN_JOIN_TOKEN", "KILN_CONTROLLER", "KILN_DATA_DIR", "KILN_CACHE_DIR"] {
        command.env_remove(variable);
    }
    command.env("XDG_DATA_HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-data-home"));
    command
}

/// The parameters that make the `misbehave` fixture sleep `ms` milliseconds at every
/// `every`-th line of the first `n_lines`, so that every chunk of more than `every` lines is slow.
pub fn slow_params(n_lines: usize, every: usize, ms: u64) -> String {
    (1..=n_lines).step_by(every).map(|line| format!("sleep-at={line}:{ms}")).collect::<Vec<_>>().join(",")
}

/// The output of the `misbehave` fixture for `text`: its lines and the sum of their lengths.
pub fn misbehave_totals(text: &str) -> Value {
    let lines: Vec<&str> = text.lines().collect();
    serde_json::json!({"lines": lines.len(), "sum": lines.iter().map(|line| line.len()).sum::<usize>()})
}

/// A `kiln submit` of the fixture `plugin` following its job in the background through
/// `controller` (the controller's address or a link to it), killed if the test ends first.
pub struct Follower {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Follower {
    pub fn start<S: AsRef<std::ffi::OsStr>>(
        cluster: &Cluster,
        controller: &str,
        plugin: &str,
        input: &Path,
        flags: &[S],
    ) -> Follower {
        let mut child = kiln_command()
            .args(["submit", "--controller", controller, "--api-key", &cluster.api_key()])
            .arg("--plugin")
            .arg(crate::util::fixture(plugin))
            .arg("--input")
            .arg(input)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln submit starts");
        let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("piped")));
        let stderr = drain(Box::new(child.stderr.take().expect("piped")));
        Follower { child, stdout, stderr }
    }

    /// Waits for `kiln submit` to exit; fails the test after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("kiln submit can be waited for") {
                break status;
            }
            assert!(Instant::now() < deadline, "kiln submit did not finish within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::mem::replace(&mut self.stdout, std::thread::spawn(String::new));
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        Run { success: status.success(), stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
