//! Sources the engine carries inside itself: the `kiln-plugin-api` crate, written out once per
//! target directory so that plugins resolve their API dependency to the engine's own copy (an
//! installed `kiln` builds plugins anywhere, with nothing published), and the plugin template's
//! manifest, into which single-file uploads are wrapped.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Every file of `plugin-api/` that cargo needs, relative to the crate root. A unit test fails
/// when a file under `plugin-api/src` is missing here.
const PLUGIN_API_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/Cargo.toml"))),
    ("src/lib.rs", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/src/lib.rs"))),
    ("src/abi.rs", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/src/abi.rs"))),
    ("src/export.rs", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/src/export.rs"))),
    ("src/streaming.rs", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/src/streaming.rs"))),
    ("src/words.rs", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/src/words.rs"))),
    ("src/partial/mod.rs", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/src/partial/mod.rs"))),
    (
        "src/partial/counter.rs",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/src/partial/counter.rs")),
    ),
    ("src/partial/top.rs", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-api/src/partial/top.rs"))),
];

/// The template's manifest, with a `{{name}}` placeholder for the crate name.
const TEMPLATE_MANIFEST: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates/plugin/Cargo.toml"));

/// The placeholder for the crate name in the template.
const NAME_PLACEHOLDER: &str = "{{name}}";

/// The crate name given to a single uploaded `lib.rs`.
const SINGLE_FILE_CRATE_NAME: &str = "plugin";

/// The manifest of the crate a single uploaded `lib.rs` is wrapped into.
pub(super) fn single_file_manifest() -> String {
    TEMPLATE_MANIFEST.replace(NAME_PLACEHOLDER, SINGLE_FILE_CRATE_NAME)
}

/// The SHA-256 of the embedded plugin API's sources, in hex: what plugins built here are built
/// against, so a build cache keyed by it never serves a library built against other sources.
pub(super) fn plugin_api_digest() -> String {
    let mut hasher = Sha256::new();
    for (path, text) in PLUGIN_API_FILES {
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `plugin-api-<version>-<first 12 hex digits of the content hash>`: a new engine with changed
/// API sources never reuses an older copy, even at the same version.
fn plugin_api_dir_name() -> String {
    format!("plugin-api-{}-{}", kiln_plugin_api::API_VERSION, &plugin_api_digest()[..12])
}

/// Writes the embedded plugin API into `<kiln_dir>/plugin-api-<version>-<hash>/` unless it is
/// there already, and returns that directory's canonical (absolute) path. Blocking.
///
/// The files go to a temporary directory that is then renamed into place, so concurrent
/// processes never see a half-written copy; whoever renames first wins.
pub(crate) fn ensure_plugin_api(kiln_dir: &Path) -> io::Result<PathBuf> {
    let dir = kiln_dir.join(plugin_api_dir_name());
    let complete = |dir: &Path| dir.join("Cargo.toml").is_file();
    if !complete(&dir) {
        fs::create_dir_all(kiln_dir)?;
        let temp = tempfile::Builder::new().prefix(".plugin-api-").tempdir_in(kiln_dir)?;
        for (path, text) in PLUGIN_API_FILES {
            let full = temp.path().join(path);
            if let Some(parent) = full.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(full, text)?;
        }
        match fs::rename(temp.path(), &dir) {
            Ok(()) => {
                let _kept = temp.keep();
            }
            // Another process renamed its copy first; ours is removed when `temp` drops.
            Err(_) if complete(&dir) => {}
            Err(error) => return Err(error),
        }
    }
    dir.canonicalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plugin_api_source_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
        let mut pending = vec![root.join("src")];
        let mut on_disk = Vec::new();
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    on_disk.push(path.strip_prefix(&root).unwrap().to_str().unwrap().replace('\\', "/"));
                }
            }
        }
        assert!(on_disk.len() >= 3, "{on_disk:?}");
        for path in &on_disk {
            let embedded = PLUGIN_API_FILES.iter().find(|(name, _)| name == path);
            assert!(embedded.is_some(), "plugin-api/{path} is not embedded: add it to PLUGIN_API_FILES");
        }
    }

    #[test]
    fn the_plugin_api_is_written_once_with_its_version_in_the_name() {
        let kiln_dir = tempfile::tempdir().unwrap();
        let first = ensure_plugin_api(kiln_dir.path()).unwrap();
        let second = ensure_plugin_api(kiln_dir.path()).unwrap();
        assert_eq!(first, second);
        assert!(first.is_absolute());
        let name = first.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!("plugin-api-{}-", kiln_plugin_api::API_VERSION)), "{name}");
        let lib = fs::read_to_string(first.join("src/lib.rs")).unwrap();
        assert!(lib.contains("macro_rules! export_plugin"));
        // Only the final directory is left, no temporary copies.
        assert_eq!(fs::read_dir(kiln_dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_single_file_gets_the_template_manifest_named_plugin() {
        let manifest = single_file_manifest();
        assert!(manifest.contains("name = \"plugin\""), "{manifest}");
        assert!(!manifest.contains(NAME_PLACEHOLDER));
    }
}
