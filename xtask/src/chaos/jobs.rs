//! The chaos run's jobs: inputs for the example plugins made from a seed, the result each must
//! give computed here from what was generated (not by parsing the text back the plugins' way),
//! and `kiln submit` run to its end, its outcome sorted into right, wrong, missing or stuck.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

/// A small deterministic generator (splitmix64): the same seed gives the same run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// Whether an event of probability `percent` % happens.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The example plugins a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Plugin {
    WordCount,
    Grep,
    CsvStats,
}

impl Plugin {
    pub const ALL: [Plugin; 3] = [Plugin::WordCount, Plugin::Grep, Plugin::CsvStats];

    /// Its crate's directory name under examples/plugins.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::WordCount => "wordcount",
            Plugin::Grep => "grep",
            Plugin::CsvStats => "csv-stats",
        }
    }
}

/// A job to submit: its plugin, parameters, chunk size, input and the result it must give.
pub struct Job {
    pub plugin: Plugin,
    pub params: String,
    pub chunk_size: u64,
    pub input: PathBuf,
    pub input_bytes: u64,
    pub expected: Value,
}

/// Words with non-ASCII letters and punctuation; none holds whitespace.
const WORDS: [&str; 12] = ["the", "Kiln", "kiln", "naïve", "日本", "end.", "w1", "w12", "w123", "a-b", "(x)", "Ω"];

/// What separates words on a line: ASCII whitespace, and rarely Unicode whitespace that only
/// `split_whitespace` knows (U+2003, U+00A0).
fn separator(rng: &mut Rng) -> &'static str {
    match rng.below(40) {
        0 => "\u{2003}",
        1 => "\u{a0}",
        2..=5 => "\t",
        6..=8 => "   ",
        _ => " ",
    }
}

/// Lines of words: each line's words as generated, and its text.
fn word_lines(rng: &mut Rng, bytes: u64) -> Vec<(Vec<String>, String)> {
    let mut lines = Vec::new();
    let mut total = 0u64;
    while total < bytes {
        let n_words = rng.below(10);
        let mut words = Vec::new();
        let mut text = String::new();
        for i in 0..n_words {
            if i > 0 {
                text.push_str(separator(rng));
            }
            // Skewed: some words far more frequent than others, and some numbered ones rare.
            let word = if rng.chance(10) {
                format!("n{}", rng.below(5000))
            } else {
                WORDS[rng.below(WORDS.len() as u64).min(rng.below(WORDS.len() as u64)) as usize].to_owned()
            };
            text.push_str(&word);
            words.push(word);
        }
        if rng.chance(5) {
            // Leading and trailing blanks are no words either.
            text = format!(" {text}\t");
        }
        total += text.len() as u64 + 1;
        lines.push((words, text));
    }
    lines
}

/// The text of lines, each ended by `\n` or (one in ten) `\r\n`.
fn join_lines<'a>(rng: &mut Rng, lines: impl Iterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push_str(if rng.chance(10) { "\r\n" } else { "\n" });
    }
    text
}

/// Makes a job of `plugin` with about `bytes` of input, written to `dir/name`.
pub fn make(rng: &mut Rng, plugin: Plugin, bytes: u64, dir: &Path, name: &str) -> anyhow::Result<Job> {
    let (params, text, expected) = match plugin {
        Plugin::WordCount => {
            let lines = word_lines(rng, bytes);
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for word in lines.iter().flat_map(|(words, _)| words) {
                *counts.entry(word).or_default() += 1;
            }
            let text = join_lines(rng, lines.iter().map(|(_, text)| text.as_str()));
            (String::new(), text, json!(counts))
        }
        Plugin::Grep => {
            let lines = word_lines(rng, bytes);
            // A literal word, found anywhere on a line or, with `^`, at its start (a line
            // starting with a blank does not).
            let word = ["Kiln", "w12", "日本", "naïve", "n42"][rng.below(5) as usize];
            let anchored = rng.chance(30);
            let matches = |text: &str| if anchored { text.starts_with(word) } else { text.contains(word) };
            let expected: Vec<Value> = lines
                .iter()
                .enumerate()
                .filter(|(_, (_, text))| matches(text))
                .map(|(i, (_, text))| json!({"line": i + 1, "text": text}))
                .collect();
            let text = join_lines(rng, lines.iter().map(|(_, text)| text.as_str()));
            let params = if anchored { format!("^{word}") } else { word.to_owned() };
            (params, text, Value::Array(expected))
        }
        Plugin::CsvStats => csv(rng, bytes),
    };
    // Through JSON text and back, as the plugin's output is read: serde_json reads some
    // decimals an ulp away from the `f64` they were printed from (a mean), the same way for
    // both.
    let expected = serde_json::from_str(&expected.to_string()).context("the expected result reads back")?;
    let input = dir.join(name);
    std::fs::write(&input, &text).with_context(|| format!("writing {}", input.display()))?;
    // Chunks small enough that every job has many, so faults land in the middle of jobs.
    let chunk_size = 1 << rng.between(12, 16);
    Ok(Job { plugin, params, chunk_size, input, input_bytes: text.len() as u64, expected })
}

/// A CSV of about `bytes`: a header, then `name,int,quarter,int` rows with blanks, words and a
/// missing column here and there; the statistics of a column chosen at random. The numbers are
/// integers and quarters of at most a few thousand, so every sum is exact in `f64` whatever
/// the order of the additions.
fn csv(rng: &mut Rng, bytes: u64) -> (String, String, Value) {
    let column = rng.below(4) as usize;
    let mut text = String::from("name,count,price,delta\n");
    let (mut count, mut skipped, mut sum) = (0u64, 1u64, 0f64);
    let (mut min, mut max): (Option<f64>, Option<f64>) = (None, None);
    while (text.len() as u64) < bytes {
        let values =
            [rng.between(0, 5000) as f64, rng.between(0, 40_000) as f64 / 4.0, rng.between(0, 2000) as f64 - 1000.0];
        let line = match rng.below(50) {
            0 => String::new(),
            1 => format!("row{},n/a,x,", rng.below(100)),
            2 => format!("row{}", rng.below(100)),
            _ => format!("row{}, {},{} ,{}", rng.below(100), values[0], values[1], values[2]),
        };
        let value = match (line.split(',').count(), column) {
            (4, 1..=3) if !line.contains("n/a") => Some(values[column - 1]),
            _ => None,
        };
        match value {
            Some(x) => {
                count += 1;
                sum += x;
                min = Some(min.map_or(x, |m| m.min(x)));
                max = Some(max.map_or(x, |m| m.max(x)));
            }
            None => skipped += 1,
        }
        text.push_str(&line);
        text.push('\n');
    }
    let mean = (count > 0).then(|| sum / count as f64);
    let expected = json!({"count": count, "sum": sum, "min": min, "max": max, "mean": mean, "skipped": skipped});
    (column.to_string(), text, expected)
}

/// How a job ended, as `kiln submit` saw it.
#[derive(Debug)]
pub enum Outcome {
    /// It printed the expected result.
    Right { job: u64 },
    /// It printed another result.
    Wrong { job: u64, got: String },
    /// The job was created but gave no result: it failed, was cancelled or lost.
    Missing { job: Option<u64>, stderr: String },
    /// No job was created: the controller could not be reached (it was down); tried again.
    Refused { stderr: String },
    /// `kiln submit` did not end within the deadline.
    Stuck { job: Option<u64>, stderr: String },
    /// The run was interrupted while the job ran.
    Interrupted,
}

/// Runs `kiln submit` for `job` to its end (at most `deadline`, and no longer than it takes
/// `stop` to be set) and sorts its outcome.
pub fn submit(command: &mut Command, job: &Job, deadline: Duration, stop: &AtomicBool) -> anyhow::Result<Outcome> {
    command
        .arg("--plugin")
        .arg(crate::chaos::example(job.plugin.name()))
        .arg("--input")
        .arg(&job.input)
        .args(["--params", &job.params, "--chunk-size", &job.chunk_size.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= deadline || stop.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    let id = job_id(&stderr);
    let Some(status) = status else {
        if stop.load(Ordering::Relaxed) {
            return Ok(Outcome::Interrupted);
        }
        return Ok(Outcome::Stuck { job: id, stderr });
    };
    if !status.success() {
        return Ok(match id {
            Some(_) => Outcome::Missing { job: id, stderr },
            None => Outcome::Refused { stderr },
        });
    }
    let Some(id) = id else { return Ok(Outcome::Missing { job: None, stderr }) };
    Ok(match serde_json::from_str::<Value>(&stdout) {
        Ok(got) if got == job.expected => Outcome::Right { job: id },
        _ => Outcome::Wrong { job: id, got: stdout },
    })
}

/// The job a `kiln submit`'s stderr names: `submitted job N`, or `job N` in a message about it
/// (a retrying upload, an error).
pub fn job_id(stderr: &str) -> Option<u64> {
    stderr.match_indices("job ").find_map(|(at, _)| {
        let digits: String = stderr[at + 4..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words_of(text: &str) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for word in text.split_whitespace() {
            *counts.entry(word.to_owned()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn generated_word_counts_are_those_of_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let job = make(&mut Rng::new(7), Plugin::WordCount, 50_000, dir.path(), "words.txt").unwrap();
        let text = std::fs::read_to_string(&job.input).unwrap();
        assert_eq!(job.expected, json!(words_of(&text)));
        assert!(job.input_bytes >= 50_000);
    }

    #[test]
    fn generated_grep_matches_are_numbered_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for seed in 1..20 {
            let job = make(&mut Rng::new(seed), Plugin::Grep, 20_000, dir.path(), "grep.txt").unwrap();
            let text = std::fs::read_to_string(&job.input).unwrap();
            let (anchored, word) = match job.params.strip_prefix('^') {
                Some(word) => (true, word),
                None => (false, job.params.as_str()),
            };
            let want: Vec<Value> = text
                .lines()
                .enumerate()
                .filter(|(_, line)| if anchored { line.starts_with(word) } else { line.contains(word) })
                .map(|(i, line)| json!({"line": i + 1, "text": line}))
                .collect();
            assert_eq!(job.expected, Value::Array(want), "seed {seed}");
        }
    }

    #[test]
    fn generated_csv_statistics_are_those_of_the_column() {
        let dir = tempfile::tempdir().unwrap();
        for seed in 1..20 {
            let job = make(&mut Rng::new(seed), Plugin::CsvStats, 20_000, dir.path(), "data.csv").unwrap();
            let text = std::fs::read_to_string(&job.input).unwrap();
            let column: usize = job.params.parse().unwrap();
            let values: Vec<f64> = text
                .lines()
                .filter_map(|line| line.split(',').nth(column)?.trim().parse::<f64>().ok())
                .filter(|x| x.is_finite())
                .collect();
            assert_eq!(job.expected["count"], json!(values.len()), "seed {seed}");
            assert_eq!(job.expected["skipped"], json!(text.lines().count() - values.len()), "seed {seed}");
            let sum = values.iter().sum::<f64>();
            assert_eq!(job.expected["sum"], json!(sum), "seed {seed}");
            // The mean as the plugin's output reads: printed, then parsed.
            let mean: Value = serde_json::from_str(&json!(sum / values.len() as f64).to_string()).unwrap();
            assert_eq!(job.expected["mean"], mean, "seed {seed}");
        }
    }

    #[test]
    fn the_job_is_read_from_submit_messages() {
        assert_eq!(job_id("submitted job 12\n"), Some(12));
        assert_eq!(job_id("controller unreachable, retrying (job 7, 1 MiB sent)"), Some(7));
        assert_eq!(job_id("error: cannot connect to the controller at 127.0.0.1:1"), None);
    }
}
