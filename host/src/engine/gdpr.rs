//! Data-subject rights: find everything about a subject through the blind index (never a
//! scan of plaintext), hand it over decrypted, or erase it by crypto-shredding — the
//! subject's data key is destroyed in the database and the pad that masks it is deleted
//! from the subject vault, so no copy of the database, however old, opens it again. The
//! audit chain keeps every event: it never held the subject's values.

use serde::Serialize;
use serde_json::{Value, json};

use super::EngineError;
use super::core::Engine;
use super::create::subject_identifier;
use super::data::{open_key, result_aad};
use crate::audit::{self, NewEvent};
use crate::store::{AuditFilter, TaskRow};

/// Most audit events listed per task in an access report.
const EVENTS_PER_TASK: i64 = 1_000;

/// What the engine found about a subject.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectReport {
    /// The subject's reference in the trail: its blind index, never the identifier.
    pub subject_ref: Option<String>,
    /// `found`, `erased` or `not_found`.
    pub status: &'static str,
    /// When the subject was erased, if it was (unix ms).
    pub erased_at: Option<i64>,
    /// Each task about the subject.
    pub tasks: Vec<Value>,
    /// Step results stored for those tasks.
    pub step_results: usize,
    /// Audit events about those tasks and requests about the subject.
    pub audit_events: Vec<Value>,
}

/// A subject's data, decrypted: the portable export.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectExport {
    /// As in [`SubjectReport`].
    pub subject_ref: Option<String>,
    /// `found`, `erased` or `not_found`.
    pub status: &'static str,
    /// Each task with its context and step results in the clear.
    pub tasks: Vec<Value>,
}

/// What an erasure did.
#[derive(Debug, Clone, Serialize)]
pub struct Erasure {
    /// As in [`SubjectReport`].
    pub subject_ref: Option<String>,
    /// `erased`, `already_erased` or `not_found`.
    pub status: &'static str,
    /// Tasks now anonymized.
    pub tasks_anonymized: u64,
    /// The sequence number of the `gdpr.erased` event.
    pub audit_seq: Option<i64>,
}

impl Engine {
    /// The blind index of the subject `identifier` names: the subject itself, or the one
    /// an alias (an email address, an identity number) points to. `None`: unknown, or
    /// ambiguous (an alias of two subjects answers nothing rather than the wrong one).
    pub async fn find_subject(&self, identifier: &str) -> Result<Option<String>, EngineError> {
        let blind = self
            .inner
            .keys
            .blind_index()
            .index(&subject_identifier(identifier));
        self.read(async |tx| {
            if tx.get_subject(&blind).await?.is_some() {
                return Ok(Some(blind.clone()));
            }
            let mut subjects = tx.subjects_by_alias(&blind).await?;
            Ok((subjects.len() == 1).then(|| subjects.remove(0)))
        })
        .await
    }

    /// The subject's tasks and whether (and when) its key was destroyed.
    async fn subject_tasks(
        &self,
        subject: &str,
    ) -> Result<(Vec<TaskRow>, Option<i64>), EngineError> {
        self.read(async |tx| {
            let tasks = tx.tasks_for_subject(subject).await?;
            let key = match tx.get_subject(subject).await? {
                Some(row) => tx.get_data_key(&row.data_key_id).await?,
                None => None,
            };
            Ok((tasks, key.and_then(|k| k.destroyed_at)))
        })
        .await
    }

    /// Everything about the subject `identifier` names: each task with its data
    /// categories, legal basis and retention from its namespace's policy, how many step
    /// results are stored, and every audit event about them. Opens nothing.
    pub async fn subject_access(&self, identifier: &str) -> Result<SubjectReport, EngineError> {
        let Some(subject) = self.find_subject(identifier).await? else {
            return Ok(SubjectReport {
                subject_ref: None,
                status: "not_found",
                erased_at: None,
                tasks: Vec::new(),
                step_results: 0,
                audit_events: Vec::new(),
            });
        };
        let (tasks, erased_at) = self.subject_tasks(&subject).await?;
        let mut listed = Vec::with_capacity(tasks.len());
        let mut events = Vec::new();
        let mut step_results = 0;
        let mut policies = std::collections::HashMap::new();
        for task in &tasks {
            if !policies.contains_key(&task.namespace) {
                let policy = self.namespace_policy(&task.namespace).await?;
                policies.insert(task.namespace.clone(), policy);
            }
            let policy = &policies[&task.namespace];
            let (rows, steps, anonymized_at) = self
                .read(async |tx| {
                    let filter = AuditFilter {
                        task: Some(task.id.clone()),
                        ..AuditFilter::default()
                    };
                    Ok((
                        tx.query_audit(&filter, EVENTS_PER_TASK).await?,
                        tx.get_steps(&task.id).await?,
                        tx.task_anonymized_at(&task.id).await?,
                    ))
                })
                .await?;
            let stored = steps.iter().filter(|s| s.result.is_some()).count();
            step_results += stored;
            let categories = rows
                .iter()
                .find(|e| e.action == "task.created")
                .and_then(|e| serde_json::from_str::<Value>(&e.details).ok())
                .map(|d| d["data_classes"].clone())
                .unwrap_or(Value::Null);
            listed.push(json!({
                "id": task.id,
                "namespace": task.namespace,
                "workflow": task.workflow_name,
                "version": task.workflow_version,
                "status": task.status.as_str(),
                "created_at": task.created_at,
                "finished_at": task.finished_at,
                "anonymized_at": anonymized_at,
                "data_classification": task.classification,
                "data_categories": categories,
                "legal_basis": policy.legal_basis,
                "retention_days": policy.retention.task_days(&task.classification, task.contains_pii),
                "step_results_stored": stored,
            }));
            events.extend(rows.iter().map(audit::event_view));
        }
        let requests = self
            .read(async |tx| {
                let filter = AuditFilter {
                    resource: Some(format!("subject/{subject}")),
                    ..AuditFilter::default()
                };
                tx.query_audit(&filter, EVENTS_PER_TASK).await
            })
            .await?;
        events.extend(requests.iter().map(audit::event_view));
        Ok(SubjectReport {
            subject_ref: Some(subject),
            status: if erased_at.is_some() {
                "erased"
            } else {
                "found"
            },
            erased_at,
            tasks: listed,
            step_results,
            audit_events: events,
        })
    }

    /// The subject's data decrypted, task by task: context and step results.
    pub async fn subject_export(&self, identifier: &str) -> Result<SubjectExport, EngineError> {
        let Some(subject) = self.find_subject(identifier).await? else {
            return Ok(SubjectExport {
                subject_ref: None,
                status: "not_found",
                tasks: Vec::new(),
            });
        };
        let (tasks, erased_at) = self.subject_tasks(&subject).await?;
        if erased_at.is_some() {
            return Ok(SubjectExport {
                subject_ref: Some(subject),
                status: "erased",
                tasks: Vec::new(),
            });
        }
        let mut exported = Vec::with_capacity(tasks.len());
        for task in tasks {
            let (key_row, steps) = self
                .read(async |tx| {
                    Ok((
                        tx.get_data_key(&task.data_key_id).await?,
                        tx.get_steps(&task.id).await?,
                    ))
                })
                .await?;
            let key = open_key(self.data_keys(), key_row, &task.data_key_id).await?;
            let mut results = serde_json::Map::new();
            for step in &steps {
                if let Some(sealed) = &step.result {
                    let row = format!("{}/{}", task.id, step.name);
                    let plain = key.open(sealed, result_aad(&row))?;
                    results.insert(
                        step.name.clone(),
                        serde_json::from_slice(&plain).unwrap_or(Value::Null),
                    );
                }
            }
            let view = self.open_task(task).await?;
            exported.push(json!({
                "id": view.id,
                "namespace": view.namespace,
                "workflow": view.workflow,
                "version": view.version,
                "status": view.status.as_str(),
                "created_at": view.created_at,
                "context": view.redacted_context(true),
                "step_results": results,
            }));
        }
        Ok(SubjectExport {
            subject_ref: Some(subject),
            status: "found",
            tasks: exported,
        })
    }

    /// Erase the subject `identifier` names: in one transaction destroy its data key,
    /// mark its tasks anonymized and record `gdpr.erased` (as `actor`, with `details`);
    /// then delete its pad from the vault and scrub old copies of the key from the
    /// database files. Erasing twice is harmless.
    pub async fn erase_subject(
        &self,
        identifier: &str,
        actor: &str,
        correlation_id: Option<String>,
        details: Value,
    ) -> Result<Erasure, EngineError> {
        let Some(subject) = self.find_subject(identifier).await? else {
            return Ok(Erasure {
                subject_ref: None,
                status: "not_found",
                tasks_anonymized: 0,
                audit_seq: None,
            });
        };
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let row = tx
            .get_subject(&subject)
            .await?
            .ok_or_else(|| EngineError::NotFound("subject".into()))?;
        let key = tx.get_data_key(&row.data_key_id).await?;
        let already = key.as_ref().is_some_and(|k| k.destroyed_at.is_some());
        // Which pad masks the key: kept on the destroyed row, so an erasure repeated after
        // a failure below still finds it.
        let pad_key = key
            .as_ref()
            .and_then(|k| k.pad_key())
            .unwrap_or(&subject)
            .to_owned();
        tx.destroy_data_key(&row.data_key_id, now).await?;
        let anonymized = tx.anonymize_subject_tasks(&subject, now).await?;
        let mut details = details;
        details["tasks_anonymized"] = json!(anonymized);
        details["already_erased"] = json!(already);
        let event = NewEvent {
            actor: actor.to_owned(),
            action: "gdpr.erased".into(),
            resource: format!("subject/{subject}"),
            outcome: "success".into(),
            contains_pii: false,
            correlation_id,
            details,
            ..NewEvent::default()
        };
        let seq = audit::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        // After the commit: were the pad deleted first and the commit then failed, the
        // data would be gone without its record. A failure here leaves the erasure to
        // be repeated, which is harmless.
        // The redactors kept for recent tasks hold their contexts' PII values in memory:
        // none of them outlives an erasure in this process, whatever the vault answers.
        crate::classify::Redactor::forget_shared();
        if let Some(vault) = self.subject_vault() {
            vault.erase(&pad_key).await?;
        }
        if let Err(e) = self.inner.store.purge_erased().await {
            tracing::warn!(error = %e, "scrubbing erased keys from the database files is left for later");
        }
        Ok(Erasure {
            subject_ref: Some(subject),
            status: if already { "already_erased" } else { "erased" },
            tasks_anonymized: anonymized,
            audit_seq: Some(seq),
        })
    }
}
