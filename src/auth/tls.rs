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
use crate::wire::transport::WriteGathering;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The aws-lc-rs provider, chosen explicitly (no process-wide default
/// needed), preferring AES-128-GCM: as safe as AES-256 for this purpose and
/// about a third cheaper per byte, which shows on a log's bulk traffic.
///
/// After the handshake, records are sealed and opened by the record layer
/// in [`crate::wire::tls`], which picks AES-GCM's implementation for the CPU;
/// the suites chosen here matter for rustls's own handshake records only,
/// and follow the same rule. Key exchange, signatures and certificates stay
/// with aws-lc-rs.
fn provider() -> Arc<CryptoProvider> {
    provider_for(crate::wire::tls::avx512_aes_gcm())
}

/// The provider for a CPU with (`avx512`) or without AVX-512 AES-GCM.
fn provider_for(avx512: bool) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !avx512 {
        use rustls::crypto::ring::cipher_suite as ring;
        let ring_aes_gcm = [
            ring::TLS13_AES_128_GCM_SHA256,
            ring::TLS13_AES_256_GCM_SHA384,
        ];
        for suite in provider.cipher_suites.iter_mut() {
            if let Some(r) = ring_aes_gcm.iter().find(|r| r.suite() == suite.suite()) {
                *suite = *r;
            }
        }
    }
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// TLS 1.3 only: the record layer after the handshake speaks TLS 1.3.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

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
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, private_key)
        .map_err(|e| AuthError::file(cert, e))?;
    // The record layer takes the keys over after the handshake; clients do
    // not resume sessions, so no tickets are sent.
    config.enable_secret_extraction = true;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side: trust servers signed by `ca`, present `cert`/`key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, AuthError> {
    let provider = provider();
    let (certs, private_key) = (load_certs(cert)?, load_key(key)?);
    check_pair(&provider, &certs, &private_key, cert, key)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs, private_key)
        .map_err(|e| AuthError::file(cert, e))?;
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// Client side without a certificate of its own (for tests of refusal).
pub fn client_config_without_cert(ca: &Path) -> Result<Arc<ClientConfig>, AuthError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    config.enable_secret_extraction = true;
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
    config: Arc<ServerConfig>,
}

impl TlsAcceptor {
    pub fn new(config: Arc<ServerConfig>) -> TlsAcceptor {
        TlsAcceptor { config }
    }
}

impl Acceptor for TlsAcceptor {
    type Stream = crate::wire::tls::RecordStream<TcpStream>;
    const GATHERING: WriteGathering = WriteGathering::ByStream;

    async fn accept(&self, tcp: TcpStream) -> io::Result<(Self::Stream, String)> {
        let handshake = crate::wire::tls::accept(tcp, self.config.clone());
        let (stream, chain) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let subject = chain
            .first()
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Moves TLS bytes from `from` to `to` until `from` has none to send.
    fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    #[test]
    fn ring_and_aws_lc_aes_gcm_peers_talk_and_agree_on_aes_128_gcm() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        // Either side with either AES-GCM: the node and its clients may run
        // on different CPUs.
        for (server_avx512, client_avx512) in [(false, true), (true, false), (false, false)] {
            let server = ServerConfig::builder_with_provider(provider_for(server_avx512))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
            let client = ClientConfig::builder_with_provider(provider_for(client_avx512))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let mut client: rustls::Connection =
                rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
                    .unwrap()
                    .into();
            let mut server: rustls::Connection = rustls::ServerConnection::new(Arc::new(server))
                .unwrap()
                .into();
            while client.is_handshaking() || server.is_handshaking() {
                pump(&mut client, &mut server);
                pump(&mut server, &mut client);
            }
            let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let mut got = Vec::new();
            for chunk in payload.chunks(16 << 10) {
                client.writer().write_all(chunk).unwrap();
                pump(&mut client, &mut server);
                let mut part = vec![0u8; chunk.len()];
                server.reader().read_exact(&mut part).unwrap();
                got.extend_from_slice(&part);
            }
            assert_eq!(
                got, payload,
                "server avx512={server_avx512}, client avx512={client_avx512}"
            );
            assert_eq!(
                client.negotiated_cipher_suite().map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
        }
    }
}
