//! Cutting a text input into chunks of whole lines.
//!
//! The [`Chunker`] reads any [`Read`] in pieces, never holding more than about one chunk of the
//! input, and yields chunks that end on a line boundary. Each chunk is checked to be UTF-8 as it
//! is cut; since `\n` is ASCII, a valid UTF-8 sequence never straddles two chunks.

use std::io::{self, Read};

/// The default chunk size: big enough that per-chunk costs (a call across processes, a partial
/// to encode and aggregate) stay small beside the work, small enough to spread a few hundred
/// MiB over many slots.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// The longest line accepted. A chunk holds at least one whole line, so this bounds the memory
/// a single chunk can take.
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// A chunk of the input: whole lines, valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputChunk {
    /// The chunk's position in the input, from 0.
    pub index: u64,
    /// The 1-based number of the chunk's first line in the whole input.
    pub first_line: u64,
    /// The number of lines in the chunk.
    pub n_lines: u64,
    /// The byte offset of the chunk in the input.
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
    /// Reading the input failed.
    #[error("cannot read the input: {0}")]
    Read(#[from] io::Error),
    /// The input has bytes that are not UTF-8.
    #[error("the input is not valid UTF-8 at line {line} (byte {offset}): convert it to UTF-8 first")]
    InvalidUtf8 {
        /// The 1-based line holding the first invalid byte.
        line: u64,
        /// The byte offset of the first invalid byte in the input.
        offset: u64,
    },
    /// One line is longer than [`MAX_LINE_BYTES`].
    #[error("line {line} of the input is longer than {} MiB", MAX_LINE_BYTES >> 20)]
    LineTooLong {
        /// The 1-based number of the line.
        line: u64,
    },
}

/// Cuts a reader's bytes into chunks of whole lines of about `chunk_size` bytes.
///
/// A chunk is cut after the last line ending within `chunk_size` bytes; a line longer than
/// that makes a chunk of its own. The last line needs no `\n`.
pub struct Chunker<R> {
    reader: R,
    chunk_size: usize,
    /// Bytes read but not yet handed out: the start of the next chunk.
    pending: Vec<u8>,
    next_index: u64,
    next_line: u64,
    next_offset: u64,
    at_eof: bool,
}

impl<R: Read> Chunker<R> {
    /// Makes a chunker over `reader`; `chunk_size` is at least one byte.
    pub fn new(reader: R, chunk_size: usize) -> Self {
        Chunker {
            reader,
            chunk_size: chunk_size.max(1),
            pending: Vec::new(),
            next_index: 0,
            next_line: 1,
            next_offset: 0,
            at_eof: false,
        }
    }

    /// Reads until `pending` holds at least `want` bytes or the input ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        while self.pending.len() < want && !self.at_eof {
            let start = self.pending.len();
            self.pending.resize(want, 0);
            let read = loop {
                match self.reader.read(&mut self.pending[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.pending.truncate(start);
                        return Err(e);
                    }
                }
            };
            self.pending.truncate(start + read);
            self.at_eof = read == 0;
        }
        Ok(())
    }

    /// The length of the next chunk in `pending`, reading more input while no line ends.
    fn next_chunk_len(&mut self) -> Result<usize, ChunkError> {
        let mut want = self.chunk_size;
        let mut searched = 0;
        loop {
            // One byte more than the window, so that the end of the input is known whenever
            // the rest fits in it.
            self.fill(want + 1)?;
            let rest_fits = self.at_eof && self.pending.len() <= want;
            if rest_fits && searched == 0 {
                return Ok(self.pending.len());
            }
            let window = &self.pending[..self.pending.len().min(want)];
            // Normally cut after the window's last line; once a line has outgrown the window,
            // cut right after that line so that it makes a chunk of its own.
            let newline =
                if searched == 0 { memchr::memrchr(b'\n', window) } else { memchr::memchr(b'\n', &window[searched..]) };
            match newline {
                Some(newline) if searched == 0 => return Ok(newline + 1),
                Some(newline) => return Ok(searched + newline + 1),
                None if rest_fits => return Ok(self.pending.len()),
                None => {}
            }
            // No line ends within the window: the chunk is one line longer than a chunk.
            searched = window.len();
            if searched >= MAX_LINE_BYTES {
                return Err(ChunkError::LineTooLong { line: self.next_line });
            }
            want = (want * 2).min(MAX_LINE_BYTES + 1);
        }
    }

    fn next_chunk(&mut self) -> Result<Option<InputChunk>, ChunkError> {
        let len = self.next_chunk_len()?;
        if len == 0 {
            return Ok(None);
        }
        let mut rest = Vec::with_capacity((self.chunk_size + 1).max(self.pending.len() - len));
        rest.extend_from_slice(&self.pending[len..]);
        let mut bytes = std::mem::replace(&mut self.pending, rest);
        bytes.truncate(len);

        let newlines = bytecount::count(&bytes, b'\n') as u64;
        let n_lines = newlines + u64::from(bytes.last() != Some(&b'\n'));
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let bytes = e.as_bytes();
                return Err(ChunkError::InvalidUtf8 {
                    line: self.next_line + bytecount::count(&bytes[..valid], b'\n') as u64,
                    offset: self.next_offset + valid as u64,
                });
            }
        };
        let chunk =
            InputChunk { index: self.next_index, first_line: self.next_line, n_lines, offset: self.next_offset, text };
        self.next_index += 1;
        self.next_line += n_lines;
        self.next_offset += len as u64;
        Ok(Some(chunk))
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
                self.pending.clear();
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
    /// The 1-based number of the chunk's first line.
    pub first_line: u64,
    /// The number of lines in the chunk.
    pub n_lines: u64,
    /// The byte offset of the chunk in the input.
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
    /// The bytes from `next_offset` on, not yet in a chunk.
    pending: Vec<u8>,
    next_index: u64,
    next_line: u64,
    next_offset: u64,
    /// Set by an error: the input cannot be trusted to line up any more.
    failed: bool,
}

impl Cutter {
    /// A cutter at the start of an input; `chunk_size` is at least one byte.
    pub fn new(chunk_size: usize) -> Self {
        Cutter::resume(chunk_size, 0, 1, 0)
    }

    /// A cutter that continues after chunks already cut: the next chunk has number `index`,
    /// starts at line `line` and at byte `offset`.
    pub fn resume(chunk_size: usize, index: u64, line: u64, offset: u64) -> Self {
        Cutter {
            chunk_size: chunk_size.max(1),
            pending: Vec::new(),
            next_index: index,
            next_line: line,
            next_offset: offset,
            failed: false,
        }
    }

    /// The number the next chunk will have: how many chunks were cut so far.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Bytes pushed so far (including those a resumed cutter started after).
    pub fn received(&self) -> u64 {
        self.next_offset + self.pending.len() as u64
    }

    /// Adds the input's next bytes and appends to `out` the chunks they complete.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<ChunkPlace>) -> Result<(), ChunkError> {
        self.check()?;
        self.pending.extend_from_slice(bytes);
        self.cut(false, out)
    }

    /// Ends the input and appends to `out` the chunks still pending (at most one, unless a
    /// line was longer than a chunk).
    pub fn finish(&mut self, out: &mut Vec<ChunkPlace>) -> Result<(), ChunkError> {
        self.check()?;
        self.cut(true, out)
    }

    fn check(&self) -> Result<(), ChunkError> {
        match self.failed {
            true => Err(ChunkError::Read(io::Error::other("the input was already refused"))),
            false => Ok(()),
        }
    }

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
                let valid = e.valid_up_to();
                break Err(ChunkError::InvalidUtf8 {
                    line: self.next_line + bytecount::count(&bytes[..valid], b'\n') as u64,
                    offset: self.next_offset + valid as u64,
                });
            }
            let newlines = bytecount::count(bytes, b'\n') as u64;
            let n_lines = newlines + u64::from(bytes.last() != Some(&b'\n'));
            out.push(ChunkPlace {
                index: self.next_index,
                first_line: self.next_line,
                n_lines,
                offset: self.next_offset,
                len: len as u64,
            });
            self.next_index += 1;
            self.next_line += n_lines;
            self.next_offset += len as u64;
            start += len;
        };
        self.pending.drain(..start);
        if result.is_err() {
            self.failed = true;
            self.pending = Vec::new();
        }
        result
    }

    /// The length of the chunk at the start of `pending`, once it is decided.
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
        // A line longer than a chunk makes a chunk of its own.
        let searched = pending.len().min(MAX_LINE_BYTES);
        match memchr::memchr(b'\n', &pending[self.chunk_size..searched]) {
            Some(newline) => Ok(Some(self.chunk_size + newline + 1)),
            None if searched >= MAX_LINE_BYTES => Err(ChunkError::LineTooLong { line: self.next_line }),
            None if at_end => Ok(Some(pending.len())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(input: &[u8], size: usize) -> Vec<InputChunk> {
        Chunker::new(input, size).collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn chunks_end_on_line_boundaries_and_cover_the_input() {
        let input = "one\ntwo two\nthree three three\nfour\n";
        for size in 1..input.len() + 3 {
            let got = chunks(input.as_bytes(), size);
            let joined: String = got.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(joined, input, "size {size}");
            let mut line = 1;
            for (i, chunk) in got.iter().enumerate() {
                assert!(chunk.text.ends_with('\n'));
                assert_eq!(chunk.index, i as u64);
                assert_eq!(chunk.first_line, line);
                assert_eq!(chunk.n_lines, chunk.text.lines().count() as u64);
                line += chunk.n_lines;
            }
            assert_eq!(line, 5);
        }
    }

    #[test]
    fn last_line_needs_no_newline() {
        let got = chunks(b"a\nb", 100);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].n_lines, 2);
        assert_eq!(got[0].last_line(), 2);
    }

    #[test]
    fn offsets_follow_each_other() {
        let got = chunks(b"aaaa\nbb\ncccccc\n", 6);
        let offsets: Vec<u64> = got.iter().map(|c| c.offset).collect();
        assert_eq!(offsets, vec![0, 5, 8]);
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunks(b"", 10).is_empty());
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let input = b"fine\nalso fine\nbad \xff here\nok\n";
        let err = Chunker::new(&input[..], 8).find_map(Result::err).unwrap();
        match err {
            ChunkError::InvalidUtf8 { line, offset } => {
                assert_eq!(line, 3);
                assert_eq!(offset, 19);
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn a_line_longer_than_a_chunk_is_one_chunk() {
        let long = "x".repeat(1000);
        let input = format!("a\n{long}\nb\n");
        let got = chunks(input.as_bytes(), 10);
        assert_eq!(got.iter().map(|c| c.n_lines).sum::<u64>(), 3);
        assert!(got.iter().any(|c| c.text == format!("{long}\n")));
    }

    /// Cuts `input` with a [`Cutter`] fed in pieces of the given sizes (cycled).
    fn cut_in_pieces(input: &[u8], size: usize, pieces: &[usize]) -> Result<Vec<ChunkPlace>, String> {
        let mut cutter = Cutter::new(size);
        let mut out = Vec::new();
        let mut rest = input;
        for &piece in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(piece.min(rest.len()));
            cutter.push(now, &mut out).map_err(|e| e.to_string())?;
            rest = later;
        }
        cutter.finish(&mut out).map_err(|e| e.to_string())?;
        assert_eq!(cutter.received(), input.len() as u64);
        Ok(out)
    }

    fn places_by_chunker(input: &[u8], size: usize) -> Result<Vec<ChunkPlace>, String> {
        Chunker::new(input, size)
            .map(|chunk| {
                let c = chunk.map_err(|e| e.to_string())?;
                let len = c.text.len() as u64;
                Ok(ChunkPlace { index: c.index, first_line: c.first_line, n_lines: c.n_lines, offset: c.offset, len })
            })
            .collect()
    }

    #[test]
    fn the_cutter_cuts_where_the_chunker_does_however_the_input_arrives() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..300 {
            let n_lines = rng.random_range(0..40);
            let mut input = Vec::new();
            for _ in 0..n_lines {
                let len = if rng.random_bool(0.1) { rng.random_range(20..80) } else { rng.random_range(0..12) };
                input.extend((0..len).map(|_| b'a' + rng.random_range(0..26u8)));
                input.push(b'\n');
            }
            if rng.random_bool(0.3) {
                input.extend_from_slice(b"no newline at the end");
            }
            if rng.random_bool(0.1) && !input.is_empty() {
                let at = rng.random_range(0..input.len());
                input[at] = 0xff;
            }
            let size = rng.random_range(1..40);
            let pieces: Vec<usize> = (0..5).map(|_| rng.random_range(1..30)).collect();
            let expected = places_by_chunker(&input, size);
            assert_eq!(cut_in_pieces(&input, size, &pieces), expected, "round {round}, size {size}, {pieces:?}");
        }
    }

    #[test]
    fn a_resumed_cutter_continues_the_numbering() {
        let mut cutter = Cutter::resume(4, 3, 10, 100);
        let mut out = Vec::new();
        cutter.push(b"ab\ncd\n", &mut out).unwrap();
        cutter.finish(&mut out).unwrap();
        let first = ChunkPlace { index: 3, first_line: 10, n_lines: 1, offset: 100, len: 3 };
        assert_eq!(out, vec![first, ChunkPlace { index: 4, first_line: 11, n_lines: 1, offset: 103, len: 3 }]);
        assert_eq!(out[1].end(), 106);
    }

    #[test]
    fn the_cutter_refuses_bad_input_once_and_for_all() {
        let mut cutter = Cutter::new(4);
        let mut out = Vec::new();
        let error = cutter.push(b"ok\nb\xffd\nmore\n", &mut out).unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(cutter.push(b"fine\n", &mut out).is_err());
        assert!(cutter.finish(&mut out).is_err());
    }
}
