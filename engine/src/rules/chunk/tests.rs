//! The cutting rule's tests: chunk boundaries, both interfaces agreeing, files, UTF-8 and
//! the longest line.

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

#[test]
fn a_line_of_the_limit_is_accepted_and_one_byte_more_is_refused_naming_it() {
    // Chunks of 4 bytes, lines up to 10: line 2 is 10 bytes, line 4 eleven.
    let input = b"ab\n0123456789\ncd\n0123456789X\nef\n";
    let cut = |input: &[u8]| Chunker::new(input, 4).with_max_line(10).collect::<Result<Vec<_>, _>>();
    let head = &input[..input.len() - 15];
    let texts: Vec<String> = cut(head).unwrap().into_iter().map(|chunk| chunk.text).collect();
    assert_eq!(texts, ["ab\n", "0123456789\n", "cd\n"]);
    match cut(input) {
        Err(ChunkError::LineTooLong { line: 4, limit: 10 }) => {}
        other => panic!("line 4 is refused: {other:?}"),
    }
    // The same through the push interface, however the bytes arrive, and for a last line
    // without a line end.
    for pieces in [&[1][..], &[3, 7], &[40]] {
        let error = cut_in_pieces(input, 4, pieces, 10).unwrap_err();
        assert!(error.starts_with("line 4 is longer than"), "{error}");
    }
    assert!(cut(b"ab\n0123456789X").is_err());
    assert_eq!(cut(b"ab\n0123456789").unwrap().len(), 2);
}

#[test]
fn a_line_within_a_chunk_is_accepted_whatever_the_limit() {
    let input = b"0123456789\nab\n";
    let chunks: Vec<_> = Chunker::new(&input[..], 64).with_max_line(4).collect::<Result<_, _>>().unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].text, "0123456789\nab\n");
}

/// Cuts `input` with a [`Cutter`] refusing lines over `max_line`, fed in pieces of the
/// given sizes (cycled).
fn cut_in_pieces(input: &[u8], size: usize, pieces: &[usize], max_line: usize) -> Result<Vec<ChunkPlace>, String> {
    let mut cutter = Cutter::new(size).with_max_line(max_line);
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
            Ok(ChunkPlace {
                index: c.index,
                file: 0,
                first_line: c.first_line,
                n_lines: c.n_lines,
                offset: c.offset,
                len,
            })
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
        assert_eq!(
            cut_in_pieces(&input, size, &pieces, DEFAULT_MAX_LINE_BYTES),
            expected,
            "round {round}, size {size}, {pieces:?}"
        );
    }
}

#[test]
fn a_resumed_cutter_continues_the_numbering() {
    let mut cutter = Cutter::resume(4, Resume { index: 3, file: 2, line: 10, offset: 100, file_start: 50 });
    let mut out = Vec::new();
    cutter.push(b"ab\ncd\n", &mut out).unwrap();
    cutter.finish(&mut out).unwrap();
    let first = ChunkPlace { index: 3, file: 2, first_line: 10, n_lines: 1, offset: 100, len: 3 };
    let second = ChunkPlace { index: 4, file: 2, first_line: 11, n_lines: 1, offset: 103, len: 3 };
    assert_eq!(out, vec![first, second]);
    assert_eq!(out[1].end(), 106);
}

#[test]
fn no_chunk_spans_two_files_and_lines_count_from_one_in_each() {
    let mut cutter = Cutter::new(100);
    let mut out = Vec::new();
    cutter.push(b"a\nb", &mut out).unwrap();
    cutter.next_file(1, &mut out).unwrap();
    // File 1 is empty; file 2 starts here.
    cutter.next_file(2, &mut out).unwrap();
    cutter.push(b"c\n", &mut out).unwrap();
    cutter.finish(&mut out).unwrap();
    let places: Vec<(u32, u64, u64, u64)> = out.iter().map(|p| (p.file, p.first_line, p.offset, p.len)).collect();
    assert_eq!(places, vec![(0, 1, 0, 3), (2, 1, 3, 2)]);

    let mut cutter = Cutter::new(100);
    let mut out = Vec::new();
    cutter.push(b"a\nb", &mut out).unwrap();
    cutter.next_file(2, &mut out).unwrap();
    cutter.push(b"c\nd\n", &mut out).unwrap();
    cutter.finish(&mut out).unwrap();
    let places: Vec<(u64, u32, u64, u64, u64)> =
        out.iter().map(|p| (p.index, p.file, p.first_line, p.n_lines, p.offset)).collect();
    assert_eq!(places, vec![(0, 0, 1, 2, 0), (1, 2, 1, 2, 3)]);
}

#[test]
fn a_bad_byte_is_named_by_its_line_and_offset_within_its_file() {
    let mut cutter = Cutter::new(100);
    let mut out = Vec::new();
    cutter.push(b"first file\n", &mut out).unwrap();
    cutter.next_file(1, &mut out).unwrap();
    cutter.push(b"ok\nb\xffd\n", &mut out).unwrap();
    match cutter.finish(&mut out).unwrap_err() {
        ChunkError::InvalidUtf8 { line, offset } => assert_eq!((line, offset), (2, 4)),
        other => panic!("unexpected error {other}"),
    }
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

#[test]
fn run_local_sizes_chunks_to_the_input_and_its_slots_within_bounds() {
    const MIB: u64 = 1 << 20;
    // Small inputs keep the default size: every slot still gets chunks.
    assert_eq!(fitted_chunk_size(0, 2, None), DEFAULT_CHUNK_SIZE);
    assert_eq!(fitted_chunk_size(64 * MIB, 2, None), 8 << 20);
    assert_eq!(fitted_chunk_size(64 * MIB, 16, None), DEFAULT_CHUNK_SIZE);
    // About four chunks per slot in between.
    assert_eq!(fitted_chunk_size(128 * MIB, 2, None), 16 << 20);
    assert_eq!(fitted_chunk_size(512 * MIB, 8, None), 16 << 20);
    // Large inputs are capped, so memory grows with the slots, not with the input.
    assert_eq!(fitted_chunk_size(1 << 30, 2, None), MAX_FITTED_CHUNK_SIZE);
    assert_eq!(fitted_chunk_size(1 << 40, 2, None), MAX_FITTED_CHUNK_SIZE);
    assert_eq!(fitted_chunk_size(u64::MAX, 0, None), MAX_FITTED_CHUNK_SIZE);
    // A memory limit caps them at an eighth of each slot's share, never below the default.
    assert_eq!(fitted_chunk_size(1 << 30, 2, Some(256 * MIB)), 16 << 20);
    assert_eq!(fitted_chunk_size(1 << 30, 2, Some(64 * MIB)), DEFAULT_CHUNK_SIZE);
    assert_eq!(fitted_chunk_size(1 << 30, 2, Some(1 << 40)), MAX_FITTED_CHUNK_SIZE);
    for (bytes, slots) in [(1, 1), (100 * MIB, 3), (3 << 30, 7), (10 << 30, 64)] {
        let size = fitted_chunk_size(bytes, slots, None);
        assert!((DEFAULT_CHUNK_SIZE..=MAX_FITTED_CHUNK_SIZE).contains(&size), "{bytes} {slots}: {size}");
    }
}
