//! Authorization with casbin: subject = certificate CN, object = partition
//! id (or `*` in a policy line), action = `produce`, `consume`, `replicate`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;

use casbin::{CoreApi, DefaultModel, Enforcer, FileAdapter};

use super::AuthError;
use crate::rpc::Authorizer;

/// The model shipped in `deploy/acl/model.conf`.
pub const DEFAULT_MODEL: &str = include_str!("../../deploy/acl/model.conf");
/// The policy shipped in `deploy/acl/policy.csv`: `root` may do everything.
pub const DEFAULT_POLICY: &str = include_str!("../../deploy/acl/policy.csv");

/// Decisions an [`Acl`] remembers at most (then it forgets them all).
const MAX_DECISIONS: usize = 1024;

/// A request longer than this (subject, action and object together) is
/// decided each time, not remembered: objects are partition ids a client
/// names, so what a client sends never costs the node more than this.
const MAX_REMEMBERED_REQUEST_BYTES: usize = 256;

/// A loaded access-control list.
///
/// The policy is loaded once, at start, so a decision never changes while
/// the node runs: each is made by casbin once and remembered (casbin
/// evaluates its matcher in a script engine, 12 % of the server in
/// single-record produce over mTLS before this; BENCHMARKS.md).
pub struct Acl {
    enforcer: Enforcer,
    decisions: Mutex<Decisions>,
}

/// Remembered decisions, keyed by the request written out unambiguously.
#[derive(Default)]
struct Decisions {
    made: HashMap<Box<str>, bool>,
    /// Where a request's key is written (no allocation per lookup).
    key: String,
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
        Ok(Acl {
            enforcer,
            decisions: Mutex::new(Decisions::default()),
        })
    }

    /// casbin's decision, made now.
    fn enforce(&self, subject: &str, action: &str, object: &str) -> Result<bool, casbin::Error> {
        self.enforcer.enforce((subject, object, action))
    }
}

impl Authorizer for Acl {
    fn authorize(&self, subject: &str, action: &str, object: &str) -> bool {
        let length = subject.len() + action.len() + object.len();
        // A panic while holding the lock leaves only remembered decisions.
        let mut decisions = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        let remember = length <= MAX_REMEMBERED_REQUEST_BYTES;
        if remember {
            let Decisions { made, key } = &mut *decisions;
            key.clear();
            // Lengths first: no two requests write the same key.
            let _ = write!(key, "{}:{}:{}:", subject.len(), action.len(), object.len());
            key.push_str(subject);
            key.push_str(action);
            key.push_str(object);
            if let Some(&allowed) = made.get(key.as_str()) {
                return allowed;
            }
        }
        match self.enforce(subject, action, object) {
            Ok(allowed) => {
                if remember {
                    let Decisions { made, key } = &mut *decisions;
                    if made.len() >= MAX_DECISIONS {
                        made.clear();
                    }
                    made.insert(key.as_str().into(), allowed);
                }
                allowed
            }
            Err(e) => {
                tracing::warn!(subject, action, object, error = %e, "authorization check failed: denying");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn acl(policy: &str) -> (tempfile::TempDir, Acl) {
        let dir = tempfile::tempdir().unwrap();
        let (model, policy_path) = (dir.path().join("model.conf"), dir.path().join("policy.csv"));
        std::fs::write(&model, DEFAULT_MODEL).unwrap();
        std::fs::write(&policy_path, policy).unwrap();
        let acl = Acl::load(&model, &policy_path).await.unwrap();
        (dir, acl)
    }

    #[tokio::test]
    async fn remembered_decisions_are_casbins_asked_again_and_again() {
        let (_dir, acl) = acl("p, alice, p1, produce\np, bob, *, consume\n").await;
        let requests = [
            ("alice", "produce", "p1"),
            ("alice", "produce", "p2"),
            ("alice", "consume", "p1"),
            ("bob", "consume", "p1"),
            ("bob", "produce", "p1"),
            // Same characters, split differently: a different request.
            ("alicep", "roduce", "p1"),
            ("alice", "producep", "1"),
        ];
        for round in 0..3 {
            for (s, a, o) in requests {
                assert_eq!(
                    acl.authorize(s, a, o),
                    acl.enforce(s, a, o).unwrap(),
                    "round {round}: {s} {a} {o}"
                );
            }
        }
        assert!(acl.authorize("alice", "produce", "p1"));
        assert!(!acl.authorize("alicep", "roduce", "p1"));
    }

    #[tokio::test]
    async fn what_a_client_names_is_remembered_only_up_to_the_bounds() {
        let (_dir, acl) = acl("p, alice, *, consume\n").await;
        // The longest request remembered, and one byte past it.
        let fits = "x".repeat(MAX_REMEMBERED_REQUEST_BYTES - "alice".len() - "consume".len());
        let over = format!("{fits}x");
        assert!(acl.authorize("alice", "consume", &fits));
        assert!(acl.authorize("alice", "consume", &over));
        {
            let decisions = acl.decisions.lock().unwrap();
            assert_eq!(decisions.made.len(), 1, "only the request within the bound");
        }
        // Many distinct objects: at most MAX_DECISIONS are held, and every
        // answer is still casbin's.
        for i in 0..(MAX_DECISIONS * 2 + 5) {
            let object = format!("p{i}");
            assert!(acl.authorize("alice", "consume", &object));
            assert!(!acl.authorize("alice", "produce", &object));
            assert!(acl.decisions.lock().unwrap().made.len() <= MAX_DECISIONS);
        }
    }
}
