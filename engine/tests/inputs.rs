//! An input is an ordered list of files: files, directories (their files, sorted by path) and
//! glob patterns, repeated `--input`, plain, gzip and zstd told by their bytes. Through
//! `kiln run-local` and through `kiln submit` (uploaded), the examples give what an independent
//! computation in this file gives over the files' plain text, and grep names each match's file
//! and its line within that file when more than one file holds lines (its streaming aggregate
//! is told so before its first match), byte for byte as its whole aggregate wrote it.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::io::Write;
use std::path::{Path, PathBuf};

use cluster::Cluster;
use serde_json::{Value, json};
use util::{Run, example, kiln, word_counts, word_text};

/// Small chunks, so that every file makes several.
const CHUNK: &str = "8KiB";

/// How a test file is stored.
#[derive(Clone, Copy)]
enum Stored {
    Plain,
    Gzip,
    Zstd,
}

/// A file of a test input: its path below the input directory, how it is stored, its text.
struct TestFile {
    path: &'static str,
    stored: Stored,
    text: String,
}

fn gzip(text: &str) -> Vec<u8> {
    // Two members, as `pigz` writes them: a decoder must read past the first.
    let (head, tail) = text.split_at(text.len() / 2);
    let mut out = Vec::new();
    for part in [head, tail] {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(part.as_bytes()).unwrap();
        out.extend(encoder.finish().unwrap());
    }
    out
}

fn write_files(dir: &Path, files: &[TestFile]) {
    for file in files {
        let bytes = match file.stored {
            Stored::Plain => file.text.as_bytes().to_vec(),
            Stored::Gzip => gzip(&file.text),
            Stored::Zstd => zstd::encode_all(file.text.as_bytes(), 3).unwrap(),
        };
        let path = dir.join(file.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// A directory of mixed files (names that do not say how a file is stored, on purpose), with
/// a hidden file and a marker that a directory leaves out; answers the files it takes, in the
/// order it takes them (sorted by path).
fn mixed_directory(dir: &Path) -> Vec<TestFile> {
    let files = vec![
        TestFile { path: "a-plain.txt", stored: Stored::Plain, text: word_text(1, 3_000) },
        TestFile { path: "b-gzip.log", stored: Stored::Gzip, text: word_text(2, 2_500) },
        TestFile { path: "c-empty.txt", stored: Stored::Plain, text: String::new() },
        // No final newline: its last line stays in its file.
        TestFile { path: "d-zstd.txt", stored: Stored::Zstd, text: word_text(3, 2_000).trim_end().to_owned() },
        TestFile { path: "e/nested.txt.gz", stored: Stored::Gzip, text: word_text(4, 1_000) },
    ];
    write_files(dir, &files);
    std::fs::write(dir.join(".hidden"), "never read\n").unwrap();
    std::fs::write(dir.join("_SUCCESS"), "never read\n").unwrap();
    files
}

/// What grep finds in `files` (named `prefix` + path), computed here: each match with its
/// file's name and its line within that file; files named only when more than one is not empty.
fn grep_expected(prefix: &str, files: &[TestFile], pattern: &str) -> Value {
    let regex = regex::Regex::new(pattern).unwrap();
    let several = files.iter().filter(|f| !f.text.is_empty()).count() > 1;
    let mut matches = Vec::new();
    for file in files {
        for (i, line) in file.text.lines().enumerate() {
            if regex.is_match(line) {
                let mut found = json!({"line": i + 1, "text": line});
                if several {
                    found["file"] = Value::from(format!("{prefix}{}", file.path));
                }
                matches.push(found);
            }
        }
    }
    assert!(matches.len() > 20, "the pattern matches lines in many chunks");
    Value::from(matches)
}

fn concatenated(files: &[TestFile]) -> String {
    // A file without a final newline ends its last line anyway: lines never join across files.
    files.iter().filter(|f| !f.text.is_empty()).map(|f| format!("{}\n", f.text.trim_end_matches('\n'))).collect()
}

fn parsed(run: &Run, what: &str) -> Value {
    assert!(run.success, "{what} failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{what}: output is not JSON ({e}): {}", run.stdout))
}

/// Checks that grep's output is `expected`, byte for byte as grep writes it: compact, each
/// match's fields in the order `file`, `line`, `text` (a `Value`'s keys are sorted, which
/// happens to be that order).
fn check_grep(run: &Run, expected: &Value) {
    assert_eq!(&parsed(run, "grep"), expected);
    assert!(run.stdout.trim_end() == serde_json::to_string(expected).unwrap(), "grep's output, exactly");
}

/// The mixed directory's empty file and one other, the empty one first: one file holds lines,
/// so grep names none.
fn one_file_and_an_empty_one(logs: &str, files: &[TestFile]) -> ([String; 2], Value) {
    let (empty, plain) = (&files[2], &files[0]);
    assert!(empty.text.is_empty() && !plain.text.is_empty());
    let inputs = [format!("{logs}/{}", empty.path), format!("{logs}/{}", plain.path)];
    let pair = [empty, plain].map(|f| TestFile { path: f.path, stored: f.stored, text: f.text.clone() });
    (inputs, grep_expected(&format!("{logs}/"), &pair, PATTERN))
}

fn run_local(plugin: &Path, inputs: &[&str], extra: &[&str]) -> Run {
    let mut command = kiln();
    command.arg("run-local").arg("--plugin").arg(plugin).args(["--chunk-size", CHUNK]);
    for input in inputs {
        command.args(["--input", input]);
    }
    command.args(extra).output().expect("kiln runs").into()
}

fn submit(cluster: &Cluster, plugin: &Path, inputs: &[&str], extra: &[&str]) -> Run {
    let plugin = plugin.to_str().unwrap();
    let mut args = vec!["submit", "--plugin", plugin, "--chunk-size", CHUNK];
    for input in inputs {
        args.extend(["--input", input]);
    }
    args.extend_from_slice(extra);
    cluster.kiln(&args)
}

fn path_str(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

const PATTERN: &str = r"^Word0\b|日本14 |w4[0-2]$";

#[test]
fn a_directory_of_plain_gzip_and_zstd_files_runs_locally_like_its_concatenated_text() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let files = mixed_directory(&logs);
    let logs = path_str(&logs);
    let expected_counts = word_counts(&concatenated(&files));
    for processes in ["1", "3"] {
        let run = run_local(&example("wordcount"), &[&logs], &["--processes", processes]);
        assert_eq!(parsed(&run, "wordcount"), expected_counts, "{processes} processes");
    }
    let run = run_local(&example("grep"), &[&logs], &["--processes", "3", "--params", PATTERN]);
    check_grep(&run, &grep_expected(&format!("{logs}/"), &files, PATTERN));
    let (inputs, expected) = one_file_and_an_empty_one(&logs, &files);
    let run = run_local(&example("grep"), &[&inputs[0], &inputs[1]], &["--params", PATTERN]);
    check_grep(&run, &expected);
}

#[test]
fn a_directory_of_plain_gzip_and_zstd_files_uploads_like_its_concatenated_text() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let files = mixed_directory(&logs);
    let logs = path_str(&logs);
    let cluster = Cluster::start(2);
    let run = submit(&cluster, &example("wordcount"), &[&logs], &[]);
    assert_eq!(parsed(&run, "wordcount"), word_counts(&concatenated(&files)));
    // `--output FILE` writes the same result to the file instead of stdout.
    let result_file = dir.path().join("counts.json");
    let run = submit(&cluster, &example("wordcount"), &[&logs], &["--output", &path_str(&result_file)]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.stdout, "", "the result goes to the file only");
    let written = std::fs::read_to_string(&result_file).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), word_counts(&concatenated(&files)));
    let nowhere = dir.path().join("missing-dir/counts.json");
    let run = submit(&cluster, &example("wordcount"), &[&logs], &["--output", &path_str(&nowhere)]);
    assert!(!run.success);
    assert!(run.stderr.contains("missing-dir does not exist: create it or name another file"), "{}", run.stderr);
    let run = submit(&cluster, &example("grep"), &[&logs], &["--params", PATTERN]);
    check_grep(&run, &grep_expected(&format!("{logs}/"), &files, PATTERN));
    let (inputs, expected) = one_file_and_an_empty_one(&logs, &files);
    let run = submit(&cluster, &example("grep"), &[&inputs[0], &inputs[1]], &["--params", PATTERN]);
    check_grep(&run, &expected);
}

#[test]
fn repeated_inputs_and_patterns_keep_their_order_and_the_names_given() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        TestFile { path: "x/2.txt", stored: Stored::Plain, text: word_text(5, 800) },
        TestFile { path: "x/10.txt", stored: Stored::Zstd, text: word_text(6, 900) },
        TestFile { path: "y.txt", stored: Stored::Gzip, text: word_text(7, 700) },
    ];
    write_files(dir.path(), &files);
    let root = path_str(dir.path());
    // `y.txt` first, then the pattern's matches sorted by path (`10` before `2`).
    let inputs = [format!("{root}/y.txt"), format!("{root}/x/*.txt")];
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let order = [&files[2], &files[1], &files[0]];
    let ordered: Vec<TestFile> =
        order.iter().map(|f| TestFile { path: f.path, stored: f.stored, text: f.text.clone() }).collect();
    let expected = grep_expected(&format!("{root}/"), &ordered, PATTERN);
    let run = run_local(&example("grep"), &inputs, &["--params", PATTERN]);
    check_grep(&run, &expected);
}

#[test]
fn bad_compressed_data_fails_naming_the_file_and_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    std::fs::write(&good, word_text(8, 200)).unwrap();
    let broken: PathBuf = dir.path().join("broken.gz");
    let mut bytes = gzip(&word_text(9, 5_000));
    let middle = bytes.len() / 2;
    bytes[middle..].iter_mut().for_each(|b| *b = !*b);
    std::fs::write(&broken, &bytes).unwrap();
    let inputs = [path_str(&good), path_str(&broken)];
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();

    let run = run_local(&example("wordcount"), &inputs, &[]);
    assert!(!run.success, "a broken gzip file fails the run");
    let said = format!("input file {}: bad gzip data at byte ", broken.display());
    assert!(run.stderr.contains(&said), "{}", run.stderr);

    let cluster = Cluster::start(1);
    let run = submit(&cluster, &example("wordcount"), &inputs, &[]);
    assert!(!run.success, "a broken gzip file fails the job");
    let said = format!("cannot read the input {}: bad gzip data at byte ", broken.display());
    assert!(run.stderr.contains(&said), "{}", run.stderr);
}
