//! Readers that turn each upload form (directory, `.tar.gz`, `.zip`) into a flat list of
//! entries with checked names, counting files and bytes as they are read so that no archive
//! can make us hold more than the limits allow. Nothing here writes to disk.
//!
//! Backslashes count as path separators everywhere, so `..\x` is refused like `../x`.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::path::Path;
use std::rc::Rc;

use super::limits::{SourceError, SourceLimits};

/// Directories left out at any depth: build output, version control, cargo configuration
/// (which must never be honoured from an upload: it could replace the compiler or the
/// registry), and the resource forks macOS adds to the zip files it makes.
pub(super) const SKIPPED_DIRS: [&str; 4] = ["target", ".git", ".cargo", "__MACOSX"];

/// Bytes of tar framing allowed per file on top of the contents: a 512-byte header, padding to
/// 512 bytes, and long-name or pax records.
const TAR_OVERHEAD_PER_FILE: u64 = 4 * 1024;

/// The longest symlink target we read (Linux's `PATH_MAX`).
const MAX_LINK_TARGET: u64 = 4096;

/// A file's contents and executable bit.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct SourceFile {
    pub(super) bytes: Vec<u8>,
    pub(super) executable: bool,
}

impl SourceFile {
    /// A file that is not executable.
    pub(super) fn new(bytes: Vec<u8>) -> SourceFile {
        SourceFile { bytes, executable: false }
    }
}

/// An entry of an upload, its path checked and split into components.
pub(super) struct Entry {
    /// Components of the path (no `..`, `.` or empty ones).
    pub path: Vec<String>,
    /// What the entry is.
    pub kind: EntryKind,
}

/// The kinds of entries a plugin source may contain.
pub(super) enum EntryKind {
    Dir,
    File { bytes: Vec<u8>, executable: bool },
    Symlink { target: String },
}

/// The entries of an upload and the top-level directory to strip, if all sit in one.
pub(super) struct Unpacked {
    pub entries: Vec<Entry>,
    pub strip: Option<String>,
}

/// Whether a path starts with a Windows drive (`C:`).
pub(super) fn has_windows_prefix(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

/// Checks an entry name and splits it into components.
fn check_path(name: &str) -> Result<Vec<String>, SourceError> {
    let refuse = |reason| SourceError::UnsafePath { entry: name.to_owned(), reason };
    if name.starts_with(['/', '\\']) {
        return Err(refuse("it is an absolute path"));
    }
    if has_windows_prefix(name) {
        return Err(refuse("it has a Windows drive prefix"));
    }
    if name.contains('\0') {
        return Err(refuse("it contains a NUL byte"));
    }
    let mut components = Vec::new();
    for component in name.split(['/', '\\']) {
        match component {
            "" | "." => {}
            ".." => return Err(refuse("it contains a `..` component")),
            _ => components.push(component.to_owned()),
        }
    }
    Ok(components)
}

fn utf8_name(raw: &[u8]) -> Result<&str, SourceError> {
    std::str::from_utf8(raw).map_err(|_| SourceError::UnsafePath {
        entry: String::from_utf8_lossy(raw).into_owned(),
        reason: "its name is not UTF-8",
    })
}

/// Collects entries while counting files and bytes against the limits.
struct Collector<'a> {
    limits: &'a SourceLimits,
    files: usize,
    bytes: u64,
    entries: Vec<Entry>,
    top: Top,
}

/// Tracks whether every entry sits under one top-level directory.
enum Top {
    Unknown,
    Dir(String),
    None,
}

impl<'a> Collector<'a> {
    fn new(limits: &'a SourceLimits) -> Self {
        Collector { limits, files: 0, bytes: 0, entries: Vec::new(), top: Top::Unknown }
    }

    /// Notes the entry's top-level directory and says whether its contents are wanted.
    fn wanted(&mut self, path: &[String], is_dir: bool) -> bool {
        let Some(first) = path.first() else { return false };
        let dirs = if is_dir { path } else { &path[..path.len() - 1] };
        let skipped = |dir: &String| SKIPPED_DIRS.contains(&dir.as_str());
        // A skipped top-level directory (`__MACOSX/` beside `wordcount/`) does not count
        // against stripping the top directory.
        if dirs.first().is_some_and(skipped) {
            return false;
        }
        let under_first = path.len() > 1 || is_dir;
        self.top = match std::mem::replace(&mut self.top, Top::None) {
            Top::Unknown if under_first => Top::Dir(first.clone()),
            Top::Dir(top) if under_first && top == *first => Top::Dir(top),
            _ => Top::None,
        };
        !dirs.iter().any(skipped)
    }

    fn dir(&mut self, path: Vec<String>) {
        if self.wanted(&path, true) {
            self.entries.push(Entry { path, kind: EntryKind::Dir });
        }
    }

    fn count_file(&mut self) -> Result<(), SourceError> {
        if self.files >= self.limits.max_files {
            return Err(SourceError::TooManyFiles { limit: self.limits.max_files });
        }
        self.files += 1;
        Ok(())
    }

    /// Reads a file's contents, stopping one byte past the remaining budget whatever size the
    /// archive declares.
    fn file(
        &mut self,
        name: &str,
        path: Vec<String>,
        contents: impl Read,
        executable: bool,
    ) -> Result<(), SourceError> {
        if path.is_empty() {
            return Err(SourceError::UnsafePath { entry: name.to_owned(), reason: "a file needs a name" });
        }
        if !self.wanted(&path, false) {
            return Ok(());
        }
        self.count_file()?;
        let budget = self.limits.max_bytes - self.bytes;
        let mut bytes = Vec::new();
        contents
            .take(budget.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|error| SourceError::Archive { message: format!("cannot read `{name}`: {error}") })?;
        if bytes.len() as u64 > budget {
            return Err(SourceError::TooLarge { limit: self.limits.max_bytes });
        }
        self.bytes += bytes.len() as u64;
        self.entries.push(Entry { path, kind: EntryKind::File { bytes, executable } });
        Ok(())
    }

    fn symlink(&mut self, name: &str, path: Vec<String>, target: &[u8]) -> Result<(), SourceError> {
        if path.is_empty() {
            return Err(SourceError::UnsafePath { entry: name.to_owned(), reason: "a symlink needs a name" });
        }
        let target = std::str::from_utf8(target).map_err(|_| SourceError::UnsafeLink {
            entry: name.to_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
            reason: "its target is not UTF-8",
        })?;
        if !self.wanted(&path, false) {
            return Ok(());
        }
        self.count_file()?;
        self.entries.push(Entry { path, kind: EntryKind::Symlink { target: target.to_owned() } });
        Ok(())
    }

    fn finish(self, strip_top: bool) -> Unpacked {
        let strip = match self.top {
            Top::Dir(top) if strip_top => Some(top),
            _ => None,
        };
        Unpacked { entries: self.entries, strip }
    }
}

/// Reads a crate directory without following symlinks, skipping [`SKIPPED_DIRS`].
pub(super) fn read_dir(root: &Path, limits: &SourceLimits) -> Result<Unpacked, SourceError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |error| SourceError::Io { path, error }
    };
    let mut collector = Collector::new(limits);
    let mut pending = vec![(root.to_owned(), String::new())];
    while let Some((dir, relative)) = pending.pop() {
        let mut children = Vec::new();
        for child in fs::read_dir(&dir).map_err(io_error(&dir))? {
            children.push(child.map_err(io_error(&dir))?);
        }
        children.sort_by_key(|child| child.file_name());
        for child in children {
            let full = child.path();
            let file_name = child.file_name();
            let name = file_name.to_str().ok_or_else(|| SourceError::UnsafePath {
                entry: full.display().to_string(),
                reason: "its name is not UTF-8",
            })?;
            let name = if relative.is_empty() { name.to_owned() } else { format!("{relative}/{name}") };
            let path = check_path(&name)?;
            let file_type = child.file_type().map_err(io_error(&full))?;
            if file_type.is_dir() {
                if collector.wanted(&path, true) {
                    pending.push((full, name));
                }
            } else if file_type.is_file() {
                let file = File::open(&full).map_err(io_error(&full))?;
                let executable = is_executable(&file.metadata().map_err(io_error(&full))?);
                collector.file(&name, path, file, executable)?;
            } else if file_type.is_symlink() {
                let target = fs::read_link(&full).map_err(io_error(&full))?;
                let target = target.to_str().ok_or_else(|| SourceError::UnsafeLink {
                    entry: name.clone(),
                    target: target.display().to_string(),
                    reason: "its target is not UTF-8",
                })?;
                collector.symlink(&name, path, target.as_bytes())?;
            } else {
                return Err(SourceError::UnsupportedEntry { entry: name, kind: "devices, fifos and sockets" });
            }
        }
    }
    Ok(collector.finish(false))
}

#[cfg(unix)]
fn is_executable(metadata: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_metadata: &fs::Metadata) -> bool {
    false
}

/// The decompressed tar stream may hold this much: the contents plus framing per file.
fn tar_stream_limit(limits: &SourceLimits) -> u64 {
    let framing = (limits.max_files as u64 + 1).saturating_mul(TAR_OVERHEAD_PER_FILE);
    limits.max_bytes.saturating_add(framing)
}

/// Reads a gzip-compressed tar stream.
pub(super) fn read_tar_gz(reader: impl Read, limits: &SourceLimits) -> Result<Unpacked, SourceError> {
    let exceeded = Rc::new(Cell::new(false));
    let decoder = LimitedReader {
        inner: flate2::read::GzDecoder::new(reader),
        remaining: tar_stream_limit(limits),
        exceeded: exceeded.clone(),
    };
    let limit_or = |message: String| {
        if exceeded.get() {
            SourceError::TooLarge { limit: limits.max_bytes }
        } else {
            SourceError::Archive { message }
        }
    };
    let mut collector = Collector::new(limits);
    let mut archive = tar::Archive::new(decoder);
    let entries = archive.entries().map_err(|error| limit_or(format!("not a tar.gz archive ({error})")))?;
    for entry in entries {
        let entry = entry.map_err(|error| limit_or(format!("bad tar entry ({error})")))?;
        let raw_name = entry.path_bytes().into_owned();
        let name = utf8_name(&raw_name)?;
        let path = check_path(name)?;
        let header = entry.header();
        let unsupported = |kind| SourceError::UnsupportedEntry { entry: name.to_owned(), kind };
        match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let executable = header.mode().map(|mode| mode & 0o111 != 0).unwrap_or(false);
                collector.file(name, path, entry, executable).map_err(|error| match error {
                    SourceError::Archive { message } => limit_or(message),
                    other => other,
                })?;
            }
            tar::EntryType::Directory => collector.dir(path),
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                collector.symlink(name, path, &target)?;
            }
            // `git archive` writes a pax global header holding the commit id.
            tar::EntryType::XGlobalHeader => {}
            tar::EntryType::Link => return Err(unsupported("hard links")),
            tar::EntryType::Char | tar::EntryType::Block => return Err(unsupported("device files")),
            tar::EntryType::Fifo => return Err(unsupported("fifos")),
            _ => return Err(unsupported("special tar entries (sparse files and the like)")),
        }
    }
    Ok(collector.finish(true))
}

/// Reads a zip archive of `archive_len` bytes.
pub(super) fn read_zip(
    reader: impl Read + Seek,
    archive_len: u64,
    limits: &SourceLimits,
) -> Result<Unpacked, SourceError> {
    // The central directory is read whole into memory, so bound the archive itself too.
    if archive_len > tar_stream_limit(limits) {
        return Err(SourceError::TooLarge { limit: limits.max_bytes });
    }
    let archive_error = |error: zip::result::ZipError| SourceError::Archive {
        message: format!("not a readable zip archive ({error})"),
    };
    let mut archive = zip::ZipArchive::new(reader).map_err(archive_error)?;
    let mut collector = Collector::new(limits);
    for index in 0..archive.len() {
        let file = archive.by_index(index).map_err(archive_error)?;
        let name = utf8_name(file.name_raw())?.to_owned();
        let path = check_path(&name)?;
        let unsupported = |kind| SourceError::UnsupportedEntry { entry: name.clone(), kind };
        // The file type sits in the Unix mode; archives made on Windows have none.
        let mode = file.unix_mode().unwrap_or(0);
        match mode & 0o170_000 {
            0o040_000 => collector.dir(path),
            0o120_000 => {
                let mut target = Vec::new();
                file.take(MAX_LINK_TARGET)
                    .read_to_end(&mut target)
                    .map_err(|error| SourceError::Archive { message: format!("cannot read `{name}` ({error})") })?;
                collector.symlink(&name, path, &target)?;
            }
            0 | 0o100_000 if file.is_dir() => collector.dir(path),
            0 | 0o100_000 => collector.file(&name, path, file, mode & 0o111 != 0)?,
            0o020_000 | 0o060_000 => return Err(unsupported("device files")),
            0o010_000 => return Err(unsupported("fifos")),
            _ => return Err(unsupported("sockets and other special files")),
        }
    }
    Ok(collector.finish(true))
}

/// Passes reads through until `remaining` bytes have gone by, then fails and sets `exceeded`.
struct LimitedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // Tell a clean end from a stream that goes on past the limit.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded.set(true);
            return Err(io::Error::other("the archive unpacks to more than the limit"));
        }
        let len = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..len])?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_that_could_escape_are_refused() {
        for name in ["../x", "a/../../x", "/etc/x", "\\x", "a\\..\\x", "C:\\x", "c:x", "a\0b"] {
            let error = check_path(name).unwrap_err().to_string();
            assert!(error.contains("refusing archive entry"), "{name}: {error}");
        }
        assert_eq!(check_path("./src//lib.rs").unwrap(), ["src", "lib.rs"]);
        assert_eq!(check_path("a\\b").unwrap(), ["a", "b"]);
    }

    #[test]
    fn a_single_top_directory_is_found_and_skipped_dirs_are_not_wanted() {
        let limits = SourceLimits::default();
        let mut collector = Collector::new(&limits);
        let path = |name: &str| check_path(name).unwrap();
        collector.dir(path("wc"));
        collector.file("wc/Cargo.toml", path("wc/Cargo.toml"), &b"x"[..], false).unwrap();
        collector.file("wc/target/big", path("wc/target/big"), &b"x"[..], false).unwrap();
        collector.file("__MACOSX/wc/._x", path("__MACOSX/wc/._x"), &b"x"[..], false).unwrap();
        let unpacked = collector.finish(true);
        assert_eq!(unpacked.strip.as_deref(), Some("wc"));
        assert_eq!(unpacked.entries.len(), 2);

        let mut collector = Collector::new(&limits);
        collector.file("Cargo.toml", path("Cargo.toml"), &b"x"[..], false).unwrap();
        collector.dir(path("src"));
        assert_eq!(collector.finish(true).strip, None);
    }
}
