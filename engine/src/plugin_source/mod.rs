//! Plugin sources, on the ground floor: reading a crate from a directory, an archive or a
//! single `lib.rs`, validating it entirely in memory, packing and hashing it, and the plugin
//! API and template embedded in the engine. The client, the controller, run-local, the web app
//! and the builder all use it; it imports no role (`controller`, `worker`, `client`, `local`).
//!
//! Symlinks that stay inside the crate are resolved to copies of what they point to, so a
//! [`SourceTree`] holds regular files only and nothing written from it can ever be a link that
//! leads out of the build directory. A symlink that points outside the crate (lexically,
//! relative to its own directory) or to an absolute path is refused; one that points to nothing
//! is dropped, as it would dangle on the worker too. A symlink to a directory named like one
//! that is left out (`target`, `.git`, `.cargo`, `__MACOSX`) is left out as that directory
//! would be: `.cargo -> cfg` must not bring a cargo configuration in.
//!
//! Inside, each file imports only those above it in this list: [`limits`](SourceLimits) (what a
//! source may hold, [`SourceError`]), `unpack` (directory, `.tar.gz` and `.zip` to checked
//! entries), `links` (symlinks resolved to copies), `embedded` (the plugin API and template),
//! `tree` ([`SourceTree`], [`read_source`]).

pub(crate) mod embedded;
mod limits;
mod links;
pub mod scaffold;
mod tree;
mod unpack;

// Each item has this one public path; the submodules are private seams.
use std::path::{Path, PathBuf};

pub use limits::{MAX_BYTES, MAX_FILES, SourceError, SourceLimits};
pub use tree::{SourceTree, read_source, read_source_with_limits};

/// Creates the plugin crate `parent/name` from the template this binary carries (`kiln new`),
/// with the plugin API it carries written under `cache_dir` and pointed at by the crate's
/// `.cargo/config.toml`, so that `cargo test` works outside a Kiln checkout. Blocking.
pub fn new_plugin_crate(parent: &Path, name: &str, cache_dir: &Path) -> Result<PathBuf, scaffold::ScaffoldError> {
    scaffold::validate_package_name(name)?;
    let api_dir = embedded::ensure_plugin_api(cache_dir).map_err(|e| {
        scaffold::ScaffoldError(format!("cannot write the plugin API into {}: {e}", cache_dir.display()))
    })?;
    scaffold::create(parent, name, &api_dir)
}
