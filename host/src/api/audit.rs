//! `/v1/audit`: the trail for holders of `audit:read` — query it by user, action,
//! resource, namespace, outcome and period a page at a time with totals; everything about
//! one task; export it streamed as JSON Lines or CSV; verify the stored chain and its
//! signed checkpoints; fetch the checkpoint key that verifies an export offline. Every
//! read of the trail is itself an event on it.

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::named_field;
use super::{ApiError, ApiState, CorrelationId};
use crate::audit::{self, ExportFormat, event_view, parse_rfc3339};
use crate::auth::Identity;
use crate::engine::EngineError;
use crate::policy::{AUDIT_READ, Principal};
use crate::store::AuditFilter;

/// Most events one page of the trail holds, and how many unless asked.
const MAX_PAGE: i64 = 500;
const DEFAULT_PAGE: i64 = 100;
/// Most events `GET /v1/audit/tasks/{id}` returns for one task.
const MAX_TASK_EVENTS: i64 = 10_000;
/// Longest filter value accepted.
const MAX_FILTER_CHARS: usize = 256;

/// The filters every trail endpoint takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrailQuery {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    task_id: Option<String>,
    /// RFC 3339, inclusive.
    #[serde(default)]
    from: Option<String>,
    /// RFC 3339, exclusive.
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    cursor: Option<String>,
    /// Exports only: `jsonl` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

fn invalid(what: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", what)
}

fn query_of(query: Result<Query<TrailQuery>, QueryRejection>) -> Result<TrailQuery, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        let about =
            named_field(&e.body_text()).unwrap_or_else(|| "a parameter is malformed".into());
        invalid(format!("the query is not an audit trail query: {about}"))
    })
}

impl TrailQuery {
    /// The store filter; every value bounded, times parsed, the cursor checked.
    fn filter(&self) -> Result<AuditFilter, ApiError> {
        let text = |name: &str, value: &Option<String>| -> Result<Option<String>, ApiError> {
            match value {
                Some(v) if v.is_empty() || v.chars().count() > MAX_FILTER_CHARS => Err(invalid(
                    format!("`{name}` must be 1 to {MAX_FILTER_CHARS} characters"),
                )),
                other => Ok(other.clone()),
            }
        };
        if self.user_id.is_some() && self.actor.is_some() {
            return Err(invalid("give `user_id` or `actor`, not both"));
        }
        let time = |name: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
            value
                .as_deref()
                .map(|v| {
                    parse_rfc3339(v).ok_or_else(|| {
                        invalid(format!(
                            "`{name}` is not an RFC 3339 time such as 2026-01-01T00:00:00Z"
                        ))
                    })
                })
                .transpose()
        };
        let task = text("task_id", &self.task_id)?;
        if task
            .as_deref()
            .is_some_and(|t| !super::tasks::valid_task_id(t))
        {
            return Err(invalid("`task_id` is not a task id"));
        }
        let after_seq = self
            .cursor
            .as_deref()
            .map(|c| {
                decode_cursor(c).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_cursor",
                        "`cursor` is not one this server issued",
                    )
                })
            })
            .transpose()?;
        Ok(AuditFilter {
            actor: match text("user_id", &self.user_id)? {
                Some(user) => Some(format!("user:{user}")),
                None => text("actor", &self.actor)?,
            },
            action: text("action", &self.action)?,
            resource: text("resource", &self.resource)?,
            namespace: text("namespace", &self.namespace)?,
            outcome: text("outcome", &self.outcome)?,
            correlation_id: text("correlation_id", &self.correlation_id)?,
            task,
            from_ts: time("from", &self.from)?,
            until_ts: time("to", &self.to)?,
            after_seq,
            through_seq: None,
        })
    }

    /// What the query asked, for the event that records it (the cursor is noise).
    fn described(&self) -> Value {
        json!({
            "user_id": self.user_id, "actor": self.actor, "action": self.action,
            "resource": self.resource, "namespace": self.namespace, "outcome": self.outcome,
            "correlation_id": self.correlation_id, "task_id": self.task_id,
            "from": self.from, "to": self.to,
        })
    }
}

fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn decode_cursor(text: &str) -> Option<i64> {
    if text.len() > 64 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("seq:")?
        .parse()
        .ok()
}

/// The caller, if it may read the trail; otherwise a 403, audited.
async fn auditor(
    state: &ApiState,
    identity: &Identity,
    resource: &str,
    correlation: &CorrelationId,
) -> Result<Principal, ApiError> {
    super::holder(
        state,
        identity,
        AUDIT_READ,
        "audit.denied",
        resource,
        correlation,
    )
    .await
}

/// `GET /v1/audit/trail`: a page of matching events, oldest first, with the total.
pub(super) async fn trail(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    query: Result<Query<TrailQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = auditor(&state, &identity, "audit/trail", &correlation).await?;
    let query = query_of(query)?;
    if query.format.is_some() {
        return Err(invalid("`format` is for exports: GET /v1/audit/export"));
    }
    let filter = query.filter()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!("`limit` must be between 1 and {MAX_PAGE}")));
    }
    let totals = AuditFilter {
        after_seq: None,
        ..filter.clone()
    };
    let (mut rows, total) = state
        .engine
        .read(async |tx| {
            let rows = tx.query_audit(&filter, limit + 1).await?;
            Ok((rows, tx.count_audit(&totals).await?))
        })
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = rows
        .last()
        .filter(|_| more)
        .map(|last| encode_cursor(last.seq));
    let mut details = query.described();
    details["returned"] = json!(rows.len());
    details["total"] = json!(total);
    super::record_access(
        &state,
        &caller,
        "audit.queried",
        "audit/trail",
        &correlation,
        details,
    )
    .await?;
    let items: Vec<Value> = rows.iter().map(event_view).collect();
    Ok(Json(
        json!({ "items": items, "total": total, "next_cursor": next_cursor }),
    ))
}

/// `GET /v1/audit/tasks/{id}`: the task, every event about it and its steps, and the
/// data accesses among them.
pub(super) async fn task(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let resource = format!("audit/tasks/{id}");
    let caller = auditor(&state, &identity, &resource, &correlation).await?;
    let no_task = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such task");
    if !super::tasks::valid_task_id(&id) {
        return Err(no_task());
    }
    let filter = AuditFilter {
        task: Some(id.clone()),
        ..AuditFilter::default()
    };
    let (task, rows) = state
        .engine
        .read(async |tx| {
            let task = tx.get_task(&id).await?;
            Ok((task, tx.query_audit(&filter, MAX_TASK_EVENTS).await?))
        })
        .await?;
    // A task purged under retention still has its trail.
    if task.is_none() && rows.is_empty() {
        return Err(no_task());
    }
    super::record_access(
        &state,
        &caller,
        "audit.task_viewed",
        &resource,
        &correlation,
        json!({ "task_id": id, "returned": rows.len() }),
    )
    .await?;
    let events: Vec<Value> = rows.iter().map(event_view).collect();
    let accesses: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "task.read" || e["step"]["fields_read"].is_array())
        .collect();
    let task = task.map(|t| {
        json!({
            "id": t.id,
            "namespace": t.namespace,
            "workflow": t.workflow_name,
            "version": t.workflow_version,
            "status": t.status.as_str(),
            "created_by": t.created_by,
            "data_classification": t.classification,
            "contains_pii": t.contains_pii,
            "created_at": t.created_at,
            "finished_at": t.finished_at,
        })
    });
    Ok(Json(json!({
        "task_id": id,
        "task": task,
        "events": events,
        "data_accesses": accesses,
        "truncated": rows.len() as i64 >= MAX_TASK_EVENTS,
    })))
}

/// `GET /v1/audit/export?format=jsonl|csv`: the matching events, streamed a page at a
/// time. Without filters, a JSON Lines export is the whole sealed chain with its
/// checkpoints, verifiable offline with the checkpoint key.
pub(super) async fn export(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    query: Result<Query<TrailQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = auditor(&state, &identity, "audit/export", &correlation).await?;
    let query = query_of(query)?;
    let format = match query.format.as_deref() {
        None | Some("jsonl") => ExportFormat::JsonLines,
        Some("csv") => ExportFormat::Csv,
        Some(_) => return Err(invalid("`format` is `jsonl` or `csv`")),
    };
    if query.limit.is_some() || query.cursor.is_some() {
        return Err(invalid(
            "an export takes no `limit` or `cursor`: it is streamed whole",
        ));
    }
    let mut filter = query.filter()?;
    // Seal first and stop at the sealed tip as it is now: the export is one consistent
    // prefix of the chain, whatever is written while it streams.
    let store = state.engine.store().clone();
    audit::seal_pending(&store)
        .await
        .map_err(EngineError::from)?;
    if let Some(signer) = state.engine.audit_signer() {
        // Sign the tip, so the whole export verifies with the public key alone.
        audit::checkpoint(&store, signer, state.engine.now(), 0)
            .await
            .map_err(EngineError::from)?;
    }
    filter.through_seq = state
        .engine
        .read(async |tx| Ok(tx.last_sealed().await?.map(|(seq, _)| seq)))
        .await?
        .or(Some(0));
    let mut details = query.described();
    details["format"] = json!(query.format.as_deref().unwrap_or("jsonl"));
    details["through_seq"] = json!(filter.through_seq);
    super::record_access(
        &state,
        &caller,
        "audit.exported",
        "audit/export",
        &correlation,
        details,
    )
    .await?;
    let stream = audit::export(store, filter, format).map_err(|e| {
        tracing::error!(error = %e, "an audit export failed part way");
        std::io::Error::other("the export failed part way")
    });
    let name = match format {
        ExportFormat::JsonLines => "attachment; filename=\"audit.jsonl\"",
        ExportFormat::Csv => "attachment; filename=\"audit.csv\"",
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (header::CONTENT_DISPOSITION, HeaderValue::from_static(name)),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /v1/audit/verify`: seal what is committed, walk the whole chain and check every
/// signed checkpoint. A broken chain is an answer (`intact: false`), not an error.
pub(super) async fn verify(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
) -> Result<Json<Value>, ApiError> {
    let caller = auditor(&state, &identity, "audit/verify", &correlation).await?;
    let store = state.engine.store();
    audit::seal_pending(store)
        .await
        .map_err(EngineError::from)?;
    let report = match state.engine.audit_signer() {
        Some(signer) => audit::verify_signed(store, &signer.verifying()).await,
        None => audit::verify(store).await,
    }
    .map_err(EngineError::from)?;
    super::record_access(
        &state,
        &caller,
        "audit.verified",
        "audit/verify",
        &correlation,
        json!({
            "intact": report.is_intact(),
            "checked": report.checked,
            "broken": report.broken,
        }),
    )
    .await?;
    let mut body =
        serde_json::to_value(&report).map_err(|e| EngineError::Internal(e.to_string()))?;
    body["intact"] = json!(report.is_intact());
    body["signing_key_id"] = json!(state.engine.audit_signer().map(|s| s.id().to_owned()));
    Ok(Json(body))
}

/// `GET /v1/audit/public-key`: the key that verifies the checkpoints, as SPKI PEM.
pub(super) async fn public_key(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
) -> Result<Json<Value>, ApiError> {
    auditor(&state, &identity, "audit/public-key", &correlation).await?;
    let signer = state.engine.audit_signer().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_signing_key",
            "this server signs no audit checkpoints",
        )
    })?;
    Ok(Json(json!({
        "key_id": signer.id(),
        "algorithm": "Ed25519",
        "public_key_pem": signer.public_pem(),
    })))
}
