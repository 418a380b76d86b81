//! BENCHMARKS.md: the machine, the commit, and each figure beside its target.

use std::fmt::Write;
use std::process::Command;
use std::time::Duration;

use super::Bench;
use super::limits::{self, Missed};

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
}

impl Report {
    pub fn new(bench: &Bench) -> anyhow::Result<Report> {
        let mut header = String::new();
        writeln!(header, "# Benchmarks\n")?;
        writeln!(header, "Written by `cargo xtask bench{}`; rerun it to refresh every figure.\n", bench.flags)?;
        writeln!(header, "- machine: {} cores, {}, {} memory", cores(), cpu_model(), memory())?;
        writeln!(header, "- commit: {}", commit(bench))?;
        writeln!(header, "- run: {} repetitions after a warm-up run; figures are medians, then (min–max)", bench.runs)?;
        writeln!(header, "- load average (1, 5, 15 min) at the start: {}", load_average())?;
        Ok(Report { header, body: String::new(), section: String::new(), missed: Vec::new() })
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
        let _ = writeln!(self.body, "| {name} | {result} | {verdict} |");
    }

    fn verdict(&mut self, name: &str, met: bool, text: &str) -> String {
        if met {
            format!("{text}: met")
        } else {
            self.missed.push(Missed { section: self.section.clone(), figure: format!("{name} ({text})") });
            format!("{text}: **missed**")
        }
    }

    pub fn note_total(&mut self, took: Duration) {
        let _ = writeln!(self.header, "- load average at the end: {}", load_average());
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

/// The load averages of /proc/loadavg: other work on the machine makes every figure noisier.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".to_owned())
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
