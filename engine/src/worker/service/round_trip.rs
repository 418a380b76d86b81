//! The round trip to the controller as the worker measures it, and the deadlines of the
//! worker's calls judged against it, so that a worker on a slow link ("gray": seconds away,
//! yet alive) keeps its registration instead of timing out every call.

use std::time::Duration;

/// How many round trips a call to the controller may take before it counts as unanswered.
pub(super) const RTT_MULTIPLE: u32 = 4;

/// The shortest deadline of a heartbeat: well under the controller's timeout for silent
/// workers (3 s by default), so that a stuck call is noticed while the worker counts as alive.
pub(super) const DEADLINE_FLOOR: Duration = Duration::from_secs(2);

/// The longest deadline of a heartbeat, however slow the link: past this the controller has
/// long declared the worker lost (its own limit stops at a minute).
pub(super) const DEADLINE_CEILING: Duration = Duration::from_secs(30);

/// The smoothed round trip, from connections made (a TLS handshake is about one round trip)
/// and calls answered; a call that went unanswered counts as a round trip at least as long.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RoundTrip {
    smoothed: Option<Duration>,
}

impl RoundTrip {
    /// Takes a measure in: up at once (a link that got slower must not cost a timeout for
    /// every call until the average catches up), down slowly.
    pub(super) fn record(&mut self, sample: Duration) {
        self.smoothed = Some(match self.smoothed {
            Some(estimate) if sample < estimate => (estimate * 7 + sample) / 8,
            _ => sample,
        });
    }

    /// A call got no answer within `waited`: the next deadline is [`RTT_MULTIPLE`] times
    /// longer (up to the ceiling), so a link that got slower is waited for.
    pub(super) fn unanswered(&mut self, waited: Duration) {
        self.record(waited);
    }

    /// The deadline of a heartbeat now: [`RTT_MULTIPLE`] round trips, between the floor and the
    /// ceiling.
    pub(super) fn deadline(&self) -> Duration {
        self.smoothed
            .map_or(DEADLINE_FLOOR, |rtt| rtt.saturating_mul(RTT_MULTIPLE))
            .clamp(DEADLINE_FLOOR, DEADLINE_CEILING)
    }

    /// The estimate, for logs.
    pub(super) fn estimate(&self) -> Option<Duration> {
        self.smoothed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_round_trip_between_floor_and_ceiling() {
        let mut rtt = RoundTrip::default();
        assert_eq!(rtt.deadline(), DEADLINE_FLOOR, "nothing measured yet");
        rtt.record(Duration::from_millis(5));
        assert_eq!(rtt.deadline(), DEADLINE_FLOOR, "a quick link keeps the floor");
        rtt.record(Duration::from_secs(3));
        assert_eq!(rtt.deadline(), Duration::from_secs(12), "a slower link is followed at once");
        rtt.record(Duration::ZERO);
        assert_eq!(rtt.deadline(), Duration::from_millis(10_500), "and left slowly");
        rtt.record(Duration::from_secs(60));
        assert_eq!(rtt.deadline(), DEADLINE_CEILING);
    }

    #[test]
    fn an_unanswered_call_widens_the_next_deadline() {
        let mut rtt = RoundTrip::default();
        rtt.record(Duration::from_millis(5));
        rtt.unanswered(rtt.deadline());
        assert_eq!(rtt.deadline(), DEADLINE_FLOOR * RTT_MULTIPLE);
        rtt.unanswered(rtt.deadline());
        assert_eq!(rtt.deadline(), DEADLINE_CEILING);
    }
}
