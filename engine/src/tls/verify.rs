//! The rustls configurations of each end of each link, and the certificate verifiers behind
//! them. Every configuration speaks TLS 1.3 only.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::key::Trust;
use super::{CONTROLLER_NAME, Fingerprint, TlsError, provider};

/// The message of a handshake refused because the controller's chain does not end at the
/// pinned CA; the client library turns it into "not the one this key belongs to".
pub const NOT_PINNED_CA: &str = "the certificate is not issued by the CA the key pins";

/// How a client or worker dials the controller: its rustls configuration and the name it
/// checks the controller's certificate against.
#[derive(Clone)]
pub struct Dial {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// The configuration for dialling a controller trusted by `trust` at `addr`, presenting
/// `identity` (a worker's certificate) when given; `None` for plain TCP. `ca_file` replaces
/// the system roots for an operator's certificate.
pub fn dial_controller(
    trust: Trust,
    addr: &str,
    ca_file: Option<&Path>,
    identity: Option<Arc<CertifiedKey>>,
) -> Result<Option<Dial>, TlsError> {
    let builder = client_builder()?;
    let (builder, name) = match trust {
        Trust::Plaintext => return Ok(None),
        Trust::Pinned(fingerprint) => {
            let verifier = Arc::new(PinnedCa { fingerprint });
            (builder.dangerous().with_custom_certificate_verifier(verifier), controller_name())
        }
        Trust::WebPki => {
            let mut roots = RootCertStore::empty();
            match ca_file {
                Some(path) => {
                    for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))? {
                        let cert = cert.map_err(|e| pem_error(path, e))?;
                        roots.add(cert).map_err(|e| TlsError::Certificate(format!("{}: {e}", path.display())))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let host = host_of(addr);
            let name = ServerName::try_from(host.to_owned()).map_err(|_| {
                TlsError::BadKey(format!("`{host}` is not a host name the controller's certificate can name"))
            })?;
            (builder.with_root_certificates(roots), name)
        }
    };
    let config = match identity {
        Some(identity) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity))),
        None => builder.with_no_client_auth(),
    };
    Ok(Some(Dial { config: Arc::new(config), name }))
}

/// The controller's server configuration: its cluster certificate for clients and workers that
/// ask for [`CONTROLLER_NAME`], the operator's certificate (when given) for everyone else, and
/// a client certificate asked for but not required (clients have none; workers' calls are
/// checked against the certificate afterwards).
pub fn controller_server(
    ca: &CertificateDer<'static>,
    cluster: Arc<CertifiedKey>,
    operator: Option<Arc<CertifiedKey>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots_of(ca)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let resolver = ByName { cluster, operator };
    let config = server_builder()?.with_client_cert_verifier(verifier).with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

/// The controller's configuration for dialling its workers back: their certificates must come
/// from its CA (and name the worker, checked through [`super::worker_name`]); it presents its
/// own.
pub fn controller_dial(ca: &CertificateDer<'static>, own: Arc<CertifiedKey>) -> Result<Arc<ClientConfig>, TlsError> {
    let config = client_builder()?
        .with_root_certificates(roots_of(ca)?)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(own)) as Arc<dyn ResolvesClientCert>);
    Ok(Arc::new(config))
}

/// A worker's server configuration: its certificate, and only calls from a client presenting
/// the controller's certificate from the CA the worker pinned.
pub fn worker_server(ca: &CertificateDer<'static>, own: Arc<CertifiedKey>) -> Result<Arc<ServerConfig>, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots_of(ca)?, provider())
        .build()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let verifier = Arc::new(ControllerOnly { inner });
    let config = server_builder()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(own)) as Arc<dyn ResolvesServerCert>);
    Ok(Arc::new(config))
}

/// The name controllers are checked against.
pub fn controller_name() -> ServerName<'static> {
    ServerName::DnsName(rustls::pki_types::DnsName::try_from(CONTROLLER_NAME).expect("a valid DNS name").to_owned())
}

fn client_builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

fn server_builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

fn roots_of(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| TlsError::Certificate(format!("the cluster CA is unusable: {e}")))?;
    Ok(Arc::new(roots))
}

/// The host part of `host:port` (without brackets around an IPv6 address).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Certificate(format!("cannot read the CA file {}: {error}: give a PEM file", path.display()))
}

/// Picks the controller's certificate by the name the peer asked for.
#[derive(Debug)]
struct ByName {
    cluster: Arc<CertifiedKey>,
    operator: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match (&self.operator, client_hello.server_name()) {
            (Some(operator), name) if name != Some(CONTROLLER_NAME) => Some(Arc::clone(operator)),
            _ => Some(Arc::clone(&self.cluster)),
        }
    }
}

/// Accepts a server whose chain ends at the CA with the pinned fingerprint, and whose
/// certificate names the controller.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: Fingerprint,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(ca) = intermediates.iter().find(|cert| Fingerprint::of(cert) == self.fingerprint) else {
            return Err(Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch)))));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The error inside a refused pin, recognised by the client library.
#[derive(Debug)]
pub struct PinMismatch;

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(NOT_PINNED_CA)
    }
}

impl std::error::Error for PinMismatch {}

/// Accepts only a client certificate from the CA that names the controller: a worker's
/// certificate comes from the same CA but names the worker.
#[derive(Debug)]
struct ControllerOnly {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ControllerOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_is_valid_for_subject_name(&controller_name())
            .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_taken_from_addresses() {
        assert_eq!(host_of("kiln.example.org:7700"), "kiln.example.org");
        assert_eq!(host_of("[::1]:7700"), "::1");
        assert_eq!(host_of("127.0.0.1:7700"), "127.0.0.1");
    }
}
