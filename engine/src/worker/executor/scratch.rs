//! An executor's private directory: made for one executor in the scratch directory, holding
//! the copy of the plugin library it loads and whatever the plugin writes (its `TMPDIR` and
//! `HOME`), the only place the sandbox lets it write; removed once its process has ended,
//! however it ended.
//!
//! The library is copied, not linked: a plugin may write in its directory, and must not reach
//! the cached library other jobs load. The copy also puts the library where `nobody` can read
//! it when the worker runs as root (whose cache may sit under a home directory of mode 0700).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A private directory; removed by [`PrivateDir::remove`], or when dropped.
pub(super) struct PrivateDir {
    path: Option<PathBuf>,
}

impl PrivateDir {
    /// Makes a directory of mode 0700 in `root` and copies `library` into it; returns it and
    /// the copy's path.
    pub(super) fn create(root: &Path, library: &Path) -> Result<(PrivateDir, PathBuf), String> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-exec-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(root)
            .map_err(|e| format!("cannot make its private directory in {}: {e}", root.display()))?
            .keep();
        let private = PrivateDir { path: Some(dir.clone()) };
        let copy = dir.join(library.file_name().unwrap_or(std::ffi::OsStr::new("plugin.so")));
        fs::copy(library, &copy)
            .map_err(|e| format!("cannot copy the plugin library {} into {}: {e}", library.display(), dir.display()))?;
        // The cached library may be private to the worker's user; the sandbox's `nobody` must
        // read the copy (the directory keeps everybody else out).
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644))
            .map_err(|e| format!("cannot make the plugin library {} readable: {e}", copy.display()))?;
        Ok((private, copy))
    }

    /// The directory.
    pub(super) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Removes the directory and everything in it, also what the plugin made unwritable.
    pub(super) fn remove(mut self) {
        if let Some(path) = self.path.take() {
            remove_all(&path);
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            remove_all(&path);
        }
    }
}

fn remove_all(path: &Path) {
    make_removable(path);
    if let Err(e) = fs::remove_dir_all(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove the executor's private directory {}: {e}", path.display());
    }
}

/// Gives the owner full rights on every directory in the tree (never following links), so
/// that a directory the plugin made unreadable or unwritable cannot keep its files alive.
fn make_removable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else { return };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_removable(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_what_the_plugin_made_unwritable() {
        let root = tempfile::tempdir().expect("root");
        let library = root.path().join("lib.so");
        fs::write(&library, b"library").expect("library");
        let (private, copy) = PrivateDir::create(root.path(), &library).expect("create");
        assert_eq!(fs::read(&copy).expect("copy"), b"library");
        let dir = private.path().to_path_buf();
        let locked = dir.join("locked");
        fs::create_dir(&locked).expect("mkdir");
        fs::write(locked.join("file"), b"x").expect("file");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod");
        private.remove();
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}
