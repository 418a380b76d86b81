//! What a plugin source may hold, and why one is refused.

use std::io;
use std::path::PathBuf;

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
