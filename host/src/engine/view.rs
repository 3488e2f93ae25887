//! A task as a reader sees it: its row, its context opened, and each context field's
//! class, so the API can redact for the caller. Nothing here decides who may read; the
//! API asks `policy` first.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::EngineError;
use super::WorkflowDef;
use super::core::{Engine, parse_policy, versioned_key};
use super::data::{self, TaskKey, context_aad};
use crate::classify::{DataClass, REDACTED, classify_context};
use crate::policy::Principal;
use crate::store::{AttemptRow, StepRow, StoreError, TaskRow, TaskStatus, Tx, WorkflowRow};

/// A stored task with its context opened. Holds PII: redact before showing it
/// ([`TaskView::redacted_context`]).
#[derive(Clone)]
pub struct TaskView {
    /// The task's id.
    pub id: String,
    /// Its namespace.
    pub namespace: String,
    /// Its workflow's name.
    pub workflow: String,
    /// The workflow version it runs.
    pub version: String,
    /// Where it is.
    pub status: TaskStatus,
    /// Who created it.
    pub created_by: String,
    /// The creator's permission snapshot, as kept with the task.
    pub creator: Principal,
    /// The context's overall classification.
    pub classification: String,
    /// Whether the context holds PII.
    pub contains_pii: bool,
    /// Why it was created.
    pub reason: Option<String>,
    /// Its labels (JSON).
    pub tags: Value,
    /// The step it failed in, if it failed.
    pub error_step: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// Unix ms, once finished.
    pub finished_at: Option<i64>,
    context: Map<String, Value>,
    fields: BTreeMap<String, DataClass>,
}

impl std::fmt::Debug for TaskView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskView")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("context", &format_args!("<{} fields>", self.context.len()))
            .finish_non_exhaustive()
    }
}

impl TaskView {
    /// `task`'s view, with its context `context` (opened), classified field by field as
    /// `fields`, and its creator's snapshot `creator` (parsed).
    pub(crate) fn of_row(
        task: TaskRow,
        creator: Principal,
        context: Map<String, Value>,
        fields: BTreeMap<String, DataClass>,
    ) -> Self {
        Self {
            id: task.id,
            namespace: task.namespace,
            workflow: task.workflow_name,
            version: task.workflow_version,
            status: task.status,
            created_by: task.created_by,
            creator,
            classification: task.classification,
            contains_pii: task.contains_pii,
            reason: task.reason,
            tags: serde_json::from_str(&task.tags).unwrap_or(Value::Null),
            error_step: task.error_step,
            created_at: task.created_at,
            updated_at: task.updated_at,
            finished_at: task.finished_at,
            context,
            fields,
        }
    }

    /// The context as stored, unredacted.
    pub(crate) fn into_context(self) -> Map<String, Value> {
        self.context
    }

    /// The context with every PII-class field `"[REDACTED]"` unless `show_pii`.
    pub fn redacted_context(&self, show_pii: bool) -> Value {
        let redacted = self
            .context
            .iter()
            .map(|(name, value)| {
                let hidden = !show_pii && self.fields.get(name).is_some_and(|c| c.is_pii());
                let shown = if hidden {
                    Value::String(REDACTED.to_owned())
                } else {
                    value.clone()
                };
                (name.clone(), shown)
            })
            .collect();
        Value::Object(redacted)
    }
}

impl Engine {
    /// Task `task_id` with its context opened, for the API to redact and show.
    pub async fn task_view(&self, task_id: &str) -> Result<TaskView, EngineError> {
        let task = self.task_row(task_id).await?;
        self.open_task(task).await
    }

    /// `read` on SQLite on this thread ([`crate::store::Store::read_now`]); `None` on
    /// PostgreSQL, or if SQLite was busy: then the caller reads through sqlx.
    fn read_now<T>(
        &self,
        read: impl FnOnce(&mut crate::store::LiteTx<'_>) -> Result<T, StoreError>,
    ) -> Option<Result<T, EngineError>> {
        match self.inner.store.read_now(read)? {
            Err(StoreError::Unavailable(_)) => None,
            other => Some(other.map_err(EngineError::from)),
        }
    }

    /// Task `task_id`'s row, nothing opened: enough to decide who may read it before
    /// [`Engine::open_task`] decrypts anything.
    pub async fn task_row(&self, task_id: &str) -> Result<TaskRow, EngineError> {
        if let Some(read) = self.read_now(|tx| tx.get_task(task_id)) {
            return read?.ok_or_else(|| EngineError::NotFound(format!("task {task_id}")));
        }
        let mut tx = self.inner.store.begin_read().await?;
        let task = tx
            .get_task(task_id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("task {task_id}")))?;
        tx.commit().await?;
        Ok(task)
    }

    /// `task` with its context opened and its fields classified.
    pub async fn open_task(&self, task: TaskRow) -> Result<TaskView, EngineError> {
        let versioned = versioned_key(&task.namespace, &task.workflow_name, &task.workflow_version);
        let known = self.cached_workflow(&versioned);
        let fast = match known {
            Some(workflow) if !self.inner.protect => Some((workflow, TaskKey::none())),
            Some(workflow) => match self.read_now(|tx| tx.get_data_key(&task.data_key_id)) {
                Some(row) => {
                    let key = data::open_key(self.data_keys(), row?, &task.data_key_id).await?;
                    Some((workflow, TaskKey::from(key)))
                }
                None => None,
            },
            None => None,
        };
        let (workflow, key) = match fast {
            Some(fast) => fast,
            None => {
                let mut tx = self.inner.store.begin_read().await?;
                let workflow = self
                    .workflow(
                        &mut tx,
                        &task.namespace,
                        &task.workflow_name,
                        &task.workflow_version,
                    )
                    .await?;
                let key = self.task_key(&mut tx, &task.data_key_id).await?;
                tx.commit().await?;
                (workflow, key)
            }
        };
        let plaintext = key.open(&task.context, context_aad(&task.id))?;
        let Ok(Value::Object(context)) = serde_json::from_slice(&plaintext) else {
            return Err(EngineError::Internal(
                "stored context is not a JSON object".into(),
            ));
        };
        let fields = classify_context(&workflow.classes, &context).fields;
        let creator = serde_json::from_str(&task.principal).map_err(|_| {
            EngineError::Internal("stored permission snapshot does not parse".into())
        })?;
        Ok(TaskView::of_row(task, creator, context, fields))
    }

    /// One read transaction around `work`: for the API's listings and lookups, which
    /// read rows the API may show as they are (no ciphertext is opened here).
    pub async fn read<T>(
        &self,
        work: impl AsyncFnOnce(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, EngineError> {
        let mut tx = self.inner.store.begin_read().await?;
        let value = work(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }

    /// Task `task_id`'s steps and every attempt at them, rows as stored: results and
    /// attempt records stay sealed; errors were redacted when they were recorded.
    pub async fn task_steps(
        &self,
        task_id: &str,
    ) -> Result<(Vec<StepRow>, Vec<AttemptRow>), EngineError> {
        self.read(async |tx| {
            Ok((
                tx.get_steps(task_id).await?,
                tx.get_attempts(task_id).await?,
            ))
        })
        .await
    }

    /// The workflow `namespace.name` at `version`, or its latest version, parsed.
    pub async fn workflow_definition(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<(WorkflowDef, WorkflowRow), EngineError> {
        let row = self
            .read(async |tx| match version {
                Some(version) => tx.get_workflow(namespace, name, version).await,
                None => tx.latest_workflow(namespace, name).await,
            })
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("workflow {namespace}.{name}")))?;
        let (def, _) = WorkflowDef::parse(&row.definition)?;
        Ok((def, row))
    }

    /// Namespace `namespace`'s policy as it is now.
    pub async fn namespace_policy(
        &self,
        namespace: &str,
    ) -> Result<crate::policy::NamespacePolicy, EngineError> {
        if let Some(read) = self.read_now(|tx| tx.namespace_policy(namespace)) {
            let stored =
                read?.ok_or_else(|| EngineError::NotFound(format!("namespace {namespace}")))?;
            return parse_policy(namespace, &stored);
        }
        let mut tx = self.inner.store.begin_read().await?;
        let policy = Self::policy(&mut tx, namespace).await?;
        tx.commit().await?;
        Ok(policy)
    }
}
