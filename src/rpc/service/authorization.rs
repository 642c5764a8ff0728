//! Authorization: every call is checked by the casbin authorizer (subject
//! = certificate CN) before anything is looked up: calls on a partition
//! with `produce`, `consume` or `replicate` on its id, `getServers` and
//! `listPartitions` with `describe` on `cluster`.

use super::*;

/// Decides whether `subject` may do `action` on `object`; denial carries the
/// reason for the typed error. `None` in [`ServiceContext`] allows everything.
pub trait Authorizer {
    fn authorize(&self, subject: &str, action: &str, object: &str) -> bool;
}

/// Actions checked by the authorizer.
pub const ACTION_PRODUCE: &str = "produce";
pub const ACTION_CONSUME: &str = "consume";
/// Pulling a node's own partition into a replica (`replicate`).
pub const ACTION_REPLICATE: &str = "replicate";
/// Seeing the cluster's nodes and a node's partitions (`getServers`,
/// `listPartitions`), on the object [`OBJECT_CLUSTER`].
pub const ACTION_DESCRIBE: &str = "describe";
pub const OBJECT_CLUSTER: &str = "cluster";

impl LogService {
    /// Resolves a partition id (empty = own) and checks the caller may
    /// `action` it, before looking it up: an unauthorized caller learns
    /// nothing of which partitions exist.
    pub(super) fn partition(
        &self,
        id: &str,
        action: &str,
    ) -> Result<(String, Addr<LogActor>), (WireError, String)> {
        let id = self.ctx.partitions.resolve(id).to_string();
        self.authorize(action, &id)?;
        let log = self
            .ctx
            .partitions
            .get(&id)
            .map_err(|e| (WireError::UnknownPartition(id.clone()), e.to_string()))?;
        Ok((id, log))
    }

    pub(super) fn authorize(&self, action: &str, object: &str) -> Result<(), (WireError, String)> {
        match &self.ctx.authorizer {
            Some(a) if !a.authorize(&self.subject, action, object) => Err((
                WireError::PermissionDenied {
                    subject: self.subject.to_string(),
                    action: action.to_string(),
                    object: object.to_string(),
                },
                format!("{} may not {action} {object}", self.subject),
            )),
            _ => Ok(()),
        }
    }
}
