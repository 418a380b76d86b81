//! The web app's secret key, and cluster API keys sealed with it at rest.
//!
//! A cluster's API key lets whoever holds it run code on that cluster, so the database never
//! holds one in plain text: each is sealed with AES-256-GCM under the web app's secret key,
//! with a fresh random 96-bit nonce per value and, as associated data, the cluster's id and
//! owner, so a sealed key copied into another row (another user's cluster) does not open.
//!
//! The secret key is 32 random bytes, written as 64 hex digits. It comes from the environment
//! variable [`SECRET_KEY_ENV`] when set, else from the file [`SECRET_KEY_FILE`] in the data
//! directory, created with mode 0600 on first start. Whoever has both the database and the key
//! has the API keys; a copy of the database alone (a backup, a plugin that read the file) does
//! not.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The environment variable that gives the secret key (64 hex digits) instead of the file.
pub const SECRET_KEY_ENV: &str = "KILN_WEB_SECRET_KEY";

/// The secret key's file in the data directory.
pub const SECRET_KEY_FILE: &str = "secret.key";

/// What a sealed value starts with: the format's version, so that another can follow.
const SEALED_PREFIX: &str = "v1:";

/// The length of AES-GCM's nonce, in bytes.
const NONCE_BYTES: usize = 12;

/// Why the secret key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key's text is not 64 hex digits.
    #[error("the secret key from {origin} is not 64 hex digits: generate one with `openssl rand -hex 32`")]
    Malformed {
        /// Where it came from: the variable or the file's path.
        origin: String,
    },
    /// The key file could not be read, written or restricted.
    #[error("cannot {action} the secret key file {path}: {source}: check the data directory's permissions")]
    File {
        /// What was being done: "read", "create", "restrict".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The web app's secret key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// Where a key came from, and whether it is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The environment variable.
    Environment,
    /// The file, which existed.
    File(PathBuf),
    /// None existed: a new key, not yet written (see [`SecretKey::write_new`]).
    New(PathBuf),
}

impl SecretKey {
    /// A new random key from the OS's generator.
    pub fn generate() -> SecretKey {
        SecretKey { bytes: rand::random() }
    }

    /// The key written as 64 hex digits (surrounding white space is ignored); `origin` names
    /// where the text came from, for the error.
    pub fn from_hex(text: &str, origin: &str) -> Result<SecretKey, KeyError> {
        let text = text.trim();
        let malformed = || KeyError::Malformed { origin: origin.to_owned() };
        if text.len() != 64 || !text.is_ascii() {
            return Err(malformed());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| malformed())?;
        }
        Ok(SecretKey { bytes })
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key in `<data_dir>/secret.key`, tightening the file's mode to 0600; when there is
    /// no file, a new key to be written with [`SecretKey::write_new`] once the caller knows the
    /// database holds nothing sealed with another.
    pub fn load(data_dir: &Path) -> Result<(SecretKey, KeyOrigin), KeyError> {
        let path = data_dir.join(SECRET_KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((SecretKey::generate(), KeyOrigin::New(path))),
            Err(source) => return Err(KeyError::File { action: "read", path, source }),
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| KeyError::File {
            action: "restrict",
            path: path.clone(),
            source,
        })?;
        let key = SecretKey::from_hex(&text, &path.display().to_string())?;
        Ok((key, KeyOrigin::File(path)))
    }

    /// Writes a new key to `path`, readable by this user only; never overwrites a file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let write = || -> io::Result<()> {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            file.write_all(format!("{}\n", self.to_hex()).as_bytes())?;
            file.sync_all()
        };
        write().map_err(|source| KeyError::File { action: "create", path: path.to_owned(), source })
    }

    /// Seals `plaintext` for the row `context`: `v1:` and the base64 of nonce and ciphertext.
    pub fn seal(&self, plaintext: &str, context: &SealContext) -> String {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let aad = context.associated_data();
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .unwrap_or_default(); // AES-GCM fails only on inputs of gigabytes, never on an API key.
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        format!("{SEALED_PREFIX}{}", BASE64.encode(sealed))
    }

    /// Opens a value sealed by [`SecretKey::seal`] for the same `context`; `None` when it was
    /// sealed with another key or for another row, or was altered.
    pub fn open(&self, sealed: &str, context: &SealContext) -> Option<String> {
        let bytes = BASE64.decode(sealed.strip_prefix(SEALED_PREFIX)?).ok()?;
        if bytes.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let aad = context.associated_data();
        let plaintext =
            self.cipher().decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: aad.as_bytes() }).ok()?;
        String::from_utf8(plaintext).ok()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.bytes))
    }
}

/// The row a sealed value belongs to: it is bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext {
    /// The cluster's id.
    pub cluster_id: i64,
    /// Its owner.
    pub user_id: i64,
}

impl SealContext {
    fn associated_data(&self) -> String {
        format!("kiln-web cluster api key; cluster {}; user {}", self.cluster_id, self.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: SealContext = SealContext { cluster_id: 7, user_id: 3 };

    #[test]
    fn a_sealed_key_opens_only_with_its_key_and_row() {
        let key = SecretKey::generate();
        let sealed = key.seal("the api key", &ROW);
        assert!(sealed.starts_with("v1:") && !sealed.contains("the api key"), "{sealed}");
        assert_ne!(sealed, key.seal("the api key", &ROW), "each value has its own nonce");
        assert_eq!(key.open(&sealed, &ROW).as_deref(), Some("the api key"));
        assert_eq!(SecretKey::generate().open(&sealed, &ROW), None, "another key");
        assert_eq!(key.open(&sealed, &SealContext { cluster_id: 8, user_id: 3 }), None, "another cluster");
        assert_eq!(key.open(&sealed, &SealContext { cluster_id: 7, user_id: 4 }), None, "another user");
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(key.open(&String::from_utf8(altered).unwrap(), &ROW), None, "an altered value");
        assert_eq!(key.open("the api key", &ROW), None, "plain text");
    }

    #[test]
    fn keys_are_written_as_hex_and_read_back() {
        let key = SecretKey::generate();
        let again = SecretKey::from_hex(&format!(" {}\n", key.to_hex()), "test").unwrap();
        assert_eq!(again.bytes, key.bytes);
        for bad in ["", "00", &"g".repeat(64), &"é".repeat(32)] {
            let error = SecretKey::from_hex(bad, "KILN_WEB_SECRET_KEY").unwrap_err().to_string();
            assert!(error.contains("KILN_WEB_SECRET_KEY is not 64 hex digits"), "{error}");
        }
        assert_eq!(format!("{key:?}"), "SecretKey(…)");
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (key, origin) = SecretKey::load(dir.path()).unwrap();
        let path = dir.path().join(SECRET_KEY_FILE);
        assert_eq!(origin, KeyOrigin::New(path.clone()));
        assert!(!path.exists(), "not written before the caller says so");
        key.write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(SecretKey::generate().write_new(&path).is_err(), "never overwritten");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (loaded, origin) = SecretKey::load(dir.path()).unwrap();
        assert_eq!((loaded.bytes, origin), (key.bytes, KeyOrigin::File(path.clone())));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "tightened");
    }
}
