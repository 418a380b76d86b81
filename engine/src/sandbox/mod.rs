//! The sandbox that confines a process before it runs untrusted code (Linux only).
//!
//! [`enter`] confines the calling process with every layer at once:
//! - an unprivileged identity: a process running as root first becomes `nobody` (65534), and
//!   the paths it may write are handed to that identity;
//! - its own user, network, mount, IPC, UTS and PID namespaces (no network unless the policy
//!   asks for it; no process outside its own is visible). The caller becomes PID 2 of the new
//!   PID namespace, under a small init (PID 1) that reaps orphans, and the process that called
//!   `enter` stays outside, waits, and mirrors the confined process's exit status or signal,
//!   so its own parent sees what the confined code did. When PID 1 ends, the kernel kills every
//!   process left in the namespace: nothing the confined code starts outlives it;
//! - landlock: read (and execute) only the paths of the [`Policy`], write only its write paths;
//!   TCP bind and connect refused, signals and abstract sockets scoped to the sandbox;
//! - a seccomp filter refusing what no map-reduce plugin or build needs (see `syscalls.rs`);
//! - `no_new_privs`, no capabilities, and resource limits ([`Limits`]).
//!
//! [`probe`] tells whether the host can do all of that, naming the missing feature.
//!
//! The module depends on nothing else in the engine, so that the executor and the plugin
//! build can both use it.

mod filesystem;
mod namespaces;
mod process;
mod syscalls;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The environment variable that makes [`probe`] report a feature missing, **for tests only**:
/// `KILN_TEST_SANDBOX_UNAVAILABLE=landlock` (or `user-namespaces`, `seccomp`) simulates a host
/// that lacks it, so that the refusal to run plugins can be tested on a host that has it.
pub const TEST_UNAVAILABLE_ENV: &str = "KILN_TEST_SANDBOX_UNAVAILABLE";

/// What a program that refuses to run plugins on a host that cannot sandbox them tells its
/// user to do.
pub const REFUSAL_HINT: &str = "enable it, or pass --insecure-no-sandbox to run plugins anyway, unconfined, with the \
     rights of this process (only for plugins you trust)";

/// The identity (uid and gid) a process running as root drops to before it is confined.
pub const UNPRIVILEGED_ID: u32 = 65534;

/// What a confined process may reach.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Files and directory trees it may read (and list).
    pub read: Vec<PathBuf>,
    /// Files and directory trees it may read and execute (programs, shared libraries).
    pub read_exec: Vec<PathBuf>,
    /// Files and directory trees it may read, write, create and remove in, and execute from.
    /// When the caller runs as root, each is handed to [`UNPRIVILEGED_ID`] (not recursively).
    pub write: Vec<PathBuf>,
    /// Whether it keeps the host's network: no network namespace, TCP and sockets allowed.
    pub network: bool,
    /// Whether a process running as root stays root (mapped to itself in its user namespace,
    /// with no capabilities) instead of becoming [`UNPRIVILEGED_ID`]: a plugin build needs the
    /// toolchain, which may live under a home directory only its owner can enter (`/root`).
    /// Landlock, seccomp and the namespaces confine it either way.
    pub keep_identity: bool,
    /// Its resource limits.
    pub limits: Limits,
}

/// Resource limits of a confined process, on top of any address-space limit the caller set.
/// No core files are ever written.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Processes and threads inside the sandbox (`RLIMIT_NPROC`, counted in its user namespace).
    pub processes: u64,
    /// The largest file it may write, in bytes (`RLIMIT_FSIZE`).
    pub file_size: u64,
}

impl Default for Limits {
    /// 256 files, 1,024 processes and threads, 1 GiB files: far above what a plugin needs, far
    /// below what would hurt the host.
    fn default() -> Self {
        Limits { open_files: 256, processes: 1024, file_size: 1 << 30 }
    }
}

/// The system library directories a dynamically linked program may need to load from, as
/// far as they exist on this host.
pub fn system_libraries() -> Vec<PathBuf> {
    existing(&[
        "/lib",
        "/lib32",
        "/lib64",
        "/usr/lib",
        "/usr/lib32",
        "/usr/lib64",
        "/usr/local/lib",
        "/etc/ld.so.cache",
    ])
}

/// Harmless device files: `/dev/null` and `/dev/zero` (read-write) and the random devices.
pub fn devices() -> (Vec<PathBuf>, Vec<PathBuf>) {
    (existing(&["/dev/urandom", "/dev/random"]), existing(&["/dev/null", "/dev/zero"]))
}

fn existing(paths: &[&str]) -> Vec<PathBuf> {
    paths.iter().map(PathBuf::from).filter(|path| path.exists()).collect()
}

impl Policy {
    /// A policy with no network that may write only in `private_dir`, and read only the system
    /// libraries and harmless devices: what an executor loading a plugin library copied into
    /// `private_dir` needs.
    pub fn private(private_dir: &Path) -> Policy {
        let (read, mut write) = devices();
        write.insert(0, private_dir.to_path_buf());
        Policy {
            read,
            read_exec: system_libraries(),
            write,
            network: false,
            keep_identity: false,
            limits: Limits::default(),
        }
    }
}

/// A sandbox feature the host lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Landlock, ABI 3 (Linux 6.2) or later.
    Landlock,
    /// User namespaces that an unprivileged user may create (with network, mount, PID, IPC).
    UserNamespaces,
    /// Seccomp filters.
    Seccomp,
}

impl Feature {
    /// The feature's name as [`TEST_UNAVAILABLE_ENV`] spells it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Landlock => "landlock",
            Feature::UserNamespaces => "user-namespaces",
            Feature::Seccomp => "seccomp",
        }
    }

    fn from_name(name: &str) -> Option<Feature> {
        [Feature::Landlock, Feature::UserNamespaces, Feature::Seccomp].into_iter().find(|f| f.name() == name.trim())
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Feature::Landlock => "landlock",
            Feature::UserNamespaces => "unprivileged user namespaces",
            Feature::Seccomp => "seccomp",
        })
    }
}

/// The host cannot sandbox: which feature is missing and what the kernel said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{feature} unavailable: {reason}")]
pub struct Unavailable {
    /// The missing feature.
    pub feature: Feature,
    /// What was found instead, and how to enable it.
    pub reason: String,
}

/// Why a process could not enter the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The host lacks a feature the sandbox needs.
    #[error("cannot enter the sandbox: {0}")]
    Unavailable(#[from] Unavailable),
    /// A step of entering the sandbox failed.
    #[error("cannot enter the sandbox: {step} failed: {source}")]
    Step {
        /// What was being done.
        step: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The landlock rules could not be made or applied.
    #[error("cannot enter the sandbox: landlock: {0}")]
    Landlock(String),
    /// The seccomp filter could not be made or applied.
    #[error("cannot enter the sandbox: seccomp: {0}")]
    Seccomp(String),
}

impl SandboxError {
    fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
        move |source| SandboxError::Step { step: step.into(), source }
    }
}

/// Tells whether this host can sandbox, naming the first missing feature.
///
/// Honours [`TEST_UNAVAILABLE_ENV`] (tests only). Starts one short-lived child process to try
/// the namespaces, so it may be called from a process with threads.
pub fn probe() -> Result<(), Unavailable> {
    if let Some(feature) = std::env::var(TEST_UNAVAILABLE_ENV).ok().as_deref().and_then(Feature::from_name) {
        return Err(Unavailable {
            feature,
            reason: format!("simulated by {TEST_UNAVAILABLE_ENV} (a switch for tests only)"),
        });
    }
    filesystem::probe()?;
    syscalls::probe()?;
    namespaces::probe()?;
    Ok(())
}

/// Confines the calling process with `policy`; returns only in the confined process.
///
/// Must be called in a freshly started process that is still single-threaded (user
/// namespaces cannot be entered otherwise, and the filters apply to the calling thread and
/// the threads it starts later), before it loads or runs anything untrusted, and while it
/// holds no descriptor the confined code must not have (standard streams are kept).
///
/// The calling process itself stays outside the sandbox and never returns: it waits for the
/// confined process and exits as it did (same status, same signal). SIGTERM to it kills the
/// whole sandbox and, once every process in it is gone, the caller dies of SIGKILL. It dies
/// with its parent (`PR_SET_PDEATHSIG`), and so does everything inside.
pub fn enter(policy: &Policy) -> Result<(), SandboxError> {
    process::check_single_threaded()?;
    let parent = process::parent_id();
    for path in policy.read.iter().chain(&policy.read_exec).chain(&policy.write) {
        if !path.exists() {
            return Err(SandboxError::Step {
                step: format!("finding {}", path.display()),
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
    }
    if !policy.keep_identity {
        process::drop_root(&policy.write)?;
    }
    process::no_new_privs()?;
    namespaces::unshare(policy.network)?;
    process::set_limits(&policy.limits)?;
    process::die_with_parent(parent)?;
    namespaces::split()?;
    // From here on this is the confined process, PID 2 of its namespace.
    process::drop_capabilities()?;
    filesystem::restrict(policy)?;
    syscalls::restrict(policy.network)?;
    Ok(())
}
