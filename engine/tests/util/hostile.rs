//! Helpers of the sandbox tests: secrets placed where only the sandbox keeps a plugin from
//! them, the `hostile` fixture's attacks and outcomes, a port nobody may reach, and looking for
//! a plugin's leftovers in /proc.
//! Included with `#[path = "util/hostile.rs"] mod hostile;` beside `mod util;`.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The text of every secret file; a plugin that reached one would show it in its output.
pub const SECRET: &str = "s3cret-argon2id-hash-and-api-key";

/// An environment variable set on the worker (or run-local), which plugins must not see.
pub const SECRET_ENV: &str = "KILN_TEST_SECRET_ENV";

/// How long the leftovers of a job may take to disappear once it has ended (on a cluster, the
/// controller releases the job on its workers right after).
pub const GONE: Duration = Duration::from_secs(10);

/// The attacks [`every_attack`] makes, each with an outcome line of its own.
const ATTACKS: [&str; 6] = ["read", "connect", "write", "env", "ptrace", "mount"];

/// Makes `path` and its parent directories up to `/tmp` (or `/`) readable and traversable by
/// every user, so that only the sandbox, not file permissions, keeps `nobody` out.
pub fn expose(path: &Path) {
    let mut current = Some(path);
    while let Some(dir) = current {
        if dir == Path::new("/") || dir == std::env::temp_dir() {
            break;
        }
        let mode = if dir.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        current = dir.parent();
    }
}

/// Writes a secret file at `path`, readable by everybody.
pub fn plant_secret(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, SECRET).expect("secret written");
    expose(path);
    path.to_path_buf()
}

/// A directory everybody may write in, for a plugin's attempt to write outside its own.
pub fn open_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).expect("mkdir");
    expose(path);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    path.to_path_buf()
}

/// The `hostile` fixture's parameters for reading each of `reads` and /etc/shadow, connecting
/// to each of `connects`, writing each of `writes`, reading [`SECRET_ENV`], tracing and mounting.
pub fn every_attack(reads: &[PathBuf], connects: &[String], writes: &[PathBuf]) -> String {
    let mut params: Vec<String> = reads.iter().map(|path| format!("read={}", path.display())).collect();
    params.push("read=/etc/shadow".to_owned());
    params.extend(connects.iter().map(|addr| format!("connect={addr}")));
    params.extend(writes.iter().map(|path| format!("write={}", path.display())));
    params.extend([format!("env={SECRET_ENV}"), "ptrace=1".to_owned(), "mount=1".to_owned()]);
    params.join(",")
}

/// Checks the outcomes of [`every_attack`]: every attack was stopped, each kind has an outcome,
/// no outcome shows a secret, and the environment variable was not found.
pub fn assert_every_attack_stopped(outcomes: &[String]) {
    // One outcome per distinct line (the fixture keeps a set), so as many as there are lines.
    assert_all_stopped(outcomes, outcomes.len());
    for attack in ATTACKS {
        assert!(!outcome_of(outcomes, attack).is_empty(), "no outcome for {attack}: {outcomes:#?}");
    }
    assert!(outcome_of(outcomes, "env").contains("not found"), "{outcomes:#?}");
}

/// A port on loopback that accepts nobody, for a plugin's attempt to connect: see
/// [`assert_not_reached`].
pub fn bait_port() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

/// Checks that no connection to [`bait_port`]'s listener is waiting.
pub fn assert_not_reached(listener: &TcpListener) {
    assert!(matches!(listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock), "the plugin connected");
}

/// The `hostile` fixture's outcome lines from its JSON output.
pub fn outcomes(stdout: &str) -> Vec<String> {
    let output: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("output is not JSON ({e}): {stdout}"));
    output["outcomes"].as_array().expect("outcomes").iter().map(|o| o.as_str().unwrap_or_default().to_owned()).collect()
}

/// Checks that every attack was stopped and that no outcome shows a secret.
pub fn assert_all_stopped(outcomes: &[String], n_attacks: usize) {
    assert_eq!(outcomes.len(), n_attacks, "one outcome per attack: {outcomes:#?}");
    for outcome in outcomes {
        assert!(outcome.contains(": stopped: "), "an attack was not stopped: {outcome}");
        assert!(!outcome.contains(SECRET), "a secret leaked: {outcome}");
    }
}

/// The outcome of `attack` on `target` (e.g. `read`, `/etc/shadow`), by its prefix.
pub fn outcome_of<'a>(outcomes: &'a [String], attack: &str) -> &'a str {
    outcomes.iter().find(|o| o.starts_with(&format!("{attack}: "))).map_or("", String::as_str)
}

/// A name no other test's plugin uses (process names have at most 15 bytes: `NAME-t`).
pub fn unique_name(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{tag}{:06}", (nanos ^ std::process::id()) % 1_000_000)
}

/// The thread and the process the `hostile` fixture leaves behind with [`Linger::params`].
pub struct Linger {
    pub thread: String,
    pub process: String,
    /// `linger=NAME,hold=2000`: the job holds its chunk two seconds, so both show up meanwhile.
    pub params: String,
}

impl Linger {
    /// Names no other test's plugin uses, from `tag` (two letters).
    pub fn new(tag: &str) -> Linger {
        let name = unique_name(tag);
        Linger { thread: format!("{name}-t"), process: format!("{name}-p"), params: format!("linger={name},hold=2000") }
    }

    /// Whether both the thread and the process are running on this host.
    pub fn both_running(&self) -> bool {
        !tasks_named(&self.thread).is_empty() && !tasks_named(&self.process).is_empty()
    }

    /// Checks that neither outlives the job by more than [`GONE`].
    pub fn assert_gone(&self) {
        assert!(
            eventually(GONE, || tasks_named(&self.thread).is_empty() && tasks_named(&self.process).is_empty()),
            "the plugin's thread or process outlived its job"
        );
    }
}

/// The process or thread ids on this host whose name is `name`.
pub fn tasks_named(name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return found };
    for process in processes.flatten() {
        let Ok(tasks) = std::fs::read_dir(process.path().join("task")) else { continue };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == name
                && let Ok(id) = task.file_name().to_string_lossy().parse()
            {
                found.push(id);
            }
        }
    }
    found
}

/// Waits up to `timeout` for `condition`; answers whether it came true.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The heartbeat file path from a `linger` outcome.
pub fn heartbeat_path(outcomes: &[String]) -> PathBuf {
    let linger = outcome_of(outcomes, "linger");
    PathBuf::from(linger.split_once("heartbeat at ").map(|(_, path)| path).unwrap_or_else(|| panic!("{linger}")))
}
