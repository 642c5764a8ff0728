//! rustls configurations (aws-lc-rs provider) and the server's TLS acceptor.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use super::AuthError;
use crate::rpc::Acceptor;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The aws-lc-rs provider, chosen explicitly (no process-wide default
/// needed), preferring AES-128-GCM: as safe as AES-256 for this purpose and
/// about a third cheaper per byte, which shows on a log's bulk traffic.
/// aws-lc-rs rather than ring: its AES-GCM uses AVX-512 where the CPU has
/// it, and mTLS range reads of 4 KiB records ran 15 % faster with it
/// (BENCHMARKS.md, "Tenth session").
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let preferred = [
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    provider
        .cipher_suites
        .sort_by_key(|s| !preferred.contains(&s.suite()));
    Arc::new(provider)
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    std::fs::metadata(path).map_err(|e| AuthError::file(path, e))?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| AuthError::file(path, format!("not a PEM certificate file: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AuthError::file(path, format!("malformed PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(AuthError::file(path, "no certificate in file"));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, AuthError> {
    std::fs::metadata(path).map_err(|e| AuthError::file(path, e))?;
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| AuthError::file(path, format!("no usable private key: {e}")))
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, AuthError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| AuthError::file(ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Checks that `key` belongs to the first certificate of `certs`.
fn check_pair(
    provider: &CryptoProvider,
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), AuthError> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| AuthError::file(key_path, format!("unsupported private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(certs.to_vec(), signing);
    certified.keys_match().map_err(|e| {
        AuthError::file(
            key_path,
            format!(
                "does not match the certificate {}: {e}",
                cert_path.display()
            ),
        )
    })
}

/// Server side: present `cert`/`key`, require a client certificate signed by `ca`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, AuthError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| AuthError::Tls(format!("client verifier: {e}")))?;
    let (certs, private_key) = (load_certs(cert)?, load_key(key)?);
    check_pair(&provider, &certs, &private_key, cert, key)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, private_key)
        .map_err(|e| AuthError::file(cert, e))?;
    Ok(Arc::new(config))
}

/// Client side: trust servers signed by `ca`, present `cert`/`key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, AuthError> {
    let provider = provider();
    let (certs, private_key) = (load_certs(cert)?, load_key(key)?);
    check_pair(&provider, &certs, &private_key, cert, key)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs, private_key)
        .map_err(|e| AuthError::file(cert, e))?;
    Ok(Arc::new(config))
}

/// Client side without a certificate of its own (for tests of refusal).
pub fn client_config_without_cert(ca: &Path) -> Result<Arc<ClientConfig>, AuthError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// Accepts mutual-TLS connections; the caller is its certificate's CN.
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl TlsAcceptor {
    pub fn new(config: Arc<ServerConfig>) -> TlsAcceptor {
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

impl Acceptor for TlsAcceptor {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;

    async fn accept(&self, tcp: TcpStream) -> io::Result<(Self::Stream, String)> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.inner.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let subject = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| common_name(cert.as_ref()))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "client certificate has no subject CN",
                )
            })?;
        Ok((stream, subject))
    }
}
