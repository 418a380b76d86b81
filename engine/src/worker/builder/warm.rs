//! Warming an owner's target directory: compiling the plugin template's dependencies
//! (abi_stable, serde and the rest) before any plugin of that owner arrives, so that a first
//! upload compiles only its own crate. A worker does it in the background when it starts.
//!
//! The warm-up builds the template itself, as a single-file upload (`plugin`) would be built:
//! same manifest, same dependencies, same features and profile, so cargo finds every
//! dependency of a plugin made from the template up to date, and a first single-file upload
//! also finds the incremental cache of its own crate. A marker file in the owner's build
//! directory records that it was done for this template and API, so a restarted worker does
//! not run cargo again.

use std::path::PathBuf;

use super::{BuildError, Builder, Progress};
use crate::owner::Owner;
use crate::plugin_source::SourceTree;

/// The template's `lib.rs`, the crate the warm-up builds.
const TEMPLATE_LIB_RS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates/plugin/src/lib.rs"));

/// What [`Builder::warm`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmed {
    /// Cargo ran and the dependencies are now compiled.
    Built,
    /// An earlier warm-up of this template and API had compiled them already; no cargo ran.
    AlreadyWarm,
}

impl Builder {
    /// Compiles the plugin template's dependencies in `owner`'s target directory unless that
    /// was done already for this template and plugin API. Takes the owner's build lock like any
    /// build, so a plugin build that comes meanwhile waits for it (and then finds its
    /// dependencies compiled) rather than compiling them a second time alongside.
    pub async fn warm(&self, owner: &Owner, progress: Progress<'_>) -> Result<Warmed, BuildError> {
        let source = SourceTree::from_single_file(TEMPLATE_LIB_RS.as_bytes()).map_err(|error| {
            BuildError::Task(format!("the embedded plugin template is not a valid source: {error}"))
        })?;
        let marker = self.warm_marker(owner, &source);
        if tokio::fs::try_exists(&marker).await.unwrap_or(false) {
            return Ok(Warmed::AlreadyWarm);
        }
        self.build(owner, &source, progress).await?;
        tokio::fs::write(&marker, b"").await.map_err(|error| BuildError::Io {
            action: "write the warm-up marker",
            path: marker.clone(),
            error,
        })?;
        Ok(Warmed::Built)
    }

    /// `<target_dir>/owners/<o>/warm-<hash>`: the template source's hash covers its manifest,
    /// its `lib.rs` and the plugin API's sources, so a new engine warms up again.
    fn warm_marker(&self, owner: &Owner, source: &SourceTree) -> PathBuf {
        let hash = source.hash();
        self.dirs(owner).root.join(format!("warm-{}", &hash[..16.min(hash.len())]))
    }
}
