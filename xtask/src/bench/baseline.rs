//! The baseline: word count written directly in Rust with rayon, the program Kiln is measured
//! against. It counts exactly what the wordcount example counts (`split_whitespace` pieces,
//! case-sensitive), so the benchmark can check both outputs are equal.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

/// Reads the file, cuts it into pieces at line ends, counts each piece in its own hash map on
/// rayon's pool, and merges the maps.
pub fn word_count(path: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = std::str::from_utf8(&bytes).context("the corpus is UTF-8")?;
    let pieces = split_at_lines(text, rayon::current_num_threads() * 16);
    let merged = pieces
        .par_iter()
        .map(|piece| {
            let mut counts: FxHashMap<&str, u64> = FxHashMap::default();
            for word in piece.split_whitespace() {
                *counts.entry(word).or_default() += 1;
            }
            counts
        })
        .reduce(FxHashMap::default, |mut a, b| {
            let (small, large) = if a.len() < b.len() { (a, b) } else { (b, std::mem::take(&mut a)) };
            let mut large = large;
            for (word, n) in small {
                *large.entry(word).or_default() += n;
            }
            large
        });
    Ok(merged.into_iter().map(|(word, n)| (word.to_owned(), n)).collect())
}

/// Splits `text` into about `n` pieces, each ending at a line end.
pub(super) fn split_at_lines(text: &str, n: usize) -> Vec<&str> {
    let target = text.len().div_ceil(n.max(1)).max(1);
    let mut pieces = Vec::with_capacity(n + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let cut = match rest.get(target..).and_then(|tail| tail.find('\n')) {
            Some(newline) => target + newline + 1,
            None => rest.len(),
        };
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_at_line_ends() {
        let text = "a b\nc d e\nf\n\ng h\n";
        for n in 1..10 {
            let pieces = split_at_lines(text, n);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|p| p.ends_with('\n')));
        }
    }
}
