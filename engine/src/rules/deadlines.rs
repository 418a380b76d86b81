//! How long each step of a job may take: the executor's own timeouts (after which the worker
//! answers `Crashed`), and the controller's deadlines for its calls to workers, which leave
//! room beyond them so that a slow plugin is reported by the worker rather than cut off.

use std::time::Duration;

/// How long a plugin may take to load and create its instance.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one call may run before the executor is killed. Chunks are a few MiB, which
/// plugins handle in well under a second; ten minutes leaves room for heavy ones.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Beyond the executor's own timeouts, how long a call to a worker may take: queueing behind
/// other calls, transferring a chunk or partials, starting an executor.
pub const CALL_MARGIN: Duration = Duration::from_secs(120);

/// How long a combine or aggregate call to a worker may take: the executor's call timeout plus
/// [`CALL_MARGIN`]. Chunks have [`chunk_call_deadline`].
pub const CALL_DEADLINE: Duration = DEFAULT_CALL_TIMEOUT.saturating_add(CALL_MARGIN);

/// How long a worker may take to prepare a job: fetching the archive, a cold cargo build of
/// the plugin and its dependencies (minutes on a small host), starting an executor.
pub const PREPARE_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// How long a call running `n_chunks` chunks may take when each may run for `chunk_timeout`
/// (`None`: [`DEFAULT_CALL_TIMEOUT`]): the timeout twice over per chunk, as a crash may make
/// the worker run a chunk again alone, plus [`CALL_MARGIN`].
pub fn chunk_call_deadline(chunk_timeout: Option<Duration>, n_chunks: usize) -> Duration {
    let timeout = chunk_timeout.unwrap_or(DEFAULT_CALL_TIMEOUT);
    let n_chunks = u32::try_from(n_chunks.max(1)).unwrap_or(u32::MAX);
    timeout.saturating_mul(2).saturating_mul(n_chunks).saturating_add(CALL_MARGIN)
}
