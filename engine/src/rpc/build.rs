//! The wire type of a job's building phase: how far the build of its plugin has come.

use serde::{Deserialize, Serialize};

/// A job's plugin build as its status reports it: cargo's progress through the crates while
/// it runs, and how long it took once it ended. A job is in its building phase while its
/// status has a build that has not ended; its chunks start after that.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BuildProgress {
    /// Crates compiled (or found up to date) so far.
    pub crates_done: u32,
    /// Crates the build has in all, dependencies included; 0 until cargo's resolution is read.
    pub crates_total: u32,
    /// The crate cargo started compiling last; empty before the first.
    pub current: String,
    /// When the build (with the fetch of dependencies before it) started, in milliseconds
    /// since the Unix epoch.
    pub started_ms: u64,
    /// When it ended; `None` while it runs.
    pub finished_ms: Option<u64>,
}

impl BuildProgress {
    /// Whether the build has ended.
    pub fn is_finished(&self) -> bool {
        self.finished_ms.is_some()
    }

    /// How long it ran, in milliseconds: until it ended, or until `now_ms`.
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        self.finished_ms.unwrap_or(now_ms).saturating_sub(self.started_ms)
    }

    /// `Compiling (12/41): abi_stable`, `Compiling`, or once it ended `Built in 1.4 s` (`Ready
    /// in 0.1 s` when no cargo progress was seen: a library from a worker's cache): the words
    /// the CLI and the web show for it.
    pub fn describe(&self, now_ms: u64) -> String {
        let seconds = self.elapsed_ms(now_ms) as f64 / 1000.0;
        if self.is_finished() {
            return match self.crates_total {
                0 => format!("Ready in {seconds:.1} s"),
                _ => format!("Built in {seconds:.1} s"),
            };
        }
        let mut text = "Compiling".to_owned();
        if self.crates_total > 0 {
            text.push_str(&format!(" ({}/{})", self.crates_done.min(self.crates_total), self.crates_total));
        }
        if !self.current.is_empty() {
            text.push_str(&format!(": {}", self.current));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_reads_as_its_phase() {
        let mut build = BuildProgress { started_ms: 1_000, ..BuildProgress::default() };
        assert_eq!(build.describe(2_000), "Compiling");
        (build.crates_done, build.crates_total, build.current) = (12, 41, "abi_stable".to_owned());
        assert_eq!(build.describe(2_000), "Compiling (12/41): abi_stable");
        assert_eq!(build.elapsed_ms(2_500), 1_500);
        build.finished_ms = Some(9_400);
        assert_eq!(build.describe(20_000), "Built in 8.4 s");
        assert_eq!(build.elapsed_ms(20_000), 8_400);
        let cached = BuildProgress { started_ms: 1_000, finished_ms: Some(1_100), ..BuildProgress::default() };
        assert_eq!(cached.describe(20_000), "Ready in 0.1 s");
    }
}
