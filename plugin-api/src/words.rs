//! [`Words`]: a chunk's words, split in one pass over its bytes.

/// The words of a chunk, from [`Chunk::words`].
#[derive(Debug, Clone)]
pub struct Words<'a> {
    text: &'a str,
    /// Where the scan for the next word starts.
    offset: usize,
    /// The words of a piece that holds non-ASCII bytes, still being handed out.
    unicode: Option<std::str::SplitWhitespace<'a>>,
}

/// What a byte is to [`Words`]: part of a word, ASCII whitespace (what `char::is_whitespace`
/// accepts below 0x80: `u8::is_ascii_whitespace` and U+000B, the vertical tab), or a byte of a
/// non-ASCII character, which may be whitespace.
const WORD: u8 = 0;
const SPACE: u8 = 1;
const NON_ASCII: u8 = 2;
const BYTE_CLASS: [u8; 256] = {
    let mut class = [WORD; 256];
    let mut b = 0x80;
    while b < 256 {
        class[b] = NON_ASCII;
        b += 1;
    }
    let spaces = [b' ', b'\t', b'\n', 0x0B, 0x0C, b'\r'];
    let mut i = 0;
    while i < spaces.len() {
        class[spaces[i] as usize] = SPACE;
        i += 1;
    }
    class
};

/// Where the word that starts at `i` ends (the next ASCII whitespace byte, or the end), and
/// whether it holds a non-ASCII byte. Eight bytes at a time: the lowest byte below 0x21 in a
/// word of 8 is found without a branch per byte (only whitespace and control characters are
/// below 0x21, and control characters other than whitespace are rare, so they are checked
/// one by one).
#[inline]
fn word_end(bytes: &[u8], mut i: usize) -> (usize, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut high = 0u64;
    while let Some(eight) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(eight.try_into().expect("8 bytes"));
        // The high bit of each byte below 0x21 (exact for the lowest such byte; a borrow may
        // mark bytes above it, which are not looked at).
        let below = w.wrapping_sub(ONES * 0x21) & !w & HIGH;
        if below == 0 {
            high |= w;
            i += 8;
            continue;
        }
        let k = (below.trailing_zeros() / 8) as usize;
        high |= w & ((1u64 << (8 * k)) - 1);
        i += k;
        if BYTE_CLASS[bytes[i] as usize] == SPACE {
            return (i, high & HIGH != 0);
        }
        i += 1;
    }
    let mut seen = if high & HIGH != 0 { NON_ASCII } else { WORD };
    while i < bytes.len() {
        let class = BYTE_CLASS[bytes[i] as usize];
        if class == SPACE {
            break;
        }
        seen |= class;
        i += 1;
    }
    (i, seen != WORD)
}

impl<'a> Words<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Words { text, offset: 0, unicode: None }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        loop {
            if let Some(words) = &mut self.unicode {
                match words.next() {
                    Some(word) => return Some(word),
                    None => self.unicode = None,
                }
            }
            let bytes = self.text.as_bytes();
            let mut i = self.offset;
            while i < bytes.len() && BYTE_CLASS[bytes[i] as usize] == SPACE {
                i += 1;
            }
            if i == bytes.len() {
                self.offset = i;
                return None;
            }
            let start = i;
            let (end, non_ascii) = word_end(bytes, i);
            self.offset = end;
            debug_assert!(self.text.is_char_boundary(start) && self.text.is_char_boundary(end));
            // SAFETY: `start` is at a byte that is not ASCII whitespace after one that is (or
            // at 0) and `end` at ASCII whitespace or the text's end, so both are character
            // boundaries (no byte of a multi-byte character is ASCII), and start <= end <= len.
            let piece = unsafe { self.text.get_unchecked(start..end) };
            if !non_ascii {
                return Some(piece);
            }
            self.unicode = Some(piece.split_whitespace());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_what_split_whitespace_gives() {
        // Every ASCII whitespace byte, the vertical tab that `u8::is_ascii_whitespace` leaves
        // out, non-ASCII spaces inside and between words, and non-ASCII letters.
        let pieces = [
            "a",
            "bc",
            "é",
            "日本",
            " ",
            "\t",
            "\n",
            "\r",
            "\x0B",
            "\x0C",
            "\u{A0}",
            "\u{2003}",
            "\u{3000}",
            "x\u{A0}y",
            "\u{85}",
            "\u{1F600}",
        ];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..400 {
            let mut text = String::new();
            for _ in 0..len % 40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push_str(pieces[(x % pieces.len() as u64) as usize]);
            }
            let want: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(Words::new(&text).collect::<Vec<_>>(), want, "{text:?}");
        }
        assert_eq!(Words::new("").next(), None);
        assert_eq!(Words::new(" \u{A0} ").next(), None);
    }
}
