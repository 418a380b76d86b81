//! See `kiln_engine::fuzzing::archive`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_engine::fuzzing::archive(data));
