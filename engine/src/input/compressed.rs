//! A compressed object read by reference, as a stream. A compressed object cannot be entered in
//! the middle, so it is one split; the worker that runs it fetches it as the store streams it,
//! decompresses it piece by piece ([`super::decode`]) and cuts the text into chunks by the rule
//! that cuts uploaded and local inputs ([`Chunker`]), so it holds a few chunks of the object at
//! a time whatever the object's size.
//!
//! Bad compressed data, text that is not UTF-8 and a line longer than the limit fail as they
//! do in an uploaded file, naming the object (and the offset in its compressed bytes, or the
//! line); a store that fails mid-stream fails the read with its message, to be retried.

use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use object_store::GetOptions;
use tokio::sync::mpsc;

use super::reference::{ReferenceError, check_version, open};
use crate::rpc::input::ChunkSource;
use crate::rules::chunk::{ChunkError, Chunker, InputChunk};

/// Pieces of the object, as the store answers them (a few KiB to a few hundred KiB each), held
/// between the store and the decoder: enough to keep the decoder busy, few enough to stay small
/// beside a chunk.
const PIECES_AHEAD: usize = 16;

/// Chunks cut ahead of the one the receiver runs: one, so the next is ready when it ends.
const CHUNKS_AHEAD: usize = 1;

/// The chunks of an object read by reference, in order.
pub type Chunks = mpsc::Receiver<Result<InputChunk, ReferenceError>>;

/// The chunks of the (compressed) object of `source`: decompressed and cut into whole lines of
/// about `chunk_size` bytes (lines longer than `max_line` refused), numbered from line 1.
/// Fetching, decompressing and cutting go on in the background, at most [`CHUNKS_AHEAD`]
/// chunks ahead of the receiver; dropping the receiver stops them. A chunk that cannot be read
/// ends the chunks with its error.
pub async fn chunks(source: &ChunkSource, chunk_size: usize, max_line: usize) -> Result<Chunks, ReferenceError> {
    let (store, _, path) = open(&source.url)?;
    let url = source.url.clone();
    let got = store
        .get_opts(&path, GetOptions::default())
        .await
        .map_err(|source| ReferenceError::Store { url: url.clone(), source })?;
    check_version(source, &got.meta)?;
    let mut stream = got.into_stream();
    let (pieces_tx, pieces_rx) = mpsc::channel(PIECES_AHEAD);
    tokio::spawn(async move {
        while let Some(piece) = stream.next().await {
            let failed = piece.is_err();
            if pieces_tx.send(piece).await.is_err() || failed {
                break;
            }
        }
    });
    let (chunks_tx, chunks_rx) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let store_failure = Arc::new(Mutex::new(None));
        let pieces = Pieces { pieces: pieces_rx, current: Bytes::new(), failure: Arc::clone(&store_failure) };
        let failed = |error: ChunkError| read_error(&url, error, &store_failure);
        let reader = match super::decode::decoded(pieces) {
            Ok((_, reader)) => reader,
            Err(error) => {
                let _ = chunks_tx.blocking_send(Err(failed(ChunkError::Read(error))));
                return;
            }
        };
        for chunk in Chunker::new(reader, chunk_size).with_max_line(max_line) {
            let chunk = chunk.map_err(failed);
            let last = chunk.is_err();
            if chunks_tx.blocking_send(chunk).is_err() || last {
                return;
            }
        }
    });
    Ok(chunks_rx)
}

/// The error of an object whose chunks could not be cut: the store's, when the stream broke
/// (the decoder reports any failure of its input as bad data), otherwise the content's.
fn read_error(url: &str, error: ChunkError, store_failure: &Mutex<Option<String>>) -> ReferenceError {
    match store_failure.lock().unwrap_or_else(PoisonError::into_inner).take() {
        Some(why) => ReferenceError::Interrupted { url: url.to_owned(), why },
        None => ReferenceError::Chunk { url: url.to_owned(), source: error },
    }
}

/// The object's bytes as the store streams them, read in a blocking task.
struct Pieces {
    pieces: mpsc::Receiver<object_store::Result<Bytes>>,
    current: Bytes,
    /// Why the store's stream broke, if it did.
    failure: Arc<Mutex<Option<String>>>,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.pieces.blocking_recv() {
                Some(Ok(piece)) => self.current = piece,
                Some(Err(error)) => {
                    let why = error.to_string();
                    *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.clone());
                    return Err(io::Error::other(why));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
