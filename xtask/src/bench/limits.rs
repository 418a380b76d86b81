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
const METHOD: &str = "Profiles: `perf record -e cpu-clock -F 999 -g` of `kiln run-local` (which follows its \
    executors) or of the whole machine during a cluster job, on the 2-core VM the figures come from; CPU \
    times from `/usr/bin/time` (user, system, minor page faults, children included). This VM has no \
    hardware counters (`perf stat -e instructions` is unsupported), which rules out instruction counts but \
    not sampling on the software clock. Profiles taken while other builds ran give shares of a process's \
    own time, not wall-clock figures.";

/// The findings, keyed by the number that starts a section's title.
const FINDINGS: &[(&str, &str)] = &[
    (
        "1.",
        "The streaming baseline keeps both cores busy with nothing but counting: 1 GiB in 1.4-1.6 s, \
         about 2.8-3.2 core-seconds. Every Kiln path is CPU-bound on the same two cores too, so what it \
         loses is the CPU it spends beside the counting.\n\n\
         **run-local.** Issue 16's stop took its CPU for the 1 GiB word count from 5.4 core-seconds \
         to about 4.7-5.1 (unsandboxed, `/usr/bin/time`, under load): the `Counter`'s slots carry \
         each key's first 8 bytes, so a short word's lookup touches only the table (three dependent \
         cache misses before; callgrind on 16 MiB: 475 M → 343 M instructions for splitting and \
         counting, against 460 M for the baseline's `FxHashMap<String, u64>`), keys of 9-16 bytes \
         compare without `memcmp` (7 % of the samples), `Chunk::words` splits in one pass, fitted \
         chunks stop at 24 MiB (32 MiB buffers were fresh mappings: 742 → 136 thousand minor \
         faults), and the executor's pipes are 1 MiB wide (24-28 → 2.1-2.3 thousand context \
         switches, 9 % less CPU). A profile after them (`perf record` of the unsandboxed run): the \
         plugin's own code (hash table probes, most of them cache misses on the 50,000-word \
         table) is about half the samples; reading the file (`filemap_read`, 3-4 %), the pipe's \
         copy in and out (~4 %), two UTF-8 checks of every chunk (the parent's as it cuts, the \
         executor's before the plugin sees it, ~2 %), zeroing the executor's frame before the \
         pipe fills it (~2 %) and counting line ends (1 %) are what the baseline does not do. \
         What would close most of the rest: an executor that reads its chunk's byte range from a \
         file descriptor the worker passes it (the sandbox allows an inherited descriptor where \
         it refuses paths), which skips the pipe's two copies, the frame's zeroing and the second \
         UTF-8 check.\n\n\
         **The cluster** adds, in a profile of a 1 GiB uploaded job, as much CPU again as the \
         executors use: the client reading, framing and encrypting the input, the controller \
         decrypting it, writing it to its spool file (`copy_folio_from_iter`, its largest cost) and \
         cutting it, and the worker decrypting the chunks again (`aes_gcm_dec`) before its pipe. \
         By reference only the worker reads the file, and its splits are now fitted like \
         run-local's chunks (43 splits of 24 MiB for 1 GiB on 2 slots rather than 257 of 4 MiB). \
         The worker daemon keeps glibc's adaptive mapping threshold: with the services' fixed \
         1 MiB one, each split was a fresh mapping, and a by-reference job cost the worker 800 \
         thousand minor faults and 2 s of system time (3.7 s a job without, 4.8-7.2 s with). For \
         uploads, what would close the gap: cutting chunks from the pieces in memory and \
         dispatching them before the spool write rather than reading them back, and one TLS \
         session fewer on the data path; with client, controller, worker and executors on two \
         cores, the 0.7× target asks the uploaded path to spend under 1.5× the baseline's CPU \
         while every byte is encrypted and decrypted twice. \
         The sandbox's cost on this throughput (sandboxed ÷ unconfined) stays within the runs' \
         spread from one run to the next (0.971× and 1.036× in two quiet runs of stop 25); the \
         sandbox adds no work per chunk, only its set-up per executor (section 7).",
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
        "What the controller holds at its peak, read from its memory map during 1 GiB uploaded jobs \
         (stop 29): the cutter's buffer (the tail of the last chunk and the 8 MiB piece after it), the \
         piece being decoded, chunks read back for dispatch and their request frames, a combine's \
         partials (up to 16 MiB, `rules::combine::MAX_COMBINE_BYTES`) and its frame, and partials \
         waiting for their batched write. Until stop 29 it also kept, per connection, read and write \
         buffers as large as the largest frame ever carried (tokio-util's codec, replaced by \
         `tls/frames.rs`), and per finished upload its cutter's buffer (9-13 MiB), so its peak \
         followed the number of uploaded jobs it had served: 115-119 MiB after section 1's seven \
         jobs, against 80 MiB after one 4 GiB job. By hand earlier: `MALLOC_ARENA_MAX=1` took \
         another quarter off, and `MALLOC_MMAP_THRESHOLD_=262144` halved the peak at twice the CPU \
         (page faults); the controller fixes the threshold at 1 MiB (`memory.rs`). What would take \
         more off: a combine's partials streamed from the store into its frame rather than loaded \
         whole, and the cutter cutting chunks from the pieces where they lie instead of copying \
         each piece after the tail.",
    ),
    (
        "10.",
        "Profiled with callgrind (instruction counts hold under load) on 64 MiB: the naive plugin's \
         chunks cost what the plain program's pieces cost (6.5 G instructions running 17 chunks of \
         4 MiB, encoding included, against 7.25 G for the whole plain program; `HashMap::entry`, SipHash, \
         malloc and free of each word's `String`), but without `combine` every chunk's partial (the \
         ~40,000 words it saw, ~350 KB of postcard) is decoded (0.45 G) and folded (0.39 G) by \
         `aggregate` on one core. Run-local therefore sizes chunks to the input \
         (`rules::chunk::fitted_chunk_size`: four per slot, 4 to 24 MiB), so 1 GiB makes 43 partials \
         rather than 256. The cap is 24 MiB, not 32: a 32 MiB buffer is at glibc's largest mmap \
         threshold, so every chunk read and executor frame was a fresh mapping (742 thousand minor \
         faults and 3.0 s of system time per GiB, against 136 thousand and 1.0 s at 24 MiB); that is \
         what took the `Counter` example from 0.82× to 0.77× in stop 25. Incremental compilation \
         costs the naive plugin 0.26 % of its instructions; it cost the `Counter` example 14.5 % \
         (`HashTable::find` no longer inlined) until the builder stopped compiling kiln-plugin-api \
         incrementally (ARCHITECTURE.md). The `Counter` itself now keeps each key's first 8 bytes \
         in its table's slots and hashes short keys from them (splitting and counting 16 MiB: \
         475 M → 343 M instructions, the baseline's map 460 M), so what separates the example from \
         the baseline is Kiln's own path, section 1's list: the pipe, the executor's frame, a \
         second UTF-8 check and a partial per chunk.",
    ),
    (
        "12.",
        "Input in S3 takes the by-reference path of section 1 (the worker fetches its split's range, \
         cuts it and sends each chunk down its executor's pipe), so the costs found there apply: the \
         pipe's two copies per byte and a partial per chunk. Here the object store also runs on the \
         same two cores: moto is a Python server, and every ranged GET it answers is CPU the counting \
         does not get, which a real S3 or MinIO on another host would not take. The `file://` figure \
         beside it isolates Kiln's own share. Closing the gap is the same work as section 1's: chunks \
         from a byte range the executor reads itself, and fewer, larger partials.",
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
