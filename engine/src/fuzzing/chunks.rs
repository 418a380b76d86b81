//! Cutting inputs into chunks of whole lines: the controller's push [`Cutter`], run-local's
//! pull [`Chunker`], and the byte-range splits of files read by reference.

use super::Choices;
use crate::input::split::{self, SplitText};
use crate::rules::chunk::{ChunkError, ChunkPlace, Chunker, Cutter, Resume};

/// A line as the oracle sees it: its file, its number in the file, its bytes.
type Line<'a> = (usize, u64, &'a [u8]);

/// Cuts the payload, as up to four files, with a small chunk size and the bytes pushed in
/// pieces of a chosen size. The oracle splits each file into lines on its own: the chunks must
/// hold every line exactly once, in order, numbered within its file, each chunk whole lines of
/// one file and no longer than the chunk size unless it is a single line; the pull interface
/// must cut where the push one does; bad UTF-8 must be reported at the first bad byte of the
/// first file that has one. Then each file is split by byte ranges as if read by reference,
/// and the splits' lines must be the file's lines, each exactly once.
pub fn chunk_cutter(data: &[u8]) {
    let mut choices = Choices::new(data);
    let chunk_size = choices.between_1_and(64);
    let piece_size = choices.between_1_and(32);
    let n_files = choices.between_1_and(4);
    let split_size = choices.between_1_and(48) as u64;
    let read_ahead = u64::from(choices.byte() % 16);
    let input = choices.rest();
    let files: Vec<&[u8]> =
        (0..n_files).map(|k| &input[input.len() * k / n_files..input.len() * (k + 1) / n_files]).collect();

    let (places, error) = push_cut(&files, chunk_size, piece_size);
    let first_bad = files.iter().enumerate().find_map(|(k, file)| {
        let valid = std::str::from_utf8(file).err()?.valid_up_to();
        Some((k, 1 + bytecount::count(&file[..valid], b'\n') as u64, valid as u64))
    });
    match (&error, first_bad) {
        (None, None) => {}
        (Some(ChunkError::InvalidUtf8 { line, offset }), Some((_, want_line, want_offset))) => {
            assert_eq!((*line, *offset), (want_line, want_offset), "the bad byte is misplaced");
        }
        (error, bad) => panic!("the cutter said {error:?}, the input's first bad byte is {bad:?}"),
    }
    check_places(&files, &places, chunk_size, first_bad.map(|(file, ..)| file));
    if first_bad.is_none() {
        check_chunker(&files, &places, chunk_size);
    }
    for file in &files {
        check_splits(file, split_size, read_ahead);
    }
}

/// The chunks the push interface cuts, and the error it stopped at.
fn push_cut(files: &[&[u8]], chunk_size: usize, piece_size: usize) -> (Vec<ChunkPlace>, Option<ChunkError>) {
    let mut cutter = Cutter::new(chunk_size);
    let mut places = Vec::new();
    for (k, file) in files.iter().enumerate() {
        if k > 0
            && let Err(error) = cutter.next_file(k as u32, &mut places)
        {
            return (places, Some(error));
        }
        for piece in file.chunks(piece_size) {
            if let Err(error) = cutter.push(piece, &mut places) {
                return (places, Some(error));
            }
        }
    }
    let error = cutter.finish(&mut places).err();
    (places, error)
}

/// The oracle's lines of a file: split after each `\n`, the last one needing none.
fn lines_of(file: usize, bytes: &[u8]) -> Vec<Line<'_>> {
    bytes.split_inclusive(|&b| b == b'\n').enumerate().map(|(n, line)| (file, n as u64 + 1, line)).collect()
}

fn check_places(files: &[&[u8]], places: &[ChunkPlace], chunk_size: usize, first_bad: Option<usize>) {
    let starts: Vec<u64> =
        files.iter().scan(0u64, |at, file| Some(std::mem::replace(at, *at + file.len() as u64))).collect();
    let mut got: Vec<Line<'_>> = Vec::new();
    for (i, place) in places.iter().enumerate() {
        assert_eq!(place.index, i as u64, "chunks are numbered in order");
        let file = place.file as usize;
        let start = starts[file];
        let bytes = files[file]
            .get((place.offset - start) as usize..(place.end() - start) as usize)
            .unwrap_or_else(|| panic!("{place:?} lies outside its file"));
        let lines = lines_of(file, bytes);
        assert!(!lines.is_empty(), "an empty chunk {place:?}");
        assert_eq!(place.n_lines, lines.len() as u64, "{place:?}");
        assert!(bytes.len() <= chunk_size || lines.len() == 1, "{place:?} is too long for several lines");
        got.extend(lines.into_iter().map(|(f, n, line)| (f, n + place.first_line - 1, line)));
    }
    // Every line of the files before the first bad one (and of the bad one up to the chunk the
    // error is in) is in the chunks exactly once, in order; without an error, all of them.
    let good_files = first_bad.map_or(files.len(), |bad| bad + 1);
    let want: Vec<Line<'_>> = files[..good_files].iter().enumerate().flat_map(|(k, file)| lines_of(k, file)).collect();
    match first_bad {
        None => assert!(got == want, "the chunks' lines are not the input's"),
        Some(_) => assert!(want.starts_with(&got), "the chunks before the bad byte are not the input's lines"),
    }
}

/// The pull interface cuts each file where the push one does.
fn check_chunker(files: &[&[u8]], places: &[ChunkPlace], chunk_size: usize) {
    let mut pulled = Vec::new();
    let mut start = 0u64;
    for (k, file) in files.iter().enumerate() {
        let first_index = pulled.len() as u64;
        for chunk in Chunker::for_file(*file, chunk_size, k as u32, first_index) {
            let chunk = chunk.unwrap_or_else(|error| panic!("the chunker refused valid UTF-8: {error}"));
            let at = chunk.offset as usize;
            assert_eq!(chunk.text.as_bytes(), &file[at..at + chunk.text.len()], "the chunk's text is not its bytes");
            pulled.push(ChunkPlace {
                index: chunk.index,
                file: chunk.file,
                first_line: chunk.first_line,
                n_lines: chunk.n_lines,
                offset: start + chunk.offset,
                len: chunk.text.len() as u64,
            });
        }
        start += file.len() as u64;
    }
    assert_eq!(pulled, places, "the chunker and the cutter cut differently");
    // A cutter resumed after any chunk goes on as the first one did.
    if let Some(place) = places.iter().find(|place| place.file == 0 && place.index > 0) {
        let at = Resume { index: place.index, file: 0, line: place.first_line, offset: place.offset, file_start: 0 };
        let mut cutter = Cutter::resume(chunk_size, at);
        let mut resumed = Vec::new();
        cutter.push(&files[0][place.offset as usize..], &mut resumed).expect("valid UTF-8");
        cutter.finish(&mut resumed).expect("valid UTF-8");
        let rest: Vec<ChunkPlace> = places.iter().filter(|p| p.file == 0 && p.index >= place.index).copied().collect();
        assert_eq!(resumed, rest, "a resumed cutter cuts differently");
    }
}

/// Splits by byte ranges, each read as the workers do: together they hold every line once.
fn check_splits(file: &[u8], split_size: u64, read_ahead: u64) {
    let size = file.len() as u64;
    let mut joined = Vec::new();
    let mut next = 0u64;
    for planned in split::plan(size, split_size, false) {
        let fetch = |range: std::ops::Range<u64>| {
            let bytes = file[range.start as usize..range.end.min(size) as usize].to_vec();
            std::future::ready(Ok::<_, std::convert::Infallible>(bytes))
        };
        let SplitText { offset, bytes } =
            futures::executor::block_on(split::read_split(planned, size, read_ahead, u64::MAX, fetch))
                .expect("fetching from memory");
        if !bytes.is_empty() {
            assert_eq!(offset, next, "split {planned:?} does not start where the one before ended");
            assert!(offset == 0 || file[offset as usize - 1] == b'\n', "split {planned:?} starts inside a line");
            next = offset + bytes.len() as u64;
            assert!(next == size || bytes.ends_with(b"\n"), "split {planned:?} ends inside a line");
        }
        joined.extend_from_slice(&bytes);
    }
    assert!(joined == file, "the splits' lines are not the file's");
    let whole = split::plan(size, split_size, true);
    assert_eq!(whole.len(), usize::from(size > 0), "a compressed file is one split");
}
