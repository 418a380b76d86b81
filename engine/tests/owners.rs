//! The build sandbox: a build script can neither write outside its output nor reach the
//! network, and a plugin with a crates.io dependency still builds and runs. Builds go through
//! the `kiln` binary as users' crates do.

mod util;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde_json::Value;
use util::{fixture, run_local, word_text};

/// Copies the `evil-build` fixture into `dir` with an `evil.conf` of `directives`.
fn evil_crate(dir: &Path, directives: &[String]) -> PathBuf {
    let source = fixture("evil-build");
    let copy = dir.join("evil-build");
    for file in ["Cargo.toml", "build.rs", "src/lib.rs"] {
        std::fs::create_dir_all(copy.join(file).parent().unwrap()).unwrap();
        std::fs::copy(source.join(file), copy.join(file)).unwrap();
    }
    std::fs::write(copy.join("evil.conf"), directives.join("\n")).unwrap();
    copy
}

/// A listener on a free loopback port that nobody should reach.
fn listener() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

fn nobody_connected(listener: &TcpListener) {
    let accepted = listener.accept().map(|(_, peer)| peer);
    assert!(matches!(&accepted, Err(e) if e.kind() == ErrorKind::WouldBlock), "a build connected: {accepted:?}");
}

/// Checks a build error says what cargo says when a build script fails, with the script's
/// own reasons for each attempt.
fn check_stopped_build(message: &str, n_writes: usize) {
    assert!(message.contains("failed to run custom build command for `evil-build"), "{message}");
    let Some(reasons) = message.lines().find(|line| line.contains("evil build script was stopped")) else {
        panic!("the build script's panic is missing:\n{message}");
    };
    assert_eq!(reasons.matches("cannot write").count(), n_writes, "{reasons}");
    assert!(reasons.contains("cannot connect to 127.0.0.1:"), "{reasons}");
    assert!(!message.contains("evil build script wrote") && !message.contains("evil build script connected"));
}

#[test]
fn a_build_script_writing_outside_its_output_and_connecting_fails_with_cargos_message_and_does_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let outside = temp.path().join("outside.txt");
    let listener = listener();
    let directives = [format!("write={}", outside.display()), format!("connect={}", listener.local_addr().unwrap())];
    let plugin = evil_crate(temp.path(), &directives);
    let input = temp.path().join("input.txt");
    std::fs::write(&input, "one\ntwo\n").unwrap();

    let run = run_local(&plugin, &input, &[]);
    assert!(!run.success, "the evil build succeeded:\n{}", run.stderr);
    check_stopped_build(&run.stderr, 1);
    assert!(!outside.exists(), "the build script wrote outside its output directory");
    nobody_connected(&listener);
}

#[test]
fn a_plugin_with_a_crates_io_dependency_builds_and_runs() {
    let temp = tempfile::tempdir().unwrap();
    let text = word_text(41, 5_000);
    let input = temp.path().join("words.txt");
    std::fs::write(&input, &text).unwrap();

    let run = run_local(&fixture("crates-dep"), &input, &["--chunk-size", "16KiB"]);
    assert!(run.success, "{}", run.stderr);
    let output: Value = serde_json::from_str(&run.stdout).unwrap();
    let bytes: usize = text.lines().map(str::len).sum();
    assert_eq!(output, serde_json::json!({"lines": text.lines().count().to_string(), "bytes": bytes.to_string()}));
}
