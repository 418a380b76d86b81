//! Owners: who a job belongs to. A worker keeps each owner's builds, cached libraries and
//! executors apart, so that one owner's build script or plugin cannot touch another's.
//!
//! Who may claim which owner: whoever holds a cluster's API key is trusted with the whole
//! cluster and may submit under any owner (`kiln submit --owner`; the client library's
//! [`SubmitOptions::owner`](crate::client::SubmitOptions::owner)), by default
//! [`Owner::key_holder`]. The web app submits every run under `web:<user id>` of the user who
//! started it; its users cannot choose.
//!
//! Owner names travel in [`JobSpec`](crate::rpc::JobSpec) and become part of directory names
//! on workers, so they are checked ([`Owner::parse`]) wherever they arrive, and never used raw
//! as a path: [`Owner::dir_name`] is a readable prefix plus a hash of the whole name.

use std::fmt;

use sha2::{Digest, Sha256};

/// The longest owner name, in bytes.
pub const MAX_OWNER_BYTES: usize = 128;

/// The owner of jobs submitted with the API key and no owner of their own: the key's holder.
pub const KEY_HOLDER: &str = "cli";

/// A checked owner name: 1 to [`MAX_OWNER_BYTES`] ASCII letters, digits and `.`, `_`, `-`,
/// `:`, `@`, `+`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(String);

/// Why a text is not an owner name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// The name is empty or longer than [`MAX_OWNER_BYTES`].
    #[error("an owner name must be 1 to {MAX_OWNER_BYTES} bytes long, not {0}: pick a shorter one")]
    Length(usize),
    /// The name holds a character outside the allowed set.
    #[error(
        "the owner name `{0}` may hold only ASCII letters, digits and `._-:@+`, and must start with a letter \
         or digit: pick another"
    )]
    Charset(String),
}

impl Owner {
    /// Checks `text` as an owner name.
    pub fn parse(text: &str) -> Result<Owner, OwnerError> {
        if text.is_empty() || text.len() > MAX_OWNER_BYTES {
            return Err(OwnerError::Length(text.len()));
        }
        let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"._-:@+".contains(&byte);
        let starts_well = text.as_bytes()[0].is_ascii_alphanumeric();
        if !starts_well || !text.bytes().all(allowed) {
            // Shown back to the user: keep only the printable ASCII, bounded.
            let shown: String = text.chars().take(MAX_OWNER_BYTES).filter(|c| c.is_ascii_graphic()).collect();
            return Err(OwnerError::Charset(shown));
        }
        Ok(Owner(text.to_owned()))
    }

    /// The holder of the cluster's API key ([`KEY_HOLDER`]): the default owner of the CLI, the
    /// client library and `kiln run-local`.
    pub fn key_holder() -> Owner {
        Owner(KEY_HOLDER.to_owned())
    }

    /// The owner of a web app user's runs: `web:<id>`.
    pub fn web_user(user_id: i64) -> Owner {
        Owner(format!("web:{user_id}"))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The owner's directory name: up to 32 characters of the name with anything but letters,
    /// digits, `.`, `_` and `-` turned into `_` (for people reading the disk), then `-` and 16
    /// hex digits of the name's SHA-256, so two names never share a directory, also on file
    /// systems that ignore case.
    pub fn dir_name(&self) -> String {
        let readable: String = self
            .0
            .chars()
            .take(32)
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
            .collect();
        let digest = Sha256::digest(self.0.as_bytes());
        let hex: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
        format!("{readable}-{hex}")
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_for_length_and_charset() {
        for good in ["cli", "web:12", "alice@example.com", "team-a.prod+x", "A_1"] {
            assert_eq!(Owner::parse(good).map(|owner| owner.to_string()), Ok(good.to_owned()));
        }
        assert_eq!(Owner::parse(""), Err(OwnerError::Length(0)));
        assert_eq!(Owner::parse(&"a".repeat(129)), Err(OwnerError::Length(129)));
        assert!(Owner::parse(&"a".repeat(128)).is_ok());
        for bad in ["../x", "a/b", ".hidden", "-x", "a b", "é", "a\0b", ":x", "a\\b"] {
            assert!(matches!(Owner::parse(bad), Err(OwnerError::Charset(_))), "{bad:?} must be refused");
        }
        assert_eq!(Owner::web_user(7).as_str(), "web:7");
        assert_eq!(Owner::key_holder().as_str(), KEY_HOLDER);
    }

    #[test]
    fn directory_names_are_safe_readable_and_distinct() {
        let names = ["web:1", "web_1", "WEB:1", "cli", &"x".repeat(128), &format!("{}y", "x".repeat(127))];
        let dirs: Vec<String> = names.iter().map(|name| Owner::parse(name).unwrap().dir_name()).collect();
        for (i, dir) in dirs.iter().enumerate() {
            assert!(dir.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{dir}");
            assert!(!dir.starts_with('.') && dir.len() <= 32 + 17, "{dir}");
            for other in &dirs[i + 1..] {
                assert_ne!(dir.to_ascii_lowercase(), other.to_ascii_lowercase());
            }
        }
        assert!(dirs[0].starts_with("web_1-"), "{}", dirs[0]);
        assert_eq!(dirs[0], Owner::web_user(1).dir_name(), "the name alone decides the directory");
    }
}
