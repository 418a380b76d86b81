//! Why a client call failed: [`ClientError`], each cause said once, with what to do next.

use std::io;
use std::path::PathBuf;

use crate::input::InputError;
use crate::owner::OwnerError;
use crate::plugin_source::SourceError;
use crate::rpc::{FailureKind, JobFailure, JobId, RpcError};
use crate::tls::TlsError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached.
    #[error("cannot connect to the controller at {addr}: {source}: check that it runs and the address is right")]
    Connect {
        /// The controller's address.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The connection broke, or the controller did not answer in time.
    #[error("lost the connection to the controller at {addr}: {message}")]
    Connection {
        /// The controller's address.
        addr: String,
        /// What happened.
        message: String,
    },
    /// Something accepted the connection but did not answer within `seconds`: a server that is
    /// not a controller, or a controller that is stalled.
    #[error(
        "no Kiln controller answered at {addr} within {seconds} s (something accepted the connection and said \
         nothing): check the address and port (--controller or KILN_CONTROLLER)"
    )]
    NoAnswer {
        /// The address.
        addr: String,
        /// How long the client waited.
        seconds: u64,
    },
    /// The peer answered, but not as a Kiln controller does (a web server, another service).
    #[error(
        "the server at {addr} is not a Kiln controller ({reason}): check the address and port (--controller or \
         KILN_CONTROLLER)"
    )]
    NotController {
        /// The address.
        addr: String,
        /// What gave it away.
        reason: String,
    },
    /// The controller refused the API key.
    #[error("the controller refused the API key ({0}): check --api-key or KILN_API_KEY")]
    Unauthorized(String),
    /// The API key is not usable (an old key without the CA's fingerprint, a damaged one).
    #[error("cannot use the API key: {0}")]
    Key(TlsError),
    /// The controller's certificate does not come from the CA the key pins: another
    /// controller, or someone in between. Nothing secret was sent.
    #[error(
        "the controller at {addr} is not the one this key belongs to: its certificate is not from the CA the key \
         pins; check the address, or use the key that controller printed"
    )]
    WrongController {
        /// The controller's address.
        addr: String,
    },
    /// The certificate of a controller with an operator's certificate (a `pki` key) is not
    /// trusted by the system roots or the CA file.
    #[error(
        "the certificate of the controller at {addr} is not trusted ({reason}): give the CA that issued it with \
         --ca-file (or KILN_CA_FILE)"
    )]
    Untrusted {
        /// The controller's address.
        addr: String,
        /// What the check said.
        reason: String,
    },
    /// The controller refused the request.
    #[error(transparent)]
    Rpc(RpcError),
    /// The owner asked for is not a usable name.
    #[error("cannot submit the job: {0}")]
    Owner(#[from] OwnerError),
    /// The plugin's source could not be read or is not a valid crate.
    #[error("cannot use the plugin: {0}")]
    Plugin(#[from] SourceError),
    /// The input's sources name no usable file.
    #[error(transparent)]
    Sources(#[from] InputError),
    /// The input could not be read.
    #[error("cannot read the input {}: {source}", .path.display())]
    Input {
        /// The input's path (or name, for a reader).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The controller could not be reached for the client's whole patience during an upload;
    /// the job's upload stops (the controller fails the job as abandoned later).
    #[error(
        "job {job}: the controller could not be reached for {seconds} s while the input uploaded ({sent} bytes \
         sent): {reason}; `kiln status {job}` shows the job, `kiln cancel {job}` cancels it, and the \
         controller fails it as abandoned after a while"
    )]
    UploadGaveUp {
        /// The job.
        job: JobId,
        /// Input bytes the controller acknowledged.
        sent: u64,
        /// How long the client kept trying.
        seconds: u64,
        /// The last attempt's failure.
        reason: String,
    },
    /// The controller refused the input of a job it had created (its disk is full, say); the
    /// client cancelled the job.
    #[error("job {job} was cancelled: the controller refused its input: {source}")]
    InputRefused {
        /// The job.
        job: JobId,
        /// Why the controller refused it.
        source: RpcError,
    },
    /// The job failed; the message is the plugin's own, cargo's diagnostics, or the controller's.
    #[error("{}", describe_failure(*.job, .failure))]
    JobFailed {
        /// The job.
        job: JobId,
        /// Why it failed.
        failure: JobFailure,
    },
    /// The job was cancelled.
    #[error("job {0} was cancelled")]
    Cancelled(JobId),
    /// The job's result could not be written where it was asked to go.
    #[error("cannot write the result of job {job}: {source}")]
    Output {
        /// The job.
        job: JobId,
        /// The underlying error.
        source: io::Error,
    },
}

impl ClientError {
    pub(super) fn from_rpc(error: RpcError) -> ClientError {
        match error {
            RpcError::Unauthorized(message) => ClientError::Unauthorized(message),
            error => ClientError::Rpc(error),
        }
    }

    /// Whether the controller may answer if asked again later (it is away or restarting).
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Connection { .. } | ClientError::NoAnswer { .. })
    }
}

/// Whether a connection failed because the peer speaks another protocol: bytes that are not a
/// TLS record, or frames that are not Kiln's (too large, or not decodable).
pub(super) fn is_foreign(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut causes = vec![error];
    while let Some(cause) = causes.pop() {
        if let Some(io_error) = cause.downcast_ref::<io::Error>() {
            let inner = io_error.get_ref();
            // TLS says what it did not like; only a record that is not TLS at all counts.
            if let Some(tls_error) = inner.and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                return matches!(tls_error, rustls::Error::InvalidMessage(_));
            }
            if io_error.kind() == io::ErrorKind::InvalidData {
                return true;
            }
            // An io::Error's `source` skips the error it wraps: look at that one too.
            if let Some(inner) = inner {
                causes.push(inner);
            }
        }
        // Errors behind an `Arc` (tarpc's channel errors) downcast to nothing: their words
        // still say it, as `tls::frames` puts them.
        if cause.to_string().contains("frame size too big") {
            return true;
        }
        if let Some(source) = cause.source() {
            causes.push(source);
        }
    }
    false
}

/// Words for a job's failure: what failed, where, and the message.
fn describe_failure(job: JobId, failure: &JobFailure) -> String {
    let message = failure.message.trim_end();
    match (failure.kind, &failure.chunk) {
        (FailureKind::Build, _) => format!("job {job} failed: the plugin does not compile:\n{message}"),
        (FailureKind::Input, _) => format!("job {job} failed: the input cannot be used: {message}"),
        (_, Some(chunk)) => format!(
            "job {job} failed: {chunk} failed after {} attempt{}{}",
            failure.attempts,
            if failure.attempts == 1 { "" } else { "s" },
            crate::errors::colon_block(message),
        ),
        (_, None) => format!("job {job} failed: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::input::ChunkSpan;

    #[test]
    fn a_plugin_failure_names_the_chunk_its_lines_and_the_attempts() {
        let failure = JobFailure {
            kind: FailureKind::Plugin,
            message: "deliberate panic at line 12".to_owned(),
            chunk: Some(ChunkSpan { index: 3, file: "logs/b.txt".to_owned(), first_line: 10, last_line: 19 }),
            attempts: 4,
        };
        let error = ClientError::JobFailed { job: 7, failure };
        assert_eq!(
            error.to_string(),
            "job 7 failed: chunk 3 (logs/b.txt lines 10-19) failed after 4 attempts: deliberate panic at line 12"
        );
    }

    #[test]
    fn a_build_failure_shows_cargos_diagnostics() {
        let failure = JobFailure {
            kind: FailureKind::Build,
            message: "error[E0308]: mismatched types\n --> src/lib.rs:16:22\n".to_owned(),
            chunk: None,
            attempts: 1,
        };
        let shown = ClientError::JobFailed { job: 2, failure }.to_string();
        assert!(shown.starts_with("job 2 failed: the plugin does not compile:\nerror[E0308]: mismatched types"));
        assert!(shown.contains("src/lib.rs:16"));
    }
}
