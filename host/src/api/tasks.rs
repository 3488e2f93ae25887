//! `/v1/tasks`: create a task (policy before work: namespace grant, workflow permission,
//! fresh MFA for a sensitive workflow), read one back with its context redacted for the
//! caller and its security context, list a namespace's tasks a page at a time, show a
//! task's steps, cancel a task and retry its failed step. Every refusal is an audit
//! event; a task the caller may not read is a 404, anything else refused a 403.

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::named_field;
use super::{ApiError, ApiState, CorrelationId, policy_or_default, record, refuse};
use crate::audit::NewEvent;
use crate::auth::Identity;
use crate::engine::{CreateTask, EngineError, TaskView, valid_name, valid_version};
use crate::policy::{AccessPolicy, NamespacePolicy, Principal, Refusal};
use crate::store::{TaskCursor, TaskFilter, TaskRow, TaskStatus};

/// Most tags one task may carry, and the longest tag and reason: labels, not documents.
const MAX_TAGS: usize = 32;
const MAX_TAG_CHARS: usize = 64;
const MAX_REASON_CHARS: usize = 1_000;

/// The body of `POST /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    namespace: String,
    name: String,
    #[serde(default)]
    version: Option<String>,
    context: Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

impl CreateBody {
    /// Names checked before they reach storage; the errors echo no value.
    fn check(&self) -> Result<(), ApiError> {
        let invalid = |what: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", what);
        if !valid_name(&self.namespace) {
            return Err(invalid("`namespace` is not a valid name"));
        }
        if !valid_name(&self.name) {
            return Err(invalid("`name` is not a valid workflow name"));
        }
        if self.version.as_deref().is_some_and(|v| !valid_version(v)) {
            return Err(invalid("`version` is not MAJOR.MINOR.PATCH"));
        }
        if self.tags.len() > MAX_TAGS
            || self
                .tags
                .iter()
                .any(|t| t.is_empty() || t.chars().count() > MAX_TAG_CHARS)
        {
            return Err(invalid("`tags`: at most 32 tags of 1 to 64 characters"));
        }
        if self
            .reason
            .as_deref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return Err(invalid("`reason` is longer than 1000 characters"));
        }
        Ok(())
    }
}

/// `POST /v1/tasks`.
pub(super) async fn create(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Json<CreateBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::json_body(e, "a task request"))?;
    body.check()?;
    let caller = state.access.effective(&identity.principal);
    let policy = policy_or_default(&state, &body.namespace).await?;
    let now_ms = state.engine.now();
    if let Err(refusal) = AccessPolicy::may_create_task(
        &caller,
        identity.mfa_at,
        &body.namespace,
        &body.name,
        &policy,
        now_ms.div_euclid(1000),
    ) {
        return Err(denied(&state, &caller, &body, &refusal, &correlation).await);
    }
    let created = state
        .engine
        .create_task(
            &caller,
            CreateTask {
                namespace: body.namespace.clone(),
                workflow: body.name.clone(),
                version: body.version.clone(),
                context: body.context,
                reason: body.reason,
                tags: body.tags,
                correlation_id: Some(correlation.0.clone()),
                request: Some(correlation.1.clone()),
            },
        )
        .await?;
    let mut shown = show(&created.view, &caller, &policy);
    shown["security_context"]["audit_seq"] = json!(created.audit_seq);
    Ok((StatusCode::CREATED, Json(shown)))
}

/// The longest `GET /v1/tasks/{id}?wait_ms=` may wait for a task to end.
const MAX_WAIT_MS: u64 = 30_000;

/// The query of `GET /v1/tasks/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetQuery {
    /// Answer once the task has ended (complete, error or cancelled), or after this many
    /// milliseconds with the task as it is then: instead of polling.
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `GET /v1/tasks/{id}`: the caller's own task, or one of a namespace it may read. A task
/// the caller may not read is answered as one that does not exist (and audited); nothing
/// is decrypted before the decision. With `wait_ms`, the answer waits for the task to
/// end, up to that long; whether the caller may read it is decided before the wait and
/// again, under the policy as it is then, after.
pub(super) async fn get(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| {
        let about =
            named_field(&e.body_text()).unwrap_or_else(|| "a parameter is malformed".into());
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("the query is not a task read: {about}"),
        )
    })?;
    let wait = match query.wait_ms {
        Some(ms) if ms > MAX_WAIT_MS => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("`wait_ms` must be at most {MAX_WAIT_MS}"),
            ));
        }
        Some(ms) => std::time::Duration::from_millis(ms),
        None => std::time::Duration::ZERO,
    };
    let caller = state.access.effective(&identity.principal);
    let (mut task, mut policy) = readable_task(&state, &caller, &id, &correlation).await?;
    if !wait.is_zero() && !task.status.is_terminal() {
        // Until the task ends or the wait runs out, unless the server begins to stop.
        let ended = tokio::select! {
            ended = state.engine.task_row_ended(&id, wait) => ended,
            () = state.stopping.stopped() => state.engine.task_row(&id).await,
        };
        let ended = ended.map_err(|e| match e {
            EngineError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such task")
            }
            other => other.into(),
        })?;
        (task, policy) = may_read_task(&state, &caller, ended, &correlation).await?;
    }
    let view = state.engine.open_task(task).await.map_err(|e| match e {
        // Its data key destroyed: the subject was erased.
        EngineError::Invalid(_) => ApiError::new(
            StatusCode::GONE,
            "data_erased",
            "the task's data can no longer be read: its data subject was erased",
        ),
        other => other.into(),
    })?;
    let shown = show(&view, &caller, &policy);
    // A data access: who saw the task's context, from where, and whether its PII showed.
    // Fail closed: data whose access cannot be recorded is not shown.
    let event = NewEvent {
        actor: format!("user:{}", caller.subject),
        action: "task.read".into(),
        resource: format!("task/{id}"),
        namespace: Some(view.namespace.clone()),
        outcome: "success".into(),
        classification: Some(view.classification.clone()),
        contains_pii: view.contains_pii,
        correlation_id: Some(correlation.0.clone()),
        details: json!({
            "workflow": format!("{}@{}", view.workflow, view.version),
            "pii_shown": AccessPolicy::sees_pii(&caller, &view.namespace, &policy),
            "request": correlation.1,
        }),
    };
    state
        .engine
        .record_event(&event, state.engine.now())
        .await?;
    Ok(Json(shown))
}

/// Task `id` and its namespace's policy, if `caller` may read it. Otherwise the answer
/// is 404, as for a task that does not exist, and the refusal is audited.
async fn readable_task(
    state: &ApiState,
    caller: &Principal,
    id: &str,
    correlation: &CorrelationId,
) -> Result<(TaskRow, NamespacePolicy), ApiError> {
    let no_task = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such task");
    if !valid_task_id(id) {
        return Err(no_task());
    }
    let task = state.engine.task_row(id).await.map_err(|e| match e {
        EngineError::NotFound(_) => no_task(),
        other => other.into(),
    })?;
    may_read_task(state, caller, task, correlation).await
}

/// `task` and its namespace's policy, if `caller` may read it (as [`readable_task`]).
async fn may_read_task(
    state: &ApiState,
    caller: &Principal,
    task: TaskRow,
    correlation: &CorrelationId,
) -> Result<(TaskRow, NamespacePolicy), ApiError> {
    let no_task = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such task");
    let id = &task.id;
    let policy = state.engine.namespace_policy(&task.namespace).await?;
    let own = task.created_by == caller.subject;
    if let Err(refusal) = AccessPolicy::may_read(caller, &task.namespace, &policy, own) {
        let event = NewEvent {
            actor: format!("user:{}", caller.subject),
            action: "task.read_denied".into(),
            resource: format!("task/{id}"),
            namespace: Some(task.namespace.clone()),
            outcome: "denied".into(),
            correlation_id: Some(correlation.0.clone()),
            details: json!({ "code": refusal.code() }),
            ..NewEvent::default()
        };
        record(state, &event).await;
        return Err(no_task());
    }
    Ok((task, policy))
}

/// Task `id`, if `caller` may cancel it or retry its steps: readable (else 404) and its
/// own, or in a namespace it manages (else 403, audited as `action`).
async fn actionable_task(
    state: &ApiState,
    caller: &Principal,
    id: &str,
    action: &str,
    correlation: &CorrelationId,
) -> Result<TaskRow, ApiError> {
    let (task, policy) = readable_task(state, caller, id, correlation).await?;
    let own = task.created_by == caller.subject;
    if let Err(refusal) = AccessPolicy::may_act_on_task(caller, &task.namespace, &policy, own) {
        let resource = format!("task/{id}");
        return Err(refuse(
            state,
            caller,
            action,
            resource,
            &task.namespace,
            &refusal,
            correlation,
        )
        .await);
    }
    Ok(task)
}

/// Most tasks one page of `GET /v1/tasks` holds, and how many it holds unless asked.
const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;

/// The query of `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    namespace: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    cursor: Option<String>,
}

/// `GET /v1/tasks?namespace=…`: a page of the namespace's tasks, newest first, without
/// their contexts (nothing is decrypted). A caller who may not read the namespace sees
/// its own tasks only; asking for someone else's is refused and audited.
pub(super) async fn list(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let invalid = |what: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", what);
    let Query(query) = query.map_err(|e| {
        let about =
            named_field(&e.body_text()).unwrap_or_else(|| "a parameter is malformed".into());
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("the query is not a task listing: {about}"),
        )
    })?;
    if !valid_name(&query.namespace) {
        return Err(invalid("`namespace` is not a valid name"));
    }
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<TaskStatus>().map_err(|_| {
            invalid("`status`: pending, in_progress, complete, error or cancelled")
        })?),
    };
    if query.workflow.as_deref().is_some_and(|w| !valid_name(w)) {
        return Err(invalid("`workflow` is not a valid workflow name"));
    }
    if query
        .created_by
        .as_deref()
        .is_some_and(|c| c.is_empty() || c.len() > 256)
    {
        return Err(invalid("`created_by` is not a subject"));
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid("`limit` must be between 1 and 100"));
    }
    let after = match query.cursor.as_deref() {
        None => None,
        Some(text) => Some(decode_cursor(text).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_cursor",
                "`cursor` is not one this server issued",
            )
        })?),
    };
    let caller = state.access.effective(&identity.principal);
    let policy = policy_or_default(&state, &query.namespace).await?;
    let mut created_by = query.created_by;
    if let Err(refusal) = AccessPolicy::may_read(&caller, &query.namespace, &policy, false) {
        let others = created_by.as_deref().is_some_and(|c| c != caller.subject);
        if others || matches!(refusal, Refusal::Suspended(_)) {
            let resource = format!("namespace/{}", query.namespace);
            return Err(refuse(
                &state,
                &caller,
                "task.list_denied",
                resource,
                &query.namespace,
                &refusal,
                &correlation,
            )
            .await);
        }
        created_by = Some(caller.subject.clone());
    }
    let filter = TaskFilter {
        status,
        workflow: query.workflow,
        created_by,
    };
    let namespace = query.namespace;
    let mut rows = state
        .engine
        .read(async |tx| {
            tx.list_tasks(&namespace, &filter, limit + 1, after.as_ref())
                .await
        })
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = rows
        .last()
        .filter(|_| more)
        .map(|last| encode_cursor(&TaskCursor::from(last)));
    let items: Vec<Value> = rows.iter().map(summary).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// A task in a listing: what it is and where it is, no context.
fn summary(task: &TaskRow) -> Value {
    json!({
        "id": task.id,
        "namespace": task.namespace,
        "workflow": task.workflow_name,
        "version": task.workflow_version,
        "status": task.status.as_str(),
        "created_by": task.created_by,
        "data_classification": task.classification,
        "contains_pii": task.contains_pii,
        "tags": serde_json::from_str::<Value>(&task.tags).unwrap_or(Value::Null),
        "error_step": task.error_step,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "finished_at": task.finished_at,
    })
}

/// A page cursor: the last task's creation time and id, opaque to clients.
fn encode_cursor(cursor: &TaskCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", cursor.created_at, cursor.id))
}

fn decode_cursor(text: &str) -> Option<TaskCursor> {
    if text.len() > 128 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (created_at, id) = text.split_once(':')?;
    let created_at = created_at.parse().ok()?;
    valid_task_id(id).then(|| TaskCursor {
        created_at,
        id: id.to_owned(),
    })
}

/// `GET /v1/tasks/{id}/steps`: each step's status, attempts, timings and error (errors
/// were redacted when recorded; results and attempt records stay sealed).
pub(super) async fn steps(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = state.access.effective(&identity.principal);
    readable_task(&state, &caller, &id, &correlation).await?;
    let (steps, attempts) = state.engine.task_steps(&id).await?;
    let steps: Vec<Value> = steps
        .iter()
        .map(|step| {
            let tries: Vec<Value> = attempts
                .iter()
                .filter(|a| a.step == step.name)
                .map(|a| {
                    json!({
                        "attempt": a.attempt,
                        "worker": a.worker,
                        "outcome": a.outcome,
                        "started_at": a.started_at,
                        "duration_ms": a.duration_ms,
                    })
                })
                .collect();
            json!({
                "name": step.name,
                "status": step.status.as_str(),
                "depends_on": step.depends_on,
                "attempts": step.attempts,
                "next_run_at": step.next_run_at,
                "started_at": step.started_at,
                "finished_at": step.finished_at,
                "error": step.error.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()),
                "history": tries,
            })
        })
        .collect();
    Ok(Json(json!({ "task_id": id, "steps": steps })))
}

/// `POST /v1/tasks/{id}/cancel`: the caller's own task, or any in a namespace it manages.
pub(super) async fn cancel(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = state.access.effective(&identity.principal);
    actionable_task(&state, &caller, &id, "task.cancel_denied", &correlation).await?;
    let done = state
        .engine
        .cancel_task(&id, &format!("user:{}", caller.subject))
        .await?;
    Ok(Json(json!({
        "id": done.id,
        "status": TaskStatus::Cancelled.as_str(),
        "steps_cancelled": done.steps_cancelled,
        "audit_seq": done.audit_seq,
    })))
}

/// `POST /v1/tasks/{id}/steps/{step}/retry`: retry the failed step of a failed task.
pub(super) async fn retry(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let caller = state.access.effective(&identity.principal);
    actionable_task(&state, &caller, &id, "step.retry_denied", &correlation).await?;
    if !valid_name(&step) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such step",
        ));
    }
    let done = state
        .engine
        .retry_step(&id, &step, &format!("user:{}", caller.subject))
        .await?;
    Ok(Json(
        serde_json::to_value(&done).map_err(|e| EngineError::Internal(e.to_string()))?,
    ))
}

/// Task ids are `task_` and hex; anything else is no task of ours.
pub(super) fn valid_task_id(id: &str) -> bool {
    id.strip_prefix("task_").is_some_and(|hex| {
        !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The task as `caller` may see it: PII fields redacted unless it holds `NS:pii:read`.
fn show(view: &TaskView, caller: &Principal, policy: &NamespacePolicy) -> Value {
    let show_pii = AccessPolicy::sees_pii(caller, &view.namespace, policy);
    json!({
        "id": view.id,
        "namespace": view.namespace,
        "workflow": view.workflow,
        "version": view.version,
        "status": view.status.as_str(),
        "context": view.redacted_context(show_pii),
        "reason": view.reason,
        "tags": view.tags,
        "error_step": view.error_step,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
        "finished_at": view.finished_at,
        "security_context": {
            "created_by": view.created_by,
            "role": view.creator.roles.iter().next(),
            "roles": view.creator.roles,
            "data_classification": view.classification,
            "contains_pii": view.contains_pii,
            "audit_trail_id": format!("task/{}", view.id),
        },
    })
}

/// Record a refused creation and answer it with a 403.
async fn denied(
    state: &ApiState,
    caller: &Principal,
    body: &CreateBody,
    refusal: &Refusal,
    correlation: &CorrelationId,
) -> ApiError {
    let resource = format!("workflow/{}.{}", body.namespace, body.name);
    refuse(
        state,
        caller,
        "task.denied",
        resource,
        &body.namespace,
        refusal,
        correlation,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_prefixed_hex_of_bounded_length() {
        assert!(valid_task_id("task_0123abcdef"));
        for bad in [
            "",
            "task_",
            "task_xyz",
            "dk_0123",
            "task_../etc",
            &format!("task_{}", "a".repeat(65)),
        ] {
            assert!(!valid_task_id(bad), "{bad}");
        }
    }
}
