//! The controller's certificate authority: made on first start and kept in `<data_dir>/tls/`
//! (`ca.key`, mode 0600, and `ca.pem`), then used to issue the controller's own certificate at
//! each start and the workers' short-lived certificates at registration.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{CONTROLLER_NAME, Fingerprint, TlsError, provider, worker_name};

/// How long the CA is valid: far longer than any cluster lives, since its fingerprint is in
/// every key and token.
const CA_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How long the controller's own certificate is valid; it is issued afresh at every start.
const CONTROLLER_CERT_LIFETIME: Duration = Duration::from_secs(398 * 24 * 3600);

/// How far back certificates are dated, so a peer whose clock is a little behind accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The default lifetime of a worker's certificate; its registration loop renews it well before.
pub const DEFAULT_WORKER_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The common name of every cluster CA; its fingerprint, not its name, identifies it.
const CA_NAME: &str = "kiln cluster CA";

/// The length of an uncompressed P-256 public key, the only kind workers send.
const P256_PUBLIC_KEY_LEN: usize = 65;

/// A cluster's certificate authority, able to issue certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    fingerprint: Fingerprint,
}

impl ClusterCa {
    /// Reads the CA kept in `dir`, or makes one there; answers whether it was made now.
    pub fn load_or_create(dir: &Path) -> Result<(ClusterCa, bool), TlsError> {
        let file_error = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::File { path, source }
        };
        std::fs::create_dir_all(dir).map_err(file_error(dir))?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.pem"));
        if key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(file_error(&key_path))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| TlsError::Certificate(format!("the CA key {} is damaged: {e}", key_path.display())))?;
            let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| {
                TlsError::Certificate(format!("cannot read the CA certificate {}: {e}", cert_path.display()))
            })?;
            let fingerprint = Fingerprint::of(&cert);
            return Ok((ClusterCa { issuer: Issuer::new(ca_params(), key), cert, fingerprint }, false));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
        let mut params = ca_params();
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CA_LIFETIME).into();
        let cert = params.self_signed(&key).map_err(certificate_error)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem()).map_err(file_error(&cert_path))?;
        let cert = cert.der().clone();
        let fingerprint = Fingerprint::of(&cert);
        Ok((ClusterCa { issuer: Issuer::new(ca_params(), key), cert, fingerprint }, true))
    }

    /// The CA's certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The SHA-256 fingerprint of the CA's certificate, which keys and tokens carry.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// A fresh certificate and key for the controller: for [`CONTROLLER_NAME`] and `names`
    /// (its listen and advertised addresses, `localhost`, `127.0.0.1`), good for both ends of
    /// a link (it also dials workers with it).
    pub fn issue_controller(&self, names: &[String]) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
        let mut params = leaf_params("kiln controller", CONTROLLER_CERT_LIFETIME);
        params.subject_alt_names.push(dns_name(CONTROLLER_NAME)?);
        for name in names {
            match name.parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Ok(_) => {}
                Err(_) => {
                    if let Ok(san) = dns_name(name) {
                        params.subject_alt_names.push(san);
                    }
                }
            }
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(certificate_error)?;
        certified_key(vec![cert.der().clone(), self.cert.clone()], &key)
    }

    /// A certificate for worker `worker_id`, for the public key it sent (an uncompressed P-256
    /// point), valid for `lifetime`; answers it (DER) and when it expires.
    pub fn issue_worker(
        &self,
        worker_id: u64,
        public_key: &[u8],
        lifetime: Duration,
    ) -> Result<(CertificateDer<'static>, SystemTime), TlsError> {
        let public_key = WorkerPublicKey::new(public_key)?;
        let mut params = leaf_params(&format!("kiln worker {worker_id}"), lifetime);
        params.subject_alt_names.push(dns_name(&worker_name(worker_id))?);
        let not_after = SystemTime::now() + lifetime;
        params.not_after = not_after.into();
        let cert = params.signed_by(&public_key, &self.issuer).map_err(certificate_error)?;
        Ok((cert.der().clone(), not_after))
    }
}

/// A worker's key pair: made when the worker starts, never written down nor sent.
pub struct WorkerKey {
    key: KeyPair,
}

impl WorkerKey {
    /// A new P-256 key pair.
    pub fn generate() -> Result<WorkerKey, TlsError> {
        Ok(WorkerKey { key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(certificate_error)? })
    }

    /// The public key, as sent at registration (an uncompressed P-256 point).
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key_raw().to_vec()
    }

    /// The certificate chain and key a worker presents, from its certificate (DER) and the CA's.
    pub fn certified(
        &self,
        cert: CertificateDer<'static>,
        ca: CertificateDer<'static>,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        certified_key(vec![cert, ca], &self.key)
    }
}

/// A worker's public key as it arrives at registration.
struct WorkerPublicKey<'a>(&'a [u8]);

impl<'a> WorkerPublicKey<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, TlsError> {
        if bytes.len() != P256_PUBLIC_KEY_LEN || bytes[0] != 4 {
            return Err(TlsError::Certificate(
                "the worker's public key is not an uncompressed P-256 key: run the same kiln version".to_owned(),
            ));
        }
        Ok(WorkerPublicKey(bytes))
    }
}

impl PublicKeyData for WorkerPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A random certificate for tests and tools that need one signed by nobody's CA: answers the
/// certificate chain and key, self-signed for `name`.
pub fn self_signed(name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
    let mut params = leaf_params(name, Duration::from_secs(3600));
    params.subject_alt_names.push(dns_name(name)?);
    let cert = params.self_signed(&key).map_err(certificate_error)?;
    certified_key(vec![cert.der().clone()], &key)
}

/// The CA's parameters, the same at every start so a reloaded key signs as the same issuer.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn leaf_params(common_name: &str, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()[..]));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params
}

fn dns_name(name: &str) -> Result<SanType, TlsError> {
    Ok(SanType::DnsName(name.try_into().map_err(certificate_error)?))
}

fn certified_key(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> Result<Arc<CertifiedKey>, TlsError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider().key_provider.load_private_key(der).map_err(certificate_error)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Reads an operator's certificate chain and key (PEM files).
pub fn load_operator_cert(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let unreadable = |path: &PathBuf, e: rustls::pki_types::pem::Error| {
        TlsError::Certificate(format!("cannot read {}: {e}: give a PEM file", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| unreadable(&cert_path.to_owned(), e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&cert_path.to_owned(), e))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(format!("{} holds no certificate", cert_path.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| unreadable(&key_path.to_owned(), e))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Certificate(format!("cannot use the key {}: {e}", key_path.display())))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let file_error = |source| TlsError::File { path: path.to_owned(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(file_error)?;
    file.write_all(bytes).map_err(file_error)?;
    file.sync_all().map_err(file_error)?;
    // The mode above is filtered by the umask; make sure of it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(file_error)
}

fn certificate_error(error: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(format!("cannot make a certificate: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_kept_private_and_reloaded_with_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (made, fresh) = ClusterCa::load_or_create(dir.path()).unwrap();
        assert!(fresh);
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (loaded, fresh) = ClusterCa::load_or_create(dir.path()).unwrap();
        assert!(!fresh);
        assert_eq!(loaded.fingerprint(), made.fingerprint());
        assert_eq!(loaded.fingerprint(), Fingerprint::of(made.cert()));
        let worker = WorkerKey::generate().unwrap();
        let (_, expires) = loaded.issue_worker(7, &worker.public_key(), Duration::from_secs(60)).unwrap();
        assert!(expires > SystemTime::now());
    }

    #[test]
    fn a_worker_public_key_of_another_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ClusterCa::load_or_create(dir.path()).unwrap();
        let error = ca.issue_worker(1, b"not a key", Duration::from_secs(60)).unwrap_err();
        assert!(error.to_string().contains("P-256"), "{error}");
    }
}
