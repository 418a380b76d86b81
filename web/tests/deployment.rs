//! kiln-web's systemd unit, `deploy/systemd/kiln-web.service`: `systemd-analyze verify`
//! accepts it (with this build's `kiln-web` in place of `/usr/local/bin/kiln-web`), every flag
//! of its command line exists, and it keeps its hardening. (The controller's and the worker's
//! units are checked by `engine/tests/deployment.rs`.)

use std::path::Path;
use std::process::Command;

#[test]
fn systemd_analyze_accepts_the_web_unit() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("web/ has a parent");
    let text = std::fs::read_to_string(repo.join("deploy/systemd/kiln-web.service")).expect("the unit");
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join("kiln-web.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/kiln-web ", &format!("{} ", env!("CARGO_BIN_EXE_kiln-web"))))
        .expect("write the unit");
    let verified = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");

    let help = Command::new(env!("CARGO_BIN_EXE_kiln-web")).arg("--help").output().expect("kiln-web runs");
    let help = String::from_utf8_lossy(&help.stdout);
    let exec = text.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("an ExecStart line");
    for flag in exec.split_whitespace().filter(|word| word.starts_with("--")) {
        assert!(help.contains(flag), "the unit gives kiln-web the unknown flag {flag}");
    }
    for line in ["DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=kiln-web", "Restart=on-failure"] {
        assert!(text.lines().any(|l| l == line), "the unit lacks {line}");
    }
    // A shared deployment: no built-in cluster running users' plugins inside the web server.
    assert!(exec.contains("--no-local-cluster") && exec.contains("--data-dir ${STATE_DIRECTORY}"));
}
