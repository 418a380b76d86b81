//! `sandbox::enter` confines a fresh process: each case runs in a child process (this test
//! binary started again, which has no test harness and so no threads) that enters the sandbox
//! and tries what the sandbox must stop, then reports on stdout; the parent checks.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kiln_engine::sandbox::{self, Policy};

/// One check, run in the parent.
type Case = fn() -> Result<(), String>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(&args[2], Path::new(&args[3]), Path::new(&args[4]));
        return;
    }
    if let Err(e) = sandbox::probe() {
        // The other tests (run-local, cluster) refuse to run on such a host as well.
        eprintln!("this host cannot sandbox: {e}");
        std::process::exit(1);
    }
    let cases: &[(&str, Case)] = &[
        ("reads_only_its_private_dir_and_system_libraries", reads_only_private_dir),
        ("writes_only_its_private_dir", writes_only_private_dir),
        ("has_no_network_and_no_sockets", has_no_network),
        ("refuses_ptrace_mount_and_namespaces", refuses_dangerous_calls),
        ("runs_as_pid_2_unprivileged_with_limits", runs_unprivileged),
        ("mirrors_exit_codes_and_signals", mirrors_exit),
        ("kills_processes_left_behind_when_it_ends", kills_orphans),
        ("sigterm_kills_the_whole_sandbox", sigterm_kills_all),
    ];
    let mut failed = 0;
    for (name, case) in cases {
        match case() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n  {e}");
            }
        }
    }
    println!("\n{} passed, {failed} failed", cases.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

/// A private dir for the sandbox, and an outside dir whose file everybody may read, so that
/// only the sandbox stops a read of it.
struct Dirs {
    private: tempfile::TempDir,
    outside: tempfile::TempDir,
}

fn dirs() -> Dirs {
    let private = tempfile::tempdir().expect("private dir");
    let outside = tempfile::tempdir().expect("outside dir");
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "the secret").expect("write secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    Dirs { private, outside }
}

fn start(case: &str, dirs: &Dirs) -> std::process::Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args(["child", case])
        .arg(dirs.private.path())
        .arg(dirs.outside.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// Runs a case to its end; returns its stdout lines and exit status.
fn run(case: &str) -> Result<(Vec<String>, ExitStatus), String> {
    let dirs = dirs();
    let output = start(case, &dirs).wait_with_output().map_err(|e| e.to_string())?;
    let lines = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    Ok((lines, output.status))
}

/// Checks the case printed `expected` lines exactly and exited with 0.
fn expect(case: &str, expected: &[&str]) -> Result<(), String> {
    let (lines, status) = run(case)?;
    if lines != expected || !status.success() {
        return Err(format!("{case}: expected {expected:?} and success, got {lines:?} and {status}"));
    }
    Ok(())
}

fn reads_only_private_dir() -> Result<(), String> {
    expect(
        "read",
        &[
            "before: readable",
            "secret: denied",
            "shadow: denied",
            "proc: denied",
            "libc: readable",
            "private: readable",
        ],
    )
}

fn writes_only_private_dir() -> Result<(), String> {
    let dirs = dirs();
    let output = start("write", &dirs).wait_with_output().map_err(|e| e.to_string())?;
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    if lines != ["private: written", "outside: denied", "tmp: denied"] || !output.status.success() {
        return Err(format!("write: got {lines:?} and {}", output.status));
    }
    if dirs.outside.path().join("planted").exists() || Path::new("/tmp/kiln-sandbox-test-planted").exists() {
        return Err("a file was written outside the private dir".to_owned());
    }
    Ok(())
}

fn has_no_network() -> Result<(), String> {
    expect("network", &["tcp socket: denied", "unix socket: denied"])
}

fn refuses_dangerous_calls() -> Result<(), String> {
    expect("calls", &["ptrace: EPERM", "mount: EPERM", "unshare: EPERM", "clone newuser: EPERM", "thread: ran"])
}

fn runs_unprivileged() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let uid = if unsafe { libc::geteuid() } == 0 { sandbox::UNPRIVILEGED_ID } else { unsafe { libc::getuid() } };
    let uid_line = format!("uid: {uid}");
    expect("identity", &["pid: 2", &uid_line, "nofile: 256", "core: 0", "no_new_privs: 1", "capabilities: 0"])
}

fn mirrors_exit() -> Result<(), String> {
    let (_, status) = run("exit7")?;
    if status.code() != Some(7) {
        return Err(format!("exit(7) came back as {status}"));
    }
    let (_, status) = run("abort")?;
    if status.signal() != Some(libc::SIGABRT) {
        return Err(format!("abort() came back as {status}"));
    }
    Ok(())
}

/// Starts a case that leaves a named process behind and waits for it to say it is ready.
fn start_with_orphan(case: &str, dirs: &Dirs) -> Result<(std::process::Child, String), String> {
    let mut child = start(case, dirs);
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    match line.trim().strip_prefix("orphan: ") {
        Some(name) => Ok((child, name.to_owned())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("expected the orphan's name, got {line:?}"))
        }
    }
}

fn kills_orphans() -> Result<(), String> {
    let dirs = dirs();
    let (mut child, name) = start_with_orphan("orphan", &dirs)?;
    if !process_named(&name) {
        let _ = child.kill();
        return Err(format!("the orphan {name} is not visible in /proc: the check would prove nothing"));
    }
    // The case exits once its stdin closes.
    drop(child.stdin.take());
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the case ended with {status}"));
    }
    if process_named(&name) {
        return Err(format!("the orphan {name} outlived its sandbox"));
    }
    Ok(())
}

fn sigterm_kills_all() -> Result<(), String> {
    let dirs = dirs();
    let (mut child, name) = start_with_orphan("orphan", &dirs)?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("the sandbox did not end on SIGTERM".to_owned());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("expected SIGKILL after SIGTERM, got {status}"));
    }
    if process_named(&name) {
        return Err(format!("the orphan {name} outlived its sandbox"));
    }
    Ok(())
}

/// Whether a process (or thread) with this name exists on the host.
fn process_named(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("comm")).map(|comm| comm.trim() == name).unwrap_or(false)
    })
}

// ---- the child side: runs in a fresh process, enters the sandbox, reports on stdout ----

fn child(case: &str, private: &Path, outside: &Path) {
    let secret = outside.join("secret.txt");
    if case == "read" {
        say(&format!("before: {}", readable(&secret)));
    }
    std::fs::write(private.join("mine.txt"), "mine").expect("write in the private dir");
    if let Err(e) = sandbox::enter(&Policy::private(private)) {
        say(&format!("enter failed: {e}"));
        std::process::exit(3);
    }
    match case {
        "read" => {
            say(&format!("secret: {}", readable(&secret)));
            say(&format!("shadow: {}", readable(Path::new("/etc/shadow"))));
            say(&format!("proc: {}", readable(Path::new("/proc/1/cmdline"))));
            let libc = sandbox::system_libraries()
                .into_iter()
                .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
                .map(|entry| entry.path())
                .find(|path| path.is_file())
                .unwrap_or_else(|| PathBuf::from("/etc/ld.so.cache"));
            say(&format!("libc: {}", readable(&libc)));
            say(&format!("private: {}", readable(&private.join("mine.txt"))));
        }
        "write" => {
            say(&format!("private: {}", writable(&private.join("new.txt"), "written")));
            say(&format!("outside: {}", writable(&outside.join("planted"), "denied")));
            say(&format!("tmp: {}", writable(Path::new("/tmp/kiln-sandbox-test-planted"), "denied")));
        }
        "network" => {
            say(&format!("tcp socket: {}", socket_result(libc::AF_INET)));
            say(&format!("unix socket: {}", socket_result(libc::AF_UNIX)));
        }
        "calls" => {
            // SAFETY: each call is refused by the filter or fails harmlessly.
            unsafe {
                say(&format!("ptrace: {}", errno_name(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) as i32)));
                say(&format!(
                    "mount: {}",
                    errno_name(libc::mount(c"none".as_ptr(), c"/tmp".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()))
                ));
                say(&format!("unshare: {}", errno_name(libc::unshare(libc::CLONE_NEWUSER))));
                let clone = libc::syscall(libc::SYS_clone, libc::CLONE_NEWUSER | libc::SIGCHLD, 0, 0, 0, 0);
                if clone == 0 {
                    libc::_exit(0);
                }
                say(&format!("clone newuser: {}", errno_name(clone as i32)));
            }
            // Threads still start (clone3 falls back to clone without namespace flags).
            let ran = std::thread::spawn(|| "ran").join().unwrap_or("failed");
            say(&format!("thread: {ran}"));
        }
        "identity" => {
            // SAFETY: getters without preconditions.
            unsafe {
                say(&format!("pid: {}", libc::getpid()));
                say(&format!("uid: {}", libc::getuid()));
                let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                say(&format!("nofile: {}", limit.rlim_cur));
                libc::getrlimit(libc::RLIMIT_CORE, &mut limit);
                say(&format!("core: {}", limit.rlim_max));
                say(&format!("no_new_privs: {}", libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)));
            }
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            // /proc is not readable in the sandbox, so ask the kernel directly.
            let effective = if status.is_empty() { capabilities_effective() } else { 1 };
            say(&format!("capabilities: {effective}"));
        }
        "exit7" => std::process::exit(7),
        "abort" => std::process::abort(),
        "orphan" => {
            // Unique per run (the temp dir's random name); a process name has at most 15 bytes.
            let unique = outside.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let name = format!("kiln-o-{}", &unique[unique.len().saturating_sub(8)..]);
            // SAFETY: the forked child only renames itself and sleeps.
            unsafe {
                if libc::fork() == 0 {
                    let c_name = std::ffi::CString::new(name.clone()).expect("name");
                    libc::prctl(libc::PR_SET_NAME, c_name.as_ptr());
                    loop {
                        libc::sleep(60);
                    }
                }
            }
            // Let the orphan rename itself before the parent looks for it.
            std::thread::sleep(Duration::from_millis(200));
            say(&format!("orphan: {name}"));
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        other => say(&format!("unknown case {other}")),
    }
}

fn say(line: &str) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn readable(path: &Path) -> &'static str {
    if std::fs::read(path).is_ok() { "readable" } else { "denied" }
}

fn writable(path: &Path, ok: &'static str) -> &'static str {
    if std::fs::write(path, "x").is_ok() { ok } else { "denied" }
}

fn socket_result(family: libc::c_int) -> &'static str {
    // SAFETY: creating (and closing) a socket.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        unsafe { libc::close(fd) };
        "created"
    } else {
        "denied"
    }
}

fn errno_name(result: i32) -> String {
    if result >= 0 {
        return format!("succeeded ({result})");
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EPERM) => "EPERM".to_owned(),
        other => format!("errno {other:?}"),
    }
}

/// The effective capability set's first word, read with capget.
fn capabilities_effective() -> u32 {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    let mut header = Header { version: 0x2008_0522, pid: 0 };
    let mut data = [0u32; 6];
    // SAFETY: capget writes two three-word structs.
    unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) };
    data[0] | data[3]
}
