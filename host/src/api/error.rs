//! Every error response: `application/problem+json` (RFC 9457) with a stable `code`.
//! The detail is ours — never SQL text, a file path, a token or a context value.

use axum::extract::rejection::JsonRejection;
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
    /// `Retry-After` seconds for 429s.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, a stable `code` and a detail safe to show.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            challenge: None,
            retry_after: None,
        }
    }

    /// A 429: too many requests from one client; try again in `secs` seconds.
    pub fn rate_limited(secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests; retry in {secs} s"),
            )
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
            retry_after: None,
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
            EngineError::Untrusted(what) => {
                Self::new(StatusCode::FORBIDDEN, "untrusted_module", what)
            }
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
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl ApiError {
    /// A JSON body that is not `what` (e.g. "a task request"). serde's messages may quote
    /// what was sent, so only the name of an unknown or missing field is passed on.
    pub(super) fn json_body(e: JsonRejection, what: &str) -> Self {
        match e {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("send {what} as application/json"),
            ),
            JsonRejection::JsonSyntaxError(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "the body is not valid JSON",
            ),
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                let detail = match named_field(&text) {
                    Some(about) => format!("the body is not {what}: {about}"),
                    None => format!("the body is not {what}: a field has the wrong type"),
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
}

/// `unknown field `x`` or `missing field `x`` from serde's message, when `x` is a plain
/// name: the message may quote anything the caller sent, so nothing else of it is shown.
pub(super) fn named_field(text: &str) -> Option<String> {
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
