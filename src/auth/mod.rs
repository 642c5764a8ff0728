//! Security (DESIGN §5): mutual TLS on every connection, casbin
//! authorization of every call, and the certificates to run them.
//!
//! - [`tls`]: rustls configurations (aws-lc-rs provider) and the TLS acceptor of
//!   the RPC server; the caller's identity is its certificate's subject CN.
//! - [`acl`]: the casbin enforcer (model file + policy file).
//! - [`certs`]: a CA, server and client certificates made with rcgen, and
//!   the development material a node makes for itself when none is configured.

pub mod acl;
pub mod certs;
pub mod tls;

use std::path::PathBuf;

/// What can go wrong setting security up; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("certificate generation: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl AuthError {
    pub(crate) fn file(path: impl Into<PathBuf>, problem: impl std::fmt::Display) -> AuthError {
        AuthError::File {
            path: path.into(),
            problem: problem.to_string(),
        }
    }
}
