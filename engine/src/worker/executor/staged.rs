//! Partials staged on disk for an aggregate: a worker receives a job's partials from the
//! controller in pieces (`stage_partials`) and keeps them in an unnamed temporary file, in the
//! pipe protocol's own layout (each partial's 8-byte length, then its bytes), so that the
//! aggregate's request is streamed from the file onto the executor's pipe and the worker never
//! holds the partials whole.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A job's partials in an unnamed temporary file (gone once closed), in input order.
#[derive(Clone)]
pub struct StagedPartials {
    file: Arc<std::fs::File>,
    count: u64,
    len: u64,
}

impl StagedPartials {
    /// An empty set of partials in a new file in `dir`.
    pub fn create(dir: &Path) -> io::Result<StagedPartials> {
        Ok(StagedPartials { file: Arc::new(tempfile::tempfile_in(dir)?), count: 0, len: 0 })
    }

    /// Appends partials, in order. Blocking.
    pub fn append<'a>(&mut self, partials: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        for partial in partials {
            self.file.write_all_at(&(partial.len() as u64).to_le_bytes(), self.len)?;
            self.file.write_all_at(partial, self.len + 8)?;
            self.count += 1;
            self.len += 8 + partial.len() as u64;
        }
        Ok(())
    }

    /// How many partials are staged.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// How many bytes the staged partials take in a frame (with their lengths).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no partial is staged.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A reader of the staged bytes from their start, with its own position. Blocking.
    pub fn reader(&self) -> StagedReader {
        StagedReader { file: Arc::clone(&self.file), position: 0, end: self.len }
    }
}

/// Reads staged partials with positioned reads, so that readers share nothing.
pub struct StagedReader {
    file: Arc<std::fs::File>,
    position: u64,
    end: u64,
}

impl Read for StagedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.end - self.position).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..want], self.position)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the staged partials' file is shorter than staged",
            ));
        }
        self.position += read as u64;
        Ok(read)
    }
}

impl std::fmt::Debug for StagedPartials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StagedPartials({} partials, {} bytes)", self.count, self.len)
    }
}

impl PartialEq for StagedPartials {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.count == other.count
    }
}
