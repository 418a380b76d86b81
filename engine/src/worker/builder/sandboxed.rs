//! The plugin build's sandbox: which toolchain builds, what a build may reach, and the hidden
//! `sandboxed-build` command that confines itself and then runs cargo.
//!
//! A build runs `cargo build --frozen` (offline: the fetch before it downloaded everything)
//! as `<program> sandboxed-build --read P.. --read-exec P.. --write P.. -- cargo ARGS`, where
//! `<program>` is the worker's own executable (`kiln` or `kiln-web`). That fresh process calls
//! [`sandbox::enter`](crate::sandbox::enter) and executes cargo, so cargo, rustc, the linker,
//! build scripts and proc macros all run with no network, under the seccomp filter, and see
//! through landlock only: the toolchain and system directories (read and execute), the crate's
//! copy, the engine's plugin API and the owner's registry sources (read), and the owner's
//! target directory and the build's temporary directory (write).
//!
//! The build keeps the worker's uid (mapped to itself in its user namespace, with no
//! capabilities): the toolchain usually lives under the home directory of the user who
//! installed it (`/root/.rustup`, mode 0700), which `nobody` could not enter.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::BuildError;
use crate::sandbox::{self, Limits, Policy};

/// The hidden subcommand of `kiln` and `kiln-web` that runs a command in the build sandbox.
pub const SUBCOMMAND: &str = "sandboxed-build";

/// Limits of a build: rustc holds many libraries open and cargo runs jobs in parallel, each
/// with threads; build outputs (debug info of large crates) can be big.
const BUILD_LIMITS: Limits = Limits { open_files: 4096, processes: 4096, file_size: 16 << 30 };

/// The arguments of `sandboxed-build`: the policy's paths and the command to run.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxedBuildArgs {
    /// A file or directory tree the build may read.
    #[arg(long)]
    read: Vec<PathBuf>,
    /// A file or directory tree the build may read and execute.
    #[arg(long)]
    read_exec: Vec<PathBuf>,
    /// A directory the build may write in.
    #[arg(long)]
    write: Vec<PathBuf>,
    /// The program to run and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// Runs `sandboxed-build`: enters the build sandbox and replaces this process with the
/// command. Returns only when that failed, with the message to print; call it first thing in
/// `main`, while the process is single-threaded.
pub fn run(args: SandboxedBuildArgs) -> String {
    let policy = Policy {
        read: args.read,
        read_exec: args.read_exec,
        write: args.write,
        network: false,
        keep_identity: true,
        limits: BUILD_LIMITS,
    };
    if let Err(error) = sandbox::enter(&policy) {
        return error.to_string();
    }
    let Some((program, rest)) = args.command.split_first() else {
        return "no command to run".to_owned();
    };
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(program).args(rest).exec();
    format!("cannot run {}: {error}", Path::new(program).display())
}

/// The toolchain that builds plugins.
#[derive(Debug, Clone)]
pub(super) struct Toolchain {
    /// The cargo to run outside the sandbox (the fetch): as configured, found on `PATH`.
    pub cargo: PathBuf,
    /// The cargo to run in the sandbox: the toolchain's own, not a rustup proxy, which would
    /// need rustup's home.
    pub sandboxed_cargo: PathBuf,
    /// The toolchain's rustc, given to cargo as `RUSTC`.
    pub rustc: PathBuf,
    /// The toolchain's `bin` directory, first on the build's `PATH`.
    pub bin: PathBuf,
    /// Directories the build must read and execute from (the sysroot, cargo's directory).
    pub dirs: Vec<PathBuf>,
    /// The host's target triple as rustc says it (`x86_64-unknown-linux-gnu`); empty when it
    /// would not say.
    pub host: String,
}

/// Finds the toolchain of `cargo` (a path, or a name looked up on `PATH`): its sysroot as its
/// rustc prints it, run in `work_dir` (so rustup picks the toolchain it would pick for cargo
/// there). Blocking.
pub(super) fn find_toolchain(cargo: &Path, work_dir: &Path) -> Result<Toolchain, BuildError> {
    let spawn_error = |error| BuildError::Spawn { cargo: cargo.to_owned(), error };
    let found = find_program(cargo).ok_or_else(|| spawn_error(std::io::Error::from(std::io::ErrorKind::NotFound)))?;
    let next_rustc = found.with_file_name("rustc");
    let rustc = if next_rustc.is_file() { next_rustc } else { PathBuf::from("rustc") };
    let output = std::process::Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(work_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(spawn_error)?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let sysroot = PathBuf::from(&sysroot).canonicalize().map_err(|error| {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        spawn_error(std::io::Error::other(format!("`rustc --print sysroot` said `{sysroot}` ({error}) {stderr}")))
    })?;
    let bin = sysroot.join("bin");
    let own_cargo = bin.join("cargo");
    let (sandboxed_cargo, rustc) = if own_cargo.is_file() && bin.join("rustc").is_file() {
        (own_cargo, bin.join("rustc"))
    } else {
        (found.clone(), find_program(&rustc).unwrap_or(rustc))
    };
    let mut dirs = vec![sysroot];
    for program in [&found, &sandboxed_cargo, &rustc] {
        for path in [Some(program.clone()), program.canonicalize().ok()].into_iter().flatten() {
            if let Some(dir) = path.parent()
                && !dirs.iter().any(|known| dir.starts_with(known))
            {
                dirs.push(dir.to_owned());
            }
        }
    }
    let host = std::process::Command::new(&rustc)
        .arg("-vV")
        .current_dir(work_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map(|output| {
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.lines().find_map(|line| line.strip_prefix("host: ")).unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default();
    Ok(Toolchain { cargo: found, sandboxed_cargo, rustc, bin, dirs, host })
}

/// `program` itself when it names a path, else the first executable of that name on `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| std::path::absolute(program).unwrap_or_else(|_| program.to_owned()));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// What one sandboxed build may reach.
pub(super) struct BuildPaths<'a> {
    /// The crate's copy, with its `Cargo.lock` from the fetch.
    pub source_dir: &'a Path,
    /// The engine's copy of `kiln-plugin-api`.
    pub plugin_api: &'a Path,
    /// The owner's registry sources, downloaded by the fetch.
    pub registry: &'a Path,
    /// The owner's cargo target directory.
    pub target_dir: &'a Path,
    /// The build's own temporary directory (its `CARGO_HOME`, `TMPDIR` and working directory).
    pub temp_dir: &'a Path,
}

/// The arguments of `<program> sandboxed-build` for `paths`, up to and including `--`.
pub(super) fn sandbox_args(toolchain: &Toolchain, paths: &BuildPaths<'_>) -> Vec<OsString> {
    let (read_devices, write_devices) = sandbox::devices();
    let mut read: Vec<PathBuf> = vec![paths.source_dir.into(), paths.plugin_api.into(), paths.registry.into()];
    read.extend(read_devices);
    // Cargo reads the configuration files of every directory above its working directory
    // and fails on one it cannot read; those are the operator's (the directories are Kiln's).
    read.extend(ancestor_configs(paths.temp_dir));
    let mut read_exec = toolchain.dirs.clone();
    read_exec.extend(sandbox::system_libraries());
    read_exec.extend(["/usr", "/bin"].iter().map(PathBuf::from).filter(|dir| dir.exists()));
    let mut write: Vec<PathBuf> = vec![paths.target_dir.into(), paths.temp_dir.into()];
    write.extend(write_devices);

    let mut args: Vec<OsString> = vec![SUBCOMMAND.into()];
    for (flag, list) in [("--read", read), ("--read-exec", read_exec), ("--write", write)] {
        for path in list {
            args.push(flag.into());
            args.push(path.into());
        }
    }
    args.push("--".into());
    args
}

/// The cargo configuration files that exist in `.cargo/` of `dir`'s parents.
fn ancestor_configs(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .skip(1)
        .flat_map(|parent| ["config.toml", "config"].map(|name| parent.join(".cargo").join(name)))
        .filter(|file| file.is_file())
        .collect()
}
