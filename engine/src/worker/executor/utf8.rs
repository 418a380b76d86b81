//! Checking that text arriving in pieces (an aggregate's output, piece by piece from the
//! executor) is UTF-8, without holding it whole.

/// Checks that text arriving in pieces is UTF-8, a character possibly split between pieces.
#[derive(Default)]
pub(crate) struct Utf8Check {
    /// The start of a character that the next piece completes.
    carry: Vec<u8>,
}

impl Utf8Check {
    /// Takes the next piece; false once the text is not UTF-8.
    pub(crate) fn take(&mut self, mut bytes: &[u8]) -> bool {
        if !self.carry.is_empty() {
            // At most 3 bytes wait; a character has at most 4.
            let needed = (4 - self.carry.len()).min(bytes.len());
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(&bytes[..needed]);
            match std::str::from_utf8(&joined) {
                Ok(_) => bytes = &bytes[needed..],
                Err(e) if e.error_len().is_some() => return false,
                Err(e) => {
                    let valid = e.valid_up_to();
                    if valid == 0 {
                        // Still incomplete: the piece was shorter than the character.
                        self.carry = joined;
                        return true;
                    }
                    // `valid` covers the carried character; the rest of the piece comes after it.
                    let used = valid - (joined.len() - needed);
                    bytes = &bytes[used..];
                }
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                self.carry = bytes[e.valid_up_to()..].to_vec();
                true
            }
        }
    }

    /// Whether the text ended on a whole character.
    pub(crate) fn finish(&self) -> bool {
        self.carry.is_empty()
    }
}
