//! The systemd units of `deploy/systemd/` for the controller and a worker: `systemd-analyze
//! verify` accepts them (with this build's `kiln` in place of `/usr/local/bin/kiln`), every flag
//! their command lines give exists, and each keeps its hardening. (kiln-web's unit is checked by
//! `web/tests/deployment.rs`, where its binary is at hand.)

mod util;

use std::path::Path;
use std::process::Command;

/// The unit `name` with `ExecStart`'s program replaced by this build's, written in `dir`.
fn installed_unit(dir: &Path, name: &str) -> (String, std::path::PathBuf) {
    let text = std::fs::read_to_string(util::repo_root().join("deploy/systemd").join(name))
        .unwrap_or_else(|e| panic!("deploy/systemd/{name}: {e}"));
    let local = text.replace("/usr/local/bin/kiln ", &format!("{} ", env!("CARGO_BIN_EXE_kiln")));
    let path = dir.join(name);
    std::fs::write(&path, local).expect("write the unit");
    (text, path)
}

/// The `--flags` of the unit's `ExecStart` line.
fn flags_of(unit: &str) -> Vec<&str> {
    let exec = unit.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("an ExecStart line");
    exec.split_whitespace().filter(|word| word.starts_with("--")).collect()
}

fn check(name: &str, subcommand: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let (text, path) = installed_unit(dir.path(), name);
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success() && stderr.trim().is_empty(), "systemd-analyze verify {name}:\n{stderr}");
    let help = util::kiln().args([subcommand, "--help"]).output().expect("kiln runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in flags_of(&text) {
        assert!(help.contains(flag), "{name} gives `kiln {subcommand}` the unknown flag {flag}");
    }
    for hardening in ["DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure"] {
        assert!(text.lines().any(|line| line == hardening), "{name} lacks {hardening}");
    }
    text
}

#[test]
fn systemd_analyze_accepts_the_controller_unit() {
    let text = check("kiln-controller.service", "controller");
    assert!(text.contains("StateDirectory=kiln-controller") && text.contains("--data-dir ${STATE_DIRECTORY}"));
}

#[test]
fn systemd_analyze_accepts_the_worker_unit_which_leaves_the_sandbox_its_namespaces() {
    let text = check("kiln-worker.service", "worker");
    // The executor and build sandboxes make user namespaces and seccomp filters of their own.
    for forbidding in ["RestrictNamespaces=", "PrivateUsers=", "SystemCallFilter=", "MemoryDenyWriteExecute="] {
        assert!(!text.lines().any(|line| line.starts_with(forbidding)), "the worker unit sets {forbidding}");
    }
    // The controller dials workers back: the port must not change between restarts.
    assert!(text.contains("--listen 0.0.0.0:7701"), "the worker listens on a fixed port");
    assert!(text.contains("CacheDirectory=kiln-worker"));
}
