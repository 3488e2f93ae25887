//! Authorization: who is asking (a [`Principal`] and the permission snapshot a task
//! carries) and what a namespace's policy allows right now. Deny by default. It decides;
//! it never records (callers audit every denial) and never reads task data.

mod access;

use std::collections::{BTreeMap, BTreeSet};

pub use access::{
    AUDIT_READ, AccessPolicy, COMPLIANCE_READ, DEFAULT_MFA_MAX_AGE_SECS, GDPR_MANAGE, Refusal,
    manages,
};

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
    /// Workflows (names) whose tasks need their own `NS.WORKFLOW:execute` permission and
    /// a fresh MFA claim.
    pub sensitive_workflows: BTreeSet<String>,
    /// How old an MFA claim may be for a sensitive workflow, seconds; unset:
    /// [`DEFAULT_MFA_MAX_AGE_SECS`].
    pub mfa_max_age_secs: Option<i64>,
    /// Ed25519 public keys (hex, 32 bytes) by key id, whose signatures over a module's
    /// SHA-256 digest this namespace trusts.
    pub trusted_keys: BTreeMap<String, String>,
    /// Refuse module uploads that no trusted key signed.
    pub require_signed_modules: bool,
    /// The GDPR legal basis of processing personal data here (e.g. `contract`,
    /// `legitimate_interest`), as subject access reports state it.
    pub legal_basis: Option<String>,
    /// How long data is kept.
    pub retention: Retention,
}

/// How long a namespace keeps what, in days after a task finished (audit events: after
/// they happened). Unset: kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Task data holding personal data (its context, step results and attempt records).
    pub pii_task_days: Option<u32>,
    /// Task data by the context's classification (`public` … `restricted`), where no PII
    /// rule applies.
    pub task_days_by_classification: BTreeMap<String, u32>,
    /// Any other task data.
    pub task_days: Option<u32>,
    /// Audit events of this namespace.
    pub audit_days: Option<u32>,
}

impl Retention {
    /// Days a finished task of `classification` (holding PII or not) is kept, if bounded.
    pub fn task_days(&self, classification: &str, contains_pii: bool) -> Option<u32> {
        let by_class = self
            .task_days_by_classification
            .get(classification)
            .copied();
        if contains_pii {
            self.pii_task_days.or(by_class).or(self.task_days)
        } else {
            by_class.or(self.task_days)
        }
    }
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

/// The longest MFA age a namespace may allow for its sensitive workflows: a day. Longer
/// would make "fresh MFA" mean "logged in this week".
pub const MAX_MFA_MAX_AGE_SECS: i64 = 24 * 60 * 60;

impl NamespacePolicy {
    /// Refuse a policy that cannot mean what it says; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        // A misspelt name would leave the real workflow unprotected without a word.
        if let Some(bad) = self
            .sensitive_workflows
            .iter()
            .find(|name| !crate::engine::valid_name(name))
        {
            return Err(format!(
                "sensitive_workflows: `{bad}` is not a workflow name"
            ));
        }
        if let Some((id, _)) = self
            .trusted_keys
            .iter()
            .find(|(id, key)| !crate::engine::valid_name(id) || trusted_key(key).is_none())
        {
            return Err(format!(
                "trusted_keys: `{id}` is not a key id with a hex Ed25519 public key"
            ));
        }
        if self.require_signed_modules && self.trusted_keys.is_empty() {
            return Err("require_signed_modules needs at least one trusted key".into());
        }
        if let Some(age) = self.mfa_max_age_secs
            && !(1..=MAX_MFA_MAX_AGE_SECS).contains(&age)
        {
            return Err(format!(
                "mfa_max_age_secs must be between 1 and {MAX_MFA_MAX_AGE_SECS}"
            ));
        }
        Ok(())
    }

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

/// A trusted key's hex text as an Ed25519 verifying key, if it is one.
pub fn trusted_key(hex_text: &str) -> Option<ed25519_dalek::VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_text).ok()?.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mfa_age_outside_one_second_to_a_day_is_refused() {
        for (age, ok) in [
            (None, true),
            (Some(1), true),
            (Some(86_400), true),
            (Some(0), false),
            (Some(-5), false),
            (Some(86_401), false),
        ] {
            let policy = NamespacePolicy {
                mfa_max_age_secs: age,
                ..NamespacePolicy::default()
            };
            assert_eq!(policy.validate().is_ok(), ok, "{age:?}");
        }
    }

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
