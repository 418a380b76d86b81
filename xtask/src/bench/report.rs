//! BENCHMARKS.md: the machine, the commit, and each figure beside its target.

use std::fmt::Write;
use std::process::Command;
use std::time::Duration;

use super::limits::{self, Missed};
use super::quiet::Snapshot;
use super::{Bench, Measure};

/// A figure's target, and whether it was met.
pub enum Target {
    /// Recorded, no target.
    None,
    /// A measured value that must be at least a bound.
    AtLeast(f64, f64, &'static str),
    /// A measured duration that must be at most a bound.
    AtMost(Duration, Duration, &'static str),
    /// A measured value that must be at most a bound.
    AtMostNumber(f64, f64, &'static str),
}

/// The report being written.
pub struct Report {
    header: String,
    body: String,
    section: String,
    missed: Vec<Missed>,
    /// Whether the machine was busy at the start: every figure is then marked.
    busy: bool,
}

impl Report {
    pub fn new(bench: &Bench, at_start: &Snapshot) -> anyhow::Result<Report> {
        let mut header = String::new();
        writeln!(header, "# Benchmarks\n")?;
        writeln!(header, "Written by `cargo xtask bench{}`; rerun it to refresh every figure.", bench.flags)?;
        writeln!(header, "{}\n", rerun_one_section())?;
        let busy = at_start.is_busy();
        if busy {
            writeln!(
                header,
                "**Taken under load** (`--allow-busy`): another process used the machine when the bench \
                 started, so every figure below (marked †) is slower and noisier than on a quiet machine.\n"
            )?;
        }
        writeln!(header, "- machine: {} cores, {}, {} memory", cores(), cpu_model(), memory())?;
        writeln!(header, "- commit: {}", commit(bench))?;
        writeln!(header, "- run: {} repetitions after a warm-up run; figures are medians, then (min–max)", bench.runs)?;
        writeln!(header, "- load average (1, 5, 15 min) at the start: {}", at_start.describe())?;
        Ok(Report { header, body: String::new(), section: String::new(), missed: Vec::new(), busy })
    }

    /// Starts a section with a heading and a line saying what it measures.
    pub fn section(&mut self, title: &str, about: &str) {
        self.section = title.to_owned();
        let _ = write!(self.body, "\n## {title}\n\n{about}\n\n| measure | result | target |\n| --- | --- | --- |\n");
    }

    /// Adds a paragraph to the current section, after its figures.
    pub fn paragraph(&mut self, text: &str) {
        let _ = write!(self.body, "\n{text}\n");
    }

    /// Adds a table to the current section.
    pub fn table(&mut self, headings: &[&str], rows: Vec<Vec<String>>) {
        let _ = writeln!(self.body, "\n| {} |", headings.join(" | "));
        let _ = writeln!(self.body, "|{}", " --- |".repeat(headings.len()));
        for row in rows {
            let _ = writeln!(self.body, "| {} |", row.join(" | "));
        }
    }

    /// Adds one figure to the current section.
    pub fn figure(&mut self, name: &str, result: &str, target: Target) {
        let verdict = match target {
            Target::None => "—".to_owned(),
            Target::AtLeast(value, bound, text) => self.verdict(name, value >= bound, text),
            Target::AtMost(value, bound, text) => self.verdict(name, value <= bound, text),
            Target::AtMostNumber(value, bound, text) => self.verdict(name, value <= bound, text),
        };
        let mark = if self.busy { " †" } else { "" };
        let _ = writeln!(self.body, "| {name} | {result}{mark} | {verdict} |");
    }

    fn verdict(&mut self, name: &str, met: bool, text: &str) -> String {
        if met {
            format!("{text}: met")
        } else {
            self.missed.push(Missed { section: self.section.clone(), figure: format!("{name} ({text})") });
            format!("{text}: **missed**")
        }
    }

    pub fn note_total(&mut self, took: Duration, at_end: &Snapshot) {
        let _ = writeln!(self.header, "- load average at the end: {}", at_end.describe());
        let _ = writeln!(self.header, "- the whole run took {:.0} s", took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut text = self.header.clone();
        if self.missed.is_empty() {
            text.push_str("- targets: all measured targets met\n");
        } else {
            let figures: Vec<&str> = self.missed.iter().map(|m| m.figure.as_str()).collect();
            let _ = writeln!(text, "- targets missed: {}", figures.join("; "));
        }
        text.push_str(&self.body);
        text.push_str(&limits::what_limits_us(&self.missed));
        text
    }
}

/// How to rerun one section: `--only` with each measure's name and what it covers.
fn rerun_one_section() -> String {
    let names: Vec<String> = <Measure as clap::ValueEnum>::value_variants()
        .iter()
        .filter_map(clap::ValueEnum::to_possible_value)
        .map(|value| match value.get_help() {
            Some(help) => format!("`{}` ({})", value.get_name(), help.to_string().trim_end_matches('.')),
            None => format!("`{}`", value.get_name()),
        })
        .collect();
    format!(
        "To rerun one section, `cargo xtask bench --only NAME` (names may be repeated or joined with commas) \
         with NAME among: {}.",
        names.join("; ")
    )
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let kib: u64 = info.lines().find(|l| l.starts_with("MemTotal"))?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kib as f64 / (1 << 20) as f64))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn commit(bench: &Bench) -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(&bench.root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
