//! [`SourceTree`]: a validated plugin crate in memory, and [`read_source`], which makes one
//! from a path.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::embedded;
use super::limits::{MAX_BYTES, SourceError, SourceLimits};
use super::links;
use super::unpack::{self, SourceFile, Unpacked};

/// A plugin crate in memory: relative paths (`/`-separated) to file contents and executable
/// bits, validated, with a parsed `Cargo.toml` at its root. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceTree {
    files: Arc<BTreeMap<String, SourceFile>>,
    package: String,
    has_workspace: bool,
    hash: String,
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

    /// Reads a crate from a `.zip` held in memory, within `limits`: what
    /// [`read_source_with_limits`] does with a `.zip` file.
    pub fn from_zip_with_limits(bytes: &[u8], limits: &SourceLimits) -> Result<SourceTree, SourceError> {
        let unpacked = unpack::read_zip(io::Cursor::new(bytes), bytes.len() as u64, limits)?;
        SourceTree::from_unpacked(unpacked, limits)
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
    pub(crate) fn has_workspace(&self) -> bool {
        self.has_workspace
    }

    /// Writes the files into `dir`, which must be new and empty. Blocking.
    pub(crate) fn write_to(&self, dir: &Path) -> io::Result<()> {
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

/// The canonical encoding: a tag, the API version and the digest of its sources (so a library
/// built against other API sources, even of the same version, is never taken from a cache),
/// then each file as length-prefixed path, executable bit and length-prefixed contents, in
/// path order.
fn hash_files(files: &BTreeMap<String, SourceFile>) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"kiln-source-tree-v2");
    field(kiln_plugin_api::API_VERSION.as_bytes());
    field(embedded::plugin_api_digest().as_bytes());
    field(&(files.len() as u64).to_le_bytes());
    for (path, file) in files {
        field(path.as_bytes());
        field(&[u8::from(file.executable)]);
        field(&file.bytes);
    }
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}
