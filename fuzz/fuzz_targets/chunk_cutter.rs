//! See `kiln_engine::fuzzing::chunk_cutter`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_engine::fuzzing::chunk_cutter(data));
