//! Access decisions at the API edge: which permissions a caller's roles give, and whether
//! the caller may create a task, read a namespace's tasks or see its PII. Deny by
//! default: a caller holds only what its token lists and its roles grant.
//!
//! Permission names: `NS:read` reads a namespace's tasks, `NS:execute` creates tasks of
//! any of its workflows that is not sensitive, `NS.WORKFLOW:execute` creates tasks of that
//! one workflow (the only grant a sensitive workflow accepts, and only with a fresh MFA
//! claim), `NS:manage` uploads modules, applies workflows and acts on anyone's tasks,
//! `NS:pii:read` shows PII fields in responses. No role is special: `admin` holds what
//! the policy file grants it, like any other.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{NamespacePolicy, Principal};

/// How old an MFA claim may be for a sensitive workflow when the namespace does not say:
/// fifteen minutes, the window within which a person can be taken to still be at the
/// keyboard that passed the second factor.
pub const DEFAULT_MFA_MAX_AGE_SECS: i64 = 15 * 60;

/// Roles and the permissions each grants, from the policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessPolicy {
    /// Role name → permissions it grants.
    pub roles: BTreeMap<String, BTreeSet<String>>,
}

/// Why the caller may not do what it asked. Each variant has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Nothing the caller holds grants the namespace or the workflow.
    #[error("you hold no permission to run `{namespace}.{workflow}`")]
    NotGranted {
        /// The namespace.
        namespace: String,
        /// The workflow.
        workflow: String,
    },
    /// A sensitive workflow needs its own explicit permission.
    #[error("`{0}` is sensitive: it needs the explicit permission `{0}:execute`")]
    ExplicitPermissionRequired(String),
    /// A sensitive workflow needs an MFA claim, and the token has none.
    #[error("`{0}` is sensitive: it needs a token with a multi-factor authentication claim")]
    MfaRequired(String),
    /// The MFA claim is older than the namespace allows.
    #[error(
        "`{workflow}` is sensitive: multi-factor authentication is older than {max_age_secs} s"
    )]
    MfaTooOld {
        /// `namespace.workflow`.
        workflow: String,
        /// The namespace's maximum age.
        max_age_secs: i64,
    },
    /// The caller may not read the namespace.
    #[error("you may not read namespace `{0}`")]
    NoRead(String),
    /// The caller does not manage the namespace.
    #[error("you do not manage namespace `{0}`: it needs `{0}:manage`")]
    NotManager(String),
    /// Only the task's creator or a manager of its namespace may act on it.
    #[error("only the task's creator or a manager of `{0}` may do that")]
    NotOwner(String),
    /// The namespace has suspended the caller.
    #[error("you are suspended in namespace `{0}`")]
    Suspended(String),
    /// A platform-wide permission (audit, compliance, GDPR) the caller lacks.
    #[error("this needs the permission `{0}`")]
    Lacks(&'static str),
}

impl Refusal {
    /// The stable code, for problem responses and audit events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotGranted { .. } => "permission_denied",
            Self::ExplicitPermissionRequired(_) => "explicit_permission_required",
            Self::MfaRequired(_) => "mfa_required",
            Self::MfaTooOld { .. } => "mfa_too_old",
            Self::NoRead(_) => "read_denied",
            Self::NotManager(_) => "manage_denied",
            Self::NotOwner(_) => "not_task_owner",
            Self::Suspended(_) => "suspended",
            Self::Lacks(_) => "permission_denied",
        }
    }
}

/// Reading the audit trail and verifying it.
pub const AUDIT_READ: &str = "audit:read";
/// Compliance reports and controls.
pub const COMPLIANCE_READ: &str = "compliance:read";
/// Data-subject requests: access, export, erasure.
pub const GDPR_MANAGE: &str = "gdpr:manage";

impl AccessPolicy {
    /// May `caller` (an [`AccessPolicy::effective`] principal) use what the platform-wide
    /// `permission` guards? Only an exact grant counts: no wildcard, no admin bypass, so
    /// the trail's readers are exactly the roles the policy names.
    pub fn may(caller: &Principal, permission: &'static str) -> Result<(), Refusal> {
        if caller.permissions.contains(permission) {
            Ok(())
        } else {
            Err(Refusal::Lacks(permission))
        }
    }

    /// `principal` with the permissions of its roles added to those its token lists:
    /// the snapshot a task keeps, and what workers check again before each step.
    pub fn effective(&self, principal: &Principal) -> Principal {
        let mut effective = principal.clone();
        for role in &principal.roles {
            if let Some(granted) = self.roles.get(role) {
                effective.permissions.extend(granted.iter().cloned());
            }
        }
        effective
    }

    /// May `caller` (an [`AccessPolicy::effective`] principal whose MFA was passed at
    /// `mfa_at`, unix seconds) create a task of `namespace.workflow` at `now_secs`?
    pub fn may_create_task(
        caller: &Principal,
        mfa_at: Option<i64>,
        namespace: &str,
        workflow: &str,
        policy: &NamespacePolicy,
        now_secs: i64,
    ) -> Result<(), Refusal> {
        if policy.suspended_subjects.contains(&caller.subject) {
            return Err(Refusal::Suspended(namespace.to_owned()));
        }
        let qualified = format!("{namespace}.{workflow}");
        let explicit = holds(caller, policy, &format!("{qualified}:execute"));
        let namespace_wide = holds(caller, policy, &format!("{namespace}:execute"));
        if !policy.sensitive_workflows.contains(workflow) {
            if explicit || namespace_wide {
                return Ok(());
            }
            return Err(Refusal::NotGranted {
                namespace: namespace.to_owned(),
                workflow: workflow.to_owned(),
            });
        }
        if !explicit {
            return Err(if namespace_wide {
                Refusal::ExplicitPermissionRequired(qualified)
            } else {
                Refusal::NotGranted {
                    namespace: namespace.to_owned(),
                    workflow: workflow.to_owned(),
                }
            });
        }
        let Some(mfa_at) = mfa_at else {
            return Err(Refusal::MfaRequired(qualified));
        };
        let max_age_secs = policy.mfa_max_age_secs.unwrap_or(DEFAULT_MFA_MAX_AGE_SECS);
        // An MFA time in the future is as suspect as a stale one.
        if now_secs.saturating_sub(mfa_at) > max_age_secs || mfa_at > now_secs.saturating_add(60) {
            return Err(Refusal::MfaTooOld {
                workflow: qualified,
                max_age_secs,
            });
        }
        Ok(())
    }

    /// May `caller` read the tasks of `namespace` (whose policy is `policy`)? Its own
    /// tasks (`own`) it may read without `NS:read`, unless it is suspended there.
    pub fn may_read(
        caller: &Principal,
        namespace: &str,
        policy: &NamespacePolicy,
        own: bool,
    ) -> Result<(), Refusal> {
        if policy.suspended_subjects.contains(&caller.subject) {
            return Err(Refusal::Suspended(namespace.to_owned()));
        }
        if own
            || holds(caller, policy, &format!("{namespace}:read"))
            || manages(caller, namespace, policy)
        {
            return Ok(());
        }
        Err(Refusal::NoRead(namespace.to_owned()))
    }

    /// May `caller` upload modules to and apply workflows in `namespace`?
    pub fn may_manage(
        caller: &Principal,
        namespace: &str,
        policy: &NamespacePolicy,
    ) -> Result<(), Refusal> {
        if policy.suspended_subjects.contains(&caller.subject) {
            return Err(Refusal::Suspended(namespace.to_owned()));
        }
        if manages(caller, namespace, policy) {
            return Ok(());
        }
        Err(Refusal::NotManager(namespace.to_owned()))
    }

    /// May `caller` cancel a task of `namespace`, or retry its failed step? Its own
    /// (`own`), or any if it manages the namespace.
    pub fn may_act_on_task(
        caller: &Principal,
        namespace: &str,
        policy: &NamespacePolicy,
        own: bool,
    ) -> Result<(), Refusal> {
        if policy.suspended_subjects.contains(&caller.subject) {
            return Err(Refusal::Suspended(namespace.to_owned()));
        }
        if own || manages(caller, namespace, policy) {
            return Ok(());
        }
        Err(Refusal::NotOwner(namespace.to_owned()))
    }

    /// Does `caller` see PII fields of `namespace`'s tasks unredacted?
    pub fn sees_pii(caller: &Principal, namespace: &str, policy: &NamespacePolicy) -> bool {
        holds(caller, policy, &format!("{namespace}:pii:read"))
    }
}

/// Does `caller` manage `namespace`?
pub fn manages(caller: &Principal, namespace: &str, policy: &NamespacePolicy) -> bool {
    holds(caller, policy, &format!("{namespace}:manage"))
}

/// Held, and not revoked by the namespace since.
fn holds(caller: &Principal, policy: &NamespacePolicy, permission: &str) -> bool {
    caller.permissions.contains(permission) && !policy.revoked_permissions.contains(permission)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn policy() -> AccessPolicy {
        serde_json::from_value(serde_json::json!({
            "roles": {
                "customer_success_agent": [
                    "customer_success:read", "customer_success.process_refund:execute"
                ],
                "team_lead": ["customer_success:execute", "customer_success:read"],
                "auditor": ["customer_success:read"]
            }
        }))
        .expect("policy parses")
    }

    fn sensitive() -> NamespacePolicy {
        NamespacePolicy {
            sensitive_workflows: ["process_refund".to_owned()].into(),
            mfa_max_age_secs: Some(300),
            ..NamespacePolicy::default()
        }
    }

    fn caller(roles: &[&str], permissions: &[&str]) -> Principal {
        policy().effective(&Principal {
            subject: "user_123".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        })
    }

    fn create(who: &Principal, mfa_at: Option<i64>, workflow: &str) -> Result<(), Refusal> {
        AccessPolicy::may_create_task(who, mfa_at, "customer_success", workflow, &sensitive(), NOW)
    }

    #[test]
    fn roles_add_their_permissions_to_the_token_s_and_unknown_roles_add_none() {
        let agent = caller(&["customer_success_agent", "no_such_role"], &["extra:read"]);
        let held: Vec<&str> = agent.permissions.iter().map(String::as_str).collect();
        assert_eq!(
            held,
            [
                "customer_success.process_refund:execute",
                "customer_success:read",
                "extra:read"
            ]
        );
    }

    #[test]
    fn a_sensitive_workflow_needs_its_own_permission_and_a_fresh_mfa_claim() {
        let agent = caller(&["customer_success_agent"], &[]);
        assert_eq!(create(&agent, Some(NOW - 60), "process_refund"), Ok(()));
        assert_eq!(
            create(&agent, None, "process_refund").map_err(|r| r.code()),
            Err("mfa_required")
        );
        assert_eq!(
            create(&agent, Some(NOW - 301), "process_refund").map_err(|r| r.code()),
            Err("mfa_too_old")
        );
        assert_eq!(
            create(&agent, Some(NOW + 3600), "process_refund").map_err(|r| r.code()),
            Err("mfa_too_old"),
            "an MFA time in the future is refused"
        );
        // The namespace-wide grant is not enough for a sensitive workflow, MFA or not.
        let lead = caller(&["team_lead"], &[]);
        assert_eq!(
            create(&lead, Some(NOW), "process_refund").map_err(|r| r.code()),
            Err("explicit_permission_required")
        );
    }

    #[test]
    fn other_workflows_need_a_grant_but_no_mfa() {
        let lead = caller(&["team_lead"], &[]);
        assert_eq!(create(&lead, None, "lookup_order"), Ok(()));
        // The agent's one explicit grant covers only its own workflow.
        let agent = caller(&["customer_success_agent"], &[]);
        assert_eq!(
            create(&agent, Some(NOW), "lookup_order").map_err(|r| r.code()),
            Err("permission_denied")
        );
        let auditor = caller(&["auditor"], &[]);
        assert_eq!(
            create(&auditor, Some(NOW), "process_refund").map_err(|r| r.code()),
            Err("permission_denied")
        );
        // A permission for another namespace grants nothing here.
        let stranger = caller(
            &[],
            &["payments:execute", "payments.process_refund:execute"],
        );
        assert_eq!(
            create(&stranger, Some(NOW), "lookup_order").map_err(|r| r.code()),
            Err("permission_denied")
        );
    }

    #[test]
    fn reading_and_pii_are_granted_per_namespace() {
        let none = NamespacePolicy::default();
        let agent = caller(&["customer_success_agent"], &[]);
        assert_eq!(
            AccessPolicy::may_read(&agent, "customer_success", &none, false),
            Ok(())
        );
        assert_eq!(
            AccessPolicy::may_read(&agent, "payments", &none, false).map_err(|r| r.code()),
            Err("read_denied")
        );
        assert_eq!(
            AccessPolicy::may_read(&agent, "payments", &none, true),
            Ok(()),
            "its own task"
        );
        assert!(!AccessPolicy::sees_pii(&agent, "customer_success", &none));
        let privileged = caller(&[], &["customer_success:pii:read"]);
        assert!(AccessPolicy::sees_pii(
            &privileged,
            "customer_success",
            &none
        ));
        assert!(!AccessPolicy::sees_pii(&privileged, "payments", &none));
        let manager = caller(&[], &["payments:manage"]);
        assert_eq!(
            AccessPolicy::may_read(&manager, "payments", &none, false),
            Ok(())
        );
        assert!(
            manages(&manager, "payments", &none) && !manages(&manager, "customer_success", &none)
        );
        // A role named admin is no skeleton key: it holds what the policy grants it.
        let admin = caller(&["admin"], &[]);
        assert_eq!(
            AccessPolicy::may_read(&admin, "payments", &none, false).map_err(|r| r.code()),
            Err("read_denied")
        );
        assert_eq!(
            create(&admin, Some(NOW), "process_refund").map_err(|r| r.code()),
            Err("permission_denied")
        );
    }

    #[test]
    fn a_revoked_permission_is_not_held_and_a_suspended_subject_may_do_nothing() {
        let agent = caller(&["customer_success_agent"], &["customer_success:pii:read"]);
        let revoked = NamespacePolicy {
            revoked_permissions: [
                "customer_success.process_refund:execute".to_owned(),
                "customer_success:read".to_owned(),
                "customer_success:pii:read".to_owned(),
            ]
            .into(),
            ..sensitive()
        };
        let refused = AccessPolicy::may_create_task(
            &agent,
            Some(NOW),
            "customer_success",
            "process_refund",
            &revoked,
            NOW,
        );
        assert_eq!(refused.map_err(|r| r.code()), Err("permission_denied"));
        assert_eq!(
            AccessPolicy::may_read(&agent, "customer_success", &revoked, false)
                .map_err(|r| r.code()),
            Err("read_denied")
        );
        assert!(!AccessPolicy::sees_pii(
            &agent,
            "customer_success",
            &revoked
        ));

        let suspended = NamespacePolicy {
            suspended_subjects: ["user_123".to_owned()].into(),
            ..sensitive()
        };
        let refused = AccessPolicy::may_create_task(
            &agent,
            Some(NOW),
            "customer_success",
            "process_refund",
            &suspended,
            NOW,
        );
        assert_eq!(refused.map_err(|r| r.code()), Err("suspended"));
        assert_eq!(
            AccessPolicy::may_read(&agent, "customer_success", &suspended, true)
                .map_err(|r| r.code()),
            Err("suspended"),
            "not even its own tasks"
        );
    }

    #[test]
    fn managing_needs_the_manage_permission_and_acting_on_a_task_ownership_or_manage() {
        let ns = "customer_success";
        let agent = caller(&["customer_success_agent"], &[]);
        let manager = caller(&["auditor"], &["customer_success:manage"]);
        let open = NamespacePolicy::default();
        let code = |r: Result<(), Refusal>| r.map_err(|r| r.code());
        assert_eq!(
            code(AccessPolicy::may_manage(&agent, ns, &open)),
            Err("manage_denied")
        );
        assert_eq!(code(AccessPolicy::may_manage(&manager, ns, &open)), Ok(()));
        assert_eq!(
            code(AccessPolicy::may_manage(&manager, "payments", &open)),
            Err("manage_denied"),
            "managing one namespace is not managing another"
        );
        assert_eq!(
            code(AccessPolicy::may_act_on_task(&agent, ns, &open, false)),
            Err("not_task_owner")
        );
        assert_eq!(
            code(AccessPolicy::may_act_on_task(&agent, ns, &open, true)),
            Ok(())
        );
        assert_eq!(
            code(AccessPolicy::may_act_on_task(&manager, ns, &open, false)),
            Ok(())
        );

        let revoked = NamespacePolicy {
            revoked_permissions: ["customer_success:manage".to_owned()].into(),
            ..NamespacePolicy::default()
        };
        assert_eq!(
            code(AccessPolicy::may_manage(&manager, ns, &revoked)),
            Err("manage_denied")
        );
        let suspended = NamespacePolicy {
            suspended_subjects: ["user_123".to_owned()].into(),
            ..NamespacePolicy::default()
        };
        assert_eq!(
            code(AccessPolicy::may_act_on_task(&agent, ns, &suspended, true)),
            Err("suspended")
        );
    }

    #[test]
    fn the_policy_file_refuses_unknown_fields() {
        let err = serde_json::from_str::<AccessPolicy>(r#"{"roles": {}, "rolez": {}}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("rolez"), "{err}");
    }
}
