//! How often a chunk is tried before its job fails.
//!
//! A chunk whose plugin returns `Err` fails the job at once: that is the plugin's decision, and
//! no retry changes it. A panic or a crash (or a timeout) is retried, on another worker when
//! there is one: a crash may come from the machine (memory, a signal). When the chunk's next
//! attempt fails with the very same message (the same panic at the same place in the source,
//! on the same line of input), the fault is deterministic and the job fails then, after two
//! attempts; other failures are tried up to the job's `max_attempts`.

/// Attempts at a chunk (or at the final aggregate) before the job fails, when the job's spec
/// says 0: Hadoop's default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

/// The attempts a job allows, from its spec's `max_attempts` (0: [`DEFAULT_MAX_ATTEMPTS`]).
pub fn max_attempts(from_spec: u32) -> u32 {
    if from_spec > 0 { from_spec } else { DEFAULT_MAX_ATTEMPTS }
}

/// Whether a chunk whose attempt number `attempts` just failed is given up, failing its job:
/// its attempts are used up, or the failure is a fault that `repeated` the previous attempt's
/// word for word.
pub fn gives_up(attempts: u32, max_attempts: u32, repeated: bool) -> bool {
    repeated || attempts >= max_attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_fault_ends_at_once_and_others_use_their_attempts() {
        assert!(!gives_up(1, 4, false));
        assert!(gives_up(2, 4, true));
        assert!(!gives_up(3, 4, false));
        assert!(gives_up(4, 4, false));
        assert!(gives_up(1, 1, false));
    }
}
