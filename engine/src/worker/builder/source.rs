//! Plugin sources: a crate read from a directory, an archive or a single `lib.rs`, validated
//! entirely in memory into a [`SourceTree`] before anything is written to disk.
//!
//! Symlinks that stay inside the crate are resolved to copies of what they point to, so a
//! `SourceTree` holds regular files only and nothing written from it can ever be a link that
//! leads out of the build directory. A symlink that points outside the crate (lexically,
//! relative to its own directory) or to an absolute path is refused; one that points to nothing
//! is dropped, as it would dangle on the worker too.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::embedded;
use super::links;
use super::unpack::{self, Unpacked};

/// The most files a plugin source may hold: a plugin is a small crate, and every file costs
/// memory on the controller and the workers while the upload is checked.
pub const MAX_FILES: usize = 10_000;

/// The most bytes a plugin source may unpack to (files' contents, counted while
/// decompressing): large enough for any hand-written crate with test data, small enough that
/// an archive bomb stops long before it fills memory or disk.
pub const MAX_BYTES: u64 = 50 * 1024 * 1024;

/// The limits a plugin source must stay within; [`SourceLimits::default`] gives
/// [`MAX_FILES`] and [`MAX_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// The most files (after resolving symlinks to copies) the crate may have.
    pub max_files: usize,
    /// The most bytes the files' contents may add up to.
    pub max_bytes: u64,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits { max_files: MAX_FILES, max_bytes: MAX_BYTES }
    }
}

/// Why a plugin source was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source could not be read from disk.
    #[error("cannot read `{path}`: {error}")]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The path is neither a directory nor a file of a supported kind.
    #[error(
        "unsupported plugin source `{path}`: give a crate directory, a .tar.gz, .tgz or .zip \
         archive of one, or a single .rs file"
    )]
    Unsupported {
        /// The path given.
        path: PathBuf,
    },
    /// The archive is corrupt or uses a feature we do not read.
    #[error("cannot unpack the plugin archive: {message}: pack the crate again with tar czf or zip")]
    Archive {
        /// What went wrong.
        message: String,
    },
    /// An entry's name could escape the crate directory.
    #[error("refusing archive entry `{entry}`: {reason}")]
    UnsafePath {
        /// The entry's name as the archive gives it.
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A symlink points out of the crate, to an absolute path, or into a loop.
    #[error("refusing symlink `{entry}` -> `{target}`: {reason}: replace it with a copy of what it points to")]
    UnsafeLink {
        /// The symlink's path in the crate.
        entry: String,
        /// What it points to.
        target: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A hard link, device, fifo or socket.
    #[error("refusing entry `{entry}`: {kind} are not allowed in a plugin source")]
    UnsupportedEntry {
        /// The entry's name.
        entry: String,
        /// What kind of entry it is, in the plural.
        kind: &'static str,
    },
    /// Two entries with the same path, or a path under a file.
    #[error("refusing entry `{entry}`: {reason}")]
    Conflict {
        /// The entry's path in the crate.
        entry: String,
        /// What it clashes with.
        reason: String,
    },
    /// More files than [`SourceLimits::max_files`].
    #[error("the plugin source has more than {limit} files: leave out target/, data and generated files")]
    TooManyFiles {
        /// The limit that was passed.
        limit: usize,
    },
    /// More bytes than [`SourceLimits::max_bytes`].
    #[error(
        "the plugin source unpacks to more than {limit} bytes: leave out target/, .git/ and data \
         files"
    )]
    TooLarge {
        /// The limit that was passed.
        limit: u64,
    },
    /// No `Cargo.toml` at the root of the crate.
    #[error(
        "the plugin source has no Cargo.toml at its root: upload a crate directory, an archive \
         of one, or a single .rs file"
    )]
    NoManifest,
    /// `Cargo.toml` does not parse or lacks a package name.
    #[error("the plugin's Cargo.toml is not valid: {message}: fix it and upload again")]
    BadManifest {
        /// What is wrong with it.
        message: String,
    },
    /// `Cargo.toml` has no `[package]`, e.g. a virtual workspace manifest.
    #[error("the plugin's Cargo.toml has no [package] section: a plugin is a single crate, not a workspace")]
    NotAPackage,
}

/// A plugin crate in memory: relative paths (`/`-separated) to file contents and executable
/// bits, validated, with a parsed `Cargo.toml` at its root. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceTree {
    files: Arc<BTreeMap<String, SourceFile>>,
    package: String,
    has_workspace: bool,
    hash: String,
}

/// A file's contents and executable bit.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct SourceFile {
    pub(super) bytes: Vec<u8>,
    pub(super) executable: bool,
}

/// Reads a plugin source with the default [`SourceLimits`]; see [`read_source_with_limits`].
pub fn read_source(path: &Path) -> Result<SourceTree, SourceError> {
    read_source_with_limits(path, &SourceLimits::default())
}

/// Reads and validates a plugin source: a crate directory (without `target/`, `.git/` and
/// `.cargo/` at any depth), a `.tar.gz`/`.tgz` or `.zip` of a crate (a single top-level
/// directory is stripped), or a single `.rs` file wrapped into the plugin template.
///
/// This does blocking I/O: call it from `spawn_blocking` in async code.
pub fn read_source_with_limits(path: &Path, limits: &SourceLimits) -> Result<SourceTree, SourceError> {
    let io_error = |error| SourceError::Io { path: path.to_owned(), error };
    let metadata = fs::metadata(path).map_err(io_error)?;
    if metadata.is_dir() {
        return SourceTree::from_unpacked(unpack::read_dir(path, limits)?, limits);
    }
    let name = path.file_name().map(|name| name.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        let file = File::open(path).map_err(io_error)?;
        SourceTree::from_unpacked(unpack::read_tar_gz(io::BufReader::new(file), limits)?, limits)
    } else if name.ends_with(".zip") {
        let file = File::open(path).map_err(io_error)?;
        SourceTree::from_unpacked(unpack::read_zip(file, metadata.len(), limits)?, limits)
    } else if name.ends_with(".rs") && metadata.is_file() {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|file| file.take(limits.max_bytes.saturating_add(1)).read_to_end(&mut bytes))
            .map_err(io_error)?;
        if bytes.len() as u64 > limits.max_bytes {
            return Err(SourceError::TooLarge { limit: limits.max_bytes });
        }
        SourceTree::from_single_file(&bytes)
    } else {
        Err(SourceError::Unsupported { path: path.to_owned() })
    }
}

impl SourceTree {
    /// Reads a crate from a `.tar.gz` held in memory (the wire form between client, controller
    /// and worker), with the default [`SourceLimits`].
    pub fn from_tar_gz(bytes: &[u8]) -> Result<SourceTree, SourceError> {
        SourceTree::from_tar_gz_with_limits(bytes, &SourceLimits::default())
    }

    /// Reads a crate from a `.tar.gz` held in memory, within `limits`.
    pub fn from_tar_gz_with_limits(bytes: &[u8], limits: &SourceLimits) -> Result<SourceTree, SourceError> {
        SourceTree::from_unpacked(unpack::read_tar_gz(bytes, limits)?, limits)
    }

    /// Wraps a single `lib.rs` into the plugin template: a crate named `plugin` with the
    /// template's `Cargo.toml` and the given file as `src/lib.rs`. At most [`MAX_BYTES`].
    pub fn from_single_file(lib_rs: &[u8]) -> Result<SourceTree, SourceError> {
        if lib_rs.len() as u64 > MAX_BYTES {
            return Err(SourceError::TooLarge { limit: MAX_BYTES });
        }
        let manifest = embedded::single_file_manifest();
        let mut files = BTreeMap::new();
        files.insert("Cargo.toml".to_owned(), SourceFile::new(manifest.into_bytes()));
        files.insert("src/lib.rs".to_owned(), SourceFile::new(lib_rs.to_vec()));
        SourceTree::from_files(files)
    }

    /// Packs the tree as a deterministic `.tar.gz` (sorted entries, no timestamps or owners),
    /// which [`SourceTree::from_tar_gz`] reads back into an equal tree.
    pub fn to_tar_gz(&self) -> Vec<u8> {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut archive = tar::Builder::new(encoder);
        for (path, file) in self.files.iter() {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(file.bytes.len() as u64);
            header.set_mode(if file.executable { 0o755 } else { 0o644 });
            header.set_mtime(0);
            // Writing to a Vec cannot fail, and every path was validated as relative and free
            // of `..` when the tree was made, which is all tar's path setter checks.
            archive
                .append_data(&mut header, path, file.bytes.as_slice())
                .expect("appending a validated file to an in-memory tar");
        }
        archive.into_inner().and_then(|encoder| encoder.finish()).expect("finishing an in-memory tar.gz")
    }

    /// The hex SHA-256 of the tree's files (sorted paths, executable bits, contents) and of the
    /// engine's plugin API version: the same crate gives the same hash whatever form it came
    /// in, and a new API version never reuses an old build.
    pub fn hash(&self) -> String {
        self.hash.clone()
    }

    /// The name of the crate's package, from its `Cargo.toml`.
    pub fn package_name(&self) -> &str {
        &self.package
    }

    /// How many files the tree holds.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// The sum of the files' sizes, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|file| file.bytes.len() as u64).sum()
    }

    /// The tree's file paths, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// The contents of the file at `path` (e.g. `"src/lib.rs"`), if there is one.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(|file| file.bytes.as_slice())
    }

    /// Whether `Cargo.toml` has a `[workspace]` table of its own.
    pub(super) fn has_workspace(&self) -> bool {
        self.has_workspace
    }

    /// Writes the files into `dir`, which must be new and empty. Blocking.
    pub(super) fn write_to(&self, dir: &Path) -> io::Result<()> {
        for (path, file) in self.files.iter() {
            let full = dir.join(path);
            if let Some(parent) = full.parent() {
                fs::create_dir_all(parent)?;
            }
            // `create_new` makes sure we never write through something already there.
            let mut out = File::options().write(true).create_new(true).open(&full)?;
            out.write_all(&file.bytes)?;
            #[cfg(unix)]
            if file.executable {
                use std::os::unix::fs::PermissionsExt;
                out.set_permissions(fs::Permissions::from_mode(0o755))?;
            }
        }
        Ok(())
    }

    /// Validates unpacked entries (see [`links::resolve_tree`]) and the manifest.
    fn from_unpacked(unpacked: Unpacked, limits: &SourceLimits) -> Result<SourceTree, SourceError> {
        SourceTree::from_files(links::resolve_tree(unpacked, limits)?)
    }

    fn from_files(files: BTreeMap<String, SourceFile>) -> Result<SourceTree, SourceError> {
        let manifest = files.get("Cargo.toml").ok_or(SourceError::NoManifest)?;
        let text = std::str::from_utf8(&manifest.bytes)
            .map_err(|_| SourceError::BadManifest { message: "it is not UTF-8".to_owned() })?;
        let table: toml::Table = toml::from_str(text).map_err(|error| {
            let line = error.span().map_or(1, |span| text[..span.start].matches('\n').count() + 1);
            SourceError::BadManifest { message: format!("{} at line {line}", error.message()) }
        })?;
        let package = table.get("package").and_then(toml::Value::as_table).ok_or(SourceError::NotAPackage)?;
        let name = package
            .get("name")
            .and_then(toml::Value::as_str)
            .ok_or_else(|| SourceError::BadManifest { message: "[package] has no name".to_owned() })?
            .to_owned();
        let hash = hash_files(&files);
        Ok(SourceTree { files: Arc::new(files), package: name, has_workspace: table.contains_key("workspace"), hash })
    }
}

impl std::fmt::Debug for SourceTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceTree")
            .field("package", &self.package)
            .field("hash", &self.hash)
            .field("files", &self.files.len())
            .finish()
    }
}

impl SourceFile {
    /// A file that is not executable.
    pub(super) fn new(bytes: Vec<u8>) -> SourceFile {
        SourceFile { bytes, executable: false }
    }
}

/// The canonical encoding: a tag, the API version, then each file as length-prefixed path,
/// executable bit and length-prefixed contents, in path order.
fn hash_files(files: &BTreeMap<String, SourceFile>) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"kiln-source-tree-v1");
    field(kiln_plugin_api::API_VERSION.as_bytes());
    field(&(files.len() as u64).to_le_bytes());
    for (path, file) in files {
        field(path.as_bytes());
        field(&[u8::from(file.executable)]);
        field(&file.bytes);
    }
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}
