//! Sending a job's input: piece after piece, each sent again at its offset until the
//! controller takes it, with backoff for the client's patience while the controller cannot be
//! reached (restarted, cut off). The controller keeps the bytes it has across a restart and
//! ignores those of a piece it holds already, so the upload continues from what it holds.

use std::time::Instant;

use tokio::io::AsyncRead;

use super::{
    BACKOFF_FIRST, BACKOFF_MAX, CALL_DEADLINE, Client, ClientError, Repeat, Retrying, UPLOAD_DEADLINE, lock, upload,
};
use crate::rpc::JobId;
use crate::rpc::pieces::SharedBytes;

impl Client {
    /// Streams the input's pieces to the job, `first_piece` and then the rest, reading the
    /// next piece while the last one travels.
    pub(super) async fn upload_input(
        &self,
        job: JobId,
        first_piece: Option<(u32, Vec<u8>)>,
        pieces: &mut upload::Pieces<impl AsyncRead + Unpin>,
        uploaded: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ClientError> {
        let mut offset = 0u64;
        let mut piece = first_piece;
        while let Some((file, bytes)) = piece {
            let length = bytes.len() as u64;
            let (sent, following) = tokio::join!(self.upload_piece(job, file, offset, bytes), pieces.next());
            sent?;
            offset += length;
            uploaded(offset);
            piece = following?;
        }
        let key = &self.inner.key;
        self.patiently(job, offset, || {
            self.call(CALL_DEADLINE, Repeat::Safe, |controller, ctx| {
                let key = key.clone();
                async move { controller.finish_input(ctx, key, job, offset).await }
            })
        })
        .await
    }

    async fn upload_piece(&self, job: JobId, file: u32, offset: u64, piece: Vec<u8>) -> Result<(), ClientError> {
        let key = &self.inner.key;
        let piece = SharedBytes::from(piece);
        // The controller keeps the bytes it has (also across a restart) and ignores those of a
        // piece it holds already, so the piece is sent again at its offset until it is taken.
        self.patiently(job, offset, || {
            self.call(UPLOAD_DEADLINE, Repeat::Safe, |controller, ctx| {
                let (key, piece) = (key.clone(), piece.clone());
                async move { controller.upload_input(ctx, key, job, file, offset, piece).await }
            })
        })
        .await
    }

    /// Makes an upload call until it is answered, retrying with backoff for the client's
    /// patience while the controller cannot be reached; `sent` bytes were acknowledged.
    async fn patiently<Fut>(&self, job: JobId, sent: u64, call: impl Fn() -> Fut) -> Result<(), ClientError>
    where
        Fut: Future<Output = Result<(), ClientError>>,
    {
        let mut failing_since: Option<Instant> = None;
        let mut backoff = BACKOFF_FIRST;
        loop {
            match call().await {
                Err(error) if error.is_transient() => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.patience() {
                        return Err(ClientError::UploadGaveUp {
                            job,
                            sent,
                            seconds: since.elapsed().as_secs(),
                            reason: crate::errors::chain(&error),
                        });
                    }
                    let hook = lock(&self.inner.on_retry).clone();
                    if let Some(hook) = hook {
                        hook(&Retrying { job, sent, reason: crate::errors::chain(&error) });
                    }
                    tracing::debug!(job, sent, "uploading: {error}; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                answer => return answer,
            }
        }
    }
}
