//! Cutting a text input into chunks of whole lines, by one rule ([`Cutter::next_len`]) behind
//! two interfaces: the [`Cutter`], pushed the input piece by piece as it arrives (the
//! controller, during an upload), answers where chunks lie; the [`Chunker`] pulls from any
//! [`Read`] (run-local), never holding more than about one chunk of it, and yields the chunks
//! with their text. Each chunk is checked to be UTF-8 as it is cut; since `\n` is ASCII, a
//! valid UTF-8 sequence never straddles two chunks.
//!
//! An input is an ordered list of files, fed one after another: a chunk never spans two files
//! ([`Cutter::next_file`] ends one), and lines are numbered from 1 within each file.

use std::io::{self, Read};

/// The default chunk size: big enough that per-chunk costs (a call across processes, a partial
/// to encode and aggregate) stay small beside the work, small enough to spread a few hundred
/// MiB over many slots.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// The largest chunk Kiln picks by itself when no chunk size is given ([`fitted_chunk_size`]);
/// `--chunk-size` may set any size.
///
/// 24 MiB stays below glibc's largest mmap threshold (32 MiB on 64-bit): a buffer of 32 MiB
/// is always a fresh mapping, so every chunk read and every frame the executor receives
/// faulted its pages in again. Measured on a 1 GiB run-local word count: 742 thousand minor
/// faults and 3.0 s of system time with 32 MiB chunks, 136 thousand and 1.0 s with 24 MiB.
pub const MAX_FITTED_CHUNK_SIZE: usize = 24 << 20;
const _: () = assert!(MAX_FITTED_CHUNK_SIZE < 32 << 20, "fitted chunks stay below glibc's largest mmap threshold");

/// How many chunks per slot Kiln aims for when it sizes chunks by itself: enough that a slot
/// that runs slower than the others leaves little tail, few enough that per-chunk costs stay
/// small.
pub const FITTED_CHUNKS_PER_SLOT: u64 = 4;

/// The chunk size used when none is given, for an input of `input_bytes` (the files' sizes;
/// a compressed file counts its compressed size, so it gets smaller chunks, never larger) run
/// in `slots` slots: about [`FITTED_CHUNKS_PER_SLOT`] chunks per slot, never smaller than
/// [`DEFAULT_CHUNK_SIZE`] nor larger than [`MAX_FITTED_CHUNK_SIZE`]. As Spark sizes its splits
/// (`totalBytes / defaultParallelism` between the cost of opening a file and 128 MiB).
/// Run-local and inputs read by reference use it; uploads keep [`DEFAULT_CHUNK_SIZE`], since
/// their size is not known when the job is created.
///
/// Each chunk costs a call and a partial that is encoded, kept and decoded by `aggregate`; a
/// partial the size of the plugin's vocabulary (a word count: tens of thousands of words)
/// costs about as much whether its chunk has 4 MiB or 24 MiB. Without `combine`, 4 MiB chunks
/// of a 1 GiB input made `aggregate` decode and fold 256 such partials on one core: a third
/// of the run's time (see ARCHITECTURE.md).
///
/// Under an executor memory limit of `memory_limit` bytes, a chunk is also at most an eighth
/// of each slot's share of it (the executor holds each running chunk beside what the plugin
/// builds from it), so a limit that worked with the default size still works.
pub fn fitted_chunk_size(input_bytes: u64, slots: usize, memory_limit: Option<u64>) -> usize {
    let slots = (slots as u64).max(1);
    let largest = match memory_limit {
        Some(limit) => (limit / slots / 8).min(MAX_FITTED_CHUNK_SIZE as u64),
        None => MAX_FITTED_CHUNK_SIZE as u64,
    };
    let size = (input_bytes / slots.saturating_mul(FITTED_CHUNKS_PER_SLOT)).min(largest);
    usize::try_from(size.max(DEFAULT_CHUNK_SIZE as u64)).unwrap_or(DEFAULT_CHUNK_SIZE)
}

/// The longest line accepted unless the operator sets another limit (`--max-line-size`). A
/// chunk holds at least one whole line, and each process on a chunk's path holds a few copies
/// of it, so this bounds their memory where a line is longer than a chunk: as Hadoop's
/// `line.maxlength`, but on by default, since a line of gigabytes is far likelier a file
/// without line ends than a record.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

/// The highest limit on a line's length that may be set: the largest chunk.
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// A chunk of the input: whole lines, valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputChunk {
    /// The chunk's position in the input, from 0.
    pub index: u64,
    /// The chunk's file: its position in the input's list of files, from 0.
    pub file: u32,
    /// The 1-based number of the chunk's first line within its file.
    pub first_line: u64,
    /// The number of lines in the chunk.
    pub n_lines: u64,
    /// The byte offset of the chunk in the bytes the chunker read.
    pub offset: u64,
    /// The chunk's text.
    pub text: String,
}

impl InputChunk {
    /// The number of the chunk's last line (equal to `first_line` for a one-line chunk).
    pub fn last_line(&self) -> u64 {
        self.first_line + self.n_lines.saturating_sub(1)
    }
}

/// Why the input could not be cut into chunks.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Reading the input failed (the disk, the network, bad compressed data).
    #[error("{0}")]
    Read(#[from] io::Error),
    /// The input has bytes that are not UTF-8.
    #[error("not valid UTF-8 at line {line} (byte {offset}): convert it to UTF-8 first")]
    InvalidUtf8 {
        /// The 1-based line, within its file, holding the first invalid byte.
        line: u64,
        /// The byte offset of the first invalid byte in its file.
        offset: u64,
    },
    /// One line is longer than the limit set (by default [`DEFAULT_MAX_LINE_BYTES`]).
    #[error(
        "line {line} is longer than {} MiB, the longest line accepted: split it, or raise --max-line-size \
         (each process on the chunk's path holds a few copies of the longest line)",
        limit >> 20
    )]
    LineTooLong {
        /// The 1-based number of the line within its file.
        line: u64,
        /// The limit, in bytes.
        limit: usize,
    },
    /// One line, of a file read by reference where its number is unknown, is longer than the
    /// limit set.
    #[error(
        "the line at byte {offset} is longer than {} MiB, the longest line accepted: split it, or raise \
         --max-line-size (each process on the chunk's path holds a few copies of the longest line)",
        limit >> 20
    )]
    LineTooLongAt {
        /// The line's first byte in its file.
        offset: u64,
        /// The limit, in bytes.
        limit: usize,
    },
}

/// Cuts a reader's bytes into chunks of whole lines of about `chunk_size` bytes: the pull
/// interface, for an input on this machine. It reads into a [`Cutter`] and hands out each chunk
/// the cutter finds with its text, so both interfaces cut by the one rule of
/// [`Cutter::next_len`].
///
/// A chunk is cut after the last line ending within `chunk_size` bytes; a line longer than
/// that makes a chunk of its own. The last line needs no `\n`.
pub struct Chunker<R> {
    reader: R,
    cutter: Cutter,
    at_eof: bool,
}

impl<R: Read> Chunker<R> {
    /// Makes a chunker over `reader`, one file; `chunk_size` is at least one byte.
    pub fn new(reader: R, chunk_size: usize) -> Self {
        Chunker { reader, cutter: Cutter::new(chunk_size), at_eof: false }
    }

    /// Makes a chunker over `reader`, the input's file number `file`, whose first chunk has
    /// number `first_index` (the chunks of the files before it).
    pub fn for_file(reader: R, chunk_size: usize, file: u32, first_index: u64) -> Self {
        let cutter = Cutter::resume(chunk_size, Resume { index: first_index, file, line: 1, offset: 0, file_start: 0 });
        Chunker { reader, cutter, at_eof: false }
    }

    /// Refuses lines longer than `bytes` (at most [`MAX_LINE_BYTES`]) rather than the default
    /// [`DEFAULT_MAX_LINE_BYTES`].
    pub fn with_max_line(mut self, bytes: usize) -> Self {
        self.cutter = self.cutter.with_max_line(bytes);
        self
    }

    /// Reads until the cutter holds at least `want` bytes or the input ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        let pending = &mut self.cutter.pending;
        while pending.len() < want && !self.at_eof {
            let start = pending.len();
            pending.resize(want, 0);
            let read = loop {
                match self.reader.read(&mut pending[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        pending.truncate(start);
                        return Err(e);
                    }
                }
            };
            pending.truncate(start + read);
            self.at_eof = read == 0;
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> Result<Option<InputChunk>, ChunkError> {
        // One byte more than a chunk, so that the end of the input is known whenever the rest
        // fits in one; twice as much each time a line turns out longer than what is held.
        let mut want = self.cutter.chunk_size + 1;
        loop {
            self.fill(want)?;
            if let Some((place, text)) = self.cutter.take(self.at_eof)? {
                return Ok(Some(InputChunk {
                    index: place.index,
                    file: place.file,
                    first_line: place.first_line,
                    n_lines: place.n_lines,
                    offset: place.offset,
                    text,
                }));
            }
            if self.at_eof {
                return Ok(None);
            }
            want = (self.cutter.pending.len() * 2).min(self.cutter.line_limit() + 1).max(want);
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<InputChunk, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_chunk() {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => None,
            Err(e) => {
                // After an error the input cannot be trusted to line up: stop.
                self.at_eof = true;
                self.cutter.fail();
                Some(Err(e))
            }
        }
    }
}

/// Where a chunk lies in the input, without its text: what the controller keeps of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// The chunk's position in the input, from 0.
    pub index: u64,
    /// The chunk's file: its position in the input's list of files, from 0.
    pub file: u32,
    /// The 1-based number of the chunk's first line within its file.
    pub first_line: u64,
    /// The number of lines in the chunk.
    pub n_lines: u64,
    /// The byte offset of the chunk in the bytes the cutter was fed.
    pub offset: u64,
    /// The chunk's length in bytes.
    pub len: u64,
}

impl ChunkPlace {
    /// The byte just past the chunk.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Cuts an input pushed to it piece by piece, as it arrives over the network, by the same rule
/// as the [`Chunker`]: a chunk is found as soon as the bytes that decide where it ends are in,
/// so chunks can run while the rest of the input is still uploading.
///
/// It keeps the bytes after the last cut (less than a chunk, or one long line) and answers
/// only where chunks lie; each chunk is checked to be UTF-8 when it is cut.
#[derive(Debug)]
pub struct Cutter {
    chunk_size: usize,
    /// The longest line accepted.
    max_line: usize,
    /// The bytes from `next_offset` on, not yet in a chunk.
    pending: Vec<u8>,
    next_index: u64,
    file: u32,
    next_line: u64,
    next_offset: u64,
    /// Where the current file starts in the bytes fed.
    file_start: u64,
    /// Set by an error: the input cannot be trusted to line up any more.
    failed: bool,
}

/// Where a [`Cutter`] goes on from: the next chunk's number, file, line within the file and
/// byte offset, and where that file starts in the bytes fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub index: u64,
    pub file: u32,
    pub line: u64,
    pub offset: u64,
    pub file_start: u64,
}

impl Cutter {
    /// A cutter at the start of an input; `chunk_size` is at least one byte.
    pub fn new(chunk_size: usize) -> Self {
        Cutter::resume(chunk_size, Resume { index: 0, file: 0, line: 1, offset: 0, file_start: 0 })
    }

    /// A cutter that continues after chunks already cut, from `at`.
    pub fn resume(chunk_size: usize, at: Resume) -> Self {
        Cutter {
            chunk_size: chunk_size.max(1),
            max_line: DEFAULT_MAX_LINE_BYTES,
            pending: Vec::new(),
            next_index: at.index,
            file: at.file,
            next_line: at.line,
            next_offset: at.offset,
            file_start: at.file_start,
            failed: false,
        }
    }

    /// Refuses lines longer than `bytes`, at least one byte and at most [`MAX_LINE_BYTES`],
    /// rather than the default [`DEFAULT_MAX_LINE_BYTES`].
    pub fn with_max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes.clamp(1, MAX_LINE_BYTES);
        self
    }

    /// The longest line accepted: the limit set, or the chunk size where that is more (a line
    /// that fits in a chunk costs no more memory than a chunk).
    fn line_limit(&self) -> usize {
        self.max_line.max(self.chunk_size)
    }

    /// The number the next chunk will have: how many chunks were cut so far.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The file being cut: its position in the input's list of files.
    pub fn file(&self) -> u32 {
        self.file
    }

    /// Ends the current file, appending to `out` the chunks still pending in it (at most one,
    /// unless a line was longer than a chunk); the bytes pushed next start file `file`, at
    /// line 1. Files in between are empty.
    pub fn next_file(&mut self, file: u32, out: &mut Vec<ChunkPlace>) -> Result<(), ChunkError> {
        self.check()?;
        self.cut(true, out)?;
        self.file = file.max(self.file);
        self.next_line = 1;
        self.file_start = self.next_offset;
        Ok(())
    }

    /// Bytes pushed so far (including those a resumed cutter started after).
    pub fn received(&self) -> u64 {
        self.next_offset + self.pending.len() as u64
    }

    /// Adds the input's next bytes and appends to `out` the chunks they complete.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<ChunkPlace>) -> Result<(), ChunkError> {
        self.check()?;
        // Exactly the room needed: doubling would hold twice a piece of several MiB.
        self.pending.reserve_exact(bytes.len());
        self.pending.extend_from_slice(bytes);
        self.cut(false, out)
    }

    /// Ends the input and appends to `out` the chunks still pending (at most one, unless a
    /// line was longer than a chunk); gives back the buffer the pieces went through.
    pub fn finish(&mut self, out: &mut Vec<ChunkPlace>) -> Result<(), ChunkError> {
        self.check()?;
        let cut = self.cut(true, out);
        self.pending = Vec::new();
        cut
    }

    fn check(&self) -> Result<(), ChunkError> {
        match self.failed {
            true => Err(ChunkError::Read(io::Error::other("the input was already refused"))),
            false => Ok(()),
        }
    }

    /// Refuses all further input: after an error it cannot be trusted to line up.
    fn fail(&mut self) {
        self.failed = true;
        self.pending = Vec::new();
    }

    /// Appends to `out` every chunk the pending bytes complete, checking each is UTF-8.
    fn cut(&mut self, at_end: bool, out: &mut Vec<ChunkPlace>) -> Result<(), ChunkError> {
        let mut start = 0;
        let result = loop {
            let pending = &self.pending[start..];
            let len = match self.next_len(pending, at_end) {
                Ok(Some(len)) => len,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let bytes = &pending[..len];
            if let Err(e) = std::str::from_utf8(bytes) {
                break Err(self.invalid_utf8(bytes, e.valid_up_to()));
            }
            let n_lines = count_lines(bytes);
            out.push(self.advance(len, n_lines));
            start += len;
        };
        self.pending.drain(..start);
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Takes the next chunk out of the pending bytes with its text, once it is decided (see
    /// [`Cutter::next_len`]): what the [`Chunker`] hands out.
    fn take(&mut self, at_end: bool) -> Result<Option<(ChunkPlace, String)>, ChunkError> {
        self.check()?;
        let Some(len) = self.next_len(&self.pending, at_end)? else { return Ok(None) };
        // The chunk keeps the buffer; the few bytes after it move to a fresh one.
        let mut rest = Vec::with_capacity((self.chunk_size + 1).max(self.pending.len() - len));
        rest.extend_from_slice(&self.pending[len..]);
        let mut bytes = std::mem::replace(&mut self.pending, rest);
        bytes.truncate(len);
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Some((self.advance(len, count_lines(text.as_bytes())), text))),
            Err(e) => Err(self.invalid_utf8(e.as_bytes(), e.utf8_error().valid_up_to())),
        }
    }

    /// The place of the next chunk, `len` bytes of `n_lines` lines; moves past it.
    fn advance(&mut self, len: usize, n_lines: u64) -> ChunkPlace {
        let place = ChunkPlace {
            index: self.next_index,
            file: self.file,
            first_line: self.next_line,
            n_lines,
            offset: self.next_offset,
            len: len as u64,
        };
        self.next_index += 1;
        self.next_line += n_lines;
        self.next_offset += len as u64;
        place
    }

    /// The error for the next chunk's `bytes`, valid UTF-8 up to `valid`.
    fn invalid_utf8(&self, bytes: &[u8], valid: usize) -> ChunkError {
        ChunkError::InvalidUtf8 {
            line: self.next_line + bytecount::count(&bytes[..valid], b'\n') as u64,
            offset: self.next_offset - self.file_start + valid as u64,
        }
    }

    /// The length of the chunk at the start of `pending`, once it is decided: the cutting rule.
    /// Normally the chunk ends after the last line end within `chunk_size` bytes; a line longer
    /// than that makes a chunk of its own, ended by its line end; the input's last bytes make
    /// the last chunk. Undecided (`None`) while more bytes could change the answer.
    fn next_len(&self, pending: &[u8], at_end: bool) -> Result<Option<usize>, ChunkError> {
        if pending.is_empty() {
            return Ok(None);
        }
        if pending.len() <= self.chunk_size {
            // All of it fits in one chunk: it is the last one, or one more byte decides.
            return Ok(at_end.then_some(pending.len()));
        }
        if let Some(newline) = memchr::memrchr(b'\n', &pending[..self.chunk_size]) {
            return Ok(Some(newline + 1));
        }
        // A line longer than a chunk makes a chunk of its own, up to the limit: a line of
        // `limit` bytes is searched with its line end, one byte more.
        let limit = self.line_limit();
        let searched = pending.len().min(limit + 1);
        match memchr::memchr(b'\n', &pending[self.chunk_size..searched]) {
            Some(newline) => Ok(Some(self.chunk_size + newline + 1)),
            None if searched > limit => Err(ChunkError::LineTooLong { line: self.next_line, limit }),
            None if at_end => Ok(Some(pending.len())),
            None => Ok(None),
        }
    }
}

/// The lines in a chunk's bytes: its line ends, and one more when the last line has none.
pub fn count_lines(bytes: &[u8]) -> u64 {
    bytecount::count(bytes, b'\n') as u64 + u64::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

#[cfg(test)]
mod tests;
