//! The sandboxed process's own attributes: its identity, `no_new_privs`, capabilities,
//! resource limits and death with its parent.

use std::io;
use std::path::PathBuf;

use super::{Limits, SandboxError, UNPRIVILEGED_ID};

/// Refuses to go on in a process with more than one thread: the namespaces could not be
/// entered, and the other threads would escape the filters.
pub(super) fn check_single_threaded() -> Result<(), SandboxError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(SandboxError::step("counting the process's threads in /proc/self/task"))?
        .count();
    if threads != 1 {
        return Err(SandboxError::Step {
            step: "checking the process is single-threaded".to_owned(),
            source: io::Error::other(format!(
                "it has {threads} threads; enter the sandbox at the start of a fresh process"
            )),
        });
    }
    Ok(())
}

/// The parent's process id, to check later that the parent did not die meanwhile.
pub(super) fn parent_id() -> libc::pid_t {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }
}

/// When running as root, hands the write paths to [`UNPRIVILEGED_ID`] and becomes it, with
/// no supplementary groups, so that the sandbox holds no privilege even if a layer fails.
pub(super) fn drop_root(write: &[PathBuf]) -> Result<(), SandboxError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    for path in write {
        // Device files such as /dev/null stay as they are; they are writable by everybody.
        if path.starts_with("/dev") {
            continue;
        }
        std::os::unix::fs::chown(path, Some(UNPRIVILEGED_ID), Some(UNPRIVILEGED_ID))
            .map_err(SandboxError::step(format!("handing {} to uid {UNPRIVILEGED_ID}", path.display())))?;
    }
    let id = UNPRIVILEGED_ID;
    // SAFETY: plain system calls on the calling (single) thread's credentials.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), "dropping supplementary groups")?;
        check(libc::setresgid(id, id, id), "setting the gid to nobody")?;
        check(libc::setresuid(id, id, id), "setting the uid to nobody")?;
        if libc::getuid() != id || libc::geteuid() != id {
            return Err(SandboxError::Step {
                step: "dropping root".to_owned(),
                source: io::Error::other("the uid did not change"),
            });
        }
        // Changing the uid made the process undumpable, which hands its /proc files to root:
        // it could not write its own uid map. The confined process is made undumpable again.
        check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0), "making the process dumpable")?;
    }
    Ok(())
}

/// Sets `no_new_privs`: nothing executed later can gain privileges (set-user-ID files, file
/// capabilities); landlock and seccomp need it in an unprivileged process.
pub(super) fn no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments on the calling process.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, "setting no_new_privs")
}

/// Sets the resource limits (never above the current hard limits) and no core files. Must run
/// after the user namespace exists: `RLIMIT_NPROC` then counts the processes of this sandbox
/// only. Writing past the file-size limit fails with `EFBIG` instead of killing the process.
pub(super) fn set_limits(limits: &Limits) -> Result<(), SandboxError> {
    set_limit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    set_limit(libc::RLIMIT_NOFILE, limits.open_files, "RLIMIT_NOFILE")?;
    set_limit(libc::RLIMIT_NPROC, limits.processes, "RLIMIT_NPROC")?;
    set_limit(libc::RLIMIT_FSIZE, limits.file_size, "RLIMIT_FSIZE")?;
    // SAFETY: ignoring a signal is async-signal-safe and affects only this process.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    Ok(())
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64, name: &str) -> Result<(), SandboxError> {
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with valid pointers to a local struct.
    unsafe {
        check(libc::getrlimit(resource, &mut current), &format!("reading {name}"))?;
        let value = (value as libc::rlim_t).min(current.rlim_max);
        let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
        check(libc::setrlimit(resource, &limit), &format!("setting {name}"))
    }
}

/// Has the kernel kill this process when its parent dies (set again after every change of
/// credentials, which clears it), and checks the parent did not die before.
pub(super) fn die_with_parent(parent: libc::pid_t) -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments; getppid has no preconditions.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0), "setting the parent-death signal")?;
        if libc::getppid() != parent {
            return Err(SandboxError::Step {
                step: "checking the parent is alive".to_owned(),
                source: io::Error::other("the parent exited while the sandbox was set up"),
            });
        }
    }
    Ok(())
}

/// Drops every capability the new user namespace gave: the confined code holds none, even
/// over its own namespaces. Also makes the process undumpable, so that no other process of
/// the same user may trace it or read its memory.
pub(super) fn drop_capabilities() -> Result<(), SandboxError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset with a version-3 header and the two data words it reads.
    unsafe {
        check(
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
            "clearing ambient capabilities",
        )?;
        let result = libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr());
        check(result as libc::c_int, "dropping capabilities")?;
        check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0), "making the process undumpable")
    }
}

/// Turns a -1 return into the step's error with `errno`.
pub(super) fn check(result: libc::c_int, step: &str) -> Result<(), SandboxError> {
    if result < 0 {
        return Err(SandboxError::Step { step: step.to_owned(), source: io::Error::last_os_error() });
    }
    Ok(())
}
