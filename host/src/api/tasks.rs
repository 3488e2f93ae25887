//! `/v1/tasks`: create a task (policy before work: namespace grant, workflow permission,
//! fresh MFA for a sensitive workflow) and read one back, its context redacted for the
//! caller and with its security context. Every refusal is a 403 problem and an audit
//! event.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, CorrelationId};
use crate::audit::NewEvent;
use crate::auth::Identity;
use crate::engine::{CreateTask, EngineError, TaskView, valid_name, valid_version};
use crate::policy::{AccessPolicy, NamespacePolicy, Principal, Refusal};

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
    let Json(body) = body.map_err(rejection)?;
    body.check()?;
    let caller = state.access.effective(&identity.principal);
    // An unknown namespace is judged as one with the default policy: a caller with no
    // grant there learns nothing about whether it exists.
    let policy = match state.engine.namespace_policy(&body.namespace).await {
        Ok(policy) => policy,
        Err(EngineError::NotFound(_)) => NamespacePolicy::default(),
        Err(e) => return Err(e.into()),
    };
    let now_ms = state.engine.now();
    if let Err(refusal) = AccessPolicy::may_create_task(
        &caller,
        identity.mfa_at,
        &body.namespace,
        &body.name,
        &policy,
        now_ms.div_euclid(1000),
    ) {
        return Err(denied(&state, &caller, &body, &refusal, &correlation, now_ms).await);
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
            },
        )
        .await?;
    let view = state.engine.task_view(&created.id).await?;
    let mut shown = show(&view, &caller, &policy);
    shown["security_context"]["audit_seq"] = json!(created.audit_seq);
    Ok((StatusCode::CREATED, Json(shown)))
}

/// A body that is not a task request. serde's messages may quote what was sent, so only
/// the name of an unknown or missing field is passed on.
fn rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection;
    match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the task request as application/json",
        ),
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is not valid JSON",
        ),
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            let detail = match named_field(&text) {
                Some(about) => format!("the body is not a task request: {about}"),
                None => "the body is not a task request: a field has the wrong type".to_owned(),
            };
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the body is larger than the server accepts",
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            "the body could not be read",
        ),
    }
}

/// `unknown field `x`` or `missing field `x`` from serde's message, when `x` is a plain
/// name: the message may quote anything the caller sent, so nothing else of it is shown.
fn named_field(text: &str) -> Option<String> {
    ["unknown field `", "missing field `"]
        .iter()
        .find_map(|start| {
            let at = text.find(start)? + start.len();
            let name = text[at..].split('`').next()?;
            let plain = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            plain.then(|| format!("{}field `{name}`", &start[..start.len() - "field `".len()]))
        })
}

/// `GET /v1/tasks/{id}`: the caller's own task, or one of a namespace it may read. A task
/// the caller may not read is answered as one that does not exist (and audited); nothing
/// is decrypted before the decision.
pub(super) async fn get(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let no_task = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such task");
    if !valid_task_id(&id) {
        return Err(no_task());
    }
    let caller = state.access.effective(&identity.principal);
    let task = state.engine.task_row(&id).await.map_err(|e| match e {
        EngineError::NotFound(_) => no_task(),
        other => other.into(),
    })?;
    let namespace = task.namespace.clone();
    let policy = state.engine.namespace_policy(&namespace).await?;
    if let Err(refusal) = AccessPolicy::may_read(
        &caller,
        &namespace,
        &policy,
        task.created_by == caller.subject,
    ) {
        let event = NewEvent {
            actor: format!("user:{}", caller.subject),
            action: "task.read_denied".into(),
            resource: format!("task/{id}"),
            namespace: Some(namespace.clone()),
            outcome: "denied".into(),
            correlation_id: Some(correlation.0.clone()),
            details: json!({ "code": refusal.code() }),
            ..NewEvent::default()
        };
        record(&state, &event, state.engine.now()).await;
        return Err(no_task());
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
    Ok(Json(show(&view, &caller, &policy)))
}

/// Task ids are `task_` and hex; anything else is no task of ours.
fn valid_task_id(id: &str) -> bool {
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
    now_ms: i64,
) -> ApiError {
    let event = NewEvent {
        actor: format!("user:{}", caller.subject),
        action: "task.denied".into(),
        resource: format!("workflow/{}.{}", body.namespace, body.name),
        namespace: Some(body.namespace.clone()),
        outcome: "denied".into(),
        correlation_id: Some(correlation.0.clone()),
        details: json!({ "code": refusal.code(), "roles": caller.roles }),
        ..NewEvent::default()
    };
    record(state, &event, now_ms).await;
    ApiError::new(StatusCode::FORBIDDEN, refusal.code(), refusal.to_string())
}

async fn record(state: &ApiState, event: &NewEvent, now_ms: i64) {
    if let Err(e) = state.engine.record_event(event, now_ms).await {
        tracing::error!(error = %e, action = %event.action, "recording a refusal failed");
    }
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
