//! How often a chunk is tried before its job fails.

/// Attempts at a chunk (or at the final aggregate) before the job fails, when the job's spec
/// says 0: Hadoop's default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

/// The attempts a job allows, from its spec's `max_attempts` (0: [`DEFAULT_MAX_ATTEMPTS`]).
pub fn max_attempts(from_spec: u32) -> u32 {
    if from_spec > 0 { from_spec } else { DEFAULT_MAX_ATTEMPTS }
}
