//! See `kiln_engine::fuzzing::rpc_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // An open gate reads frames up to the process's limit: the smallest one allowed, so
        // that frames past it are reached with small inputs. Set before any thread starts.
        // SAFETY: nothing else runs yet, so nothing reads the environment concurrently.
        unsafe { std::env::set_var(kiln_engine::rpc::pieces::MAX_FRAME_ENV, (1 << 20).to_string()) };
    },
    |data: &[u8]| kiln_engine::fuzzing::rpc_frames(data)
);
