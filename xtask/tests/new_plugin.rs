//! `cargo xtask new-plugin` makes a crate whose own tests pass with a plain `cargo test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the xtask binary with `args` in `dir`.
fn xtask(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).current_dir(dir).output().expect("cannot run the xtask binary")
}

/// Asserts that a command succeeded, showing its output otherwise.
fn check(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    stdout
}

/// The target directory shared by every test that builds plugins, so abi_stable compiles once.
fn plugin_target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-target")
}

#[test]
fn new_plugin_passes_its_own_tests_out_of_the_box() {
    let dir = tempfile::tempdir().unwrap();
    check(&xtask(dir.path(), &["new-plugin", "my-plugin"]));
    let crate_dir = dir.path().join("my-plugin");
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains(r#"name = "my-plugin""#), "{manifest}");
    assert!(!manifest.contains("{{name}}"), "{manifest}");

    // No --config flag: the crate's own .cargo/config.toml points at this repository's API.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .arg("test")
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", plugin_target_dir())
        .output()
        .unwrap();
    let stdout = check(&output);
    assert!(stdout.contains("test tests::counts_words_across_chunks ... ok"), "{stdout}");
    assert!(stdout.contains("test result: ok.") && stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn new_plugin_goes_under_the_given_path() {
    let dir = tempfile::tempdir().unwrap();
    check(&xtask(dir.path(), &["new-plugin", "deep_one", "--path", "a/b"]));
    let crate_dir = dir.path().join("a/b/deep_one");
    for file in ["Cargo.toml", "src/lib.rs", "README.md", ".gitignore", ".cargo/config.toml"] {
        assert!(crate_dir.join(file).is_file(), "missing {file}");
    }
    let config = std::fs::read_to_string(crate_dir.join(".cargo/config.toml")).unwrap();
    let api_dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("plugin-api");
    let expected = format!("kiln-plugin-api = {{ path = \"{}\" }}", api_dir.canonicalize().unwrap().display());
    assert!(config.contains(&expected), "{config}");
}

#[test]
fn new_plugin_refuses_to_overwrite_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/keep.txt"), "mine").unwrap();
    let output = xtask(dir.path(), &["new-plugin", "taken"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.path().join("taken/keep.txt")).unwrap(), "mine");
    assert!(!dir.path().join("taken/Cargo.toml").exists());
}

#[test]
fn new_plugin_rejects_an_invalid_package_name() {
    let dir = tempfile::tempdir().unwrap();
    let output = xtask(dir.path(), &["new-plugin", "no good"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(r#"invalid plugin name "no good""#), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
