//! Outbound HTTP through the host.
//!
//! The host makes the request, only to origins (scheme + host + port) allowed for the
//! step, substitutes [`Secret`](crate::Secret) placeholders in headers and body, re-checks
//! every redirect and caps the response size.
//!
//! ```no_run
//! # fn demo(ctx: &stepbox_guest::Ctx) -> Result<(), stepbox_guest::StepError> {
//! use stepbox_guest::http::Request;
//! let key = ctx.secret("NOTIFY_API_KEY")?;
//! let response = Request::post("https://notify.example.com/v1/messages")
//!     .header("authorization", format!("Bearer {key}"))
//!     .json(&serde_json::json!({ "template": "refund_done" }))?
//!     .send()?;
//! if !response.is_success() {
//!     return Err(stepbox_guest::StepError::retryable("notify_failed", "notification service refused"));
//! }
//! # Ok(()) }
//! ```

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

use crate::StepError;
use crate::bindings::stepbox::step::http as wit;

/// An outbound request under construction.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

/// A response the host received.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Response body (capped by the host).
    pub body: Vec<u8>,
}

/// Why the host did not return a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The origin (or a redirect's) is not allowed for this step.
    Denied(String),
    /// Malformed method, URL or headers.
    InvalidRequest(String),
    /// The remote side took too long.
    Timeout,
    /// The response body exceeded the host's cap (bytes).
    TooLarge(u64),
    /// Connection or protocol failure.
    Transport(String),
}

impl Request {
    /// A request with any method.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl fmt::Display) -> Self {
        self.headers.push((name.into(), value.to_string()));
        self
    }

    /// Set a raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Set a JSON body and `content-type: application/json`.
    pub fn json(self, body: &impl Serialize) -> Result<Self, StepError> {
        let bytes = serde_json::to_vec(body).map_err(|e| {
            StepError::permanent("http_body", format!("request body does not serialise: {e}"))
        })?;
        Ok(self.header("content-type", "application/json").body(bytes))
    }

    /// Send the request through the host and wait for the response.
    pub fn send(self) -> Result<Response, HttpError> {
        let request = wit::Request {
            method: self.method,
            url: self.url,
            headers: self.headers,
            body: self.body,
        };
        match wit::send(&request) {
            Ok(r) => Ok(Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(wit::HttpError::Denied(origin)) => Err(HttpError::Denied(origin)),
            Err(wit::HttpError::InvalidRequest(why)) => Err(HttpError::InvalidRequest(why)),
            Err(wit::HttpError::Timeout) => Err(HttpError::Timeout),
            Err(wit::HttpError::TooLarge(cap)) => Err(HttpError::TooLarge(cap)),
            Err(wit::HttpError::Transport(why)) => Err(HttpError::Transport(why)),
        }
    }
}

impl Response {
    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            StepError::permanent(
                "http_response",
                format!("response is not the expected JSON: {e}"),
            )
        })
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(origin) => write!(f, "origin {origin} is not allowed for this step"),
            Self::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Self::Timeout => f.write_str("the remote service timed out"),
            Self::TooLarge(cap) => write!(f, "response larger than {cap} bytes"),
            Self::Transport(why) => write!(f, "transport failure: {why}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Denials and malformed requests are permanent; timeouts and transport failures retryable.
impl From<HttpError> for StepError {
    fn from(error: HttpError) -> Self {
        let message = error.to_string();
        match error {
            HttpError::Denied(_) => StepError::permanent("http_denied", message),
            HttpError::InvalidRequest(_) => StepError::permanent("http_invalid", message),
            HttpError::TooLarge(_) => StepError::permanent("http_too_large", message),
            HttpError::Timeout => StepError::retryable("http_timeout", message),
            HttpError::Transport(_) => StepError::retryable("http_transport", message),
        }
    }
}
