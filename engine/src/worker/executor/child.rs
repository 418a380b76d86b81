//! The executor's child process: its address-space limit, its death with the worker, its
//! stdout as a blocking file, how it is stopped, and its exit status.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;

use super::ExecError;
use super::scratch::PrivateDir;

/// Sets `RLIMIT_AS` in the child before it runs, so a plugin that allocates without bound
/// fails its allocation (and aborts) instead of taking the machine's memory.
pub(super) fn limit_address_space(command: &mut Command, bytes: u64) {
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Has the kernel kill the child when the thread that started it exits (Linux), so that an
/// executor never outlives a worker killed with SIGKILL, spinning in plugin code. Executors
/// are started from the async runtime's worker threads, which live as long as the runtime.
pub(super) fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe and touch only the child itself.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the call above: then nobody would kill us.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the parent exited while the executor started"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Converts the child's stdout to a blocking std file: responses are read by a blocking thread
/// with `std::io::Read`, which the frame decoder is written against.
pub(super) fn stdout_to_std(stdout: ChildStdout) -> Result<std::fs::File, ExecError> {
    let fd = stdout.into_owned_fd().map_err(|e| ExecError::Spawn {
        program: "kiln exec".to_owned(),
        message: format!("cannot take its stdout: {e}"),
    })?;
    let file = std::fs::File::from(fd);
    // The descriptor was non-blocking for tokio; a blocking reader needs it blocking.
    set_blocking(&file);
    Ok(file)
}

/// The capacity asked for the pipes to and from an executor: a chunk of several MiB then
/// crosses in a few large writes instead of one per 64 KiB (Linux's default capacity), each of
/// which woke the other side. Linux caps it at `/proc/sys/fs/pipe-max-size` (1 MiB by default).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Widens a pipe to [`PIPE_BYTES`]; best effort: a pipe left at its default size works, only
/// with more wake-ups (an unprivileged user past its quota of pipe pages is refused).
pub(super) fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a descriptor the caller holds; F_SETPIPE_SZ changes only its capacity.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES);
    }
}

fn set_blocking(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// How long a sandboxed executor has to end its sandbox after SIGTERM before it gets SIGKILL.
/// Its outer process only kills and reaps the sandbox's init, which takes milliseconds.
const SANDBOX_STOP_GRACE: Duration = Duration::from_secs(2);

/// Owns the child: waits for it to exit, or kills it when asked, and publishes its status;
/// then removes its private directory and says it has `finished`.
pub(super) async fn watch_process(
    mut child: Child,
    mut kill: watch::Receiver<bool>,
    status: watch::Sender<Option<ExitStatus>>,
    sandboxed: bool,
    scratch: PrivateDir,
    finished: watch::Sender<bool>,
) {
    let killed = async {
        // The guard `wait_for` returns must not live across an await; only the event matters.
        let _ = kill.wait_for(|kill| *kill).await.map(|_| ());
    };
    let exit = tokio::select! {
        exit = child.wait() => exit,
        () = killed => stop(&mut child, sandboxed).await,
    };
    if let Ok(exit) = exit {
        let _ = status.send(Some(exit));
    }
    // The process has ended, and in the sandbox everything it started: nothing writes there now.
    let _ = tokio::task::spawn_blocking(move || scratch.remove()).await;
    let _ = finished.send(true);
}

/// Ends the child. A sandboxed one gets SIGTERM first, on which it kills its sandbox and exits
/// only once every process in it is gone (SIGKILL would leave the kernel to end them a moment
/// later); a plain one, or one that does not end in time, gets SIGKILL.
async fn stop(child: &mut Child, sandboxed: bool) -> std::io::Result<ExitStatus> {
    if let (true, Some(pid)) = (sandboxed, child.id()) {
        // SAFETY: signalling our own child, which has not been reaped (`id` is still known).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        if let Ok(exit) = tokio::time::timeout(SANDBOX_STOP_GRACE, child.wait()).await {
            return exit;
        }
    }
    let _ = child.start_kill();
    child.wait().await
}

/// Waits (briefly) for the process's exit status once its pipe has closed.
pub(super) async fn wait_status(mut status: watch::Receiver<Option<ExitStatus>>) -> Option<ExitStatus> {
    let wait = status.wait_for(Option::is_some);
    match tokio::time::timeout(Duration::from_secs(5), wait).await {
        Ok(Ok(status)) => *status,
        _ => None,
    }
}

/// Names how a process ended, in words a plugin author can act on.
pub(super) fn describe_exit(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let what = match signal {
            libc::SIGSEGV => "crashed with a segmentation fault (SIGSEGV)",
            libc::SIGBUS => "crashed with a bus error (SIGBUS)",
            libc::SIGILL => "crashed on an illegal instruction (SIGILL)",
            libc::SIGFPE => "crashed on an arithmetic error (SIGFPE)",
            libc::SIGABRT => "aborted (SIGABRT)",
            libc::SIGKILL => "was killed (SIGKILL), by a timeout, its memory limit or the OOM killer",
            libc::SIGTERM => "was terminated (SIGTERM)",
            _ => return format!("was killed by signal {signal}"),
        };
        return what.to_owned();
    }
    match status.code() {
        Some(code) => format!("exited unexpectedly with status {code}"),
        None => "ended for an unknown reason".to_owned(),
    }
}
