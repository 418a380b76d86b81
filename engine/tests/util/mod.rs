//! Helpers shared by the engine's integration tests: paths to plugins, the `kiln` binary set up
//! with the shared plugin build directories, deterministic inputs written to a test's directory,
//! and the word counts the `wordcount` example must answer for them.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("engine/ has a parent").to_path_buf()
}

/// An example plugin crate.
pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples/plugins").join(name)
}

/// A test plugin crate (panicking, crashing, not compiling, ...).
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("engine/tests/fixtures/plugins").join(name)
}

/// The cargo target directory all tests build plugins in, so that abi_stable and serde are
/// compiled once per test run rather than once per test.
pub fn plugin_target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-target")
}

/// The plugin cache shared by tests that only need a plugin built, not a fresh cache.
pub fn shared_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// The `kiln` binary, set to build plugins in the shared directories.
pub fn kiln() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.env("KILN_CACHE_DIR", shared_cache_dir()).env("KILN_TARGET_DIR", plugin_target_dir());
    command
}

/// What a finished `kiln` command said.
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `kiln run-local` with the given plugin, input and extra flags.
pub fn run_local(plugin: &Path, input: &Path, extra: &[&str]) -> Run {
    kiln()
        .arg("run-local")
        .arg("--plugin")
        .arg(plugin)
        .arg("--input")
        .arg(input)
        .args(extra)
        .output()
        .expect("kiln runs")
        .into()
}

/// A small deterministic pseudo-random generator (xorshift), so inputs are the same every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A text of `n_lines` lines of words from a small vocabulary with mixed case, punctuation,
/// non-ASCII words and irregular whitespace (tabs, runs of spaces, `\r\n` endings).
pub fn word_text(seed: u64, n_lines: usize) -> String {
    let mut rng = Rng::new(seed);
    let vocabulary: Vec<String> = (0..500)
        .map(|i| match i % 7 {
            0 => format!("Word{i}"),
            1 => format!("naïve{i}"),
            2 => format!("日本{i}"),
            3 => format!("end{i}."),
            _ => format!("w{i}"),
        })
        .collect();
    let mut text = String::new();
    for line in 0..n_lines {
        let n_words = 1 + rng.below(12);
        for i in 0..n_words {
            if i > 0 {
                text.push_str(match rng.below(10) {
                    0 => "\t",
                    1 => "   ",
                    _ => " ",
                });
            }
            // Skewed choice: low indices much more frequent, like real text.
            let pick = rng.below(500).min(rng.below(500));
            text.push_str(&vocabulary[pick as usize]);
        }
        text.push_str(if line % 50 == 0 { "\r\n" } else { "\n" });
    }
    text
}

/// Writes `text` to `dir/name` (a test's input); answers its path.
pub fn write_input(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("input written");
    path
}

/// The counts of the whitespace-separated words of `text`, as the `wordcount` example's JSON
/// output spells them, computed here independently of it.
pub fn word_counts(text: &str) -> Value {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_default() += 1;
    }
    counts.into_iter().map(|(word, n)| (word.to_owned(), Value::from(n))).collect()
}
