//! See `kiln_engine::fuzzing::input_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_engine::fuzzing::input_decoder(data));
