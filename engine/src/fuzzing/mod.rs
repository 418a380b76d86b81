//! The checks the coverage-guided fuzz targets run (`fuzz/`, `cargo fuzz`): each takes
//! arbitrary bytes, drives one decoder of untrusted input the way the engine does, and panics
//! when the decoder panics or breaks a property an independent computation checks. They live in
//! the engine, not in the fuzz crate, so that the crashes the fuzzer finds are replayed by the
//! engine's own test suite (`engine/tests/fuzz_regressions.rs`) through the very same checks.
//!
//! Not an API: hidden from the documentation, used only by `fuzz/` and the regression tests.
//! It sits above every floor (it reaches into the worker for the executor's pipe protocol) and
//! nothing in the engine imports it.

mod archive;
mod chunks;
mod decode;
mod pipe;
mod rpc;

pub use archive::archive;
pub use chunks::chunk_cutter;
pub use decode::input_decoder;
pub use pipe::executor_pipe;
pub use rpc::rpc_frames;

/// Reads the fuzzer's bytes as a few choices followed by a payload.
struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    fn new(data: &'a [u8]) -> Self {
        Choices { data }
    }

    /// The next byte, or 0 once the input ran out.
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    /// A number in `1..=max`.
    fn between_1_and(&mut self, max: usize) -> usize {
        1 + usize::from(self.byte()) % max
    }

    /// The rest of the input.
    fn rest(self) -> &'a [u8] {
        self.data
    }
}
