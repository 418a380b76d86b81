//! The sandbox's namespaces and its three processes.
//!
//! After [`unshare`], [`split`] forks twice: the calling process (outside the new PID
//! namespace) waits and mirrors; its child is PID 1 of the namespace, a reaper whose end makes
//! the kernel kill everything left inside; and PID 1's child, PID 2, is the confined process,
//! the only one that returns. The confined code does not run as PID 1 because the kernel
//! ignores signals to PID 1 that have no handler, even the process's own: `abort()` would not
//! end it with SIGABRT, and the caller could not tell a crash for what it is.

use std::io;
use std::mem::MaybeUninit;

use super::process::check;
use super::{Feature, SandboxError, UNPRIVILEGED_ID, Unavailable};

fn flags(network: bool) -> libc::c_int {
    let all = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWPID;
    if network { all } else { all | libc::CLONE_NEWNET }
}

/// Enters new user, mount, IPC, UTS and PID (for the children) namespaces, and a new network
/// namespace unless `network`, mapping the current uid and gid to themselves.
pub(super) fn unshare(network: bool) -> Result<(), SandboxError> {
    // SAFETY: getuid and getgid have no preconditions; unshare acts on this (single-threaded) process.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    check(unsafe { libc::unshare(flags(network)) }, "unshare(user, mount, ipc, uts, pid, net namespaces)")?;
    let write =
        |path: &str, text: String| std::fs::write(path, text).map_err(SandboxError::step(format!("writing {path}")));
    write("/proc/self/setgroups", "deny".to_owned())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

/// Forks the sandbox's PID 1 and PID 2; returns only in PID 2. See the module's doc.
pub(super) fn split() -> Result<(), SandboxError> {
    // The signals the outer process waits for are blocked before the fork, so none is lost.
    let mut waited = empty_set();
    let mut previous = empty_set();
    // SAFETY: sigset operations on local sets; sigprocmask on this single thread.
    unsafe {
        for signal in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut waited, signal);
        }
        check(libc::sigprocmask(libc::SIG_BLOCK, &waited, &mut previous), "blocking signals")?;
    }
    // PID 1 writes PID 2's wait status here; the outer process reads it.
    let mut status_pipe = [0; 2];
    check(unsafe { libc::pipe2(status_pipe.as_mut_ptr(), libc::O_CLOEXEC) }, "creating a pipe")?;
    let [status_read, status_write] = status_pipe;
    // SAFETY: this process is single-threaded (checked by `enter`), so the child may run Rust.
    match unsafe { libc::fork() } {
        -1 => Err(SandboxError::Step {
            step: "forking the sandbox's init".to_owned(),
            source: io::Error::last_os_error(),
        }),
        0 => {
            // SAFETY: descriptors and signal mask of this new process.
            unsafe {
                libc::close(status_read);
                libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 || !reader_alive(status_write) {
                    libc::_exit(1);
                }
            }
            run_init(status_write, &previous)
        }
        init => {
            // SAFETY: closing this process's copy of the pipe's write end.
            unsafe { libc::close(status_write) };
            mirror(outer_wait(init, &waited, status_read))
        }
    }
}

/// PID 1: forks the confined process (which returns), then reaps every process until it ends,
/// reports its status and exits, which kills whatever is left in the namespace.
fn run_init(status_write: libc::c_int, mask: &libc::sigset_t) -> Result<(), SandboxError> {
    // SAFETY: single-threaded; the child continues as the confined process.
    match unsafe { libc::fork() } {
        -1 => Err(SandboxError::Step {
            step: "forking the confined process".to_owned(),
            source: io::Error::last_os_error(),
        }),
        0 => {
            // SAFETY: this new process's own descriptor, mask and parent-death signal.
            unsafe {
                libc::close(status_write);
                libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0), "setting the parent-death signal")?;
            }
            Ok(())
        }
        confined => loop {
            let mut status = 0;
            // SAFETY: waiting for any child of this process.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid == confined {
                let bytes = status.to_ne_bytes();
                // SAFETY: writing a local buffer to our pipe, then leaving without running
                // destructors or atexit handlers (this is a copy of the caller's process).
                unsafe {
                    libc::write(status_write, bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0);
                }
            }
            if pid < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // SAFETY: as above.
                unsafe { libc::_exit(70) };
            }
        },
    }
}

/// The outer process: waits for PID 1 to end (killing it on SIGTERM, SIGINT or SIGHUP) and
/// returns the confined process's wait status, or PID 1's when it had none to give.
fn outer_wait(init: libc::pid_t, waited: &libc::sigset_t, status_read: libc::c_int) -> libc::c_int {
    let mut init_status = 0;
    loop {
        // SAFETY: waiting for signals of a set this thread blocked.
        let signal = unsafe { libc::sigwaitinfo(waited, std::ptr::null_mut()) };
        if signal == libc::SIGCHLD || signal < 0 {
            // SAFETY: polling for our own child.
            if unsafe { libc::waitpid(init, &mut init_status, libc::WNOHANG) } == init {
                break;
            }
        } else {
            // Killing PID 1 kills the namespace; its end is then reaped above.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(init, libc::SIGKILL) };
        }
    }
    let mut bytes = [0u8; 4];
    // SAFETY: reading into a local buffer from our pipe, whose writers are all gone.
    let n = unsafe { libc::read(status_read, bytes.as_mut_ptr().cast(), bytes.len()) };
    if n == 4 { libc::c_int::from_ne_bytes(bytes) } else { init_status }
}

/// Ends the outer process as the confined one ended: the same exit code or the same signal.
fn mirror(status: libc::c_int) -> ! {
    // SAFETY: leaving the process without running destructors or flushing buffers: its
    // stdout may be a protocol pipe the confined process owns.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::signal(signal, libc::SIG_DFL);
            let mut all = empty_set();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_UNBLOCK, &all, std::ptr::null_mut());
            libc::kill(libc::getpid(), signal);
            libc::_exit(128 + signal);
        }
        libc::_exit(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 70 })
    }
}

/// Whether the other end of a pipe is still open (the process holding it is alive).
fn reader_alive(write_end: libc::c_int) -> bool {
    let mut poll = libc::pollfd { fd: write_end, events: libc::POLLOUT, revents: 0 };
    // SAFETY: polling one descriptor of ours without waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready >= 0 && poll.revents & (libc::POLLERR | libc::POLLHUP) == 0
}

fn empty_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        set.assume_init()
    }
}

/// Tries, in a short-lived child, what [`unshare`] does, as the identity the sandbox would
/// have (`nobody` when running as root).
pub(super) fn probe() -> Result<(), Unavailable> {
    // SAFETY: getters without preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let (uid, gid) =
        if root { (UNPRIVILEGED_ID, UNPRIVILEGED_ID) } else { unsafe { (libc::getuid(), libc::getgid()) } };
    // Everything the child needs is made before the fork: it may then only make system calls.
    let files = [
        (c"/proc/self/setgroups", "deny".to_owned()),
        (c"/proc/self/uid_map", format!("{uid} {uid} 1")),
        (c"/proc/self/gid_map", format!("{gid} {gid} 1")),
    ];
    let steps = ["dropping root", "unshare(user, mount, ipc, uts, pid, net namespaces)"];
    let unavailable = |reason: String| Unavailable { feature: Feature::UserNamespaces, reason };
    let mut report = [0; 2];
    if unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(unavailable(format!("cannot create a pipe to test them: {}", io::Error::last_os_error())));
    }
    let [report_read, report_write] = report;
    // SAFETY: the child makes only raw system calls and leaves with _exit, so it is safe to
    // fork from a process with threads.
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            let fail = |step: i32| -> ! {
                let errno = *libc::__errno_location();
                let words = [step, errno];
                libc::write(report_write, words.as_ptr().cast(), 8);
                libc::_exit(1)
            };
            if root
                && (libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                    || libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0)
            {
                fail(0);
            }
            if libc::syscall(libc::SYS_unshare, flags(false)) != 0 {
                fail(1);
            }
            for (index, (path, text)) in files.iter().enumerate() {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, text.as_ptr().cast(), text.len()) != text.len() as isize {
                    fail(2 + index as i32);
                }
                libc::close(fd);
            }
            libc::_exit(0);
        }
    }
    unsafe { libc::close(report_write) };
    if child < 0 {
        unsafe { libc::close(report_read) };
        return Err(unavailable(format!("cannot fork to test them: {}", io::Error::last_os_error())));
    }
    let mut words = [0i32; 2];
    let n = unsafe { libc::read(report_read, words.as_mut_ptr().cast(), 8) };
    let mut status = 0;
    unsafe {
        libc::close(report_read);
        libc::waitpid(child, &mut status, 0);
    }
    if n == 8 {
        let [step, errno] = words;
        let what = match step {
            0 | 1 => steps[step as usize].to_owned(),
            _ => format!("writing {}", files[(step - 2) as usize].0.to_string_lossy()),
        };
        let hint = if step == 1 {
            " (enable them: sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > 0, \
             and kernel.apparmor_restrict_unprivileged_userns=0 where AppArmor restricts them)"
        } else {
            ""
        };
        let error = io::Error::from_raw_os_error(errno);
        return Err(unavailable(format!("{what} failed as uid {uid}: {error}{hint}")));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(unavailable(format!("the test process ended with status {status}")));
    }
    Ok(())
}
