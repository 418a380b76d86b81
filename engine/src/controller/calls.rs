//! Calls to workers: their deadlines, and what a failed call means for the work it carried.

use std::time::{Duration, Instant};

use tarpc::context;

use crate::rpc::{RpcError, TaskError};

/// What a failed call means for the work it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// This attempt failed; another may succeed. Counts an attempt.
    Attempt(String),
    /// The plugin panicked or its executor crashed (or timed out): counts an attempt, and when
    /// the chunk's previous attempt failed with the very same message, no other will succeed.
    Fault(String),
    /// The work was stopped through no fault of its own: do it again, without an attempt.
    Interrupted(String),
    /// No attempt can succeed.
    Fatal(String),
    /// The plugin does not build.
    Build(String),
    /// The worker has not prepared the job (it restarted or dropped it): prepare again.
    NotPrepared,
    /// The worker is gone or does not know us: it is lost, and its work goes elsewhere.
    Lost(String),
}

/// What a call to a worker answers: the worker's own answer, or why none came.
pub(super) type CallResult<T> = Result<Result<T, TaskError>, tarpc::client::RpcError>;

/// Sorts a call's failure into what to do about it.
pub(super) fn classify<T>(result: CallResult<T>, deadline: Duration) -> Result<T, Failure> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(TaskError::Plugin(message) | TaskError::Crashed(message))) => Err(Failure::Fault(message)),
        Ok(Err(TaskError::Storage(message))) => Err(Failure::Attempt(message)),
        Ok(Err(TaskError::Fatal(message))) => Err(Failure::Fatal(message)),
        Ok(Err(TaskError::Interrupted(message))) => Err(Failure::Interrupted(message)),
        Ok(Err(TaskError::NotPrepared(_))) => Err(Failure::NotPrepared),
        Ok(Err(TaskError::Rpc(RpcError::Build(diagnostics)))) => Err(Failure::Build(diagnostics)),
        Ok(Err(TaskError::Rpc(RpcError::Unauthorized(message)))) => {
            Err(Failure::Lost(format!("it refused the controller's secret ({message})")))
        }
        Ok(Err(TaskError::Rpc(other))) => Err(Failure::Attempt(format!("the worker failed: {other}"))),
        Err(tarpc::client::RpcError::DeadlineExceeded) => {
            Err(Failure::Attempt(format!("the worker did not answer within {} s", deadline.as_secs())))
        }
        Err(tarpc::client::RpcError::Server(e)) => Err(Failure::Attempt(format!("the worker aborted the call: {e}"))),
        Err(e) => Err(Failure::Lost(format!("its connection failed: {e}"))),
    }
}

/// A context for a call that may take `duration`.
pub(super) fn deadline_in(duration: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + duration;
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(1);

    #[test]
    fn failures_are_sorted_by_what_can_help() {
        let ok: CallResult<u8> = Ok(Ok(1));
        assert_eq!(classify(ok, D), Ok(1));
        let plugin: CallResult<u8> = Ok(Err(TaskError::Plugin("boom".into())));
        assert_eq!(classify(plugin, D), Err(Failure::Fault("boom".into())));
        let crashed: CallResult<u8> = Ok(Err(TaskError::Crashed("segfault".into())));
        assert_eq!(classify(crashed, D), Err(Failure::Fault("segfault".into())));
        let fatal: CallResult<u8> = Ok(Err(TaskError::Fatal("bad params".into())));
        assert_eq!(classify(fatal, D), Err(Failure::Fatal("bad params".into())));
        let build: CallResult<u8> = Ok(Err(TaskError::Rpc(RpcError::Build("error[E0425]".into()))));
        assert_eq!(classify(build, D), Err(Failure::Build("error[E0425]".into())));
        let not_prepared: CallResult<u8> = Ok(Err(TaskError::NotPrepared(3)));
        assert_eq!(classify(not_prepared, D), Err(Failure::NotPrepared));
        let refused: CallResult<u8> = Ok(Err(TaskError::Rpc(RpcError::Unauthorized("who?".into()))));
        assert!(matches!(classify(refused, D), Err(Failure::Lost(_))));
        let gone: CallResult<u8> = Err(tarpc::client::RpcError::Shutdown);
        assert!(matches!(classify(gone, D), Err(Failure::Lost(_))));
        let interrupted: CallResult<u8> = Ok(Err(TaskError::Interrupted("another call timed out".into())));
        assert_eq!(classify(interrupted, D), Err(Failure::Interrupted("another call timed out".into())));
        let slow: CallResult<u8> = Err(tarpc::client::RpcError::DeadlineExceeded);
        assert!(matches!(classify(slow, D), Err(Failure::Attempt(m)) if m.contains("1 s")));
    }
}
