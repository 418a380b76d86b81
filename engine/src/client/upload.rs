//! Reading an input's files for upload: one after another, each decompressed as it is read
//! when it is gzip or zstd, in pieces of at most [`MAX_PIECE_BYTES`] that never span two files.
//! A blocking thread reads ahead of the upload by a piece or two.

use std::io::Read;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::ClientError;
use crate::input::InputFile;
use crate::input::decode::decoded;
use crate::rpc::MAX_PIECE_BYTES;

/// How many pieces the reader keeps ready ahead of the upload.
const PIECES_AHEAD: usize = 2;

/// A piece of a file: the file's number in the input and the bytes.
type Piece = (u32, Vec<u8>);

/// Where an upload's pieces come from.
pub(super) enum Pieces<R> {
    /// One unnamed file read from a stream.
    Stream(R),
    /// The input's files.
    Files(FilePieces),
}

impl<R: AsyncRead + Unpin> Pieces<R> {
    /// The next piece; `None` once the input ended.
    pub async fn next(&mut self) -> Result<Option<Piece>, ClientError> {
        match self {
            Pieces::Stream(input) => {
                let piece = read_piece(input).await?;
                Ok((!piece.is_empty()).then_some((0, piece)))
            }
            Pieces::Files(files) => files.next().await,
        }
    }
}

/// Reads up to [`MAX_PIECE_BYTES`] from `input`; an empty piece means the input ended.
async fn read_piece(input: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, ClientError> {
    let mut piece = Vec::with_capacity(MAX_PIECE_BYTES);
    input
        .take(MAX_PIECE_BYTES as u64)
        .read_to_end(&mut piece)
        .await
        .map_err(|source| ClientError::Input { path: PathBuf::from("<input>"), source })?;
    Ok(piece)
}

/// The pieces of an input's files, read by a thread of their own.
pub(super) struct FilePieces {
    pieces: mpsc::Receiver<Result<Piece, ClientError>>,
}

impl FilePieces {
    /// Starts reading `files` in order.
    pub fn start(files: Vec<InputFile>) -> FilePieces {
        let (sender, pieces) = mpsc::channel(PIECES_AHEAD);
        tokio::task::spawn_blocking(move || read_files(files, &sender));
        FilePieces { pieces }
    }

    /// The next piece; `None` once every file is read.
    pub async fn next(&mut self) -> Result<Option<Piece>, ClientError> {
        self.pieces.recv().await.transpose()
    }
}

/// Answers `files` once each of them opens, or the first that does not. Blocking.
pub(super) fn check_readable(files: Vec<InputFile>) -> Result<Vec<InputFile>, ClientError> {
    for file in &files {
        std::fs::File::open(&file.path)
            .map_err(|source| ClientError::Input { path: file.name.clone().into(), source })?;
    }
    Ok(files)
}

/// Sends the pieces of `files`, stopping at the first error or when nobody listens. Blocking.
fn read_files(files: Vec<InputFile>, pieces: &mpsc::Sender<Result<Piece, ClientError>>) {
    for (position, file) in files.into_iter().enumerate() {
        let number = u32::try_from(position).unwrap_or(u32::MAX);
        let failed = |source| ClientError::Input { path: file.name.clone().into(), source };
        let mut reader = match std::fs::File::open(&file.path).and_then(decoded) {
            Ok((_, reader)) => reader,
            Err(e) => {
                let _ = pieces.blocking_send(Err(failed(e)));
                return;
            }
        };
        loop {
            let mut piece = Vec::with_capacity(MAX_PIECE_BYTES);
            match (&mut reader).take(MAX_PIECE_BYTES as u64).read_to_end(&mut piece) {
                Ok(0) => break,
                Ok(_) => {
                    if pieces.blocking_send(Ok((number, piece))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = pieces.blocking_send(Err(failed(e)));
                    return;
                }
            }
        }
    }
}
