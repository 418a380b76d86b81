//! How bulk data fits in frames: the frame limit of this process's connections (lowered for
//! tests by [`MAX_FRAME_ENV`]), how much one answer of a worker may carry, and the pieces
//! results travel in.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::MAX_FRAME_BYTES;

/// The environment variable that lowers the frame limit of a process's connections (bytes,
/// at least 1 MiB): for tests, which show with small inputs that nothing needs a larger frame.
pub const MAX_FRAME_ENV: &str = "KILN_MAX_FRAME_BYTES";

/// The frame limit of this process's connections: [`MAX_FRAME_BYTES`](super::MAX_FRAME_BYTES), or less when
/// [`MAX_FRAME_ENV`] says so.
pub fn max_frame_bytes() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(MAX_FRAME_ENV)
            .ok()
            .and_then(|text| text.parse::<usize>().ok())
            .map_or(MAX_FRAME_BYTES, |limit| limit.clamp(1 << 20, MAX_FRAME_BYTES))
    })
}

/// The most partial bytes one answer of a worker may carry (a batch's partials, a merged
/// partial): half the frame limit, leaving room for the rest of the frame. A chunk whose partial
/// alone is larger fails with a message that says so.
pub fn max_answer_bytes() -> usize {
    max_frame_bytes() / 2
}

/// Bytes a call may send again (an upload's piece, retried until the controller takes it)
/// without copying them for each attempt. On the wire a byte string, as [`ByteBuf`] is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedBytes(pub bytes::Bytes);

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> SharedBytes {
        SharedBytes(bytes.into())
    }
}

impl Serialize for SharedBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ByteBuf::deserialize(deserializer).map(|bytes| SharedBytes(bytes.into_vec().into()))
    }
}

/// The largest piece of a result in one call (worker to controller, controller to client).
pub const RESULT_PIECE_BYTES: usize = 8 << 20;

/// The piece size of results on this process's connections: [`RESULT_PIECE_BYTES`], or a
/// quarter of a lowered frame limit.
pub fn result_piece_bytes() -> usize {
    RESULT_PIECE_BYTES.min(max_frame_bytes() / 4)
}

/// A piece of a job's result ([`Controller::result_piece`](super::Controller::result_piece)).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResultPiece {
    /// The whole result's length in bytes.
    pub total: u64,
    /// The bytes from the offset asked for: at most [`RESULT_PIECE_BYTES`], empty at the end.
    pub bytes: ByteBuf,
}
