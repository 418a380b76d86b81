//! Plugin archives as uploaded: `.tar.gz` and `.zip`, read within small limits.

use std::io::Write;

use super::Choices;
use crate::plugin_source::{SourceError, SourceLimits, SourceTree};

/// Limits small enough that the fuzzer reaches them with inputs of a few KiB.
const LIMITS: SourceLimits = SourceLimits { max_files: 16, max_bytes: 16 << 10 };

/// Directories that never reach a tree, at any depth.
const SKIPPED_DIRS: [&str; 4] = ["target", ".git", ".cargo", "__MACOSX"];

/// Reads the payload as an uploaded plugin archive; the first byte says which form: a tar whose
/// header checksums are set and which is gzipped here (so that the fuzzer mutates the tar
/// itself, not a checksummed stream, and a mutated header is read rather than refused for its
/// checksum), a `.tar.gz` as it is, or a `.zip`. An archive read without error must give a tree within the
/// limits whose paths cannot leave the crate, and which survives its wire form (`.tar.gz`).
pub fn archive(data: &[u8]) {
    let mut choices = Choices::new(data);
    let form = choices.byte() % 3;
    let payload = choices.rest();
    let read = match form {
        0 => {
            let mut tar = payload.to_vec();
            set_tar_checksums(&mut tar);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).expect("gzip into memory");
            SourceTree::from_tar_gz_with_limits(&gz.finish().expect("gzip into memory"), &LIMITS)
        }
        1 => SourceTree::from_tar_gz_with_limits(payload, &LIMITS),
        _ => SourceTree::from_zip_with_limits(payload, &LIMITS),
    };
    match read {
        Ok(tree) => check_tree(&tree),
        Err(error) => check_error(&error),
    }
}

/// Sets the checksum of each header of a tar as the `tar` crate finds them, one after another,
/// each followed by the blocks its size field announces; stops at the end, at a block of zeros
/// (where the reader stops) or at a size it cannot read (where the reader fails anyway).
fn set_tar_checksums(tar: &mut [u8]) {
    const BLOCK: usize = 512;
    let mut at = 0;
    while let Some(block) = tar.get_mut(at..at + BLOCK) {
        if block.iter().all(|&b| b == 0) {
            return;
        }
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(block);
        header.set_cksum();
        block.copy_from_slice(header.as_bytes());
        let Some(blocks) = header.entry_size().ok().and_then(|size| usize::try_from(size.div_ceil(BLOCK as u64)).ok())
        else {
            return;
        };
        let Some(next) = blocks.checked_mul(BLOCK).and_then(|data| (at + BLOCK).checked_add(data)) else { return };
        at = next;
    }
}

fn check_tree(tree: &SourceTree) {
    assert!(tree.file_count() <= LIMITS.max_files, "{} files", tree.file_count());
    assert!(tree.total_bytes() <= LIMITS.max_bytes, "{} bytes", tree.total_bytes());
    assert!(tree.file("Cargo.toml").is_some(), "a tree without a manifest");
    for path in tree.paths() {
        assert!(!path.is_empty() && !path.starts_with('/') && !path.contains('\\'), "path {path:?}");
        let components: Vec<&str> = path.split('/').collect();
        for component in &components {
            assert!(!matches!(*component, "" | "." | ".."), "path {path:?}");
            assert!(!component.contains('\0'), "path {path:?}");
        }
        // Above all no `.cargo/config.toml`, which cargo would honour on the worker.
        let dirs = &components[..components.len() - 1];
        assert!(!dirs.iter().any(|dir| SKIPPED_DIRS.contains(dir)), "path {path:?} is under a skipped directory");
    }
    // The client sends the tree packed; the controller and the workers read that back.
    let again = SourceTree::from_tar_gz_with_limits(&tree.to_tar_gz(), &LIMITS)
        .unwrap_or_else(|error| panic!("the packed tree cannot be read back: {error}"));
    assert!(again == *tree, "the packed tree reads back as another tree");
}

fn check_error(error: &SourceError) {
    // Every refusal can be shown to the person who uploaded the archive.
    let message = error.to_string();
    assert!(!message.is_empty());
    assert!(!matches!(error, SourceError::Io { .. }), "an in-memory archive failed with an I/O error: {message}");
}
