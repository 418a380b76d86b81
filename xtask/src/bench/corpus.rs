//! Deterministic benchmark inputs: a word corpus with Zipf-like word frequencies and a CSV file.
//!
//! The same size and seed always give the same bytes, so figures from different runs and
//! machines measure the same work. Files are kept between runs under `target/bench/inputs`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The seed of every generated input; change it only with a note in BENCHMARKS.md.
const SEED: u64 = 0x6b69_6c6e; // "kiln"

/// Distinct words in the corpus.
const VOCABULARY: usize = 50_000;

/// The resolution of the table that maps a uniform random number to a word's rank.
const RANK_TABLE_BITS: u32 = 20;

/// A small, fast, deterministic generator (xorshift64*); quality is ample for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The path of the word corpus of about `size` bytes, generating it if it is not there yet.
pub fn words(dir: &Path, size: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("words-{size}-{SEED:x}.txt"));
    if !path.exists() {
        eprintln!("generating {} ({} MiB of words)", path.display(), size >> 20);
        generate(&path, |out| write_words(out, size))?;
    }
    Ok(path)
}

/// The path of a CSV file of about `size` bytes: `id,value,label` with a non-number in one
/// line of 50, generating it if it is not there yet.
pub fn csv(dir: &Path, size: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("table-{size}-{SEED:x}.csv"));
    if !path.exists() {
        eprintln!("generating {} ({} MiB of CSV)", path.display(), size >> 20);
        generate(&path, |out| write_csv(out, size))?;
    }
    Ok(path)
}

/// The path of a file of `n` numbered lines of eight bytes each (`0000000\n`, `0000001\n`...),
/// generating it if it is not there yet.
pub fn lines(dir: &Path, n: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("lines-{n}.txt"));
    if !path.exists() {
        generate(&path, |out| (0..n).try_for_each(|i| writeln!(out, "{:07}", i % 10_000_000)))?;
    }
    Ok(path)
}

/// A directory of `parts` gzip files (`part-00.gz`, ...) holding `source` cut at line ends, in
/// order, compressed with the system's `gzip -6 -n` (no name or time stamp, so the bytes are
/// the same on every run); made if it is not there yet.
pub fn gzip_parts(dir: &Path, source: &Path, parts: usize) -> anyhow::Result<PathBuf> {
    split(dir, source, parts, "gz", |part, piece, path| {
        let mut gzip = std::process::Command::new("gzip")
            .args(["-6", "-n", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(File::create(path)?)
            .spawn()
            .context("running gzip (Debian's gzip package)")?;
        gzip.stdin.take().context("gzip's stdin")?.write_all(piece)?;
        if !gzip.wait()?.success() {
            anyhow::bail!("gzip failed on part {part} of {}", source.display());
        }
        Ok(())
    })
}

/// A directory of `parts` plain files (`part-00.txt`, ...) holding `source` cut at line ends,
/// in order (objects to put in a store); made if it is not there yet.
pub fn plain_parts(dir: &Path, source: &Path, parts: usize) -> anyhow::Result<PathBuf> {
    split(dir, source, parts, "txt", |_, piece, path| Ok(std::fs::write(path, piece)?))
}

/// The directory `<source's name>-<kind><parts>` beside the inputs, made if it is not there
/// yet: `source` cut at line ends into `parts` pieces of about the same size, each written by
/// `write` (its number, its bytes, its path `part-NN.<kind>`). Made under another name and
/// renamed, so an interrupted run leaves no half directory.
fn split(
    dir: &Path,
    source: &Path,
    parts: usize,
    kind: &str,
    mut write: impl FnMut(usize, &[u8], &Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let name = source.file_stem().context("corpus has a name")?.to_string_lossy().into_owned();
    let out = dir.join(format!("{name}-{kind}{parts}"));
    if out.exists() {
        return Ok(out);
    }
    eprintln!("cutting {} into {parts} {kind} files", source.display());
    let partial = dir.join(format!("{name}-{kind}{parts}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let text = std::fs::read(source)?;
    let per_part = text.len().div_ceil(parts.max(1)).max(1);
    let mut rest = &text[..];
    for part in 0..parts {
        let cut = match part + 1 == parts {
            true => rest.len(),
            false => rest
                .get(per_part..)
                .and_then(|tail| memchr::memchr(b'\n', tail))
                .map_or(rest.len(), |i| per_part + i + 1),
        };
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        write(part, piece, &partial.join(format!("part-{part:02}.{kind}")))?;
    }
    std::fs::rename(&partial, &out)?;
    Ok(out)
}

/// Writes to a temporary file and renames it, so an interrupted run leaves no half file.
fn generate(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().context("input path has a parent")?)?;
    let partial = path.with_extension("partial");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&partial)?);
    write(&mut out).with_context(|| format!("writing {}", partial.display()))?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

fn vocabulary(rng: &mut Rng) -> Vec<String> {
    let mut words = std::collections::HashSet::with_capacity(VOCABULARY);
    let mut ordered = Vec::with_capacity(VOCABULARY);
    while ordered.len() < VOCABULARY {
        let len = 2 + rng.below(9) as usize;
        let word: String = (0..len).map(|_| (b'a' + rng.below(26) as u8) as char).collect();
        if words.insert(word.clone()) {
            ordered.push(word);
        }
    }
    ordered
}

/// Maps the top bits of a random number to a rank with probability proportional to 1/rank.
fn rank_table() -> Vec<u32> {
    let weights: Vec<f64> = (1..=VOCABULARY).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let slots = 1usize << RANK_TABLE_BITS;
    let mut table = Vec::with_capacity(slots);
    let mut cumulative = 0.0;
    for (rank, weight) in weights.iter().enumerate() {
        cumulative += weight / total;
        let until = ((cumulative * slots as f64).round() as usize).min(slots);
        while table.len() < until {
            table.push(rank as u32);
        }
    }
    table.resize(slots, (VOCABULARY - 1) as u32);
    table
}

fn write_words(out: &mut impl Write, size: u64) -> std::io::Result<()> {
    let mut rng = Rng(SEED);
    let vocabulary = vocabulary(&mut rng);
    let table = rank_table();
    let mut written = 0u64;
    let mut line = String::with_capacity(256);
    while written < size {
        line.clear();
        let n_words = 5 + rng.below(11);
        for i in 0..n_words {
            if i > 0 {
                line.push(' ');
            }
            let rank = table[(rng.next() >> (64 - RANK_TABLE_BITS)) as usize];
            line.push_str(&vocabulary[rank as usize]);
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    Ok(())
}

fn write_csv(out: &mut impl Write, size: u64) -> std::io::Result<()> {
    let mut rng = Rng(SEED ^ 0xc5f);
    let mut written = 0u64;
    let mut id = 0u64;
    while written < size {
        let line = if id % 50 == 49 {
            format!("{id},n/a,label{}\n", rng.below(1000))
        } else {
            let value = rng.below(2_000_000) as f64 / 100.0 - 10_000.0;
            format!("{id},{value},label{}\n", rng.below(1000))
        };
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        id += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_deterministic_and_shaped_as_specified() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_words(&mut a, 200_000).unwrap();
        write_words(&mut b, 200_000).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mean_line = text.len() as f64 / lines.len() as f64;
        assert!((35.0..70.0).contains(&mean_line), "mean line length {mean_line}");
        assert!(lines.iter().all(|l| (5..=15).contains(&l.split(' ').count())));
        assert!(text.bytes().all(|b| b == b' ' || b == b'\n' || b.is_ascii_lowercase()));
    }

    #[test]
    fn parts_hold_the_source_cut_at_line_ends_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let source = words(dir.path(), 100_000).unwrap();
        let parts = plain_parts(dir.path(), &source, 4).unwrap();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&parts).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        assert_eq!(names.len(), 4);
        let pieces: Vec<Vec<u8>> = names.iter().map(|name| std::fs::read(name).unwrap()).collect();
        assert!(pieces.iter().all(|piece| piece.len() > 10_000 && piece.ends_with(b"\n")));
        assert_eq!(pieces.concat(), std::fs::read(&source).unwrap());
    }

    #[test]
    fn numbered_lines_are_eight_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(lines(dir.path(), 3).unwrap()).unwrap();
        assert_eq!(text, "0000000\n0000001\n0000002\n");
    }

    #[test]
    fn frequent_words_are_much_more_frequent() {
        let table = rank_table();
        let top = table.iter().filter(|&&r| r == 0).count();
        let hundredth = table.iter().filter(|&&r| r == 99).count();
        assert!(top > 50 * hundredth.max(1), "rank 1: {top}, rank 100: {hundredth}");
    }
}
