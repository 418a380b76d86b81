//! The wire types of a job's input: where a chunk lies in it, and where a worker reads a chunk
//! of an input read by reference.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A chunk's place in the input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkSpan {
    /// The chunk's index, from 0.
    pub index: u64,
    /// The name of its file.
    #[serde(default)]
    pub file: String,
    /// Its first line within its file, 1-based (0: unknown).
    pub first_line: u64,
    /// Its last line.
    pub last_line: u64,
}

impl fmt::Display for ChunkSpan {
    /// `chunk 3 (logs/b.txt lines 10-19)`, as messages name a chunk.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chunk {} (", self.index)?;
        if !self.file.is_empty() {
            write!(f, "{} ", self.file)?;
        }
        match self.first_line {
            0 => write!(f, "lines not numbered)"),
            first => write!(f, "lines {first}-{})", self.last_line),
        }
    }
}

/// A chunk of an input read by reference: a planned byte range of one object, which the worker
/// reads itself (moving the range's edges to line ends by the rule of `input::split`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkSource {
    /// The object's URL (`file:///...`, `s3://...`, `https://...`).
    pub url: String,
    /// Its size when the controller listed it.
    pub size: u64,
    /// Its version then (ETag, or modification time): a worker that finds another fails the
    /// job rather than mix two versions of the input.
    pub version: String,
    /// Whether it is gzip or zstd (then the range is the whole object).
    pub compressed: bool,
    /// The planned range's first byte.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// The job's chunk size: a compressed object (one split) is cut into chunks of this size
    /// as the worker decompresses it.
    pub chunk_size: u64,
    /// The longest line accepted: the controller's `--max-line-size`, or the chunk size where
    /// that is more; a longer line fails the job as it would in an uploaded input.
    pub max_line: u64,
}
