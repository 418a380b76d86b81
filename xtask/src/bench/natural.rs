//! Natural code: a word count written the way a newcomer writes it (a `String` per word, the
//! standard `HashMap`, no `combine`), through `kiln run-local` and as a plain Rust program running
//! the very same counting code; and the same task written with the API's `Counter` (the
//! wordcount example) against the direct rayon baseline.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use rayon::prelude::*;

use super::measures::throughput;
use super::report::{Report, Target};
use super::{Bench, Samples, baseline, checked, corpus};

/// The naive plugin's counting code, compiled into this program too.
#[path = "../../plugins/naive-wordcount/src/count.rs"]
mod count;

/// Section 10: what Kiln costs code written the obvious way.
pub fn natural_code(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let input = corpus::words(&bench.inputs(), bench.size)?;
    let bytes = std::fs::metadata(&input)?.len();

    eprintln!("natural code: the naive count as a plain program");
    let mut plain_output = BTreeMap::new();
    let plain = Samples::collect(bench.runs, true, || {
        let data = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
        let text = std::str::from_utf8(&data).context("the corpus is UTF-8")?;
        // On rayon's pool, like the baseline: the same cores Kiln's run gets.
        let pieces = baseline::split_at_lines(text, rayon::current_num_threads() * 16);
        let parts = pieces.par_iter().map(|piece| count::count(piece.lines())).collect();
        plain_output = count::add_up(parts);
        Ok(())
    })?;
    eprintln!("natural code: the naive plugin through kiln run-local --processes 2");
    let naive = run_local(bench, &bench.root.join("xtask/plugins/naive-wordcount"), &input, &plain_output)?;

    eprintln!("natural code: the streaming baseline and the wordcount example (API Counter)");
    let mut expected = BTreeMap::new();
    let base = Samples::collect(bench.runs, true, || {
        expected = baseline::word_count(&input)?;
        Ok(())
    })?;
    if expected != plain_output {
        bail!("the naive program's word count differs from the baseline's: no figure reported");
    }
    let api = run_local(bench, &bench.example("wordcount"), &input, &expected)?;

    report.section(
        "10. Natural code",
        &format!(
            "{} MiB corpus. The naive word count (`xtask/plugins/naive-wordcount`: a `String` per word, \
             std `HashMap`, no `combine`) through `kiln run-local --processes 2`, against the same counting \
             code (`src/count.rs`, compiled into xtask) as a plain program over line-cut pieces on rayon's \
             pool; and the wordcount example, written with the API's `Counter`, against the direct rayon \
             baseline. Every output checked equal.",
            bytes >> 20
        ),
    );
    let ratio = |a: &Samples, b: &Samples| b.median().as_secs_f64() / a.median().as_secs_f64();
    report.figure("naive count, plain program", &throughput(bytes, &plain), Target::None);
    report.figure("naive count, `kiln run-local --processes 2`", &throughput(bytes, &naive), Target::None);
    let naive_ratio = ratio(&naive, &plain);
    report.figure(
        "naive plugin ÷ naive program",
        &format!("{naive_ratio:.2}×"),
        Target::AtLeast(naive_ratio, 0.9, "≥ 0.9×"),
    );
    report.figure("direct rayon word count (baseline)", &throughput(bytes, &base), Target::None);
    report.figure("wordcount example (`Counter`), run-local", &throughput(bytes, &api), Target::None);
    let api_ratio = ratio(&api, &base);
    report.figure(
        "`Counter` plugin ÷ baseline",
        &format!("{api_ratio:.2}×"),
        Target::AtLeast(api_ratio, 0.9, "≥ 0.9×"),
    );
    Ok(())
}

/// Times `kiln run-local` of a word-count plugin and checks its output.
fn run_local(bench: &Bench, plugin: &Path, input: &Path, expected: &BTreeMap<String, u64>) -> anyhow::Result<Samples> {
    let mut output = String::new();
    let samples = Samples::collect(bench.runs, true, || {
        let mut command = bench.kiln();
        command.arg("run-local").arg("--plugin").arg(plugin).arg("--input").arg(input);
        command.args(["--processes", "2"]);
        output = String::from_utf8(checked(&mut command)?.stdout).context("kiln's output is UTF-8")?;
        Ok(())
    })?;
    let counted: BTreeMap<String, u64> = serde_json::from_str(&output).context("kiln's output is a word count")?;
    if &counted != expected {
        bail!("{}'s word count differs from the expected one: no figure reported", plugin.display());
    }
    Ok(samples)
}
