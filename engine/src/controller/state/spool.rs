//! A job's input file as it uploads, and the cutter it goes through: pieces are written where
//! they belong and pushed through the [`Cutter`], which keeps only the bytes after the last
//! cut, so the length received and the chunks cut always agree. The input's files are
//! uploaded one after another into the one spooled file; the first piece of a file ends the
//! one before, so no chunk spans two.

use std::path::PathBuf;

use super::direct::Appender;
use crate::rpc::RpcError;
use crate::rules::chunk::{ChunkError, ChunkPlace, Cutter};

/// A job's input file as it is uploaded, and the cutter it goes through.
pub(in crate::controller) struct Spool {
    path: PathBuf,
    /// Bytes received so far: the file's length.
    len: u64,
    /// Writes the file, around the page cache where it can (see [`super::direct`]).
    file: Option<Appender>,
    /// Set once the input is finished: no piece may change it.
    sealed: bool,
    cutter: Cutter,
}

/// Why a piece was not taken.
#[derive(Debug)]
pub(in crate::controller) enum PieceError {
    /// The call was wrong (a gap, a finished input) or the disk failed: the job goes on.
    Refused(RpcError),
    /// The input cannot be cut (not UTF-8, a line too long): the job fails.
    Input(ChunkError),
}

impl Spool {
    /// The spool of an empty input, cut into chunks of `chunk_size` bytes.
    pub fn new(path: PathBuf, chunk_size: u64) -> Spool {
        Spool::resume(path, 0, Cutter::new(chunk_size_of(chunk_size)))
    }

    /// Refuses lines longer than `bytes` (the controller's `--max-line-size`).
    pub fn with_max_line(mut self, bytes: usize) -> Spool {
        self.cutter = self.cutter.with_max_line(bytes);
        self
    }

    /// The spool of an input file that holds `len` bytes, whose cutting goes on with `cutter`.
    pub fn resume(path: PathBuf, len: u64, cutter: Cutter) -> Spool {
        Spool { path, len, file: None, sealed: false, cutter }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.len
    }

    /// The input's file being received: its position in the input.
    pub fn current_file(&self) -> u32 {
        self.cutter.file()
    }

    /// Closes the input: no piece may change it any more.
    pub fn seal(&mut self) {
        self.sealed = true;
    }

    /// Cuts the last chunk, of the bytes after the last cut, and gives back the buffers the
    /// pieces went through: a finished job's spool stays with the job. Blocking.
    pub fn finish_cut(&mut self) -> Result<Vec<ChunkPlace>, ChunkError> {
        let mut places = Vec::new();
        if let Some(file) = &mut self.file {
            file.release_buffer();
        }
        self.cutter.finish(&mut places).map(|()| places)
    }

    /// The index the next chunk cut gets: the number of chunks cut so far.
    pub fn next_index(&self) -> u64 {
        self.cutter.next_index()
    }

    /// Another handle on the input file, if a piece was written, to sync it.
    pub fn file(&self) -> Option<std::fs::File> {
        self.file.as_ref().and_then(|file| file.file().ok())
    }

    /// Writes a piece of file number `file` at `offset` and cuts what it completes: the bytes
    /// past the current end are appended, a piece wholly received before is ignored, and a gap
    /// is refused. The first piece of a file ends the file before it (the caller records where
    /// it starts first). Blocking.
    pub fn take(&mut self, file: u32, offset: u64, piece: &[u8]) -> Result<Vec<ChunkPlace>, PieceError> {
        if self.sealed {
            return Err(PieceError::Refused(RpcError::Invalid("the input is finished: no more pieces".into())));
        }
        let current = self.cutter.file();
        if file < current && offset + piece.len() as u64 > self.len {
            return Err(PieceError::Refused(RpcError::Invalid(format!(
                "a piece of file {file} came after file {current} had begun: upload the files in order"
            ))));
        }
        if file > current && offset != self.len {
            return Err(PieceError::Refused(RpcError::Invalid(format!(
                "file {file} must start where the input ends, at byte {}, not {offset}",
                self.len
            ))));
        }
        if offset > self.len {
            return Err(PieceError::Refused(RpcError::Invalid(format!(
                "a piece at byte {offset} leaves a gap: {} bytes were received so far; resend from there",
                self.len
            ))));
        }
        let end = offset + piece.len() as u64;
        if end <= self.len {
            return Ok(Vec::new());
        }
        let new = &piece[usize::try_from(self.len - offset).unwrap_or(0)..];
        // `<data_dir>/inputs/<job>.txt`: a full disk names the data directory.
        let data_dir = self.path.parent().and_then(std::path::Path::parent).unwrap_or(&self.path);
        let doing = format!("writing the input to {}", self.path.display());
        let io_error =
            |e: std::io::Error| PieceError::Refused(crate::controller::disk::io_refusal(data_dir, &doing, &e));
        let disk = match &mut self.file {
            Some(disk) => disk,
            None => {
                let disk = Appender::open(&self.path);
                self.file.insert(disk.map_err(io_error)?)
            }
        };
        // On an error the file may hold part of the piece; what counts is `len`, and the
        // resent piece overwrites from there.
        disk.append(self.len, new).map_err(io_error)?;
        self.len = end;
        let mut places = Vec::new();
        if file > current {
            self.cutter.next_file(file, &mut places).map_err(PieceError::Input)?;
        }
        self.cutter.push(new, &mut places).map_err(PieceError::Input)?;
        Ok(places)
    }
}

/// The chunk size a job's cutter uses.
pub(in crate::controller) fn chunk_size_of(chunk_size: u64) -> usize {
    usize::try_from(chunk_size).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(taken: Result<Vec<ChunkPlace>, PieceError>) -> RpcError {
        match taken {
            Err(PieceError::Refused(e)) => e,
            Err(PieceError::Input(e)) => panic!("not refused but bad input: {e}"),
            Ok(places) => panic!("taken: {places:?}"),
        }
    }

    #[test]
    fn pieces_append_and_cut_repeats_are_ignored_and_gaps_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        let mut spool = Spool::new(path.clone(), 4);
        assert!(spool.take(0, 0, b"ab\n").unwrap().is_empty(), "one more byte decides where the chunk ends");
        assert!(spool.take(0, 0, b"ab\n").unwrap().is_empty(), "a repeat is ignored");
        let cut = spool.take(0, 2, b"\ncd\nef").unwrap();
        let first = ChunkPlace { index: 0, file: 0, first_line: 1, n_lines: 1, offset: 0, len: 3 };
        assert_eq!(cut, vec![first, ChunkPlace { index: 1, file: 0, first_line: 2, n_lines: 1, offset: 3, len: 3 }]);
        let gap = refused(spool.take(0, 10, b"x"));
        assert!(matches!(&gap, RpcError::Invalid(m) if m.contains("8 bytes")), "{gap}");
        let mut rest = Vec::new();
        spool.cutter.finish(&mut rest).unwrap();
        assert_eq!(rest.iter().map(|p| (p.first_line, p.len)).collect::<Vec<_>>(), vec![(3, 2)]);
        spool.sealed = true;
        assert!(matches!(refused(spool.take(0, 8, b"late")), RpcError::Invalid(_)), "a finished input is closed");
        assert_eq!(std::fs::read(&path).unwrap(), b"ab\ncd\nef");
    }

    #[test]
    fn a_files_first_piece_ends_the_file_before_and_files_go_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().join("in.txt"), 100);
        assert!(spool.take(0, 0, b"a\nb").unwrap().is_empty());
        let ended = spool.take(2, 3, b"c\n").unwrap();
        assert_eq!(ended, vec![ChunkPlace { index: 0, file: 0, first_line: 1, n_lines: 2, offset: 0, len: 3 }]);
        assert_eq!(spool.current_file(), 2);
        assert!(matches!(refused(spool.take(1, 5, b"x\n")), RpcError::Invalid(m) if m.contains("in order")));
        assert!(matches!(refused(spool.take(3, 4, b"x\n")), RpcError::Invalid(m) if m.contains("at byte 5")));
        let mut rest = Vec::new();
        spool.cutter.finish(&mut rest).unwrap();
        assert_eq!(rest, vec![ChunkPlace { index: 1, file: 2, first_line: 1, n_lines: 1, offset: 3, len: 2 }]);
    }

    #[test]
    fn a_piece_that_is_not_utf8_is_written_then_refused_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().join("in.txt"), 4);
        match spool.take(0, 0, b"ok\n\xff\nmore text\n") {
            Err(PieceError::Input(e)) => assert!(e.to_string().contains("line 2"), "{e}"),
            _ => panic!("bad input taken"),
        }
    }
}
