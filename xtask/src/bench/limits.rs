//! The "What limits us" section of BENCHMARKS.md: what profiling found behind each target that
//! was missed, and what would close the gap.
//!
//! The findings are prose written from profiles (`perf record -e cpu-clock -g`: this VM has no
//! hardware counters, so `perf stat -e instructions` is unsupported, but sampling on the
//! software clock works, across processes) and from experiments by hand on a 2-core VM while
//! other builds ran. A finding is printed for a section only when a target there was missed in
//! this run; update it when a profile says something new.

use std::fmt::Write;

/// A target a figure missed.
pub struct Missed {
    /// The title of the figure's section.
    pub section: String,
    /// The figure and its target.
    pub figure: String,
}

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
         between 0.6× and 1.3× under load: both are CPU-bound on the same 2 cores, and in the executor \
         three quarters of the samples are the plugin's own hashing (`HashMap::entry` and `memcmp` of the \
         words).\n\n\
         **The cluster** used to wait for its whole upload before the first chunk ran (the input was \
         spooled through `tokio::fs`, `sync_all`ed — 1.8 s/GiB here — and read again to be cut): 0.60× \
         in a 64 MiB quick run. Chunks are now cut from each piece as it arrives (`chunk::Cutter`) and \
         run while the rest uploads, and the file is synced in the background: the stage before the \
         first dispatch is ~70 ms whatever the size, and the quick run under the same load went to \
         0.78×. What remains is copying: each byte crosses user space about a dozen times on the way \
         (client read and framing, controller decoding, file write, cutter, read back for dispatch, \
         framing to the worker, worker decoding, the executor pipe both ways), ~1.5 core-seconds per \
         GiB beside ~7 for the word count itself. If a quiet run misses, fewer copies are the lever: \
         chunks handed from the cutter to dispatch while still in memory rather than read back from \
         the file, and shared memory rather than the pipe between worker and executor.",
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
        "Builds are cargo compiling abi_stable, serde and their proc macros, CPU-bound. On a quiet \
         machine (load 0.3) by hand: cold 34 s, warm (plugin source edited) 1.9 s. `cargo build \
         --timings` of a cold build shows a serial chain: syn → abi_stable_derive (6 s) → abi_stable \
         (12 s, front-end bound: `opt-level=1` for it changes nothing); the prototype's 17 s (§9 of \
         DESIGN.md) is not reproducible on this VM. Warm: the plugin crate itself takes 1.3 s, and \
         every upload is built in a directory named by its hash, so cargo's incremental cache (keyed \
         by the package's path) is never reused; by hand, the same crate rebuilt in one stable \
         directory with `profile.release.incremental=true` took 0.2 s. Since issue 16 the builder does \
         that (a stable `src/<package>/` per owner, incremental on for the plugin's own crate; compare \
         run-local's figures with the commit before to see its run-time cost), and `kiln worker` \
         compiles the template's dependencies at start, so a first upload compiles only its crate. \
         A figure over target here now points at the crate itself or at cargo's fixed costs (fetch, \
         resolution, the link).",
    ),
    (
        "5.",
        "The controller no longer grows with the input (−7 % from 256 MiB to 1 GiB in the full run: \
         the services cap glibc at two malloc arenas, `memory.rs`, and combine groups cover 64 MiB so \
         `aggregate` gets at most 16 partials per GiB), but its peak is at the target: chunks now run \
         while the input uploads, so input pieces (8 MiB, decoded then written), the cutter's tail, \
         chunks read back for dispatch and their request frames are all alive at once, and partials \
         wait in memory for their batched write. By hand earlier: `MALLOC_ARENA_MAX=1` took another \
         quarter off, and `MALLOC_MMAP_THRESHOLD_=262144` halved the peak at twice the CPU (page \
         faults). Closing the gap: bound the partials waiting for their write (hold the slot until \
         the write), and stream the aggregate's partials from the store into the frame instead of \
         three copies at once.",
    ),
    (
        "10.",
        "Profiled with callgrind (instruction counts hold under load) on 64 MiB: the naive plugin's \
         chunks cost what the plain program's pieces cost (6.5 G instructions running 17 chunks of \
         4 MiB, encoding included, against 7.25 G for the whole plain program; `HashMap::entry`, SipHash, \
         malloc and free of each word's `String`), but without `combine` every chunk's partial (the \
         ~40,000 words it saw, ~350 KB of postcard) is decoded (0.45 G) and folded (0.39 G) by \
         `aggregate` on one core. With 4 MiB chunks a 1 GiB input made 256 partials: ~12 G \
         instructions of serial tail beside ~26 G per core of counting, against the plain program's \
         32 pieces. Run-local now sizes chunks to the input (`rules::chunk::local_chunk_size`: four \
         per slot, 4 to 32 MiB), so 1 GiB makes 32 partials; a quick run under load (256 MiB) went \
         from 0.84× to 1.30× (noisy). Incremental compilation of the plugin's crate costs 0.26 % of \
         the run's instructions (ARCHITECTURE.md). If this misses again, look at what is left: the \
         input crosses user space four times (read, chunk, pipe, executor), and `aggregate` still \
         decodes its partials serially (parallel decoding in `export::aggregate` would halve it).",
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
