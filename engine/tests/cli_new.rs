//! `kiln new NAME` makes a plugin crate from the template the binary carries, outside any Kiln
//! checkout: the crate passes its own `cargo test` (its API dependency pointed at the copy the
//! binary wrote out), and `kiln run-local` builds, loads and runs it to the right answer.

mod util;

use std::collections::BTreeMap;
use std::process::Command;

use util::{kiln, plugin_target_dir, repo_root, run_local, word_text, write_input};

#[test]
fn kiln_new_makes_a_crate_that_tests_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let made = kiln()
        .args(["new", "my-counter", "--path"])
        .arg(dir.path().join("plugins"))
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let crate_dir = dir.path().join("plugins/my-counter");
    assert!(String::from_utf8_lossy(&made.stdout).contains("cargo test"), "it says what to do next");

    // The template's files, named.
    let template = repo_root().join("templates/plugin");
    let lib_rs = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    assert_eq!(lib_rs, std::fs::read_to_string(template.join("src/lib.rs")).unwrap());
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"my-counter\"") && !manifest.contains("{{name}}"), "{manifest}");
    let config = std::fs::read_to_string(crate_dir.join(".cargo/config.toml")).unwrap();
    assert!(
        config.contains(&cache.canonicalize().unwrap().display().to_string()),
        "the API is the one written out: {config}"
    );
    assert!(!config.contains(&repo_root().display().to_string()), "not this checkout's: {config}");

    // Its own tests pass, with nothing but what `kiln new` wrote.
    let tested = Command::new(env!("CARGO"))
        .arg("test")
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", plugin_target_dir().join("kiln-new"))
        .output()
        .unwrap();
    assert!(tested.status.success(), "cargo test failed:\n{}", String::from_utf8_lossy(&tested.stderr));
    assert!(String::from_utf8_lossy(&tested.stdout).contains("test result: ok. 3 passed"), "its three tests ran");

    // Kiln builds and loads it, and it counts right.
    let text = word_text(3, 2_000);
    let input = write_input(dir.path(), "words.txt", &text);
    let run = run_local(&crate_dir, &input, &["--chunk-size", "8KiB"]);
    assert!(run.success, "kiln run-local failed:\n{}", run.stderr);
    let output: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_owned()).or_default() += 1;
    }
    assert_eq!(output["lines"], text.lines().count());
    assert_eq!(output["words"], text.split_whitespace().count());
    assert_eq!(output["counts"], serde_json::to_value(&counts).unwrap());

    // A second crate of the same name is refused, the first left alone.
    let again = kiln().args(["new", "my-counter", "--path"]).arg(dir.path().join("plugins")).output().unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(crate_dir.join("src/lib.rs").is_file());
}
