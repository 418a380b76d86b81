//! TLS on every link: the cluster's certificate authority, the keys that pin it, the rustls
//! configurations of each side and the byte stream tarpc runs over.
//!
//! # Layout
//! - `ca`: the controller's own certificate authority (made on first start, kept in its data
//!   directory) and the certificates it issues: its own and the workers'.
//! - `key`: API keys and join tokens, `kiln-key-v2.<trust>.<secret>` and
//!   `kiln-join-v2.<trust>.<secret>`, whose trust part pins the CA's fingerprint.
//! - `verify`: the rustls configurations and certificate verifiers of each side.
//! - `link`: [`Link`], one TCP connection (TLS or, behind an explicit flag, plain) with the
//!   peer's address and certificate.
//! - `frames`: the tarpc transport over a link: bincode messages in length-delimited frames,
//!   each held once, in a buffer of its own size, and freed once written or decoded.
//! - `gate`: the servers' side of a link: small frames only until a call on it passed its
//!   credential check (bounded before authenticated).
//!
//! # Who proves what
//! - The controller presents a certificate for [`CONTROLLER_NAME`] issued by its CA. Clients
//!   and workers verify the chain against the CA whose SHA-256 fingerprint their key or token
//!   carries, before they send anything secret, whatever address they dialled.
//! - A worker gets a certificate for `worker-<id>.kiln` at registration, issued for the public
//!   key it sends (its private key never leaves it), valid for a short time and renewed by its
//!   registration loop. The controller takes worker calls only over a link whose client
//!   certificate it issued to that worker and has not revoked; the controller checks the
//!   worker's certificate when it dials it back, and the worker takes calls only from a client
//!   presenting the controller's certificate.
//! - TLS 1.3 only, with the `ring` provider.

pub mod ca;
pub mod frames;
pub mod gate;
pub mod key;
pub mod link;
pub mod verify;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use sha2::Digest;

/// The name every controller certificate carries and every client and worker checks, whatever
/// address it dialled: the pinned CA, not the DNS, says which controller is the right one.
pub const CONTROLLER_NAME: &str = "controller.kiln";

/// The name in the certificate of worker `worker_id`, which the controller checks when it
/// dials the worker back.
pub fn worker_name(worker_id: u64) -> String {
    format!("worker-{worker_id}.kiln")
}

/// Why a TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A key or token is not in the expected form.
    #[error("{0}")]
    BadKey(String),
    /// A certificate or key file could not be read or written.
    #[error("cannot read or write {path}: {source}")]
    File { path: std::path::PathBuf, source: std::io::Error },
    /// A certificate or key is malformed or does not fit.
    #[error("{0}")]
    Certificate(String),
}

/// The SHA-256 fingerprint of a CA certificate (its DER bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(sha2::Sha256::digest(der).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Fingerprint> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Fingerprint(bytes))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The crypto provider of every link: `ring`, TLS 1.3 only (set where configs are built).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// Installs [`provider`]'s `ring` as the process's default rustls provider, once, unless one is
/// installed already. The HTTP client of the S3 and HTTP stores (reqwest, built without a
/// provider of its own so that aws-lc-rs is not compiled) takes the process default, and would
/// panic without one: every path that opens such a store calls this first.
pub fn install_process_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // An error means another provider was installed first: reqwest then uses that one.
        let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    });
}

/// Whether every address `host:port` names resolves to loopback only: the only place plain
/// TCP is allowed without a second flag.
pub fn is_loopback(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    match addr.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip_through_hex() {
        let fingerprint = Fingerprint::of(b"some certificate");
        assert_eq!(Fingerprint::from_hex(&fingerprint.to_hex()), Some(fingerprint));
        assert_eq!(Fingerprint::from_hex("abc"), None);
        assert_eq!(Fingerprint::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn only_loopback_addresses_count_as_loopback() {
        assert!(is_loopback("127.0.0.1:7700"));
        assert!(is_loopback("[::1]:7700"));
        assert!(!is_loopback("0.0.0.0:7700"));
        assert!(!is_loopback("192.0.2.1:7700"));
        assert!(!is_loopback("not an address"));
    }
}
