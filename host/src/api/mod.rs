//! The HTTP API (axum): routes, the bearer-token gate, and the protections every response
//! gets — a body limit, security headers and a correlation id.
//!
//! Nothing under `/v1` answers without a verified token; each refused token is an
//! `auth.failed` audit event carrying the refusal's code, the client's address and user
//! agent, never the token. Errors are problem+json (see `error`). This module turns HTTP
//! into calls on `auth`, `policy` and `engine`; it never touches the store's rows or a
//! key itself.

mod audit;
mod catalog;
mod compliance;
mod error;
mod gdpr;
mod limits;
mod metrics;
mod tasks;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

pub use catalog::SIGNATURE_HEADER;
pub use error::ApiError;
pub use limits::RateLimits;
pub use metrics::METRICS_PERMISSION;
pub use tls::{Tls, TlsError, serve_tls};

use crate::audit::NewEvent;
use crate::auth::{AuthError, Identity, Verifier};
use crate::engine::Engine;
use crate::engine::{EngineError, RequestDetails};
use crate::policy::{AccessPolicy, NamespacePolicy, Principal, Refusal};

/// Largest request body accepted. Task contexts are small JSON documents; modules, the
/// largest uploads, are capped by the sandbox's own limit when that route exists.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Longest user agent kept in an audit event.
const MAX_USER_AGENT: usize = 200;

/// The header carrying a request's correlation id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    engine: Engine,
    verifier: Arc<Verifier>,
    access: Arc<AccessPolicy>,
    limiter: Arc<limits::Limiter>,
    metrics: Arc<metrics::Metrics>,
    /// Set when the server routing this state begins to stop; each [`serve`] or
    /// [`serve_tls`] call gives its state one of its own.
    stopping: Stopping,
}

/// A server's shutdown as the long reads it holds see it: `GET /v1/tasks/{id}?wait_ms=`
/// holds its request up to [`tasks::MAX_WAIT_MS`], and a graceful shutdown waits for
/// every request it holds, so such reads are answered at once, with the task as it is,
/// when their server begins to stop.
#[derive(Clone)]
struct Stopping(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Stopping {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Stopping {
    fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the server has begun to stop (at once if it has).
    async fn stopped(&self) {
        let mut stopping = self.0.subscribe();
        // Err only if the sender is gone, which `self` holds.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// The API over `engine`, accepting tokens `verifier` accepts. No role grants any
    /// permission until [`ApiState::with_access`] says so: callers hold only what their
    /// tokens list.
    pub fn new(engine: Engine, verifier: Verifier) -> Self {
        Self {
            engine,
            verifier: Arc::new(verifier),
            access: Arc::new(AccessPolicy::default()),
            limiter: Arc::new(limits::Limiter::new(RateLimits::default())),
            metrics: Arc::new(metrics::Metrics::new()),
            stopping: Stopping::default(),
        }
    }

    /// The same API with other rate limits than [`RateLimits::default`].
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Self {
        self.limiter = Arc::new(limits::Limiter::new(limits));
        self
    }

    /// The same API with `access` saying which permissions each role grants.
    pub fn with_access(mut self, access: AccessPolicy) -> Self {
        self.access = Arc::new(access);
        self
    }
}

/// A request's correlation id (the caller's `x-request-id` if it is a sane token, else a
/// fresh one) and where the request came from, which refusals record.
#[derive(Clone, Debug)]
pub struct CorrelationId(pub String, pub RequestDetails);

fn request_details(extensions: &axum::http::Extensions, headers: &HeaderMap) -> RequestDetails {
    RequestDetails {
        ip: extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_USER_AGENT).collect()),
        session_id: extensions
            .get::<Identity>()
            .and_then(|identity| identity.session_id.clone()),
    }
}

/// The routes with every protection layered on. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so refusals record the client's
/// address.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/whoami", get(whoami))
        .route("/tasks", post(tasks::create).get(tasks::list))
        .route("/tasks/{id}", get(tasks::get))
        .route("/tasks/{id}/steps", get(tasks::steps))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/steps/{step}/retry", post(tasks::retry))
        .route("/modules", get(catalog::list_modules))
        .route(
            "/modules/{namespace}/{name}/{version}",
            get(catalog::get_module).put(catalog::upload_module).layer(
                // A component may be far larger than any JSON body; the sandbox's own
                // limit applies, and the upload is refused past it.
                DefaultBodyLimit::max(crate::sandbox::MAX_COMPONENT_BYTES + 1),
            ),
        )
        .route(
            "/workflows",
            get(catalog::list_workflows).post(catalog::apply_workflow),
        )
        .route("/workflows/{namespace}/{name}", get(catalog::get_workflow))
        .route("/audit/trail", get(audit::trail))
        .route("/audit/tasks/{id}", get(audit::task))
        .route("/audit/export", get(audit::export))
        .route("/audit/verify", get(audit::verify))
        .route("/audit/public-key", get(audit::public_key))
        .route("/compliance/report", get(compliance::report))
        .route("/compliance/controls", get(compliance::controls))
        .route("/gdpr/access", post(gdpr::access))
        .route("/gdpr/export", post(gdpr::export))
        .route("/gdpr/erase", post(gdpr::erase))
        .route(
            "/workflows/{namespace}/{name}/{version}",
            get(catalog::get_workflow_version),
        );
    let authenticated = Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(serve_metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Outside the token check: an address is limited before its tokens are looked at.
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_address));
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        // The API's description is public: it holds no data, and clients need it first.
        .route("/v1/openapi.json", get(openapi))
        .merge(authenticated)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(protect))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serve `router(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (state, shutdown) = releasing_waits(state, shutdown);
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// `state` for one server, with a [`Stopping`] of its own, and `shutdown` followed by
/// answering every read of that server waiting for a task's end. Another server routing
/// a clone of the same state keeps its waits.
pub(crate) fn releasing_waits(
    mut state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    ApiState,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stopping = Stopping::default();
    state.stopping = stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.stop();
    };
    (state, shutdown)
}

/// The OpenAPI 3.1 document of every route here.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn live() -> Json<Value> {
    Json(json!({ "status": "live" }))
}

/// Ready when the database answers.
async fn ready(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let tx = state.engine.store().begin_read().await?;
    tx.commit().await?;
    Ok(Json(json!({ "status": "ready" })))
}

async fn not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "no_route",
        "no such endpoint",
    )
}

/// Who the token says the caller is.
async fn whoami(Extension(identity): Extension<Identity>) -> Json<Value> {
    Json(json!({
        "subject": identity.principal.subject,
        "roles": identity.principal.roles,
        "permissions": identity.principal.permissions,
        "email": identity.email,
        "team": identity.team,
        "mfa_at": identity.mfa_at,
        "session_id": identity.session_id,
    }))
}

/// Count every answer in the metrics, whatever answered it.
async fn observe(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    state.metrics.observe(
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics`, for holders of `metrics:read`.
async fn serve_metrics(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    Extension(correlation): Extension<CorrelationId>,
) -> Response {
    let caller = state.access.effective(&identity.principal);
    if !caller.permissions.contains(METRICS_PERMISSION) {
        let event = NewEvent {
            actor: format!("user:{}", caller.subject),
            action: "metrics.denied".into(),
            resource: "api/metrics".into(),
            outcome: "denied".into(),
            correlation_id: Some(correlation.0),
            details: json!({ "code": "permission_denied" }),
            ..NewEvent::default()
        };
        record(&state, &event).await;
        return ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "permission_denied",
            format!("reading metrics needs `{METRICS_PERMISSION}`"),
        )
        .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Correlation id in and out, and the security headers, on every response.
async fn protect(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let client = request_details(request.extensions(), request.headers());
    request
        .extensions_mut()
        .insert(CorrelationId(id.clone(), client));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(HeaderName::from_static(REQUEST_ID), value);
    }
    for (name, value) in [
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=63072000; includeSubDomains",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return "req_unknown".to_owned();
    }
    format!("req_{}", hex::encode(bytes))
}

/// The gate of `/v1`: a verified bearer token, or a 401 and an `auth.failed` event.
async fn require_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let now_ms = state.engine.now();
    let verified = bearer(request.headers())
        .and_then(|token| state.verifier.verify(token, now_ms.div_euclid(1000)));
    match verified {
        Ok(identity) => {
            let subject = identity.principal.subject.clone();
            if let Err(limited) = state.limiter.check_principal(&subject) {
                return rate_limited(&state, &request, &format!("user:{subject}"), limited).await;
            }
            if let Some(correlation) = request.extensions_mut().get_mut::<CorrelationId>() {
                correlation.1.session_id = identity.session_id.clone();
            }
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(refusal) => {
            let event = refusal_event(&request, &refusal);
            if let Err(e) = state.engine.record_event(&event, now_ms).await {
                tracing::error!(error = %e, code = refusal.code(), "recording a refused token failed");
            }
            ApiError::from(refusal).into_response()
        }
    }
}

/// Every `/v1` request counts against its client address's budget.
async fn limit_address(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(ip) = ip
        && let Err(limited) = state.limiter.check_ip(ip)
    {
        return rate_limited(&state, &request, "anonymous", limited).await;
    }
    next.run(request).await
}

/// A 429 with `Retry-After`, audited if it is the key's first refusal in a while. The
/// event is made before anything is awaited: a request is not `Sync`.
fn rate_limited(
    state: &ApiState,
    request: &Request,
    actor: &str,
    limited: limits::Limited,
) -> impl std::future::Future<Output = Response> + Send + 'static {
    let secs = limits::retry_after_secs(limited.retry_after);
    let event = limited.audit.then(|| {
        let mut event = client_event(request, "api.rate_limited", actor);
        event.details["retry_after_secs"] = json!(secs);
        event
    });
    let state = state.clone();
    async move {
        if let Some(event) = event {
            record(&state, &event).await;
        }
        ApiError::rate_limited(secs).into_response()
    }
}

/// The bearer token of `Authorization`, if there is one.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

/// The event of a refused token: why, from where, with what client — never the token.
fn refusal_event(request: &Request, refusal: &AuthError) -> NewEvent {
    let mut event = client_event(request, "auth.failed", "anonymous");
    event.details["code"] = json!(refusal.code());
    event
}

/// A denied event about `request`: its path, method, client address and user agent.
fn client_event(request: &Request, action: &str, actor: &str) -> NewEvent {
    let client = request_details(request.extensions(), request.headers());
    NewEvent {
        actor: actor.to_owned(),
        action: action.to_owned(),
        // Inside `/v1` the router sees the path without its prefix: use the original.
        resource: format!(
            "api{}",
            request
                .extensions()
                .get::<OriginalUri>()
                .map_or_else(|| request.uri().path(), |uri| uri.0.path())
        ),
        outcome: "denied".into(),
        correlation_id: request
            .extensions()
            .get::<CorrelationId>()
            .map(|c| c.0.clone()),
        details: json!({
            "method": request.method().as_str(),
            "ip": client.ip,
            "user_agent": client.user_agent,
        }),
        ..NewEvent::default()
    }
}

/// `namespace`'s policy, or the default one if there is no such namespace: a caller with
/// no grant there is refused alike and learns nothing about whether it exists.
async fn policy_or_default(state: &ApiState, namespace: &str) -> Result<NamespacePolicy, ApiError> {
    match state.engine.namespace_policy(namespace).await {
        Ok(policy) => Ok(policy),
        Err(EngineError::NotFound(_)) => Ok(NamespacePolicy::default()),
        Err(e) => Err(e.into()),
    }
}

/// Record a refusal as `action` on `resource` and answer it with a 403 problem carrying
/// the refusal's code.
async fn refuse(
    state: &ApiState,
    caller: &Principal,
    action: &str,
    resource: String,
    namespace: &str,
    refusal: &Refusal,
    correlation: &CorrelationId,
) -> ApiError {
    let event = NewEvent {
        actor: format!("user:{}", caller.subject),
        action: action.to_owned(),
        resource,
        namespace: Some(namespace.to_owned()),
        outcome: "denied".into(),
        correlation_id: Some(correlation.0.clone()),
        details: json!({ "code": refusal.code(), "roles": caller.roles, "request": correlation.1 }),
        ..NewEvent::default()
    };
    record(state, &event).await;
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        refusal.code(),
        refusal.to_string(),
    )
}

/// The caller, if it holds the platform-wide `permission` (audit, compliance, GDPR);
/// otherwise a 403 problem, recorded as `denied_action` on `resource`.
async fn holder(
    state: &ApiState,
    identity: &Identity,
    permission: &'static str,
    denied_action: &str,
    resource: &str,
    correlation: &CorrelationId,
) -> Result<Principal, ApiError> {
    let caller = state.access.effective(&identity.principal);
    if let Err(refusal) = AccessPolicy::may(&caller, permission) {
        let event = NewEvent {
            actor: format!("user:{}", caller.subject),
            action: denied_action.to_owned(),
            resource: resource.to_owned(),
            outcome: "denied".into(),
            correlation_id: Some(correlation.0.clone()),
            details: json!({ "code": refusal.code(), "roles": caller.roles, "request": correlation.1 }),
            ..NewEvent::default()
        };
        record(state, &event).await;
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            refusal.code(),
            refusal.to_string(),
        ));
    }
    Ok(caller)
}

/// Record that `caller` did `action` on `resource` (a read of the trail, a report, a
/// subject request), with where the request came from. Fail closed: what cannot be
/// recorded is not answered.
async fn record_access(
    state: &ApiState,
    caller: &Principal,
    action: &str,
    resource: &str,
    correlation: &CorrelationId,
    mut details: Value,
) -> Result<(), ApiError> {
    details["request"] = json!(correlation.1);
    let event = NewEvent {
        actor: format!("user:{}", caller.subject),
        action: action.to_owned(),
        resource: resource.to_owned(),
        outcome: "success".into(),
        correlation_id: Some(correlation.0.clone()),
        details,
        ..NewEvent::default()
    };
    state
        .engine
        .record_event(&event, state.engine.now())
        .await?;
    Ok(())
}

/// Record `event` now; a failure to record is logged, and the answer already decided
/// stands (a refusal stays a refusal).
async fn record(state: &ApiState, event: &NewEvent) {
    if let Err(e) = state.engine.record_event(event, state.engine.now()).await {
        tracing::error!(error = %e, action = %event.action, "recording an event failed");
    }
}
