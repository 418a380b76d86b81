//! The plugin builder: turns a plugin's [`SourceTree`] into a shared library on this host,
//! once per source hash.
//!
//! # Layout on disk
//!
//! Owners share nothing a build can write: each [`Owner`] has its own libraries, sources,
//! cargo home and target directory (`<o>` is [`Owner::dir_name`]).
//!
//! - `<cache_dir>/owners/<o>/plugins/<hash>/plugin.so`: the owner's built library, one path per
//!   hash because `dlopen` deduplicates libraries by path. Its presence is the cache: a hash
//!   found there is never built again for that owner. Another owner's library of the same hash
//!   is never used: it came out of that owner's target directory, which that owner's earlier
//!   build scripts could write.
//! - `<cache_dir>/owners/<o>/src/<package>/`: the copy of the crate cargo builds (the fetch
//!   writes `Cargo.lock` into it; the upload itself is never touched), rewritten for each build
//!   under the owner's build lock. Its path is stable per owner and package name on purpose:
//!   cargo identifies a path package by its path, so a new path per source hash made every
//!   edit a new crate to cargo and rustc, with no incremental cache to reuse; at a stable path
//!   an edited plugin recompiles only what the edit changed (see [`package_dir_name`]).
//! - `<target_dir>/owners/<o>/target/`: the owner's cargo target directory, shared by the
//!   owner's plugins so that dependencies (abi_stable above all) compile once per owner; the
//!   only directory besides its temporary one that a build may write.
//! - `<target_dir>/owners/<o>/cargo-home/`: the owner's `CARGO_HOME`, which the fetch fills
//!   with the registry's index and sources; builds read its `registry/` only.
//! - `<target_dir>/owners/<o>/tmp/build/`: the builds' working directory (its `tmp/`, emptied
//!   before each build, is `TMPDIR`; its `cargo-home/` is the build's `CARGO_HOME`, whose
//!   `registry` links to the owner's, so cargo's locks and cache records land there). Its path
//!   never changes, since cargo's fingerprints hold the paths of registry sources.
//! - `<target_dir>/owners/<o>/build.lock`: held around each of the owner's builds, because
//!   plugins with the same crate name would overwrite each other's `release/lib<name>.so` (and
//!   share one crate copy).
//! - `<target_dir>/owners/<o>/warm-<hash>`: written once the plugin template's dependencies
//!   are compiled in the owner's target directory ([`Builder::warm`], in `warm.rs`).
//! - `<target_dir>/kiln/`: the engine's copy of `kiln-plugin-api`, which every build patches
//!   in and reads only.
//!
//! Sources are read and validated by [`read_source`] (and the [`SourceTree`] constructors)
//! entirely in memory, before anything is written.

mod cargo;
mod progress;
pub mod sandboxed;
mod warm;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use self::progress::{BuildEvent, Progress};
use self::sandboxed::Toolchain;
pub use self::warm::Warmed;
use crate::owner::Owner;
use crate::plugin_source::SourceTree;

/// Where and with what the builder builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderConfig {
    /// Holds each owner's built libraries and the crates' build copies (`owners/`).
    pub cache_dir: PathBuf,
    /// Holds each owner's cargo target directory and cargo home (`owners/`), and the engine's
    /// plugin API (`kiln/`).
    pub target_dir: PathBuf,
    /// The cargo executable to run.
    pub cargo: PathBuf,
    /// The program (`kiln` or `kiln-web`) whose hidden [`sandboxed::SUBCOMMAND`] runs builds
    /// in the sandbox; `None` builds outside it, which only `--insecure-no-sandbox` may ask
    /// for. The worker, `run-local` and the web app's cluster set their executor program here
    /// unless the sandbox is off.
    pub sandbox: Option<PathBuf>,
}

impl BuilderConfig {
    /// A config with `target_dir` at `cache_dir/target`, `cargo` from `PATH` and no sandbox
    /// program yet.
    pub fn new(cache_dir: impl Into<PathBuf>) -> BuilderConfig {
        let cache_dir = cache_dir.into();
        BuilderConfig { target_dir: cache_dir.join("target"), cache_dir, cargo: PathBuf::from("cargo"), sandbox: None }
    }

    /// This config with builds sandboxed exactly when executors are (`sandbox`, the executors'
    /// setting): by `program`, the executors' program, unless a sandbox program is set already.
    pub fn sandboxed_like_executors(mut self, program: &Path, sandbox: bool) -> BuilderConfig {
        self.sandbox = match sandbox {
            true => self.sandbox.or_else(|| Some(program.to_owned())),
            false => None,
        };
        self
    }
}

/// A plugin library ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPlugin {
    /// The source tree's hash ([`SourceTree::hash`]).
    pub hash: String,
    /// The library's path, unique to this hash.
    pub library: PathBuf,
    /// Whether the library came from the cache, with no cargo run.
    pub cached: bool,
    /// The packages cargo compiled in this build, in the order they finished; the ones it
    /// found up to date are not listed. Empty when the library came from the cache.
    pub compiled: Vec<String>,
}

/// Why a plugin could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A file operation in the cache or target directory failed.
    #[error("cannot {action} `{path}`: {error}: check the directory's permissions and free space")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// Cargo could not be started.
    #[error("cannot run cargo (`{cargo}`): {error}: install Rust from https://rustup.rs or configure the cargo path")]
    Spawn {
        /// The cargo executable that was tried.
        cargo: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The plugin's code does not compile; `diagnostics` are rustc's, errors first.
    #[error("the plugin does not compile:\n{diagnostics}")]
    Compile {
        /// The compiler's rendered messages (file, line, message), errors before warnings.
        diagnostics: String,
    },
    /// The crate built, but has no cdylib library to load.
    #[error(
        "the plugin crate `{package}` builds no shared library: add `[lib] crate-type = [\"cdylib\"]` \
         to its Cargo.toml"
    )]
    NotCdylib {
        /// The crate's package name.
        package: String,
    },
    /// Cargo failed before the compiler said anything (bad manifest, unresolvable dependency).
    #[error("cargo failed ({status}) before compiling the plugin: fix what it reports:\n{stderr}")]
    Cargo {
        /// Cargo's exit status.
        status: String,
        /// The last lines cargo wrote to stderr.
        stderr: String,
    },
    /// The build ran past its time limit and was stopped.
    #[error(
        "the plugin build took more than {} minutes and was stopped: check the plugin's build \
         scripts and dependencies",
        .limit.as_secs() / 60
    )]
    Timeout {
        /// The limit it ran past.
        limit: Duration,
    },
    /// A background task of the builder failed; a bug.
    #[error("a plugin build task failed: {0}")]
    Task(String),
}

/// Builds plugins, caching by source hash. Cheap to clone; clones share the cache state.
#[derive(Clone)]
pub struct Builder {
    inner: Arc<Inner>,
}

struct Inner {
    config: BuilderConfig,
    cargo_invocations: AtomicU64,
    /// The toolchain, found at the first build.
    toolchain: tokio::sync::OnceCell<Toolchain>,
    /// One async mutex per hash being built in this process, so concurrent builds of the same
    /// source run cargo once. Entries go away when nobody waits on them.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder for `config`; relative directories are made absolute against the current one.
    pub fn new(mut config: BuilderConfig) -> Builder {
        for dir in [&mut config.cache_dir, &mut config.target_dir] {
            if let Ok(absolute) = std::path::absolute(&*dir) {
                *dir = absolute;
            }
        }
        Builder {
            inner: Arc::new(Inner {
                config,
                cargo_invocations: AtomicU64::new(0),
                toolchain: tokio::sync::OnceCell::new(),
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The builder's configuration, with absolute directories.
    pub fn config(&self) -> &BuilderConfig {
        &self.inner.config
    }

    /// How many times this builder (and its clones) started cargo.
    pub fn cargo_invocations(&self) -> u64 {
        self.inner.cargo_invocations.load(Ordering::Relaxed)
    }

    /// The library `owner` has cached for `hash`, if this host built it for that owner before.
    /// Anything that is not a SHA-256 hex hash (as from the network) is simply not found.
    pub async fn cached(&self, owner: &Owner, hash: &str) -> Option<BuiltPlugin> {
        let is_hash = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hash {
            return None;
        }
        let library = self.dirs(owner).library(hash);
        tokio::fs::try_exists(&library).await.unwrap_or(false).then(|| BuiltPlugin {
            hash: hash.to_owned(),
            library,
            cached: true,
            compiled: Vec::new(),
        })
    }

    /// Builds `source` into a library for `owner`, or returns the owner's cached one. Cargo's
    /// progress lines ("Compiling serde v1.0.228"), the compiler's warnings and the count of
    /// crates compiled go to `progress` as they come.
    pub async fn build(
        &self,
        owner: &Owner,
        source: &SourceTree,
        progress: Progress<'_>,
    ) -> Result<BuiltPlugin, BuildError> {
        let hash = source.hash();
        if let Some(cached) = self.cached(owner, &hash).await {
            tracing::debug!(%owner, plugin = source.package_name(), hash = %hash, "plugin found in cache");
            return Ok(cached);
        }
        let gate_key = format!("{}/{hash}", owner.dir_name());
        let gate = self.gate(&gate_key);
        let result = {
            let _building = gate.lock().await;
            self.build_alone(owner, source, &hash, progress).await
        };
        self.release_gate(&gate_key, gate);
        result
    }

    /// Builds while holding this process's gate for the owner and `hash`.
    async fn build_alone(
        &self,
        owner: &Owner,
        source: &SourceTree,
        hash: &str,
        progress: Progress<'_>,
    ) -> Result<BuiltPlugin, BuildError> {
        // A concurrent build of the same hash may have finished while we waited.
        if let Some(cached) = self.cached(owner, hash).await {
            tracing::debug!(%owner, plugin = source.package_name(), hash, "plugin built by a concurrent build");
            return Ok(cached);
        }
        let config = &self.inner.config;
        let dirs = self.dirs(owner);
        let owner_lock = lock_owner(&dirs.root, progress).await?;
        // Another process sharing the target directory may have built it while we waited.
        if let Some(cached) = self.cached(owner, hash).await {
            tracing::debug!(%owner, plugin = source.package_name(), hash, "plugin built by another process");
            return Ok(cached);
        }
        let started = Instant::now();
        tracing::info!(%owner, plugin = source.package_name(), hash, "building plugin");
        let source_dir = dirs.sources.join(package_dir_name(source.package_name()));
        let prepared = {
            let (source, source_dir, kiln_dir) = (source.clone(), source_dir.clone(), config.target_dir.join("kiln"));
            let dirs = dirs.clone();
            blocking(move || prepare(&source, &source_dir, &kiln_dir, &dirs)).await?
        };
        let toolchain = self.toolchain(&dirs.root).await?;
        self.inner.cargo_invocations.fetch_add(1, Ordering::Relaxed);
        let fetch = cargo::CargoFetch {
            cargo: &toolchain.cargo,
            manifest: &prepared.manifest,
            plugin_api: &prepared.plugin_api,
            cargo_home: &dirs.cargo_home,
            work_dir: &dirs.root,
        };
        let built = match cargo::fetch(&fetch, progress).await {
            Ok(()) => {
                let work_dir = {
                    let dirs = dirs.clone();
                    blocking(move || build_work_dir(&dirs)).await?
                };
                let build = cargo::CargoBuild {
                    toolchain,
                    sandbox: config.sandbox.as_deref(),
                    manifest: &prepared.manifest,
                    target_dir: &dirs.target,
                    plugin_api: &prepared.plugin_api,
                    cargo_home: &dirs.cargo_home,
                    work_dir: &work_dir,
                };
                cargo::run(&build, source.package_name(), progress).await
            }
            Err(error) => Err(error),
        };
        let cargo::Built { cdylib: artifact, compiled } = match built {
            Ok(built) => built,
            Err(error) => {
                tracing::info!(%owner, plugin = source.package_name(), hash, elapsed = ?started.elapsed(), "plugin build failed");
                return Err(error);
            }
        };
        let library = dirs.library(hash);
        {
            let library = library.clone();
            blocking(move || install(&artifact, &library)).await?;
        }
        drop(owner_lock);
        tracing::info!(%owner, plugin = source.package_name(), hash, elapsed = ?started.elapsed(), "built plugin");
        Ok(BuiltPlugin { hash: hash.to_owned(), library, cached: false, compiled })
    }

    /// The directories of `owner` (see the module's doc).
    fn dirs(&self, owner: &Owner) -> OwnerDirs {
        let config = &self.inner.config;
        let name = owner.dir_name();
        let cache = config.cache_dir.join("owners").join(&name);
        let root = config.target_dir.join("owners").join(&name);
        OwnerDirs {
            libraries: cache.join("plugins"),
            sources: cache.join("src"),
            target: root.join("target"),
            cargo_home: root.join("cargo-home"),
            root,
        }
    }

    /// The toolchain, found once.
    async fn toolchain(&self, work_dir: &Path) -> Result<&Toolchain, BuildError> {
        let (cargo, work_dir) = (self.inner.config.cargo.clone(), work_dir.to_owned());
        self.inner.toolchain.get_or_try_init(|| blocking(move || sandboxed::find_toolchain(&cargo, &work_dir))).await
    }

    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|poison| poison.into_inner());
        in_flight.entry(key.to_owned()).or_default().clone()
    }

    fn release_gate(&self, key: &str, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|poison| poison.into_inner());
        // Two references: the map's and ours. More means someone else still waits on it.
        if Arc::strong_count(&gate) == 2 {
            in_flight.remove(key);
        }
    }
}

/// One owner's directories on this host.
#[derive(Debug, Clone)]
struct OwnerDirs {
    /// `plugins/`: built libraries by hash.
    libraries: PathBuf,
    /// `src/`: the crates' build copies by package name.
    sources: PathBuf,
    /// The root of the owner's build directories (lock, target, cargo home, temporary ones).
    root: PathBuf,
    /// The cargo target directory.
    target: PathBuf,
    /// The cargo home the fetch fills.
    cargo_home: PathBuf,
}

impl OwnerDirs {
    fn library(&self, hash: &str) -> PathBuf {
        let file = format!("plugin{}", std::env::consts::DLL_SUFFIX);
        self.libraries.join(hash).join(file)
    }
}

/// The name of a package's crate copy in `src/`: the package name itself when it is a plain
/// cargo name (letters, digits, `-`, `_`, at most 64 bytes), as it always is for a manifest
/// cargo accepts; anything else (which cargo then refuses) gets a name made of its hash, so no
/// manifest can name a path outside `src/`.
fn package_dir_name(package: &str) -> String {
    let plain = !package.is_empty()
        && package.len() <= 64
        && package.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return package.to_owned();
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(package.as_bytes());
    let hex: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
    format!("package-{hex}")
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| BuildError::Task(error.to_string()))?
}

/// Takes the owner's build lock in `<owner_root>/build.lock`, telling `progress` when it has
/// to wait for another build; dropping the file releases the lock.
async fn lock_owner(owner_root: &Path, progress: Progress<'_>) -> Result<std::fs::File, BuildError> {
    let kiln_dir = owner_root;
    let path = kiln_dir.join("build.lock");
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |error| BuildError::Io { action, path, error }
    };
    let file = {
        let (kiln_dir, path) = (kiln_dir.to_owned(), path.clone());
        blocking(move || {
            std::fs::create_dir_all(&kiln_dir).map_err(io_error("create", &kiln_dir))?;
            let file = std::fs::File::options().create(true).truncate(false).write(true).open(&path);
            file.map_err(io_error("open", &path))
        })
        .await?
    };
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(error)) => return Err(io_error("lock", &path)(error)),
    }
    progress(BuildEvent::Line("Waiting for another build of this owner's plugins on this host to finish"));
    blocking(move || {
        file.lock().map_err(io_error("lock", &path))?;
        Ok(file)
    })
    .await
}

/// Where [`prepare`] put things.
struct Prepared {
    manifest: PathBuf,
    plugin_api: PathBuf,
}

/// Writes the plugin API copy (once), the owner's directories, its cargo home's configuration
/// and a fresh copy of the crate to build. Blocking.
fn prepare(source: &SourceTree, source_dir: &Path, kiln_dir: &Path, dirs: &OwnerDirs) -> Result<Prepared, BuildError> {
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |error| BuildError::Io { action, path, error }
    };
    for dir in [&dirs.target, &dirs.cargo_home.join("registry"), &dirs.root.join("tmp")] {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    }
    copy_cargo_config(&dirs.cargo_home).map_err(io_error("copy the cargo configuration into", &dirs.cargo_home))?;
    let plugin_api = crate::plugin_source::embedded::ensure_plugin_api(kiln_dir)
        .map_err(io_error("write the plugin API into", kiln_dir))?;
    // Left over from an interrupted build: start from a clean copy.
    if source_dir.exists() {
        std::fs::remove_dir_all(source_dir).map_err(io_error("remove", source_dir))?;
    }
    std::fs::create_dir_all(source_dir).map_err(io_error("create", source_dir))?;
    source.write_to(source_dir).map_err(io_error("write the plugin source into", source_dir))?;
    let manifest = source_dir.join("Cargo.toml");
    if !source.has_workspace() {
        // Its own workspace root, so that no Cargo.toml in a parent directory captures it.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&manifest)
            .and_then(|mut file| file.write_all(b"\n[workspace]\n"))
            .map_err(io_error("append [workspace] to", &manifest))?;
    }
    let manifest = manifest.canonicalize().map_err(io_error("resolve", &manifest))?;
    Ok(Prepared { manifest, plugin_api })
}

/// The operator's cargo home: `CARGO_HOME`, or `~/.cargo`.
fn operator_cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

/// Copies the operator's cargo configuration (`config.toml`, `config`; a registry mirror, say)
/// into `cargo_home`, so that the owner's fetches and builds honour it. Never credentials.
fn copy_cargo_config(cargo_home: &Path) -> io::Result<()> {
    let Some(operator) = operator_cargo_home() else { return Ok(()) };
    if operator == cargo_home {
        return Ok(());
    }
    for name in ["config.toml", "config"] {
        let from = operator.join(name);
        if from.is_file() {
            std::fs::copy(&from, cargo_home.join(name))?;
        }
    }
    Ok(())
}

/// Readies the owner's build directory, `tmp/build/` in the owner's root: `tmp/` inside it,
/// emptied, for `TMPDIR`, and `cargo-home/` with the owner's configuration and a `registry`
/// link to the owner's registry, so cargo reads the fetched sources and writes its locks and
/// records here. The path stays the same from build to build (the owner's builds take turns
/// under its build lock): cargo's fingerprints hold the absolute paths of registry sources, so
/// a `CARGO_HOME` of a new name each time would rebuild every dependency on every build.
/// Blocking.
fn build_work_dir(dirs: &OwnerDirs) -> Result<PathBuf, BuildError> {
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |error| BuildError::Io { action, path, error }
    };
    let work_dir = dirs.root.join("tmp").join("build");
    let temp = work_dir.join("tmp");
    match std::fs::remove_dir_all(&temp) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("empty", &temp)(error)),
    }
    let cargo_home = work_dir.join("cargo-home");
    for dir in [temp, cargo_home.clone()] {
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
    }
    for name in ["config.toml", "config"] {
        let from = dirs.cargo_home.join(name);
        if from.is_file() {
            std::fs::copy(&from, cargo_home.join(name)).map_err(io_error("copy", &from))?;
        }
    }
    let registry = dirs.cargo_home.join("registry");
    let link = cargo_home.join("registry");
    if std::fs::read_link(&link).ok().as_deref() != Some(registry.as_path()) {
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("replace", &link)(error)),
        }
        std::os::unix::fs::symlink(&registry, &link).map_err(io_error("link to", &registry))?;
    }
    Ok(work_dir)
}

/// Copies the built library to its cache path through a temporary file and a rename, so that
/// the cache never holds a partial library. Blocking.
fn install(artifact: &Path, library: &Path) -> Result<(), BuildError> {
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |error| BuildError::Io { action, path, error }
    };
    let dir = library.parent().unwrap_or(library);
    std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let mut temp =
        tempfile::Builder::new().prefix(".plugin-").tempfile_in(dir).map_err(io_error("create a file in", dir))?;
    let mut built = std::fs::File::open(artifact).map_err(io_error("open", artifact))?;
    io::copy(&mut built, temp.as_file_mut()).map_err(io_error("copy", artifact))?;
    temp.as_file().sync_all().map_err(io_error("sync", temp.path()))?;
    temp.persist(library).map_err(|error| BuildError::Io {
        action: "install",
        path: library.to_owned(),
        error: error.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_copy_is_named_by_its_package_unless_the_name_could_leave_src() {
        assert_eq!(package_dir_name("word-count_2"), "word-count_2");
        for odd in ["../x", "a/b", "", ".", "x".repeat(65).as_str(), "é"] {
            let name = package_dir_name(odd);
            assert!(name.starts_with("package-") && name.len() == "package-".len() + 16, "{odd:?} gave {name:?}");
        }
        assert_ne!(package_dir_name("../x"), package_dir_name("../y"));
    }
}
