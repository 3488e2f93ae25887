//! What a namespace runs: `/v1/modules` (upload a component, optionally signed; list;
//! get) and `/v1/workflows` (apply a definition, JSON or YAML; list; get one with its step
//! graph). Uploading and applying need the namespace's manage permission, reading its read
//! permission. Refusals are 403 problems and audit events; a module the sandbox or the
//! namespace's trust refuses is audited as `module.refused`.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState, CorrelationId, policy_or_default, record, refuse};
use crate::audit::NewEvent;
use crate::auth::Identity;
use crate::engine::{EngineError, WorkflowDef, valid_name, valid_version};
use crate::policy::{AccessPolicy, NamespacePolicy, Principal, Refusal};
use crate::store::{ModuleInfo, WorkflowRow};

/// The header carrying a module's Ed25519 signature over its SHA-256 digest, hex.
pub const SIGNATURE_HEADER: &str = "x-stepbox-signature";

/// `?namespace=…` of the listings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NamespaceQuery {
    namespace: String,
}

fn invalid(what: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", what)
}

fn check_names(namespace: &str, name: &str, version: Option<&str>) -> Result<(), ApiError> {
    if !valid_name(namespace) {
        return Err(invalid("the namespace is not a valid name"));
    }
    if !valid_name(name) {
        return Err(invalid("the name is not a valid name"));
    }
    if version.is_some_and(|v| !valid_version(v)) {
        return Err(invalid("the version is not MAJOR.MINOR.PATCH"));
    }
    Ok(())
}

/// The caller, if `decide` lets it act on `namespace`; else a 403 recorded as `action` on
/// `resource`.
async fn authorized(
    state: &ApiState,
    identity: &Identity,
    namespace: &str,
    decide: fn(&Principal, &str, &NamespacePolicy) -> Result<(), Refusal>,
    action: &str,
    resource: String,
    correlation: &CorrelationId,
) -> Result<Principal, ApiError> {
    let caller = state.access.effective(&identity.principal);
    let policy = policy_or_default(state, namespace).await?;
    if let Err(refusal) = decide(&caller, namespace, &policy) {
        return Err(refuse(
            state,
            &caller,
            action,
            resource,
            namespace,
            &refusal,
            correlation,
        )
        .await);
    }
    Ok(caller)
}

/// The caller, if it may read `namespace`'s modules and workflows.
async fn reader(
    state: &ApiState,
    identity: &Identity,
    namespace: &str,
    correlation: &CorrelationId,
) -> Result<Principal, ApiError> {
    let read = |caller: &Principal, namespace: &str, policy: &NamespacePolicy| {
        AccessPolicy::may_read(caller, namespace, policy, false)
    };
    let resource = format!("namespace/{namespace}");
    authorized(
        state,
        identity,
        namespace,
        read,
        "namespace.read_denied",
        resource,
        correlation,
    )
    .await
}

/// The namespace of a listing's `?namespace=…`, if it is a name the caller may read.
async fn readable_namespace(
    state: &ApiState,
    identity: &Identity,
    correlation: &CorrelationId,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<String, ApiError> {
    let Query(query) = query.map_err(|_| invalid("the query needs `namespace` and only it"))?;
    if !valid_name(&query.namespace) {
        return Err(invalid("the namespace is not a valid name"));
    }
    reader(state, identity, &query.namespace, correlation).await?;
    Ok(query.namespace)
}

fn module_json(module: &ModuleInfo) -> Value {
    json!({
        "namespace": module.namespace,
        "name": module.name,
        "version": module.version,
        "digest": module.digest,
        "size": module.size,
        "signed": module.signed,
        "uploaded_by": module.uploader,
        "uploaded_at": module.created_at,
    })
}

/// `PUT /v1/modules/{namespace}/{name}/{version}` with the component as an
/// `application/wasm` body, and optionally its signature in `x-stepbox-signature`.
pub(super) async fn upload_module(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    Path((namespace, name, version)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_names(&namespace, &name, Some(&version))?;
    let resource = format!("module/{namespace}/{name}@{version}");
    let caller = authorized(
        &state,
        &identity,
        &namespace,
        AccessPolicy::may_manage,
        "module.denied",
        resource.clone(),
        &correlation,
    )
    .await?;
    let wasm = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "a component may be at most {} bytes",
                crate::sandbox::MAX_COMPONENT_BYTES
            ),
        )
    })?;
    let is_wasm = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("application/wasm"));
    if !is_wasm {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the component as application/wasm",
        ));
    }
    let signature = match headers.get(SIGNATURE_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| hex::decode(text.trim()).ok())
                .filter(|bytes| bytes.len() == 64)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_signature",
                        "x-stepbox-signature must be a hex Ed25519 signature (64 bytes)",
                    )
                })?,
        ),
    };
    let actor = format!("user:{}", caller.subject);
    let uploaded = state
        .engine
        .register_signed_module(
            &namespace,
            &name,
            &version,
            &wasm,
            signature.as_deref(),
            &actor,
        )
        .await;
    let (code, status, why) = match uploaded {
        Ok(module) => return Ok((StatusCode::CREATED, Json(module_json(&module)))),
        Err(EngineError::Invalid(why)) => ("invalid_module", StatusCode::UNPROCESSABLE_ENTITY, why),
        Err(EngineError::Untrusted(why)) => ("untrusted_module", StatusCode::FORBIDDEN, why),
        Err(other) => return Err(other.into()),
    };
    let event = NewEvent {
        actor,
        action: "module.refused".into(),
        resource,
        namespace: Some(namespace),
        outcome: "denied".into(),
        correlation_id: Some(correlation.0),
        details: json!({ "code": code, "size": wasm.len(), "reason": why }),
        ..NewEvent::default()
    };
    record(&state, &event).await;
    Err(ApiError::new(status, code, why))
}

/// `GET /v1/modules?namespace=…`.
pub(super) async fn list_modules(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let namespace = readable_namespace(&state, &identity, &correlation, query).await?;
    let modules = state
        .engine
        .read(async |tx| tx.list_modules(&namespace).await)
        .await?;
    let items: Vec<Value> = modules.iter().map(module_json).collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/modules/{namespace}/{name}/{version}`.
pub(super) async fn get_module(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    Path((namespace, name, version)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_names(&namespace, &name, Some(&version))?;
    reader(&state, &identity, &namespace, &correlation).await?;
    let module = state
        .engine
        .read(async |tx| tx.get_module(&namespace, &name, &version).await)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such module"))?;
    Ok(Json(module_json(&ModuleInfo::from(&module))))
}

/// `POST /v1/workflows` with a definition as `application/json` or `application/yaml`.
/// The namespace it names must be one the caller manages; every step's module must be
/// uploaded there and its grants within the namespace's policy.
pub(super) async fn apply_workflow(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !matches!(
        media.as_str(),
        "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml"
    ) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the definition as application/json or application/yaml",
        ));
    }
    let body = body.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the body is larger than the server accepts",
        )
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", "not UTF-8"))?;
    // A definition is configuration a namespace's managers write, not task data: its
    // parse and validation errors are shown in full, since they name the exact problem.
    let (def, _) = WorkflowDef::parse(text).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_definition",
            e.to_string(),
        )
    })?;
    let resource = format!("workflow/{}/{}@{}", def.namespace, def.name, def.version);
    let caller = authorized(
        &state,
        &identity,
        &def.namespace,
        AccessPolicy::may_manage,
        "workflow.denied",
        resource,
        &correlation,
    )
    .await?;
    let (def, row) = state
        .engine
        .apply_workflow(text, &format!("user:{}", caller.subject))
        .await
        .map_err(|e| match e {
            EngineError::Invalid(why) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_definition", why)
            }
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(workflow_json(&def, &row))))
}

/// `GET /v1/workflows?namespace=…`: every version of every workflow of the namespace.
pub(super) async fn list_workflows(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    query: Result<Query<NamespaceQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let namespace = readable_namespace(&state, &identity, &correlation, query).await?;
    let rows = state
        .engine
        .read(async |tx| tx.list_workflows(&namespace).await)
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "namespace": row.namespace,
                "name": row.name,
                "version": row.version,
                "created_by": row.created_by,
                "created_at": row.created_at,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/workflows/{namespace}/{name}`: the latest version.
pub(super) async fn get_workflow(
    state: State<ApiState>,
    identity: Extension<Identity>,
    correlation: Extension<CorrelationId>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    workflow(state, identity, correlation, namespace, name, None).await
}

/// `GET /v1/workflows/{namespace}/{name}/{version}`.
pub(super) async fn get_workflow_version(
    state: State<ApiState>,
    identity: Extension<Identity>,
    correlation: Extension<CorrelationId>,
    Path((namespace, name, version)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    workflow(state, identity, correlation, namespace, name, Some(version)).await
}

async fn workflow(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
    namespace: String,
    name: String,
    version: Option<String>,
) -> Result<Json<Value>, ApiError> {
    check_names(&namespace, &name, version.as_deref())?;
    reader(&state, &identity, &namespace, &correlation).await?;
    let (def, row) = state
        .engine
        .workflow_definition(&namespace, &name, version.as_deref())
        .await
        .map_err(|e| match e {
            EngineError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such workflow")
            }
            other => other.into(),
        })?;
    Ok(Json(workflow_json(&def, &row)))
}

/// A workflow version with its definition and its step graph: the order steps can run
/// in and the dependency edges.
fn workflow_json(def: &WorkflowDef, row: &WorkflowRow) -> Value {
    let order: Vec<&str> = def
        .order()
        .map(|steps| steps.iter().map(|s| s.name.as_str()).collect())
        .unwrap_or_default();
    let edges: Vec<[&str; 2]> = def
        .steps
        .iter()
        .flat_map(|step| {
            step.depends_on
                .iter()
                .map(move |dep| [dep.as_str(), step.name.as_str()])
        })
        .collect();
    json!({
        "namespace": row.namespace,
        "name": row.name,
        "version": row.version,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "definition": def,
        "graph": { "order": order, "edges": edges },
    })
}
