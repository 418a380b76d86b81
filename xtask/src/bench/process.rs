//! Running the bench's processes: a command to its end within a time limit, with its peak
//! resident memory (`wait4`'s, and its own VmHWM read while it runs), and the peak memory and
//! children of a running process, read from `/proc`.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// Runs a command to its end, capturing its output, and kills it if it takes longer than
/// `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    run_measured(command, timeout).map(|(output, _)| output)
}

/// How often [`run_measured`] reads the command's VmHWM.
pub const POLL: Duration = Duration::from_millis(20);

/// The peak resident memory of a command, two ways, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Peaks {
    /// `ru_maxrss` of `wait4`: exact however briefly the peak lasted, but never less than the
    /// resident size of the process that started the command. Linux's `execve` keeps the
    /// high-water mark of the memory map it replaces, and that map is the spawner's own
    /// (posix_spawn shares it) or its copy (fork): a command started by a process holding
    /// 1 GiB reports at least 1 GiB.
    pub maxrss: u64,
    /// The largest VmHWM of the command read every [`POLL`] while it ran: its own pages only,
    /// missing at most a peak reached in its last [`POLL`].
    pub polled: u64,
}

/// [`run_with_timeout`], also answering the command's peak resident memory ([`Peaks`]).
/// Waiting blocks in `waitid` (no polling on this thread), so the measured time is the
/// command's own; another thread reads its VmHWM meanwhile.
pub fn run_measured(command: &mut Command, timeout: Duration) -> anyhow::Result<(Output, Peaks)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("a pid fits a pid_t")?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + timeout;
        let mut polled = 0;
        // The child is not reaped before this thread ends (the main thread waits for it with
        // WNOWAIT first), so the pid is still its own for reading and killing.
        loop {
            if let Ok(peak) = peak_rss(pid as u32) {
                polled = polled.max(peak);
            }
            if done_rx.recv_timeout(POLL) != Err(mpsc::RecvTimeoutError::Timeout) {
                break;
            }
            if std::time::Instant::now() >= deadline {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
        }
        polled
    });
    let exited = loop {
        // SAFETY: siginfo is plain data, valid when zeroed; the pid is our own unreaped child's.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is valid for writes; WNOWAIT leaves the child to be reaped below.
        let waited = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if waited == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break waited == 0;
        }
    };
    let _ = done_tx.send(());
    let polled = watchdog.join().unwrap_or(0);
    let mut status = 0;
    // SAFETY: rusage is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        // SAFETY: status and usage are valid for writes; the pid is our own unreaped child's.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped != -1 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break reaped;
        }
    };
    // Reaped by wait4: dropping the handle neither waits nor kills.
    drop(child);
    if !exited || reaped != pid {
        bail!("waiting for {command:?}: {}", std::io::Error::last_os_error());
    }
    let status = std::os::unix::process::ExitStatusExt::from_raw(status);
    let output =
        Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() };
    if output.status.code().is_none() {
        bail!("{command:?} was killed after {} s, or by a signal", timeout.as_secs());
    }
    // ru_maxrss is in KiB on Linux.
    Ok((output, Peaks { maxrss: u64::try_from(usage.ru_maxrss).unwrap_or(0) << 10, polled }))
}

/// VmHWM of a process, in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("{path} has no VmHWM"))?;
    Ok(kib << 10)
}

/// The processes below `ancestor`: its children, theirs, and so on (a worker's executor is a
/// grandchild of the sandbox's own processes, not its child).
pub fn descendants_of(ancestor: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut parents = vec![ancestor];
    while let Some(parent) = parents.pop() {
        let children = children_of(parent);
        parents.extend(&children);
        found.extend(children);
    }
    found
}

/// The processes whose parent is `parent`.
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The fields after the command name, which is in parentheses and may hold spaces:
            // state, then the parent's pid.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|stat| {
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_command_is_killed() {
        let error = run_with_timeout(Command::new("sleep").arg("5"), Duration::from_millis(100)).unwrap_err();
        assert!(error.to_string().contains("was killed"), "{error}");
        let output = run_with_timeout(Command::new("echo").arg("hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(output.stdout, b"hi\n");
        // dd reads 64 MiB into one buffer: its peak is above that. (No upper bound: `maxrss`
        // also carries the high-water mark of this test process at the fork, which the test
        // below, running beside this one, raises by 256 MiB.)
        let dd = ["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];
        let (output, peak) = run_measured(Command::new("dd").args(dd), Duration::from_secs(5)).unwrap();
        assert!(output.status.success());
        assert!(peak.maxrss >= 64 << 20, "dd's peak: {peak:?}");
    }

    #[test]
    fn a_command_started_by_a_large_process_has_the_large_maxrss_but_its_own_vmhwm() {
        // 256 MiB of this process's own, resident while it starts a small command.
        let held = vec![1u8; 256 << 20];
        let (output, peak) = run_measured(Command::new("sleep").arg("0.2"), Duration::from_secs(5)).unwrap();
        assert!(output.status.success());
        assert!(peak.maxrss >= 256 << 20, "exec keeps the spawner's high-water mark: {peak:?}");
        assert!(peak.polled > 0 && peak.polled < 32 << 20, "sleep's own peak: {peak:?}");
        assert_eq!(held.iter().map(|&b| u64::from(b)).sum::<u64>(), 256 << 20);
    }

    #[test]
    fn this_process_has_a_peak_rss_and_is_a_child_of_its_parent() {
        assert!(peak_rss(std::process::id()).unwrap() > 0);
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children_of(std::process::id()).contains(&child.id()));
        // A grandchild is a descendant, not a child.
        let mut shell = Command::new("sh").args(["-c", "sleep 5 & wait"]).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while children_of(shell.id()).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let grandchildren = children_of(shell.id());
        assert_eq!(grandchildren.len(), 1, "sh started its sleep");
        let descendants = descendants_of(std::process::id());
        assert!(descendants.contains(&shell.id()) && descendants.contains(&grandchildren[0]));
        assert!(!children_of(std::process::id()).contains(&grandchildren[0]));
        shell.kill().unwrap();
        shell.wait().unwrap();
        // SAFETY: kill has no memory effects; the orphaned sleep ends sooner than its 5 s.
        unsafe { libc::kill(grandchildren[0] as libc::pid_t, libc::SIGKILL) };
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
