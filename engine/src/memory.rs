//! Allocator settings for the long-running services (`kiln controller`, `kiln worker`, the
//! web app).
//!
//! Input pieces (up to 8 MiB), chunks (4 MiB by default) and partials are allocated and freed
//! all the time, from many threads. glibc's malloc gives each thread that contends for a lock
//! an arena of its own, up to eight per core, and each arena keeps memory it was given back
//! for later: the resident size then grows with the number of arenas that ever held a large
//! buffer, not with the work in hand. Two arenas are enough for services whose threads mostly
//! wait on sockets, and keep the resident size near what is really in use.

/// Arenas the services' allocator may use.
const ARENA_MAX: libc::c_int = 2;

/// Limits the allocator's arenas (see the module documentation). Call it first thing in
/// `main`, before threads start taking arenas. On other platforms than Linux with glibc it
/// does nothing.
pub fn tune_for_service() {
    // SAFETY: mallopt only changes malloc's tunables, under malloc's own locks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}
