//! Reading a job's result piece by piece (`result_piece`), written out as it comes or
//! gathered for small results. A piece whose call fails because the controller went away
//! (restarted, cut off) is asked for again with backoff for the client's patience, as a
//! watcher does: the result is stored, and a restarted controller serves it.

use std::time::Instant;

use super::{BACKOFF_FIRST, BACKOFF_MAX, CALL_DEADLINE, Client, ClientError, Repeat, ended};
use crate::rpc::pieces::ResultPiece;
use crate::rpc::{JobId, RpcError};

impl Client {
    /// The output JSON of a job that succeeded, whole in memory (see [`Client::result_to`] for
    /// results of any size). For a job that failed or was cancelled the error says so, with the
    /// failure's message.
    pub async fn result(&self, job: JobId) -> Result<String, ClientError> {
        let mut bytes = Vec::new();
        self.result_to(job, &mut bytes).await?;
        String::from_utf8(bytes)
            .map_err(|_| ClientError::Rpc(RpcError::Internal(format!("the result of job {job} is not UTF-8"))))
    }

    /// Writes the output JSON of a job that succeeded to `out` piece by piece as it comes from
    /// the controller, never holding more than one piece; answers its length. For a job that
    /// failed or was cancelled the error says so, with the failure's message.
    pub async fn result_to(
        &self,
        job: JobId,
        out: &mut (impl tokio::io::AsyncWrite + Unpin + ?Sized),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let first = match self.result_piece_patiently(job, 0).await {
            Err(ClientError::Rpc(error @ (RpcError::Invalid(_) | RpcError::NotFound(_)))) => {
                // No result: say why, when the job failed or was cancelled.
                if let Ok(status) = self.status(job).await {
                    ended(&status)?;
                }
                return Err(ClientError::Rpc(error));
            }
            answer => answer?,
        };
        let total = first.total;
        let mut piece = first.bytes.into_vec();
        let mut offset = 0u64;
        loop {
            offset += piece.len() as u64;
            out.write_all(&piece).await.map_err(|source| ClientError::Output { job, source })?;
            if offset >= total {
                break;
            }
            let next = self.result_piece_patiently(job, offset).await?;
            if next.total != total || next.bytes.is_empty() {
                return Err(ClientError::Rpc(RpcError::Internal(format!(
                    "the result of job {job} changed while it was read (at {offset} of {total} bytes)"
                ))));
            }
            piece = next.bytes.into_vec();
        }
        out.flush().await.map_err(|source| ClientError::Output { job, source })?;
        Ok(total)
    }

    /// A piece of the output JSON of a job that succeeded, from byte `offset`, and the whole
    /// result's length: for showing the start of a result, or reading it in pieces.
    pub async fn result_piece(&self, job: JobId, offset: u64) -> Result<ResultPiece, ClientError> {
        let key = &self.inner.key;
        self.call(CALL_DEADLINE, Repeat::Safe, |controller, ctx| {
            let key = key.clone();
            async move { controller.result_piece(ctx, key, job, offset).await }
        })
        .await
    }

    /// [`Client::result_piece`], asked again while the controller cannot be reached, for the
    /// client's patience.
    async fn result_piece_patiently(&self, job: JobId, offset: u64) -> Result<ResultPiece, ClientError> {
        let mut failing_since: Option<Instant> = None;
        let mut backoff = BACKOFF_FIRST;
        loop {
            match self.result_piece(job, offset).await {
                Err(error) if error.is_transient() => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.patience() {
                        return Err(error);
                    }
                    tracing::debug!(job, offset, "reading the result: {error}; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                answer => return answer,
            }
        }
    }
}
