//! Retention: delete what each namespace's policy says is due, and nothing else. A
//! finished task goes (with its steps and attempts, and its own data key destroyed) once
//! its namespace keeps tasks of its classification no longer; audit events go only as a
//! prefix of the chain every event of which is past its namespace's audit retention, and
//! only up to a signed checkpoint, which stays as the anchor the remaining chain verifies
//! from. Each purge is an audit event.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;

use super::EngineError;
use super::core::Engine;
use crate::audit::{self, NewEvent};
use crate::classify::Classification;
use crate::policy::NamespacePolicy;
use crate::store::AuditCutoff;

/// Tasks deleted per transaction.
const PURGE_BATCH: i64 = 500;
const DAY_MS: i64 = 86_400_000;

/// What one run purged.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RetentionRun {
    /// When it ran (unix ms, the engine's clock).
    pub at: i64,
    /// Tasks deleted, by namespace.
    pub tasks_purged: BTreeMap<String, u64>,
    /// Data keys destroyed with their tasks.
    pub data_keys_destroyed: u64,
    /// Audit events deleted.
    pub audit_events_purged: u64,
    /// The chain now resumes after this seq (its checkpoint kept as the anchor).
    pub audit_resumes_after: Option<i64>,
}

/// One bound on task data: finished tasks of this classification and PII flag that
/// finished before `before_ts` (kept `days`) are due.
struct TaskRule {
    level: &'static str,
    pii: bool,
    days: u32,
    before_ts: i64,
}

/// The bounds `policy` sets on task data at `now`: one per classification and PII flag.
fn task_rules(policy: &NamespacePolicy, now: i64) -> Vec<TaskRule> {
    Classification::ALL
        .into_iter()
        .flat_map(|level| [false, true].map(|pii| (level.as_str(), pii)))
        .filter_map(|(level, pii)| {
            let days = policy.retention.task_days(level, pii)?;
            Some(TaskRule {
                level,
                pii,
                days,
                before_ts: now - i64::from(days) * DAY_MS,
            })
        })
        .collect()
}

impl Engine {
    /// Purge everything due now under each namespace's retention, auditing each purge
    /// and the run as `actor`.
    pub async fn run_retention(&self, actor: &str) -> Result<RetentionRun, EngineError> {
        let now = self.now();
        let namespaces = self.read(async |tx| tx.list_namespaces().await).await?;
        let mut run = RetentionRun {
            at: now,
            ..RetentionRun::default()
        };
        let mut cutoffs = Vec::new();
        let mut every_namespace_bounds_audit = !namespaces.is_empty();
        let mut shared_before: Option<i64> = None;
        for row in &namespaces {
            let Ok(policy) = serde_json::from_str::<NamespacePolicy>(&row.policy) else {
                tracing::warn!(namespace = %row.name, "a stored namespace policy does not parse; nothing of it is purged");
                every_namespace_bounds_audit = false;
                continue;
            };
            self.purge_tasks(&row.name, &policy, now, actor, &mut run)
                .await?;
            match policy.retention.audit_days {
                Some(days) => {
                    let before_ts = now - i64::from(days) * DAY_MS;
                    cutoffs.push(AuditCutoff {
                        namespace: row.name.clone(),
                        before_ts,
                    });
                    shared_before = Some(shared_before.map_or(before_ts, |s| s.min(before_ts)));
                }
                None => every_namespace_bounds_audit = false,
            }
        }
        // Events of no namespace (a refused token, a trail read) go only when every
        // namespace's audit retention has passed them.
        let shared_before = shared_before.filter(|_| every_namespace_bounds_audit);
        if !cutoffs.is_empty() {
            self.purge_audit(&cutoffs, shared_before, now, actor, &mut run)
                .await?;
        }
        let event = NewEvent {
            actor: actor.to_owned(),
            action: "retention.ran".into(),
            resource: "retention".into(),
            outcome: "success".into(),
            details: json!(run),
            ..NewEvent::default()
        };
        self.record_event(&event, now).await?;
        Ok(run)
    }

    /// Whether retention is kept: per namespace, its rules and how many finished tasks are
    /// past them yet still stored (counted from storage), and when retention last ran.
    pub async fn retention_status(&self) -> Result<serde_json::Value, EngineError> {
        let now = self.now();
        let namespaces = self.read(async |tx| tx.list_namespaces().await).await?;
        let mut listed = serde_json::Map::new();
        let mut overdue_total = 0;
        for row in &namespaces {
            let Ok(policy) = serde_json::from_str::<NamespacePolicy>(&row.policy) else {
                continue;
            };
            let mut overdue = 0;
            for rule in task_rules(&policy, now) {
                overdue += self
                    .read(async |tx| {
                        tx.count_due_tasks(&row.name, rule.level, rule.pii, rule.before_ts)
                            .await
                    })
                    .await?;
            }
            overdue_total += overdue;
            listed.insert(
                row.name.clone(),
                json!({ "rules": policy.retention, "overdue_tasks": overdue }),
            );
        }
        let last = self
            .read(async |tx| {
                let filter = crate::store::AuditFilter {
                    action: Some("retention.ran".into()),
                    ..crate::store::AuditFilter::default()
                };
                let total = tx.count_audit(&filter).await?;
                Ok((total, tx.last_audit_ts("retention.ran").await?))
            })
            .await?;
        Ok(json!({
            "status": if overdue_total == 0 { "compliant" } else { "overdue" },
            "overdue_tasks": overdue_total,
            "runs": last.0,
            "last_run": last.1.map(audit::rfc3339),
            "namespaces": listed,
        }))
    }

    async fn purge_tasks(
        &self,
        namespace: &str,
        policy: &NamespacePolicy,
        now: i64,
        actor: &str,
        run: &mut RetentionRun,
    ) -> Result<(), EngineError> {
        for TaskRule {
            level,
            pii,
            days,
            before_ts,
        } in task_rules(policy, now)
        {
            loop {
                let mut tx = self.inner.store.begin().await?;
                let due = tx
                    .due_tasks(namespace, level, pii, before_ts, PURGE_BATCH)
                    .await?;
                if due.is_empty() {
                    tx.rollback().await?;
                    break;
                }
                let ids: Vec<String> = due.iter().map(|t| t.id.clone()).collect();
                let deleted = tx.delete_tasks(&ids).await?;
                // A task's own key goes with it; a subject's key may serve its other
                // tasks, and erasure is what destroys it.
                let mut destroyed = 0;
                for task in due.iter().filter(|t| t.subject.is_none()) {
                    tx.destroy_data_key(&task.data_key_id, now).await?;
                    destroyed += 1;
                }
                let event = NewEvent {
                    actor: actor.to_owned(),
                    action: "retention.purged".into(),
                    resource: format!("namespace/{namespace}"),
                    namespace: Some(namespace.to_owned()),
                    outcome: "success".into(),
                    classification: Some(level.to_owned()),
                    contains_pii: pii,
                    details: json!({
                        "what": "tasks",
                        "tasks": ids,
                        "retention_days": days,
                        "finished_before": audit::rfc3339(before_ts),
                        "data_keys_destroyed": destroyed,
                    }),
                    ..NewEvent::default()
                };
                audit::record(&mut tx, &event, now).await?;
                tx.commit().await?;
                *run.tasks_purged.entry(namespace.to_owned()).or_default() += deleted;
                run.data_keys_destroyed += destroyed;
                if (due.len() as i64) < PURGE_BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn purge_audit(
        &self,
        cutoffs: &[AuditCutoff],
        shared_before: Option<i64>,
        now: i64,
        actor: &str,
        run: &mut RetentionRun,
    ) -> Result<(), EngineError> {
        let store = &self.inner.store;
        audit::seal_pending(store).await?;
        let mut tx = store.begin().await?;
        let first_kept = tx.first_kept_audit_seq(cutoffs, shared_before).await?;
        let Some(tip) = tx.last_sealed().await?.map(|(seq, _)| seq) else {
            tx.rollback().await?;
            return Ok(());
        };
        // Everything before the first kept event is due; stop at the last checkpoint
        // there, which anchors what remains.
        let limit = first_kept.map_or(tip, |seq| seq - 1).min(tip);
        let Some(anchor) = tx.checkpoint_at_or_before(limit).await? else {
            tx.rollback().await?;
            return Ok(());
        };
        let first = tx.audit_events(i64::MIN, 1).await?;
        if first.first().is_none_or(|e| e.seq > anchor.seq) {
            // Purged up to this anchor already.
            tx.rollback().await?;
            return Ok(());
        }
        let purged = tx.delete_audit_through(anchor.seq).await?;
        let event = NewEvent {
            actor: actor.to_owned(),
            action: "retention.purged".into(),
            resource: "audit".into(),
            outcome: "success".into(),
            details: json!({
                "what": "audit_events",
                "events": purged,
                "through_seq": anchor.seq,
                "anchor_hash": hex::encode(&anchor.hash),
            }),
            ..NewEvent::default()
        };
        audit::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        run.audit_events_purged += purged;
        run.audit_resumes_after = Some(anchor.seq);
        Ok(())
    }
}
