//! Certificates with rcgen: a CA, server certificates (names and IPs),
//! client certificates (CN = identity). PEM files; keys are written 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::AuthError;

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub enum Leaf {
    /// A node: DNS names and IP addresses it answers on. It may also act as
    /// a client of other nodes (replication), so it carries both usages.
    Server { hosts: Vec<String> },
    /// A client identified by its common name.
    Client { common_name: String },
}

/// Validity of a new certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) to `days` from now.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

fn gen_error(e: rcgen::Error) -> AuthError {
    AuthError::Generate(e.to_string())
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "proglog");
    dn
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str, validity: Validity) -> Result<Pem, AuthError> {
    let key = KeyPair::generate().map_err(gen_error)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key).map_err(gen_error)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A leaf certificate signed by `ca`.
/// The identity (CN) of every node certificate: what the ACL grants
/// `replicate` (`deploy/acl/policy.csv`). A node certificate serves TLS and
/// is presented by the node's replicators when they dial peers.
pub const NODE_IDENTITY: &str = "proglog-node";

pub fn issue(ca: &Pem, leaf: &Leaf, validity: Validity) -> Result<Pem, AuthError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(gen_error)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(gen_error)?;
    let key = KeyPair::generate().map_err(gen_error)?;
    let mut params = match leaf {
        Leaf::Server { hosts } => {
            let mut p = CertificateParams::new(hosts.clone()).map_err(gen_error)?;
            p.distinguished_name = name(NODE_IDENTITY);
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p
        }
        Leaf::Client { common_name } => {
            let mut p = CertificateParams::default();
            p.distinguished_name = name(common_name);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p
        }
    };
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer).map_err(gen_error)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Writes `<dir>/<name>.pem` and `<dir>/<name>.key` (the key readable by the owner only).
pub fn write(dir: &Path, name: &str, pem: &Pem) -> Result<(PathBuf, PathBuf), AuthError> {
    std::fs::create_dir_all(dir).map_err(|e| AuthError::file(dir, e))?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, &pem.cert).map_err(|e| AuthError::file(&cert_path, e))?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(|e| AuthError::file(&key_path, e))?;
    key.write_all(pem.key.as_bytes())
        .map_err(|e| AuthError::file(&key_path, e))?;
    Ok((cert_path, key_path))
}

/// Reads `<dir>/<name>.pem` and `<dir>/<name>.key`.
pub fn read(dir: &Path, name: &str) -> Result<Pem, AuthError> {
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    Ok(Pem {
        cert: std::fs::read_to_string(&cert_path).map_err(|e| AuthError::file(&cert_path, e))?,
        key: std::fs::read_to_string(&key_path).map_err(|e| AuthError::file(&key_path, e))?,
    })
}

/// Paths of a node's development TLS material.
#[derive(Debug, Clone)]
pub struct DevMaterial {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub acl_model: PathBuf,
    pub acl_policy: PathBuf,
    /// Whether anything was created now.
    pub created: bool,
}

/// Makes (once) in `tls_dir` a development CA, a node certificate for
/// localhost, 127.0.0.1 and `extra_hosts`, `root` and `nobody` client
/// certificates, and in `<data_dir>/acl` the default ACL. Nodes started with
/// the same `tls_dir` share the CA and trust each other: the first one
/// makes the files (the others wait for it), the rest use them.
pub fn ensure_dev_material(
    data_dir: &Path,
    tls_dir: &Path,
    extra_hosts: &[String],
) -> Result<DevMaterial, AuthError> {
    let dir = tls_dir.to_path_buf();
    let acl = data_dir.join("acl");
    let mut created = false;
    std::fs::create_dir_all(&dir).map_err(|e| AuthError::file(&dir, e))?;
    let lock_path = dir.join(".creating");
    let lock = (!dir.join("ca.pem").exists())
        .then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock_path)
        })
        .and_then(Result::ok);
    if lock.is_none() {
        // Another node is making them: wait for its CA (written last).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dir.join("ca.pem").exists() {
            if std::time::Instant::now() > deadline {
                return Err(AuthError::Generate(format!(
                    "{} exists but no CA appeared: remove it if no node is starting",
                    lock_path.display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    if lock.is_some() && !dir.join("ca.pem").exists() {
        let ca = new_ca("proglog development CA", Validity::days(3650))?;
        let mut hosts = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        hosts.extend(
            extra_hosts
                .iter()
                .filter(|h| !hosts.contains(h))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let server = issue(&ca, &Leaf::Server { hosts }, Validity::days(825))?;
        let root = issue(
            &ca,
            &Leaf::Client {
                common_name: "root".into(),
            },
            Validity::days(825),
        )?;
        let nobody = issue(
            &ca,
            &Leaf::Client {
                common_name: "nobody".into(),
            },
            Validity::days(825),
        )?;
        write(&dir, "server", &server)?;
        write(&dir, "root", &root)?;
        write(&dir, "nobody", &nobody)?;
        // The CA last: its presence marks the set complete.
        write(&dir, "ca", &ca)?;
        created = true;
    }
    if lock.is_some() {
        let _ = std::fs::remove_file(&lock_path);
    }
    std::fs::create_dir_all(&acl).map_err(|e| AuthError::file(&acl, e))?;
    for (file, text) in [
        ("model.conf", super::acl::DEFAULT_MODEL),
        ("policy.csv", super::acl::DEFAULT_POLICY),
    ] {
        let path = acl.join(file);
        if !path.exists() {
            std::fs::write(&path, text).map_err(|e| AuthError::file(&path, e))?;
            created = true;
        }
    }
    Ok(DevMaterial {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        acl_model: acl.join("model.conf"),
        acl_policy: acl.join("policy.csv"),
        dir,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_starting_together_on_one_tls_dir_share_one_ca() {
        let root = tempfile::tempdir().unwrap();
        let tls = root.path().join("tls");
        let made: Vec<DevMaterial> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    let (data, tls) = (root.path().join(format!("n{i}")), tls.clone());
                    scope.spawn(move || ensure_dev_material(&data, &tls, &[]).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            made.iter().filter(|m| m.created).count(),
            3,
            "each made its ACL"
        );
        let ca = std::fs::read(tls.join("ca.pem")).unwrap();
        for m in &made {
            assert_eq!(std::fs::read(&m.ca).unwrap(), ca, "one CA for all");
        }
        assert!(!tls.join(".creating").exists());
    }
}
