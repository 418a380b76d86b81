//! Section 13: the peak memory of every process for a result of about 400 MB.
//!
//! The grep example with the pattern `.` over a quarter of the word corpus (256 MiB, or
//! proportionally less with `--quick`) answers every line as JSON, about 1.5 times the input.
//! One worker of 2 processes, TLS, the result written by `kiln submit --output`. VmHWM of the
//! controller and the worker daemon before and after the job, the largest executor seen while
//! it runs (polled every [`POLL`]: each ends with its job, and its VmHWM with it), and `kiln
//! submit`'s own VmHWM (polled as often by [`run_measured`](super::process::run_measured); its
//! `ru_maxrss` would count this process's own pages, which `execve` carries over). The result
//! is checked element by element against the input's lines, numbered from 1.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::cluster::Cluster;
use super::cluster_measures::{PROCESSES, tiny_input};
use super::process::POLL;
use super::report::{Report, Target};
use super::{Bench, corpus, human};

pub fn big_result(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let input = corpus::words(&bench.inputs(), (bench.size / 4).max(1 << 20))?;
    let bytes = std::fs::metadata(&input)?.len();
    report.section(
        "13. Peak memory for a large result",
        &format!(
            "The grep example with the pattern `.` (every line matches) over {} MiB of the word \
             corpus, its result checked one match at a time against the input's lines. One worker \
             of {PROCESSES} processes, TLS, the result written by `kiln submit --output`. VmHWM of \
             each daemon after a one-line warm-up job and after the large one; the largest executor \
             (`kiln exec`, which holds the plugin's partials and runs its `aggregate`) read every \
             {} ms while the job ran; `kiln submit`'s VmHWM read as often while it ran. Its \
             `ru_maxrss` from `wait4` is shown too but is no measure of `kiln submit`: Linux's \
             `execve` keeps the high-water mark of the memory it replaces, the bench's own pages \
             (all of them with posix_spawn, which shares them). Before results travelled in \
             pieces (issue 15), a 412 MB result took the controller to 2.2 GB, a worker to 1.4 GB \
             and `kiln submit` to 870 MB (by `ru_maxrss`).",
            bytes >> 20,
            POLL.as_millis()
        ),
    );
    let cluster = Cluster::start(bench, 1, PROCESSES)?;
    let plugin = bench.example("grep");
    let processes = PROCESSES.to_string();
    let args = ["--params", ".", "--processes", processes.as_str()];
    // Builds the plugin, and gives the peaks of a small job to compare with.
    cluster.submit(&plugin, &tiny_input(bench)?, &args)?;
    let before = cluster.peak_memory()?;
    let result = bench.work.join("big-result.json");
    let result_arg = result.to_str().context("the bench's work directory is UTF-8")?;
    eprintln!("big result: grep . over {} MiB, result to {}", bytes >> 20, result.display());
    let done = AtomicBool::new(false);
    let (submitted, executor) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut executor = None;
            while !done.load(Ordering::Relaxed) {
                if let Ok(peak) = cluster.peak_memory() {
                    executor = executor.max(peak.executor);
                }
                std::thread::sleep(POLL);
            }
            executor
        });
        let with_output: Vec<&str> = args.iter().copied().chain(["--output", result_arg]).collect();
        let submitted = cluster.submit(&plugin, &input, &with_output);
        done.store(true, Ordering::Relaxed);
        (submitted, watcher.join().unwrap_or(None))
    });
    let submitted = submitted?;
    let after = cluster.peak_memory()?;
    drop(cluster);
    let result_bytes = std::fs::metadata(&result)?.len();
    let lines = check_every_line(&result, &input);
    let _ = std::fs::remove_file(&result);
    let lines = lines?;

    let mib = |bytes: u64| format!("{} MiB", bytes >> 20);
    report.figure("result", &format!("{:.0} MB, {lines} matches", result_bytes as f64 / 1e6), Target::None);
    report.figure("job, `kiln submit` start to exit", &human(submitted.took), Target::None);
    report.figure(
        "controller (after the warm-up → after the large result)",
        &format!("{} → {}", mib(before.controller), mib(after.controller)),
        Target::None,
    );
    for (n, (before, after)) in before.workers.iter().zip(&after.workers).enumerate() {
        report.figure(
            &format!("worker daemon {} (after the warm-up → after)", n + 1),
            &format!("{} → {}", mib(*before), mib(*after)),
            Target::None,
        );
    }
    report.figure("executor, largest seen", &executor.map_or("not seen".to_owned(), mib), Target::None);
    report.figure("`kiln submit` (VmHWM)", &mib(submitted.client_peak.polled), Target::None);
    report.figure(
        "`kiln submit`'s `ru_maxrss` (from the bench's own size, not a measure)",
        &mib(submitted.client_peak.maxrss),
        Target::None,
    );
    Ok(())
}

/// A match of the grep example's output over a single file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Match<'a> {
    line: u64,
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// Checks that `result` is grep `.`'s answer over `input`: one match per line, in order,
/// numbered from 1, each with its line's text; answers how many. Reads the result as a
/// sequence, one match at a time, never as one tree.
fn check_every_line(result: &Path, input: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let json = std::fs::read(result).with_context(|| format!("reading {}", result.display()))?;
    struct Expected<'t>(std::str::Lines<'t>);
    impl<'de> Visitor<'de> for Expected<'_> {
        type Value = u64;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a JSON array of grep matches")
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<u64, A::Error> {
            let mut n = 0;
            while let Some(found) = seq.next_element::<Match<'de>>()? {
                n += 1;
                let line = self.0.next();
                if found.line != n || line != Some(&*found.text) {
                    return Err(A::Error::custom(format!(
                        "match {n} is line {} {:?}, where line {n} of the input is {line:?}",
                        found.line, found.text
                    )));
                }
            }
            match self.0.next() {
                Some(line) => Err(A::Error::custom(format!("line {} ({line:?}) has no match", n + 1))),
                None => Ok(n),
            }
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(&json);
    let n = deserializer.deserialize_seq(Expected(text.lines())).context("the grep result differs from the input")?;
    deserializer.end().context("the grep result has more after its array")?;
    if n == 0 {
        bail!("the grep result is empty");
    }
    Ok(n)
}
