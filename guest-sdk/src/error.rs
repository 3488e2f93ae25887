use std::fmt;
use std::time::Duration;

use crate::bindings::stepbox::step::types as wit;

/// Whether the engine should try a failed step again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A passing failure: the engine retries with backoff, up to the step's limit.
    Retryable,
    /// Retrying cannot help: the step (and its task) fails now.
    Permanent,
}

/// A step's deliberate failure: a kind, a stable code and a message.
///
/// The message is redacted by the host before it is stored, but do not put customer data
/// in it: say *what* was wrong, not *whose*.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// Retry or not.
    pub kind: ErrorKind,
    /// A stable, machine-readable code such as `amount_too_large`.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// For retryable errors, the earliest sensible retry.
    pub retry_after: Option<Duration>,
}

impl StepError {
    /// A failure worth retrying (a busy service, a timeout).
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, code, message)
    }

    /// A failure retrying cannot fix (invalid input, a refusal).
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, code, message)
    }

    /// Ask the engine to wait at least `delay` before the next attempt.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    fn new(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn into_wit(self) -> wit::StepError {
        wit::StepError {
            kind: match self.kind {
                ErrorKind::Retryable => wit::ErrorKind::Retryable,
                ErrorKind::Permanent => wit::ErrorKind::Permanent,
            },
            code: self.code,
            message: self.message,
            retry_after_ms: self
                .retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Retryable => "retryable",
            ErrorKind::Permanent => "permanent",
        };
        write!(f, "{kind} error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for StepError {}
