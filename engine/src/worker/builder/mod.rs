//! The plugin builder: turns a plugin's [`SourceTree`] into a shared library on this host,
//! once per source hash.
//!
//! # Layout on disk
//!
//! - `<cache_dir>/plugins/<hash>/plugin.so`: the built library, one path per hash because
//!   `dlopen` deduplicates libraries by path. Its presence is the cache: a hash found there is
//!   never built again.
//! - `<cache_dir>/src/<hash>/`: the copy of the crate cargo builds (cargo writes `Cargo.lock`
//!   into it; the upload itself is never touched).
//! - `<target_dir>/`: one cargo target directory shared by every plugin of the host, so that
//!   dependencies (abi_stable above all) compile once. `<target_dir>/kiln/` holds the engine's
//!   copy of `kiln-plugin-api`, which every build patches in, and `build.lock`, a host-wide
//!   lock held around each build, because plugins with the same crate name would overwrite each
//!   other's `target/release/lib<name>.so`.
//!
//! Sources are read and validated by [`read_source`] (and the [`SourceTree`] constructors)
//! entirely in memory, before anything is written.

mod cargo;
mod embedded;
mod links;
mod source;
mod unpack;

// Each item has this one public path; the submodules are private seams of the builder.
pub use source::{MAX_BYTES, MAX_FILES, SourceError, SourceLimits, SourceTree, read_source, read_source_with_limits};

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where and with what the builder builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderConfig {
    /// Holds built libraries (`plugins/`) and the crates' build copies (`src/`).
    pub cache_dir: PathBuf,
    /// The cargo target directory shared by all plugin builds of the host.
    pub target_dir: PathBuf,
    /// The cargo executable to run.
    pub cargo: PathBuf,
}

impl BuilderConfig {
    /// A config with `target_dir` at `cache_dir/target` and `cargo` from `PATH`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> BuilderConfig {
        let cache_dir = cache_dir.into();
        BuilderConfig { target_dir: cache_dir.join("target"), cache_dir, cargo: PathBuf::from("cargo") }
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

    /// The cached library for `hash`, if this host built it before. Anything that is not a
    /// SHA-256 hex hash (as from the network) is simply not found.
    pub async fn cached(&self, hash: &str) -> Option<BuiltPlugin> {
        let is_hash = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hash {
            return None;
        }
        let library = self.library_path(hash);
        tokio::fs::try_exists(&library).await.unwrap_or(false).then(|| BuiltPlugin {
            hash: hash.to_owned(),
            library,
            cached: true,
        })
    }

    /// Builds `source` into a library, or returns the cached one. Cargo's progress lines
    /// ("Compiling serde v1.0.228") and the compiler's warnings go to `progress` as they come.
    pub async fn build(
        &self,
        source: &SourceTree,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<BuiltPlugin, BuildError> {
        let hash = source.hash();
        if let Some(cached) = self.cached(&hash).await {
            tracing::debug!(plugin = source.package_name(), hash = %hash, "plugin found in cache");
            return Ok(cached);
        }
        let gate = self.gate(&hash);
        let result = {
            let _building = gate.lock().await;
            self.build_alone(source, &hash, progress).await
        };
        self.release_gate(&hash, gate);
        result
    }

    /// Builds while holding this process's gate for `hash`.
    async fn build_alone(
        &self,
        source: &SourceTree,
        hash: &str,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<BuiltPlugin, BuildError> {
        // A concurrent build of the same hash may have finished while we waited.
        if let Some(cached) = self.cached(hash).await {
            tracing::debug!(plugin = source.package_name(), hash, "plugin built by a concurrent build");
            return Ok(cached);
        }
        let config = &self.inner.config;
        let kiln_dir = config.target_dir.join("kiln");
        let host_lock = lock_host(&kiln_dir, progress).await?;
        // Another process sharing the target directory may have built it while we waited.
        if let Some(cached) = self.cached(hash).await {
            tracing::debug!(plugin = source.package_name(), hash, "plugin built by another process");
            return Ok(cached);
        }
        let started = Instant::now();
        tracing::info!(plugin = source.package_name(), hash, "building plugin");
        let source_dir = config.cache_dir.join("src").join(hash);
        let prepared = {
            let (source, source_dir) = (source.clone(), source_dir.clone());
            blocking(move || prepare(&source, &source_dir, &kiln_dir)).await?
        };
        self.inner.cargo_invocations.fetch_add(1, Ordering::Relaxed);
        let build = cargo::CargoBuild {
            cargo: &config.cargo,
            manifest: &prepared.manifest,
            target_dir: &config.target_dir,
            plugin_api: &prepared.plugin_api,
            work_dir: source_dir.parent().unwrap_or(&config.cache_dir),
        };
        let artifact = match cargo::run(&build, source.package_name(), progress).await {
            Ok(artifact) => artifact,
            Err(error) => {
                tracing::info!(plugin = source.package_name(), hash, elapsed = ?started.elapsed(), "plugin build failed");
                return Err(error);
            }
        };
        let library = self.library_path(hash);
        {
            let library = library.clone();
            blocking(move || install(&artifact, &library)).await?;
        }
        drop(host_lock);
        tracing::info!(plugin = source.package_name(), hash, elapsed = ?started.elapsed(), "built plugin");
        Ok(BuiltPlugin { hash: hash.to_owned(), library, cached: false })
    }

    fn library_path(&self, hash: &str) -> PathBuf {
        let file = format!("plugin{}", std::env::consts::DLL_SUFFIX);
        self.inner.config.cache_dir.join("plugins").join(hash).join(file)
    }

    fn gate(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|poison| poison.into_inner());
        in_flight.entry(hash.to_owned()).or_default().clone()
    }

    fn release_gate(&self, hash: &str, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|poison| poison.into_inner());
        // Two references: the map's and ours. More means someone else still waits on it.
        if Arc::strong_count(&gate) == 2 {
            in_flight.remove(hash);
        }
    }
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| BuildError::Task(error.to_string()))?
}

/// Takes the host-wide build lock in `<kiln_dir>/build.lock`, telling `progress` when it has
/// to wait for another build; dropping the file releases the lock.
async fn lock_host(kiln_dir: &Path, progress: &(dyn Fn(&str) + Send + Sync)) -> Result<std::fs::File, BuildError> {
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
    progress("Waiting for another plugin build on this host to finish");
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

/// Writes the plugin API copy (once) and a fresh copy of the crate to build. Blocking.
fn prepare(source: &SourceTree, source_dir: &Path, kiln_dir: &Path) -> Result<Prepared, BuildError> {
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |error| BuildError::Io { action, path, error }
    };
    let plugin_api = embedded::ensure_plugin_api(kiln_dir).map_err(io_error("write the plugin API into", kiln_dir))?;
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
