//! Authorization: who is asking (a [`Principal`] and the permission snapshot a task
//! carries) and what a namespace's policy allows right now. Deny by default. It decides;
//! it never records (callers audit every denial) and never reads task data.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Who asked, as of the moment they asked: the snapshot saved with a task and re-checked
/// by workers before each step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// Subject id (`user_123`), or `system`.
    pub subject: String,
    /// Roles held.
    #[serde(default)]
    pub roles: BTreeSet<String>,
    /// Permissions held, e.g. `customer_success.process_refund:execute`.
    #[serde(default)]
    pub permissions: BTreeSet<String>,
}

/// A namespace's policy as stored: what its steps may be granted, and what has been
/// revoked since tasks were created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespacePolicy {
    /// Origins steps of this namespace may be granted.
    pub hosts: BTreeSet<String>,
    /// Secret names steps of this namespace may be granted.
    pub secrets: BTreeSet<String>,
    /// Permissions withdrawn in this namespace: a task created before the withdrawal
    /// carries them in its snapshot, but its steps may no longer use them.
    pub revoked_permissions: BTreeSet<String>,
    /// Subjects suspended in this namespace: their pending steps no longer run.
    pub suspended_subjects: BTreeSet<String>,
}

/// Why a permission check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The snapshot never held the permission.
    #[error("the task's creator does not hold `{0}`")]
    NotHeld(String),
    /// The namespace has since revoked it.
    #[error("`{0}` has been revoked in this namespace")]
    Revoked(String),
    /// The creator has since been suspended.
    #[error("the task's creator is suspended in this namespace")]
    Suspended,
}

impl NamespacePolicy {
    /// May `principal`'s snapshot still exercise `permission` here, now?
    pub fn check(&self, principal: &Principal, permission: &str) -> Result<(), Denial> {
        if self.suspended_subjects.contains(&principal.subject) {
            return Err(Denial::Suspended);
        }
        if !principal.permissions.contains(permission) {
            return Err(Denial::NotHeld(permission.to_owned()));
        }
        if self.revoked_permissions.contains(permission) {
            return Err(Denial::Revoked(permission.to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_must_be_held_and_not_revoked_and_the_holder_not_suspended() {
        let principal = Principal {
            subject: "user_123".into(),
            permissions: ["refunds:execute".to_owned()].into(),
            ..Principal::default()
        };
        let mut policy = NamespacePolicy::default();
        assert_eq!(policy.check(&principal, "refunds:execute"), Ok(()));
        assert_eq!(
            policy.check(&principal, "refunds:approve"),
            Err(Denial::NotHeld("refunds:approve".into()))
        );
        policy.revoked_permissions.insert("refunds:execute".into());
        assert_eq!(
            policy.check(&principal, "refunds:execute"),
            Err(Denial::Revoked("refunds:execute".into()))
        );
        policy.revoked_permissions.clear();
        policy.suspended_subjects.insert("user_123".into());
        assert_eq!(
            policy.check(&principal, "refunds:execute"),
            Err(Denial::Suspended)
        );
    }
}
