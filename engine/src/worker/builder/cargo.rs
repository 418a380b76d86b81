//! Running cargo on a plugin crate: `cargo fetch` (with the network, no crate code), then
//! `cargo build --frozen` (offline, in the build sandbox unless it is turned off): the command
//! lines, the JSON messages on stdout (artifacts and compiler diagnostics), the human-readable
//! stderr (forwarded as progress), and the verdict.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cargo_metadata::diagnostic::DiagnosticLevel;
use cargo_metadata::{Message, TargetKind};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::BuildError;
use super::sandboxed::{BuildPaths, Toolchain, sandbox_args};

/// How long one `cargo build` may run. A cold build of a small plugin takes about 20 s on two
/// cores, but a plugin may pull in large dependencies and a busy host may be slow; past half
/// an hour something hangs (a build script, a network fetch), and the worker must get on.
pub(super) const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How many of cargo's last stderr lines an error carries.
const STDERR_TAIL_LINES: usize = 40;

/// How much of the compiler's diagnostics an error carries: the first errors are what the
/// user needs, and the message travels over RPC and into web pages.
const MAX_DIAGNOSTICS_BYTES: usize = 64 * 1024;

/// How long fetching a plugin's dependencies may take: downloads from the registry.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// One `cargo fetch` of a plugin crate: resolves its dependencies (writing `Cargo.lock` into
/// the crate's copy) and downloads them into the owner's `CARGO_HOME`. Runs cargo's own code
/// only, with the network and without the sandbox: no crate's code runs in a fetch.
pub(super) struct CargoFetch<'a> {
    /// The cargo executable.
    pub cargo: &'a Path,
    /// The plugin's canonical `Cargo.toml` path.
    pub manifest: &'a Path,
    /// The absolute path of the engine's copy of `kiln-plugin-api`.
    pub plugin_api: &'a Path,
    /// The owner's cargo home.
    pub cargo_home: &'a Path,
    /// The working directory, outside the plugin's tree (see [`CargoBuild::work_dir`]).
    pub work_dir: &'a Path,
}

/// Runs the fetch; cargo's messages go to `progress`, and a failure carries its last lines.
pub(super) async fn fetch(fetch: &CargoFetch<'_>, progress: &(dyn Fn(&str) + Send + Sync)) -> Result<(), BuildError> {
    let mut command = Command::new(fetch.cargo);
    command
        .arg("fetch")
        .arg("--manifest-path")
        .arg(fetch.manifest)
        .arg("--config")
        .arg(patch_config(fetch.plugin_api)?)
        .current_dir(fetch.work_dir)
        .env("CARGO_HOME", fetch.cargo_home)
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|error| BuildError::Spawn { cargo: fetch.cargo.to_owned(), error })?;
    let Some(stderr) = child.stderr.take() else {
        return Err(BuildError::Task("cargo's output pipes were not set up".to_owned()));
    };
    let work = async { (read_stderr(stderr, progress).await, child.wait().await) };
    let Ok((stderr_tail, status)) = tokio::time::timeout(FETCH_TIMEOUT, work).await else {
        let _ = child.kill().await;
        return Err(BuildError::Timeout { limit: FETCH_TIMEOUT });
    };
    let status = status.map_err(|error| BuildError::Spawn { cargo: fetch.cargo.to_owned(), error })?;
    if status.success() {
        return Ok(());
    }
    Err(cargo_failure(status.to_string(), stderr_tail))
}

/// The `--config` value that patches `kiln-plugin-api` to the engine's copy at `plugin_api`.
fn patch_config(plugin_api: &Path) -> Result<String, BuildError> {
    let path = plugin_api.to_str().ok_or_else(|| BuildError::Io {
        action: "use as a cargo patch path",
        path: plugin_api.to_owned(),
        error: std::io::Error::other("the path is not UTF-8"),
    })?;
    // The value is TOML: a quoted string with any quotes or backslashes in the path escaped.
    Ok(format!("patch.crates-io.kiln-plugin-api.path={}", toml::Value::String(path.to_owned())))
}

/// One `cargo build` of a plugin crate, offline: everything it needs was fetched.
pub(super) struct CargoBuild<'a> {
    /// The toolchain.
    pub toolchain: &'a Toolchain,
    /// The program whose `sandboxed-build` command confines the build; `None` builds outside
    /// the sandbox (only with `--insecure-no-sandbox`).
    pub sandbox: Option<&'a Path>,
    /// The plugin's canonical `Cargo.toml` path.
    pub manifest: &'a Path,
    /// The owner's target directory (absolute).
    pub target_dir: &'a Path,
    /// The absolute path of the engine's copy of `kiln-plugin-api`.
    pub plugin_api: &'a Path,
    /// The owner's registry sources, which the fetch filled.
    pub registry: &'a Path,
    /// The build's temporary directory, also its working directory: outside the plugin's tree,
    /// so that neither cargo's configuration discovery nor rustup's toolchain files ever read
    /// anything the user uploaded. Its `cargo-home/` is the build's `CARGO_HOME`.
    pub work_dir: &'a Path,
}

/// Runs the build and returns the path of the plugin's cdylib in the target directory.
pub(super) async fn run(
    build: &CargoBuild<'_>,
    package: &str,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<PathBuf, BuildError> {
    let source_dir = build.manifest.parent().unwrap_or(build.manifest);
    let toolchain = build.toolchain;
    let mut command = match build.sandbox {
        Some(program) => {
            let paths = BuildPaths {
                source_dir,
                plugin_api: build.plugin_api,
                registry: build.registry,
                target_dir: build.target_dir,
                temp_dir: build.work_dir,
            };
            let mut command = Command::new(program);
            command.args(sandbox_args(toolchain, &paths)).arg(&toolchain.sandboxed_cargo);
            command
        }
        None => Command::new(&toolchain.sandboxed_cargo),
    };
    let path = std::env::join_paths(
        std::iter::once(toolchain.bin.clone()).chain(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from)),
    )
    .map_err(|error| BuildError::Task(format!("cannot make the build's PATH: {error}")))?;
    let temp = build.work_dir.join("tmp");
    command
        .args(["build", "--release", "--frozen", "--message-format=json", "--manifest-path"])
        .arg(build.manifest)
        .arg("--target-dir")
        .arg(build.target_dir)
        .arg("--config")
        .arg(patch_config(build.plugin_api)?)
        .current_dir(build.work_dir)
        // Nothing of the worker's environment (keys, tokens, paths) reaches build scripts.
        .env_clear()
        .env("PATH", path)
        .env("RUSTC", &toolchain.rustc)
        .env("CARGO_HOME", build.work_dir.join("cargo-home"))
        .env("HOME", build.work_dir)
        .env("TMPDIR", &temp)
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let cargo = &toolchain.sandboxed_cargo;
    let mut child = command.spawn().map_err(|error| BuildError::Spawn { cargo: cargo.to_owned(), error })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BuildError::Task("cargo's output pipes were not set up".to_owned()));
    };
    let work = async {
        let (messages, stderr_tail) =
            tokio::join!(read_messages(stdout, build.manifest, progress), read_stderr(stderr, progress));
        (messages, stderr_tail, child.wait().await)
    };
    let Ok((messages, stderr_tail, status)) = tokio::time::timeout(BUILD_TIMEOUT, work).await else {
        // The start_kill of kill_on_drop is not enough on its own: reap the child too.
        let _ = child.kill().await;
        return Err(BuildError::Timeout { limit: BUILD_TIMEOUT });
    };
    let status = status.map_err(|error| BuildError::Spawn { cargo: cargo.to_owned(), error })?;
    if status.success() {
        return messages.cdylib.ok_or_else(|| BuildError::NotCdylib { package: package.to_owned() });
    }
    if !messages.errors.is_empty() {
        return Err(BuildError::Compile { diagnostics: messages.diagnostics() });
    }
    Err(cargo_failure(status.to_string(), stderr_tail))
}

/// Cargo failed before the compiler said anything: its last lines, with a hint when the
/// plugin API could not be resolved.
fn cargo_failure(status: String, stderr_tail: VecDeque<String>) -> BuildError {
    let mut stderr = Vec::from(stderr_tail).join("\n");
    if stderr.contains("kiln-plugin-api") {
        let version = kiln_plugin_api::API_VERSION;
        let requirement = version.rsplit_once('.').map_or(version, |(major_minor, _)| major_minor);
        stderr.push_str(&format!(
            "\nnote: this worker provides kiln-plugin-api {version}; depend on \
             kiln-plugin-api = \"{requirement}\""
        ));
    }
    BuildError::Cargo { status, stderr }
}

/// What cargo's JSON messages said. Reading goes on to the end of the stream whatever the
/// lines hold, so that cargo never blocks on a full pipe.
#[derive(Default)]
struct Messages {
    /// The root package's cdylib, if one was built.
    cdylib: Option<PathBuf>,
    /// Rendered compiler errors, in order.
    errors: Vec<String>,
    /// Rendered compiler warnings, in order.
    warnings: Vec<String>,
}

impl Messages {
    /// Errors first, then warnings, cut at [`MAX_DIAGNOSTICS_BYTES`].
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        for diagnostic in self.errors.iter().chain(&self.warnings) {
            let diagnostic = diagnostic.trim_end();
            if text.len() + diagnostic.len() > MAX_DIAGNOSTICS_BYTES {
                text.push_str("(further diagnostics left out)\n");
                break;
            }
            text.push_str(diagnostic);
            text.push_str("\n\n");
        }
        text.truncate(text.trim_end().len());
        text
    }
}

async fn read_messages(
    stdout: impl AsyncRead + Unpin,
    manifest: &Path,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Messages {
    let mut messages = Messages::default();
    let mut lines = BufReader::new(stdout).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        match serde_json::from_slice::<Message>(&line) {
            Ok(Message::CompilerArtifact(artifact))
                if Path::new(artifact.manifest_path.as_str()) == manifest
                    && artifact.target.kind.contains(&TargetKind::CDyLib) =>
            {
                messages.cdylib = artifact
                    .filenames
                    .iter()
                    .find(|path| path.as_str().ends_with(std::env::consts::DLL_SUFFIX))
                    .map(|path| path.clone().into_std_path_buf());
            }
            Ok(Message::CompilerMessage(message)) => {
                let Some(rendered) = message.message.rendered else { continue };
                match message.message.level {
                    DiagnosticLevel::Error | DiagnosticLevel::Ice => messages.errors.push(rendered),
                    DiagnosticLevel::Warning => {
                        progress(rendered.trim_end());
                        messages.warnings.push(rendered);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    messages
}

/// Forwards cargo's stderr ("Compiling abi_stable v0.11.3", ...) and keeps its last lines.
async fn read_stderr(stderr: impl AsyncRead + Unpin, progress: &(dyn Fn(&str) + Send + Sync)) -> VecDeque<String> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut lines = BufReader::new(stderr).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        progress(line.trim_start());
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_put_errors_first_and_stay_bounded() {
        let messages = Messages {
            cdylib: None,
            errors: vec!["error: one\n\n".into(), "error: two\n".into()],
            warnings: vec!["warning: three\n".into()],
        };
        assert_eq!(messages.diagnostics(), "error: one\n\nerror: two\n\nwarning: three");

        let messages = Messages {
            cdylib: None,
            errors: vec!["e".repeat(MAX_DIAGNOSTICS_BYTES - 10), "error: big".repeat(10)],
            warnings: vec![],
        };
        let text = messages.diagnostics();
        assert!(text.len() < MAX_DIAGNOSTICS_BYTES + 100);
        assert!(text.ends_with("(further diagnostics left out)"), "{}", &text[text.len() - 50..]);
    }
}
