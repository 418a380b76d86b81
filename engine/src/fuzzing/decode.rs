//! Input files told by their first bytes and read decompressed, as a stream.

use std::io::{self, Read, Write};

use super::Choices;
use crate::input::decode::{self, Compression};

/// Reads the payload through the input decoder, in reads of a chosen size. The first byte says
/// what the payload is: bytes as they are (gzip and zstd headers included, so the decoders meet
/// garbage), or text that is compressed here, as gzip of several members or as zstd, and then
/// possibly cut short or with a byte flipped. Plain bytes must come out unchanged, whole
/// compressed text must come out as it went in, and a damaged stream may only fail with
/// `InvalidData` or give text (a member cut at its end is a shorter valid stream).
pub fn input_decoder(data: &[u8]) {
    let mut choices = Choices::new(data);
    let form = choices.byte() % 3;
    let damage = choices.byte();
    let read_size = choices.between_1_and(64);
    let payload = choices.rest();
    let (raw, text) = match form {
        0 => (payload.to_vec(), None),
        1 => {
            let mut raw = Vec::new();
            let members = 1 + usize::from(damage >> 4);
            for (k, member) in (0..members)
                .map(|k| &payload[payload.len() * k / members..payload.len() * (k + 1) / members])
                .enumerate()
            {
                let level = flate2::Compression::new(u32::from(damage >> 4) % 10);
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::new(),
                    if k % 2 == 0 { level } else { flate2::Compression::none() },
                );
                gz.write_all(member).expect("gzip into memory");
                raw.extend(gz.finish().expect("gzip into memory"));
            }
            (raw, Some(payload))
        }
        _ => (zstd::encode_all(payload, i32::from(damage % 4)).expect("zstd into memory"), Some(payload)),
    };
    let damaged = text.is_some() && damage & 0b11 != 0 && !raw.is_empty();
    let mut raw = raw;
    if damaged {
        let at = usize::from(damage) * raw.len() / 256;
        if damage & 1 != 0 {
            raw.truncate(at);
        } else {
            raw[at] ^= damage | 1;
        }
    }
    let sniffed = Compression::sniff(&raw[..raw.len().min(decode::MAGIC_BYTES)]);
    let (compression, mut reader) = decode::decoded(io::Cursor::new(raw.clone())).expect("sniffing memory");
    assert_eq!(compression, sniffed, "the stream and its first bytes are told apart differently");
    let mut out = Vec::new();
    let mut buffer = vec![0u8; read_size];
    let result = loop {
        match reader.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(n) => out.extend_from_slice(&buffer[..n]),
            Err(error) => break Err(error),
        }
        // Bounded: nothing here decompresses to more than a few MiB.
        assert!(out.len() <= 64 << 20, "the decoder keeps going");
    };
    if compression == Compression::Plain {
        result.unwrap_or_else(|error| panic!("plain bytes failed to read: {error}"));
        assert!(out == raw, "plain bytes changed");
        return;
    }
    let whole = text.filter(|_| !damaged);
    match (result, whole) {
        (Ok(()), Some(text)) => assert!(out == text, "compressed text came out changed"),
        (Ok(()), None) => {}
        (Err(error), Some(_)) => panic!("whole compressed text failed to read: {error}"),
        (Err(error), None) => {
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
            let prefix = format!("bad {} data at byte ", compression.as_str());
            assert!(error.to_string().starts_with(&prefix), "{error}");
        }
    }
}
