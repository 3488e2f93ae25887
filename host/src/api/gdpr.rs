//! `/v1/gdpr`: data-subject requests for holders of `gdpr:manage` — access (what is held
//! about a subject, with data categories, legal basis and retention), export (the
//! subject's data decrypted, as one portable JSON document) and erasure
//! (crypto-shredding). The identifier travels in the body, never in a URL a log may keep;
//! each request is audited with who asked and how much was found, the subject named only
//! by its blind index.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, CorrelationId};
use crate::auth::Identity;
use crate::policy::{GDPR_MANAGE, Principal};

/// Longest subject identifier accepted (an email address is at most 320 characters).
const MAX_IDENTIFIER_CHARS: usize = 320;

/// The body of every `/v1/gdpr` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubjectRequest {
    /// The subject's identifier: the value of a workflow's subject property (a customer
    /// id) or another identifier tasks hold about them (an email address).
    subject: String,
    /// Why (kept in the audit event; no personal data, please).
    #[serde(default)]
    reason: Option<String>,
}

impl SubjectRequest {
    fn parse(body: Result<Json<Self>, JsonRejection>) -> Result<Self, ApiError> {
        let Json(request) = body.map_err(|e| ApiError::json_body(e, "a subject request"))?;
        let chars = request.subject.trim().chars().count();
        if chars == 0 || chars > MAX_IDENTIFIER_CHARS {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "`subject` must be 1 to 320 characters",
            ));
        }
        if request
            .reason
            .as_deref()
            .is_some_and(|r| r.chars().count() > 1_000)
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "`reason` is longer than 1000 characters",
            ));
        }
        Ok(request)
    }
}

/// The caller, if it holds `gdpr:manage`; otherwise a 403, audited.
async fn officer(
    state: &ApiState,
    identity: &Identity,
    request: &str,
    correlation: &CorrelationId,
) -> Result<Principal, ApiError> {
    let resource = format!("gdpr/{request}");
    super::holder(
        state,
        identity,
        GDPR_MANAGE,
        "gdpr.denied",
        &resource,
        correlation,
    )
    .await
}

/// Record a request about a subject (named by its blind index only); fail closed.
async fn record_request(
    state: &ApiState,
    caller: &Principal,
    action: &str,
    subject_ref: Option<&str>,
    correlation: &CorrelationId,
    details: Value,
) -> Result<(), ApiError> {
    let resource = format!("subject/{}", subject_ref.unwrap_or("unknown"));
    super::record_access(state, caller, action, &resource, correlation, details).await
}

/// `POST /v1/gdpr/access`.
pub(super) async fn access(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Json<SubjectRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = officer(&state, &identity, "access", &correlation).await?;
    let request = SubjectRequest::parse(body)?;
    let report = state.engine.subject_access(&request.subject).await?;
    record_request(
        &state,
        &caller,
        "gdpr.accessed",
        report.subject_ref.as_deref(),
        &correlation,
        json!({
            "status": report.status,
            "tasks": report.tasks.len(),
            "step_results": report.step_results,
            "audit_events": report.audit_events.len(),
            "reason": request.reason,
        }),
    )
    .await?;
    Ok(Json(json!(report)))
}

/// `POST /v1/gdpr/export`.
pub(super) async fn export(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Json<SubjectRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = officer(&state, &identity, "export", &correlation).await?;
    let request = SubjectRequest::parse(body)?;
    let bundle = state.engine.subject_export(&request.subject).await?;
    record_request(
        &state,
        &caller,
        "gdpr.exported",
        bundle.subject_ref.as_deref(),
        &correlation,
        json!({
            "status": bundle.status,
            "tasks": bundle.tasks.len(),
            "reason": request.reason,
        }),
    )
    .await?;
    Ok(Json(json!({
        "format": "stepbox-subject-export",
        "version": 1,
        "exported_at": crate::audit::rfc3339(state.engine.now()),
        "subject_ref": bundle.subject_ref,
        "status": bundle.status,
        "tasks": bundle.tasks,
    })))
}

/// `POST /v1/gdpr/erase`.
pub(super) async fn erase(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Json<SubjectRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = officer(&state, &identity, "erase", &correlation).await?;
    let request = SubjectRequest::parse(body)?;
    let details = json!({ "reason": request.reason, "request": correlation.1 });
    let erasure = state
        .engine
        .erase_subject(
            &request.subject,
            &format!("user:{}", caller.subject),
            Some(correlation.0.clone()),
            details.clone(),
        )
        .await?;
    if erasure.subject_ref.is_none() {
        // Nothing to erase: the request is still on the trail.
        record_request(
            &state,
            &caller,
            "gdpr.erase_unmatched",
            None,
            &correlation,
            details,
        )
        .await?;
    }
    Ok(Json(json!(erasure)))
}
