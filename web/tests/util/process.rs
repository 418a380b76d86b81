//! A real `kiln-web` process for tests of the command itself: started with flags and
//! environment on 127.0.0.1:0 in a data directory of the test's, its stderr collected, killed
//! when dropped (also when the test fails).

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// How long a server may take to say where it listens (the embedded cluster starts first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The variables of the environment that change how `kiln-web` runs: none leaks from the
/// test's own environment.
const CLEARED: [&str; 5] =
    ["DATABASE_URL", "KILN_DATA_DIR", "KILN_WEB_NO_LOCAL_CLUSTER", "KILN_WEB_SECRET_KEY", "RUST_LOG"];

/// A running `kiln-web`.
pub struct WebProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl WebProcess {
    /// Starts `kiln-web --listen 127.0.0.1:0 --data-dir DATA_DIR ARGS` with `envs` set, and
    /// waits until it serves.
    pub fn start(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> WebProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln-web"));
        command.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir).args(args);
        for name in CLEARED {
            command.env_remove(name);
        }
        command.envs(envs.iter().copied());
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("kiln-web starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let collected = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = addr_tx.send(addr.to_owned());
                }
                let mut log = collected.lock().unwrap_or_else(|poison| poison.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut process = WebProcess { child, base: String::new(), log };
        match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => process.base = base,
            Err(_) => panic!("kiln-web did not say where it listens: {}", process.log()),
        }
        process
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|poison| poison.into_inner()).clone()
    }

    /// A figure of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("the process's status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }
}

impl Drop for WebProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
