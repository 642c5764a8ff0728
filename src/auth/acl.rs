//! Authorization with casbin: subject = certificate CN, object = partition
//! id (or `*` in a policy line), action = `produce`, `consume`, `replicate`.

use std::path::Path;

use casbin::{CoreApi, DefaultModel, Enforcer, FileAdapter};

use super::AuthError;
use crate::rpc::Authorizer;

/// The model shipped in `deploy/acl/model.conf`.
pub const DEFAULT_MODEL: &str = include_str!("../../deploy/acl/model.conf");
/// The policy shipped in `deploy/acl/policy.csv`: `root` may do everything.
pub const DEFAULT_POLICY: &str = include_str!("../../deploy/acl/policy.csv");

/// A loaded access-control list.
pub struct Acl {
    enforcer: Enforcer,
}

impl Acl {
    /// Loads a casbin model and policy. Missing or unreadable files, and
    /// files casbin cannot parse, are errors naming the file.
    pub async fn load(model: &Path, policy: &Path) -> Result<Acl, AuthError> {
        for path in [model, policy] {
            std::fs::metadata(path)
                .and_then(|_| std::fs::File::open(path).map(drop))
                .map_err(|e| AuthError::file(path, e))?;
        }
        let model_def = DefaultModel::from_file(model)
            .await
            .map_err(|e| AuthError::file(model, e))?;
        let enforcer = Enforcer::new(model_def, FileAdapter::new(policy.to_path_buf()))
            .await
            .map_err(|e| AuthError::file(policy, e))?;
        Ok(Acl { enforcer })
    }
}

impl Authorizer for Acl {
    fn authorize(&self, subject: &str, action: &str, object: &str) -> bool {
        match self.enforcer.enforce((subject, object, action)) {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::warn!(subject, action, object, error = %e, "authorization check failed: denying");
                false
            }
        }
    }
}
