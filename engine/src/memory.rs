//! Allocator settings for the long-running services (`kiln controller`, `kiln worker`, the
//! web app) and for the executor (`kiln exec`).
//!
//! Input pieces (up to 8 MiB), chunks (4 MiB by default) and partials are allocated and freed
//! all the time, from many threads. glibc's malloc gives each thread that contends for a lock
//! an arena of its own, up to eight per core, and each arena keeps memory it was given back
//! for later: the resident size then grows with the number of arenas that ever held a large
//! buffer, not with the work in hand. Two arenas are enough for services whose threads mostly
//! wait on sockets, and keep the resident size near what is really in use.
//!
//! Those buffers also outgrow glibc's mapping threshold: by default, freeing a mapped buffer
//! raises the threshold to its size (up to 32 MiB), so after the first few every piece, chunk
//! and partial comes from an arena, whose freed memory stays resident wherever it is not at the
//! top. The services fix the threshold at [`SERVICE_MMAP_THRESHOLD`]: a large buffer is a
//! mapping of its own, given back when freed. Not the processes on a job's data path, the worker
//! and `kiln submit` ([`tune_for_data_path`]): every input byte passes through their buffers,
//! and a fresh mapping per buffer faults in and zeroes every page again.
//!
//! The controller is on the data path of uploads too, and keeps the fixed threshold all the
//! same: its memory is what a long-running service is judged on. With the adaptive threshold
//! a 1 GiB uploaded word count took 9.4-9.8 s of its CPU time down to 6.3-6.4 s (before its
//! spool went around the page cache), but in the bench's next full run (at f382755, on a slow
//! and noisy host; section 5) its peak rose from 115/119/80 MiB to 159/176/108 MiB over
//! 256 MiB/1 GiB/4 GiB uploads, and from 142 to 165 MiB for a 371 MB result, where nothing
//! else of its allocations had changed.

/// Arenas the services' allocator may use.
const ARENA_MAX: libc::c_int = 2;

/// Buffers at least this large are mappings of their own in the services (see the module
/// documentation). With it, grep `.` over 256 MiB (bench section 13) took the controller from
/// 180 to 120 MiB, the worker daemon from 67 to 39 MiB and `kiln submit` from 100 to 76 MiB;
/// a fault per page of such a buffer costs little beside sending or storing it.
const SERVICE_MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Limits the allocator's arenas and maps large buffers apart (see the module documentation).
/// Call it first thing in `main`, before threads start taking arenas. On other platforms than
/// Linux with glibc it does nothing.
pub fn tune_for_service() {
    // SAFETY: mallopt only changes malloc's tunables, under malloc's own locks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, SERVICE_MMAP_THRESHOLD);
    }
}

/// Limits the arenas as [`tune_for_service`] does, and leaves glibc's mapping threshold to
/// adapt, for the processes every input byte passes through: the worker, which reads each chunk
/// of a job read by reference (up to 24 MiB) and writes it to an executor, and `kiln submit`,
/// which reads and sends an upload in pieces of 8 MiB. A mapping per buffer put the fault of
/// every page on the data path. Measured on a 1 GiB word count read by reference (`file://`,
/// one worker of 2 processes, two runs each): with the 1 MiB threshold the worker took 800
/// thousand minor faults and 2.0-2.1 s of system time per job, and the job 4.8-7.2 s; with the
/// adaptive one 200-230 thousand, 0.75-0.85 s and 3.7 s. Their memory stays bounded by the
/// buffers in flight.
pub fn tune_for_data_path() {
    // SAFETY: mallopt only changes malloc's tunables, under malloc's own locks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Allocations at least this large come from the heap, not from a mapping of their own.
const EXECUTOR_MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory the executor's heap keeps at its top instead of giving it back.
const EXECUTOR_TRIM_THRESHOLD: libc::c_int = 256 << 20;

/// Keeps the executor's freed memory for its next call. An executor reads a chunk of a few
/// MiB per call and the plugin builds a partial of similar size; with glibc's defaults each of
/// those buffers is a fresh mapping (or heap top trimmed away when freed), so every call
/// faults in and zeroes its pages again: a fifth of the executor's CPU time in a word count
/// (`clear_page_erms` and page faults in a profile of `kiln run-local`). Served from a heap that
/// keeps what was freed, the next call reuses those pages. The memory held stays what one call
/// needs at its peak; `--memory-limit` (an address-space limit) bounds it as before.
pub fn tune_for_executor() {
    // SAFETY: mallopt only changes malloc's tunables, under malloc's own locks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, EXECUTOR_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, EXECUTOR_TRIM_THRESHOLD);
    }
}
