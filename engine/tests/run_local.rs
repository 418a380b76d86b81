//! `kiln run-local` builds each example plugin from source and computes what an independent
//! implementation in this file computes, over inputs of many chunks, on 1 and 3 slots.

mod util;

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use util::{Rng, example, fixture, run_local, word_counts, word_text, write_input};

/// Small chunks, so that test inputs of a few hundred KiB make dozens of chunks.
const CHUNK: &str = "16KiB";

/// Runs a plugin and parses its output, failing the test with kiln's stderr if it failed.
fn check(plugin: &Path, input: &Path, processes: u32, params: &str) -> Value {
    check_in_chunks(plugin, input, processes, params, CHUNK)
}

/// [`check`] with another chunk size.
fn check_in_chunks(plugin: &Path, input: &Path, processes: u32, params: &str, chunk_size: &str) -> Value {
    let processes = processes.to_string();
    let run = run_local(plugin, input, &["--processes", &processes, "--params", params, "--chunk-size", chunk_size]);
    assert!(run.success, "kiln run-local failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("output is not JSON ({e}): {}", run.stdout))
}

#[test]
fn wordcount_counts_every_word_like_a_plain_hashmap() {
    let dir = tempfile::tempdir().unwrap();
    let text = word_text(7, 20_000);
    let input = write_input(dir.path(), "words.txt", &text);
    assert!(text.len() > 10 * 16 * 1024, "the input spans many chunks");

    let mut expected: HashMap<&str, u64> = HashMap::new();
    for word in text.split_whitespace() {
        *expected.entry(word).or_default() += 1;
    }
    let expected: Value = expected.into_iter().map(|(w, n)| (w.to_owned(), Value::from(n))).collect();

    for processes in [1, 3] {
        assert_eq!(check(&example("wordcount"), &input, processes, ""), expected, "{processes} processes");
    }
}

#[test]
fn a_plugin_written_with_partial_types_agrees_with_the_examples_and_an_independent_count() {
    let dir = tempfile::tempdir().unwrap();
    let text = word_text(11, 12_000);
    let input = write_input(dir.path(), "words.txt", &text);
    let word = "Word7";

    // Every figure, computed here in the plainest way.
    let mut shortest: Option<(u64, u64)> = None;
    let mut longest: Option<(u64, u64)> = None;
    let mut busiest = Vec::new();
    let mut matches = Vec::new();
    let mut first_words = std::collections::BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let (number, length) = (i as u64 + 1, line.len() as u64);
        if shortest.is_none_or(|(l, _)| length < l) {
            shortest = Some((length, number));
        }
        if longest.is_none_or(|(l, _)| length > l) {
            longest = Some((length, number));
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        busiest.push((words.len() as u64, number));
        if words.contains(&word) {
            matches.push(number);
        }
        if let Some(first) = words.first() {
            first_words.insert(first.to_string());
        }
    }
    // Most words first; of equal counts, the earliest line.
    busiest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    busiest.truncate(3);
    let counts = word_counts(&text);
    let mut top: Vec<(String, u64)> =
        counts.as_object().unwrap().iter().map(|(w, n)| (w.clone(), n.as_u64().unwrap())).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(5);
    let expected = serde_json::json!({
        "lines": text.lines().count(),
        "counts": counts,
        "top": top,
        "shortest": shortest,
        "longest": longest,
        "busiest": busiest,
        "matches": matches,
        "first_words": first_words,
    });
    assert!(!matches.is_empty() && text.len() > 10 * 16 * 1024, "the input spans many chunks and has matches");

    for processes in [1, 3] {
        let figures = check(&fixture("partial-types"), &input, processes, word);
        assert_eq!(figures, expected, "{processes} processes");
        assert_eq!(figures["counts"], check(&example("wordcount"), &input, processes, ""), "same as the example");
    }
}

#[test]
fn grep_reports_matching_lines_in_order_with_global_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let text = word_text(11, 20_000);
    let input = write_input(dir.path(), "words.txt", &text);
    let pattern = r"^Word0\b|日本14 |w4[0-2]$";

    let regex = regex::Regex::new(pattern).unwrap();
    let expected: Vec<Value> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| regex.is_match(line))
        .map(|(i, line)| serde_json::json!({"line": i + 1, "text": line}))
        .collect();
    assert!(expected.len() > 50, "the pattern matches lines across many chunks");

    for processes in [1, 3] {
        assert_eq!(check(&example("grep"), &input, processes, pattern), Value::from(expected.clone()));
    }
    // Tiny chunks make combine groups of 256 chunks, merged while the job runs, in order.
    assert_eq!(kiln_engine::rules::combine::combine_group(256), 256);
    assert!(text.len() > 4 * 256 * 256, "the input spans several groups of tiny chunks");
    assert_eq!(check_in_chunks(&example("grep"), &input, 3, pattern, "256"), Value::from(expected));
}

#[test]
fn csv_stats_summarises_a_numeric_column_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(3);
    let mut text = String::new();
    let mut values = Vec::new();
    let mut skipped = 0u64;
    for i in 0..30_000 {
        // Halves and integers add up exactly in f64, so any summing order gives the same sum.
        let value = (rng.below(20_001) as f64 - 10_000.0) / 2.0;
        match i % 13 {
            0 => {
                text.push_str(&format!("{i},n/a,x\n"));
                skipped += 1;
            }
            1 => {
                text.push_str(&format!("{i}\n"));
                skipped += 1;
            }
            _ => {
                text.push_str(&format!("{i}, {value} ,label{i}\n"));
                values.push(value);
            }
        }
    }
    let input = write_input(dir.path(), "data.csv", &text);
    let sum: f64 = values.iter().sum();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);

    for processes in [1, 3] {
        let stats = check(&example("csv-stats"), &input, processes, "1");
        assert_eq!(stats["count"], Value::from(values.len() as u64));
        assert_eq!(stats["skipped"], Value::from(skipped));
        assert_eq!(stats["sum"].as_f64(), Some(sum));
        assert_eq!(stats["min"].as_f64(), Some(min));
        assert_eq!(stats["max"].as_f64(), Some(max));
        let mean = stats["mean"].as_f64().unwrap();
        assert!((mean - sum / values.len() as f64).abs() < 1e-9, "mean {mean}");
    }
}

#[test]
fn a_single_lib_rs_file_builds_through_the_template_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let text = word_text(5, 3_000);
    let input = write_input(dir.path(), "words.txt", &text);
    let lib_rs = example("wordcount").join("src/lib.rs");

    let counts = check(&lib_rs, &input, 2, "");
    let total: u64 = counts.as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(total, text.split_whitespace().count() as u64);
}

#[test]
fn empty_input_aggregates_zero_partials() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "empty.txt", "");
    assert_eq!(check(&example("wordcount"), &input, 2, ""), serde_json::json!({}));
    assert_eq!(check(&example("grep"), &input, 2, "x"), serde_json::json!([]));
}

#[test]
fn input_that_is_not_utf8_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = word_text(1, 2_000).into_bytes();
    let line_starts: Vec<usize> =
        std::iter::once(0).chain(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1)).collect();
    bytes.insert(line_starts[1233], 0xff);
    let input = dir.path().join("bad.txt");
    std::fs::write(&input, &bytes).unwrap();

    let run = run_local(&example("wordcount"), &input, &["--chunk-size", CHUNK]);
    assert!(!run.success);
    assert!(run.stderr.contains("not valid UTF-8 at line 1234"), "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn params_the_plugin_refuses_fail_the_run_before_any_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "words.txt", "a b\n");
    let run = run_local(&example("grep"), &input, &["--params", "(unclosed"]);
    assert!(!run.success);
    assert!(run.stderr.contains("refused its parameters"), "stderr: {}", run.stderr);
}

/// A copy of the wordcount example whose source differs by `nonce`, so its hash is new.
fn wordcount_copy(dir: &Path, nonce: &str) -> std::path::PathBuf {
    let crate_dir = dir.join(format!("wordcount-{nonce}"));
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::copy(example("wordcount").join("Cargo.toml"), crate_dir.join("Cargo.toml")).unwrap();
    let source = std::fs::read_to_string(example("wordcount").join("src/lib.rs")).unwrap();
    std::fs::write(crate_dir.join("src/lib.rs"), format!("{source}\n// {nonce}\n")).unwrap();
    crate_dir
}

#[test]
fn a_new_plugin_of_an_owner_compiles_only_itself_not_its_dependencies_again() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "words.txt", "b a b\n");
    // A cache of its own, so both plugins are built; the shared target directory, so the
    // dependencies may already be there from other tests (or the first build puts them there).
    let cache = dir.path().join("cache");
    let nonce = format!("{}-{}", std::process::id(), Rng::new(7).next());
    let build = |plugin: &Path| {
        let run: util::Run = util::kiln()
            .env("KILN_CACHE_DIR", &cache)
            .args(["run-local", "--plugin"])
            .arg(plugin)
            .arg("--input")
            .arg(&input)
            .output()
            .expect("kiln runs")
            .into();
        assert!(run.success, "{}", run.stderr);
        assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), serde_json::json!({"a": 1, "b": 2}));
        run.stderr
    };
    build(&wordcount_copy(dir.path(), &format!("first-{nonce}")));
    let second = build(&wordcount_copy(dir.path(), &format!("second-{nonce}")));
    assert!(second.contains("Compiling wordcount"), "the second plugin was not built: {second}");
    assert!(!second.contains("Compiling abi_stable"), "the dependencies were compiled again: {second}");
}
