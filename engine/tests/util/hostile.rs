//! Helpers of the sandbox tests: secrets placed where only the sandbox keeps a plugin from
//! them, the `hostile` fixture's outcomes, and looking for a plugin's leftovers in /proc.
//! Included with `#[path = "util/hostile.rs"] mod hostile;` beside `mod util;`.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The text of every secret file; a plugin that reached one would show it in its output.
pub const SECRET: &str = "s3cret-argon2id-hash-and-api-key";

/// An environment variable set on the worker (or run-local), which plugins must not see.
pub const SECRET_ENV: &str = "KILN_TEST_SECRET_ENV";

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
