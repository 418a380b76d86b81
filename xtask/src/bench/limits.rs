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
        "The streaming baseline keeps both cores busy with nothing but counting: 1 GiB in 1.4 s, about \
         2.8 core-seconds. Every Kiln path is CPU-bound on the same two cores too, so what it loses is \
         the CPU it spends beside the counting.\n\n\
         **run-local** spent 5.4 core-seconds on the 1 GiB word count (user 4.7 s, system 0.9 s). In its \
         profile, 62 % of the samples are the plugin's own code (hashing, `memcmp` of words), 12 % the \
         kernel zeroing fresh pages for the executors (`clear_page_erms`, page faults: every call's \
         4 MiB chunk frame and the plugin's partial were new mappings), 11 % the parent reading the \
         file and writing it down the executors' pipes, and the rest copies (`memmove`) and UTF-8 \
         checks. The executor now keeps freed memory for its next call (`memory::tune_for_executor`), \
         which took its minor faults from 165–184 thousand to 49–51 thousand per GiB and a quarter off \
         its system time. Two costs remain that the baseline does not have. The plugin counted 257 \
         chunks of 4 MiB, each into a map that grows from empty to the corpus's 50,000 words and is \
         then encoded, decoded and merged, where the baseline fills one map per thread; run-local now \
         sizes its chunks to the input (four per slot, 4 to 32 MiB: 32 chunks for 1 GiB, section 10), \
         while the cluster keeps 4 MiB chunks, which balance load and bound a retry. And every byte \
         crosses a pipe (a copy into the kernel and one out, ~0.6 core-seconds per GiB): an executor \
         that reads its chunk's byte range from a file descriptor the worker passes it (the sandbox \
         allows an inherited descriptor where it refuses paths) would skip both copies.\n\n\
         **The cluster** adds, in a profile of a 1 GiB uploaded job, as much CPU again as the executors \
         use: the client reading, framing and encrypting the input, the controller decrypting it, \
         writing it to its spool file (`copy_folio_from_iter`, its largest cost) and cutting it, and \
         the worker decrypting the chunks again (`aes_gcm_dec`) before its pipe. By reference, only \
         the worker reads the file, and the figure rises from 0.27× to 0.46×; the rest of the gap is \
         run-local's. What would close it, in order of gain: the pipe (above), larger chunks (above), \
         and for uploads, cutting chunks from the pieces in memory and dispatching them before the \
         spool write rather than reading them back. \
         The sandbox's cost on this throughput (sandboxed ÷ unconfined, 0.971× here, 1.036× in a \
         quiet run earlier the same day) is within the runs' spread: the two ranges of five runs \
         overlap (2.99–3.28 s against 2.94–3.24 s); the sandbox adds no work per chunk, only its \
         set-up per executor (section 7).",
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
        "The controller does not grow with the input: 95 MiB after one 4 GiB job, against 156–162 MiB \
         after the seven jobs of 256 MiB or 1 GiB that section 1 runs on its cluster, and 78 MiB for a \
         1 GiB job by reference. Its peak follows the number of uploaded jobs it has served, not their \
         size: the services cap glibc at two malloc arenas (`memory.rs`), but pieces of input (8 MiB, \
         decoded, then written), the cutter's tail, chunks read back for dispatch, their request frames \
         and partials waiting for their batched write are all alive at once while a job uploads and \
         runs, and each job leaves the arenas more fragmented. By hand earlier: `MALLOC_ARENA_MAX=1` \
         took another quarter off, and `MALLOC_MMAP_THRESHOLD_=262144` halved the peak at twice the \
         CPU (page faults). Closing the gap: buffers of input and chunks drawn from one pool of fixed \
         size instead of the allocator, partials waiting for their write bounded (the slot held until \
         the write), and the aggregate's partials streamed from the store into the frame instead of \
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
         32 pieces. Run-local now sizes chunks to the input (`rules::chunk::fitted_chunk_size`: four \
         per slot, 4 to 32 MiB), so 1 GiB makes 32 partials; a quick run under load (256 MiB) went \
         from 0.84× to 1.30× (noisy). Incremental compilation costs this plugin 0.26 % of its \
         instructions; it cost the `Counter` example 14.5 % (`HashTable::find` no longer inlined) \
         until the builder stopped compiling kiln-plugin-api incrementally (ARCHITECTURE.md). \
         If this misses again, look at what is left: the \
         input crosses user space four times (read, chunk, pipe, executor), and `aggregate` still \
         decodes its partials serially (parallel decoding in `export::aggregate` would halve it). \
         The `Counter` example lost ground with the larger chunks (0.82× of the baseline before \
         them, 0.77× in this run). Measured after this run with minor faults, which hold under \
         load: a 1 GiB run-local with 32 MiB chunks takes ~820 thousand minor faults and 2.0 s of \
         system time, against 103 thousand and 0.85 s with `--chunk-size 16MiB`: a 32 MiB buffer \
         is at glibc's largest mmap threshold, so run-local's reads and the executor's frames are \
         fresh mappings for every chunk. Chunks capped below it (16 MiB), or chunk buffers reused \
         across calls, would take that back; measure both plugins in one run when changing it, \
         since smaller chunks mean more partials for the naive one.",
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
