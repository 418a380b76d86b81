//! See `kiln_engine::fuzzing::executor_pipe`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_engine::fuzzing::executor_pipe(data));
