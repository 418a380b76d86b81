//! How long a job's chunks took: the median that tells stragglers (`speculation`), the recent
//! pace that sizes batches (`batch`), and until when no running chunk can become a straggler.

use crate::rules::batch::Pace;
use std::time::{Duration, Instant};

/// How many chunks of a job must have completed (in this run of the controller) before a
/// median means anything.
pub(in crate::controller) const SPECULATION_MIN_DONE: usize = 3;

/// The least a chunk must have run to get a speculative copy: below this, a copy costs more in
/// transfer and start-up than waiting, and scheduling jitter on a loaded host looks like
/// straggling.
pub(in crate::controller) const SPECULATION_MIN_AGE: Duration = Duration::from_secs(1);

/// How long the completed chunks of a job took, with their median, the recent pace per chunk
/// that sizes batches (`batch`), and until when no running chunk can become a straggler.
#[derive(Debug, Default)]
pub(in crate::controller) struct ChunkTimes {
    done: Vec<Duration>,
    /// The median, and the number of times it was computed over.
    median: Option<(usize, Duration)>,
    /// A moving average of the time per chunk of the calls that answered lately.
    pace: Pace,
    /// When the last scan for stragglers found none, the earliest moment a chunk running then
    /// can become one: until then, or until new copies start, scanning again finds nothing.
    quiet_until: Option<Instant>,
}

impl ChunkTimes {
    /// Records a call that answered for `n_chunks` chunks after `took`: each chunk is counted
    /// with its share of the call's time (its chunks ran one after another).
    pub fn record_call(&mut self, took: Duration, n_chunks: usize) {
        let share = self.pace.record_call(took, n_chunks);
        self.done.extend(std::iter::repeat_n(share, n_chunks.max(1)));
    }

    /// The time per chunk of the calls that answered lately.
    pub fn pace(&self) -> Pace {
        self.pace
    }

    /// New copies started now: none of them can straggle before [`SPECULATION_MIN_AGE`], so a
    /// scan for stragglers may find something sooner than the last one said, but not before
    /// then. (Copies start at every dispatch while a job runs: scanning at each would cost a
    /// pass over the job's chunks per call.)
    pub fn copies_started(&mut self, now: Instant) {
        let earliest = now + SPECULATION_MIN_AGE;
        self.quiet_until = self.quiet_until.map(|until| until.min(earliest));
    }

    /// Until when the last scan for stragglers said none can appear, unless copies start.
    pub fn quiet_until(&self) -> Option<Instant> {
        self.quiet_until
    }

    /// A scan found no straggler: none can appear before `until` unless copies start.
    pub fn quiet(&mut self, until: Instant) {
        self.quiet_until = Some(until);
    }

    /// The median chunk time, once [`SPECULATION_MIN_DONE`] chunks have completed. Computed
    /// again (in linear time) once the times grew by an eighth since: the median of many
    /// chunks hardly moves with a few more, and a job of 100,000 chunks would otherwise sort
    /// through all their times at every answer near its end.
    pub fn median(&mut self) -> Option<Duration> {
        if self.done.len() < SPECULATION_MIN_DONE {
            return None;
        }
        match self.median {
            Some((n, median)) if self.done.len() - n < (n / 8).max(1) => Some(median),
            _ => {
                let mut times = self.done.clone();
                let middle = times.len() / 2;
                let median = *times.select_nth_unstable(middle).1;
                self.median = Some((self.done.len(), median));
                Some(median)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_needs_a_few_chunks_and_follows_new_ones() {
        let mut times = ChunkTimes::default();
        times.record_call(Duration::from_millis(100), 1);
        times.record_call(Duration::from_millis(300), 1);
        assert_eq!(times.median(), None, "two chunks say nothing yet");
        times.record_call(Duration::from_millis(200), 1);
        assert_eq!(times.median(), Some(Duration::from_millis(200)));
        times.record_call(Duration::from_millis(90), 2);
        assert_eq!(
            times.median(),
            Some(Duration::from_millis(100)),
            "a call of two counts each chunk at half its time"
        );
    }
}
