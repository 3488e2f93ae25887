//! `/v1/compliance`: the compliance report of a period (JSON or CSV) and the SOC 2
//! controls with their evidence, for holders of `compliance:read`. Both are counted from
//! the trail, the tasks and the stored ciphertexts at the time of asking; asking is
//! audited.

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::named_field;
use super::{ApiError, ApiState, CorrelationId};
use crate::audit::{self, Period, ReportInputs, parse_rfc3339};
use crate::auth::Identity;
use crate::engine::EngineError;
use crate::policy::COMPLIANCE_READ;

/// The query of both endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    /// `monthly`, `quarterly` (default) or `annual`: the calendar period (UTC) containing now.
    #[serde(default)]
    period: Option<String>,
    /// RFC 3339, inclusive; with `to`, instead of `period`.
    #[serde(default)]
    from: Option<String>,
    /// RFC 3339, exclusive.
    #[serde(default)]
    to: Option<String>,
    /// `json` (default) or `csv`; the report only.
    #[serde(default)]
    format: Option<String>,
}

fn invalid(what: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", what)
}

impl ReportQuery {
    fn bounds(&self, now_ms: i64) -> Result<(i64, i64), ApiError> {
        match (&self.period, &self.from, &self.to) {
            (None, Some(from), Some(to)) => {
                let parse = |name: &str, text: &str| {
                    parse_rfc3339(text)
                        .ok_or_else(|| invalid(format!("`{name}` is not an RFC 3339 time")))
                };
                let (from, to) = (parse("from", from)?, parse("to", to)?);
                if from >= to {
                    return Err(invalid("`from` must be before `to`"));
                }
                Ok((from, to))
            }
            (period, None, None) => {
                let period: Period = period
                    .as_deref()
                    .unwrap_or("quarterly")
                    .parse()
                    .map_err(|()| invalid("`period` is monthly, quarterly or annual"))?;
                audit::period_bounds(period, now_ms)
                    .ok_or_else(|| invalid("the period cannot be computed"))
            }
            _ => Err(invalid("give `period`, or both `from` and `to`")),
        }
    }
}

/// Check the permission (a refusal is a 403, audited), then build the report.
async fn report_for(
    state: &ApiState,
    identity: &Identity,
    correlation: &CorrelationId,
    resource: &str,
    formats: &[&str],
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<(Value, ReportQuery), ApiError> {
    let caller = super::holder(
        state,
        identity,
        COMPLIANCE_READ,
        "compliance.denied",
        resource,
        correlation,
    )
    .await?;
    let Query(query) = query.map_err(|e| {
        let about =
            named_field(&e.body_text()).unwrap_or_else(|| "a parameter is malformed".into());
        invalid(format!("the query is not a report query: {about}"))
    })?;
    let now = state.engine.now();
    let (from, to) = query.bounds(now)?;
    if let Some(format) = query.format.as_deref()
        && !formats.contains(&format)
    {
        return Err(invalid(match formats {
            [] => "`format` is for the report",
            _ => "`format` is `json` or `csv`",
        }));
    }
    let store = state.engine.store();
    audit::seal_pending(store)
        .await
        .map_err(EngineError::from)?;
    if let Some(signer) = state.engine.audit_signer() {
        // The chain status reported is then signed up to now.
        audit::checkpoint(store, signer, now, 0)
            .await
            .map_err(EngineError::from)?;
    }
    let keys = state.engine.audit_signer().map(|s| s.verifying());
    let inputs = ReportInputs {
        ring: state.engine.keys(),
        checkpoint_keys: keys.as_ref(),
        now_ms: now,
    };
    let mut report = audit::compliance_report(store, &inputs, from, to)
        .await
        .map_err(EngineError::from)?;
    report["retention"] = state.engine.retention_status().await?;
    super::record_access(
        state,
        &caller,
        "compliance.reported",
        resource,
        correlation,
        json!({ "period": report["period"] }),
    )
    .await?;
    Ok((report, query))
}

/// `GET /v1/compliance/report`.
pub(super) async fn report(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (report, query) = report_for(
        &state,
        &identity,
        &correlation,
        "compliance/report",
        &["json", "csv"],
        query,
    )
    .await?;
    match query.format.as_deref() {
        Some("csv") => Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"compliance-report.csv\""),
                ),
            ],
            audit::report_csv(&report),
        )
            .into_response()),
        _ => Ok(axum::Json(report).into_response()),
    }
}

/// `GET /v1/compliance/controls`.
pub(super) async fn controls(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let (report, _) = report_for(
        &state,
        &identity,
        &correlation,
        "compliance/controls",
        &[],
        query,
    )
    .await?;
    Ok(axum::Json(audit::controls(&report)))
}
