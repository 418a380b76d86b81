//! Compressed files, told by their first bytes rather than their names: gzip (one member or
//! several, as `pigz` and `bgzip` write) and zstd (one frame or several) are decompressed as a
//! stream where they are read; anything else is read as it is. A compressed file is one
//! stream: it cannot be entered in the middle, so it is cut into chunks only once decompressed.
//!
//! Bad compressed data fails with the offset in the compressed file where the decoder stopped
//! (the caller adds the file's name).

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// How a file's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compression {
    /// As they are.
    Plain,
    /// gzip (RFC 1952), one member or several.
    Gzip,
    /// Zstandard, one frame or several.
    Zstd,
}

/// How many first bytes [`Compression::sniff`] looks at.
pub const MAGIC_BYTES: usize = 4;

impl Compression {
    /// How a file starting with `head` (its first [`MAGIC_BYTES`] bytes, or all of a shorter
    /// file) is stored.
    pub fn sniff(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::Plain,
        }
    }

    /// The name people know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Plain => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Reads `reader` decompressed when its first bytes say it is gzip or zstd. Errors of the
/// decoder say where in the compressed bytes they happened.
pub fn decoded<R: Read + Send + 'static>(mut reader: R) -> io::Result<(Compression, Box<dyn Read + Send>)> {
    let mut head = [0u8; MAGIC_BYTES];
    let mut held = 0;
    while held < head.len() {
        match reader.read(&mut head[held..]) {
            Ok(0) => break,
            Ok(n) => held += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let compression = Compression::sniff(&head[..held]);
    let whole = io::Cursor::new(head[..held].to_vec()).chain(reader);
    Ok((compression, decoder(compression, whole)))
}

/// A reader of `raw` decompressed as `compression` says.
pub fn decoder<R: Read + Send + 'static>(compression: Compression, raw: R) -> Box<dyn Read + Send> {
    if compression == Compression::Plain {
        return Box::new(raw);
    }
    let consumed = Arc::new(AtomicU64::new(0));
    let counted = Counted { inner: BufReader::with_capacity(64 << 10, raw), consumed: Arc::clone(&consumed) };
    let decoder: Box<dyn Read + Send> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(counted)),
        Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(counted) {
            Ok(decoder) => Box::new(decoder),
            Err(e) => Box::new(Failed(Some(e))),
        },
        Compression::Plain => unreachable!("plain input is returned above"),
    };
    Box::new(Located { inner: decoder, compression, consumed })
}

/// A reader that fails once with an error it holds.
struct Failed(Option<io::Error>);

impl Read for Failed {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self.0.take().unwrap_or_else(|| io::Error::other("the decoder could not start")))
    }
}

/// A buffered reader that counts the bytes its user consumed: where a decoder stands in the
/// compressed file.
struct Counted<R> {
    inner: BufReader<R>,
    consumed: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: Read> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.consumed.fetch_add(amount as u64, Ordering::Relaxed);
        self.inner.consume(amount);
    }
}

/// A decoder whose errors say which format and where.
struct Located {
    inner: Box<dyn Read + Send>,
    compression: Compression,
    consumed: Arc<AtomicU64>,
}

impl Read for Located {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                return e;
            }
            let at = self.consumed.load(Ordering::Relaxed);
            // Kept as InvalidData, so a caller tells bad data from a failing disk or network.
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad {} data at byte {at} of the compressed file: {e}", self.compression.as_str()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(parts: &[&[u8]]) -> Vec<u8> {
        // Several members, as pigz writes them.
        let mut out = Vec::new();
        for part in parts {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(part).unwrap();
            out.extend(encoder.finish().unwrap());
        }
        out
    }

    fn read_all(bytes: Vec<u8>) -> io::Result<(Compression, Vec<u8>)> {
        let (compression, mut reader) = decoded(io::Cursor::new(bytes))?;
        let mut text = Vec::new();
        reader.read_to_end(&mut text)?;
        Ok((compression, text))
    }

    #[test]
    fn gzip_and_zstd_are_told_by_their_bytes_and_plain_text_passes_through() {
        assert_eq!(read_all(gzip(&[b"a b\n", b"c\n"])).unwrap(), (Compression::Gzip, b"a b\nc\n".to_vec()));
        let zstd = zstd::encode_all(&b"one\ntwo\n"[..], 1).unwrap();
        assert_eq!(read_all(zstd).unwrap(), (Compression::Zstd, b"one\ntwo\n".to_vec()));
        for plain in [&b""[..], b"x", b"\x1f", b"plain text\n"] {
            assert_eq!(read_all(plain.to_vec()).unwrap(), (Compression::Plain, plain.to_vec()));
        }
    }

    #[test]
    fn bad_data_names_the_format_and_the_offset() {
        let mut broken = gzip(&[&b"some text that compresses\n".repeat(100)]);
        let middle = broken.len() / 2;
        broken[middle..].iter_mut().for_each(|b| *b = !*b);
        let error = read_all(broken).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let message = error.to_string();
        assert!(message.starts_with("bad gzip data at byte "), "{message}");

        let mut cut = zstd::encode_all(&b"line\n".repeat(1000)[..], 1).unwrap();
        cut.truncate(cut.len() - 3);
        let message = read_all(cut).unwrap_err().to_string();
        assert!(message.starts_with("bad zstd data at byte "), "{message}");
    }
}
