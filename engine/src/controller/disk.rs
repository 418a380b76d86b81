//! A full disk under the controller's data directory: told apart from other failures to write
//! (an `ENOSPC` or `EDQUOT` from the file system, `SQLITE_FULL` from the database) and said so
//! in words that name the directory and what to do, as [`RpcError::NoSpace`]. Whatever was
//! being written is not recorded: the call fails whole, and the same call works once there is
//! space again.

use std::io;
use std::path::Path;

use crate::rpc::RpcError;

/// Whether an I/O error means the disk (or the user's quota on it) is full.
pub(super) fn is_full(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) || error.kind() == io::ErrorKind::StorageFull
}

/// What a client is told when `doing` failed for want of space in `data_dir`.
pub(super) fn no_space(data_dir: &Path, doing: &str) -> RpcError {
    RpcError::NoSpace(format!(
        "the controller's disk is full: no space left in its data directory {} while {doing}: free space on \
         that disk, then try again",
        data_dir.display()
    ))
}

/// An I/O error while `doing`: a full disk said as such, anything else as an internal error.
pub(super) fn io_refusal(data_dir: &Path, doing: &str, error: &io::Error) -> RpcError {
    if is_full(error) { no_space(data_dir, doing) } else { RpcError::Internal(format!("{doing}: {error}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_disk_is_told_as_one() {
        let dir = Path::new("/var/lib/kiln");
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let RpcError::NoSpace(message) = io_refusal(dir, "writing the input of job 3", &full) else {
            panic!("a full disk is NoSpace");
        };
        assert_eq!(
            message,
            "the controller's disk is full: no space left in its data directory /var/lib/kiln while writing the \
             input of job 3: free space on that disk, then try again"
        );
        assert!(is_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(io_refusal(dir, "writing", &denied), RpcError::Internal(_)));
    }
}
