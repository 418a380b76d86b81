//! The "What limits us" section of BENCHMARKS.md: what profiling found behind each target that
//! was missed, and what would close the gap.
//!
//! The findings are prose written from profiles (`perf record -e cpu-clock -g`: this VM has no
//! hardware counters, so `perf stat -e instructions` is unsupported, but sampling on the
//! software clock works, across processes) and from experiments by hand on a 2-core VM while
//! other builds ran. A finding is printed for a section only when a target there was missed in
//! this run; update it when a profile says something new.

use std::fmt::Write;

use super::report::Missed;

/// How the findings were made, printed before them.
const METHOD: &str = "Profiles: `perf record -e cpu-clock -F 999 -g` of the whole machine or of the controller \
    (`--call-graph dwarf` for Rust frames) during the bench's own jobs, on the 2-core VM the figures come \
    from, while other builds ran (so per-chunk CPU costs below are upper bounds). This VM has no hardware \
    counters (`perf stat -e instructions` is unsupported), which rules out instruction counts but not \
    sampling on the software clock.";

/// The findings, keyed by the number that starts a section's title.
const FINDINGS: &[(&str, &str)] = &[
    (
        "1.",
        "**run-local** tracks the baseline when the machine is quiet (1.14× in a quick run) and swings \
         between 0.6× and 1.1× under load: both are CPU-bound on the same 2 cores, and in the executor \
         three quarters of the samples are the plugin's own hashing (`HashMap::entry` and `memcmp` of the \
         words).\n\n\
         **The cluster** runs its chunks about as fast as run-local, but only after the whole input is \
         uploaded: the breakdown's \"job created → job queued\" stage is a third of a 64 MiB run and \
         grows with the input (1 GiB took 7.5 s on this VM, about 150 MB/s, before the first chunk ran), \
         so the ratio is bounded by run ÷ (upload + run), well below 0.85× while the upload is slower \
         than the baseline itself. In that stage: the controller writes the spool file through \
         `tokio::fs` (8 MiB pieces, one in flight, copied 2 MiB at a time through the blocking pool; \
         1 GiB of page-cache writes alone take 2.0 s here), `sync_all` at `finish_input` flushes it \
         (1.8 s for 1 GiB here), cutting reads it all again (UTF-8 check, line count), and each byte is \
         copied about four times in user space on the way (read, the clone kept for a resend, bincode \
         framing, decoding). Closing the gap needs the upload to overlap the work: cut chunks while \
         pieces arrive (the `Chunker` already streams) and dispatch them before the input is complete, \
         with `n_chunks` and the aggregate waiting for `finish_input`; then fewer copies per piece \
         (`Bytes` instead of a cloned `Vec`, `std::fs` writes of whole pieces in `spawn_blocking`) and a \
         flush of the spool that no chunk waits for.",
    ),
    (
        "2.",
        "More than half of a tiny job passes before the job exists (\"`kiln submit` starts → job \
         created\"): starting the binary (see `kiln --version`), a runtime and a connection, reading and \
         packing the plugin, and `upload_plugin`, where the controller unpacks, validates, hashes and \
         packs the archive again on every job even when it has that hash. The job itself takes a few \
         milliseconds on the controller. A client that hashes the plugin locally (it already builds the \
         `SourceTree`) and uploads it only when the controller lacks the hash would remove most of that \
         stage.",
    ),
    (
        "3.",
        "Chunks travel in batches: up to 256 consecutive small chunks per `run_chunks` call (at most \
         4 MiB, 50 ms of work at the job's pace and a fair share of the queue), run as one executor \
         call on the worker, their partials stored in one SQLite transaction per call. Before that \
         (one call, one executor round trip and one `UPDATE` transaction per chunk) this measure was \
         ~3,200 chunks/s. A profile of 100,000 one-line chunks after the change: the worker daemons \
         and their executors spend about 2.5 µs of CPU per chunk together, the controller about 16 µs \
         for the whole job (upload, cutting, chunk rows, dispatch, partials, gathering them for \
         `aggregate`), half of it on sqlx's SQLite threads and a third in the kernel. Two things \
         bound the figure now: the partials' `UPDATE ... FROM` statements, which fall behind the \
         workers (partials then wait in memory for their write, the slot having been freed), and \
         gathering 100,000 partials for `aggregate` (a quarter to half a second: sqlx hands rows \
         over one at a time through a channel). A plugin that combines needs only ~650 of them \
         (groups of 256 tiny chunks). If this figure drops below target, look first at \
         `store/chunks.rs` (rows per statement, the pool's single writer) and at a call's answer \
         path in `dispatch/chunks.rs`.",
    ),
    (
        "4.",
        "Builds are cargo compiling abi_stable, serde and their proc macros, which is CPU-bound: under the \
         load of other builds on these 2 cores each cargo job gets about half a core (the prototype \
         measured 17 s cold and 0.55 s warm on a quiet machine). Not profiled further; if a quiet run still \
         misses, `cargo build --release --timings` on a copy of the plugin shows which crate dominates.",
    ),
    (
        "5.",
        "Most of the growth is the allocator, not data Kiln keeps: glibc raises its mmap threshold to the \
         size of every large block freed (up to 32 MiB), after which the multi-MiB buffers the daemons \
         pass between threads (input pieces, chunks, frames) come from up to 8 heaps per core and stay \
         there. Measured by hand on a fresh controller per input (16 MiB → 1 GiB): 55–61 → 141–150 MiB \
         as shipped; with `MALLOC_ARENA_MAX=1` 29 → 72 MiB, with `MALLOC_ARENA_MAX=2` 34 → 87 MiB (no CPU \
         cost visible through the noise); with `MALLOC_MMAP_THRESHOLD_=262144` 60 MiB at 1 GiB but twice \
         the controller's CPU and three times the worker's (page faults). The rest of the growth is the \
         aggregate: the controller loads every partial of the job (SQLite rows, then `Vec<ByteBuf>`, then \
         the request frame: three copies at once) and sends them in one call, 32 partials for 1 GiB of \
         word count, so it grows with the number of chunks. Closing the gap: cap the arenas in the daemons \
         (`mallopt(M_ARENA_MAX, 2)` at start; left out until its CPU cost is measured on a quiet \
         machine), and bound what aggregate receives, by combining the combined groups again (a tree of \
         combines) and streaming partials from the store into the frame.",
    ),
];

/// The section: for each section with a missed target, the figures and the findings.
pub fn what_limits_us(missed: &[Missed]) -> String {
    let mut text = String::from("\n## What limits us\n\n");
    if missed.is_empty() {
        text.push_str("Every measured target was met in this run.\n");
        return text;
    }
    let _ = writeln!(text, "{METHOD}\n");
    let mut sections: Vec<&str> = missed.iter().map(|m| m.section.as_str()).collect();
    sections.dedup();
    for section in sections {
        let figures: Vec<&str> = missed.iter().filter(|m| m.section == section).map(|m| m.figure.as_str()).collect();
        let _ = writeln!(text, "### {section}\n\nMissed: {}.\n", figures.join("; "));
        let number = section.split(' ').next().unwrap_or_default();
        match FINDINGS.iter().find(|(key, _)| *key == number) {
            Some((_, finding)) => {
                let _ = writeln!(text, "{finding}\n");
            }
            None => text.push_str("Not profiled yet.\n\n"),
        }
    }
    text
}
