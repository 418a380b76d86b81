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
use super::progress::{BuildEvent, CrateCounter, MetadataQuery, Progress, count_crates};
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

/// The profile setting every plugin build adds: incremental compilation for the plugin's own
/// crate (cargo applies it to path packages only; registry dependencies are compiled once per
/// target directory anyway). An edit then recompiles only what it changed. Release builds
/// leave it off by default because it can cost run time (see ARCHITECTURE.md).
const INCREMENTAL: &str = "profile.release.incremental=true";

/// ... except for the plugin API, a path package too (patched in), which no edit of a plugin
/// changes: compiled incrementally (256 codegen units, no local ThinLTO), its `Counter` lost
/// the inlining of its hash table's lookup, 14.5 % more instructions in the wordcount
/// example's run; compiled without it, the run is as fast as a build with no incremental at all.
const API_NOT_INCREMENTAL: &str = "profile.release.package.kiln-plugin-api.incremental=false";

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
pub(super) async fn fetch(fetch: &CargoFetch<'_>, progress: Progress<'_>) -> Result<(), BuildError> {
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
    let work = async { (read_stderr(stderr, progress, None).await, child.wait().await) };
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
    /// The owner's cargo home, which the fetch filled; builds read its `registry/` only.
    pub cargo_home: &'a Path,
    /// The build's temporary directory, also its working directory: outside the plugin's tree,
    /// so that neither cargo's configuration discovery nor rustup's toolchain files ever read
    /// anything the user uploaded. Its `cargo-home/` is the build's `CARGO_HOME`.
    pub work_dir: &'a Path,
}

/// What a successful build made.
pub(super) struct Built {
    /// The plugin's cdylib in the target directory.
    pub cdylib: PathBuf,
    /// The crates cargo compiled (not found fresh), in the order they finished.
    pub compiled: Vec<String>,
}

/// Runs the build and returns the plugin's cdylib in the target directory.
pub(super) async fn run(build: &CargoBuild<'_>, package: &str, progress: Progress<'_>) -> Result<Built, BuildError> {
    let source_dir = build.manifest.parent().unwrap_or(build.manifest);
    let toolchain = build.toolchain;
    let registry = build.cargo_home.join("registry");
    let mut command = match build.sandbox {
        Some(program) => {
            let paths = BuildPaths {
                source_dir,
                plugin_api: build.plugin_api,
                registry: &registry,
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
        .arg("--config")
        .arg(INCREMENTAL)
        .arg("--config")
        .arg(API_NOT_INCREMENTAL)
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
    let counter = CrateCounter::new(progress);
    let patch = patch_config(build.plugin_api)?;
    let query = MetadataQuery {
        cargo: &toolchain.cargo,
        manifest: build.manifest,
        patch: &patch,
        cargo_home: build.cargo_home,
        work_dir: build.work_dir,
        host: &toolchain.host,
    };
    let work = async {
        let total = async {
            if let Some(total) = count_crates(&query).await {
                counter.total(total);
            }
        };
        let (messages, stderr_tail, ()) = tokio::join!(
            read_messages(stdout, build.manifest, progress, &counter),
            read_stderr(stderr, progress, Some(&counter)),
            total
        );
        (messages, stderr_tail, child.wait().await)
    };
    let Ok((messages, stderr_tail, status)) = tokio::time::timeout(BUILD_TIMEOUT, work).await else {
        // The start_kill of kill_on_drop is not enough on its own: reap the child too.
        let _ = child.kill().await;
        return Err(BuildError::Timeout { limit: BUILD_TIMEOUT });
    };
    let status = status.map_err(|error| BuildError::Spawn { cargo: cargo.to_owned(), error })?;
    if status.success() {
        let Some(cdylib) = messages.cdylib else {
            return Err(BuildError::NotCdylib { package: package.to_owned() });
        };
        counter.finish();
        return Ok(Built { cdylib, compiled: messages.compiled });
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
    /// The crates compiled rather than found fresh, in the order they finished.
    compiled: Vec<String>,
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
    progress: Progress<'_>,
    counter: &CrateCounter<'_>,
) -> Messages {
    let mut messages = Messages::default();
    let mut lines = BufReader::new(stdout).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        match serde_json::from_slice::<Message>(&line) {
            Ok(Message::CompilerArtifact(artifact)) => {
                let is_build_script = artifact.target.kind.contains(&TargetKind::CustomBuild);
                if !is_build_script {
                    counter.artifact(&artifact.package_id.repr);
                }
                if !artifact.fresh && !is_build_script && !messages.compiled.contains(&artifact.target.name) {
                    messages.compiled.push(artifact.target.name.clone());
                }
                if Path::new(artifact.manifest_path.as_str()) == manifest
                    && artifact.target.kind.contains(&TargetKind::CDyLib)
                {
                    messages.cdylib = artifact
                        .filenames
                        .iter()
                        .find(|path| path.as_str().ends_with(std::env::consts::DLL_SUFFIX))
                        .map(|path| path.clone().into_std_path_buf());
                }
            }
            Ok(Message::CompilerMessage(message)) => {
                let Some(rendered) = message.message.rendered else { continue };
                match message.message.level {
                    DiagnosticLevel::Error | DiagnosticLevel::Ice => messages.errors.push(rendered),
                    DiagnosticLevel::Warning => {
                        progress(BuildEvent::Line(rendered.trim_end()));
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

/// Forwards cargo's stderr ("Compiling abi_stable v0.11.3", ...), to `counter` too when given,
/// and keeps its last lines.
async fn read_stderr(
    stderr: impl AsyncRead + Unpin,
    progress: Progress<'_>,
    counter: Option<&CrateCounter<'_>>,
) -> VecDeque<String> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut lines = BufReader::new(stderr).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        progress(BuildEvent::Line(line.trim_start()));
        if let Some(counter) = counter {
            counter.line(&line);
        }
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
            compiled: vec![],
        };
        assert_eq!(messages.diagnostics(), "error: one\n\nerror: two\n\nwarning: three");

        let messages = Messages {
            cdylib: None,
            errors: vec!["e".repeat(MAX_DIAGNOSTICS_BYTES - 10), "error: big".repeat(10)],
            warnings: vec![],
            compiled: vec![],
        };
        let text = messages.diagnostics();
        assert!(text.len() < MAX_DIAGNOSTICS_BYTES + 100);
        assert!(text.ends_with("(further diagnostics left out)"), "{}", &text[text.len() - 50..]);
    }
}
