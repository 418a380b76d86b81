//! The limits a job may set for itself, checked by one rule wherever they are given: `kiln
//! submit`, `kiln run-local` and `kiln worker` as their flags are parsed, the controller for
//! every job spec a client sends, and run-local's library for its configuration.

/// The smallest memory limit of an executor: it maps the `kiln` binary, the plugin and a thread
/// stack per slot before the plugin allocates anything, so a smaller limit fails every chunk
/// (the process crashes before it can answer).
pub const MIN_MEMORY_LIMIT: u64 = 64 << 20;

/// The largest result a job may have unless the controller's or run-local's
/// `--max-result-size` says otherwise: generous, since results travel and are stored in pieces,
/// but a bound on the disk a runaway plugin can fill.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 4 << 30;

/// A limit that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The memory limit is below [`MIN_MEMORY_LIMIT`].
    #[error(
        "a memory limit of {} is too small: an executor needs at least {} MiB of address space to start",
        size(*.0),
        MIN_MEMORY_LIMIT >> 20
    )]
    MemoryTooSmall(u64),
}

/// Checks an executor's memory limit in bytes.
pub fn check_memory_limit(bytes: u64) -> Result<(), LimitError> {
    if bytes < MIN_MEMORY_LIMIT { Err(LimitError::MemoryTooSmall(bytes)) } else { Ok(()) }
}

/// A byte count as people read it: `512 bytes`, `1 MiB`, `1.5 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{} {}", text.strip_suffix(".0").unwrap_or(&text), UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_limit_below_the_floor_is_too_small_and_says_so() {
        assert_eq!(check_memory_limit(MIN_MEMORY_LIMIT), Ok(()));
        let error = check_memory_limit(1 << 20).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a memory limit of 1 MiB is too small: an executor needs at least 64 MiB of address space to start"
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(412_000_000), "392.9 MiB");
    }
}
