//! Every error response: `application/problem+json` (RFC 9457) with a stable `code`.
//! The detail is ours — never SQL text, a file path, a token or a context value.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::engine::EngineError;

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    /// `WWW-Authenticate` for 401s.
    challenge: Option<String>,
}

impl ApiError {
    /// An error with `status`, a stable `code` and a detail safe to show.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            challenge: None,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let challenge = match e {
            AuthError::Missing => "Bearer realm=\"stepbox\"".to_owned(),
            _ => format!(
                "Bearer realm=\"stepbox\", error=\"invalid_token\", error_description=\"{e}\""
            ),
        };
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: e.code(),
            detail: e.to_string(),
            challenge: Some(challenge),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(what) => Self::new(StatusCode::NOT_FOUND, "not_found", what),
            EngineError::Invalid(what) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", what)
            }
            EngineError::Denied(what) => Self::new(StatusCode::FORBIDDEN, "denied", what),
            EngineError::Conflict(what) => Self::new(StatusCode::CONFLICT, "conflict", what),
            EngineError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable; retry later",
            ),
            // Details go to the log (by the caller), never to the client.
            EngineError::Crypto(_) | EngineError::Internal(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred; it has been logged",
            ),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        EngineError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://stepbox.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}
