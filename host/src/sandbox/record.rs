//! The record of everything an attempt did through the host: what the engine stores and
//! audits. Every string in it has been redacted before it got here.

use std::collections::BTreeMap;

use serde::Serialize;

/// What one attempt did through its imports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttemptRecord {
    /// Context fields read (allowed reads only), in order.
    pub fields_read: Vec<FieldRead>,
    /// Upstream step results read.
    pub upstream_read: Vec<String>,
    /// Every refused request: undeclared reads, ungranted secrets, disallowed hosts.
    pub denials: Vec<Denial>,
    /// Names of secrets whose placeholders the step obtained.
    pub secrets_used: Vec<String>,
    /// Outbound HTTP requests, allowed or not.
    pub http_calls: Vec<HttpCall>,
    /// Business events the step recorded.
    pub audit_events: Vec<StepAuditEvent>,
    /// Log lines kept (redacted).
    pub logs: Vec<LogLine>,
    /// Log lines dropped because the attempt's log volume was used up.
    pub logs_dropped: u64,
    /// Captured standard output (redacted, capped).
    pub stdout: String,
    /// Captured standard error (redacted, capped).
    pub stderr: String,
    /// Bytes of stdout and stderr dropped past the cap.
    pub stdio_dropped: u64,
    /// Host calls made.
    pub host_calls: u32,
}

/// One allowed context read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldRead {
    /// The field name.
    pub field: String,
    /// True when the step was handed `"[REDACTED]"` instead of the value.
    pub redacted: bool,
}

/// Which capability refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `context.get` / `context.upstream`.
    Context,
    /// `secrets.placeholder`.
    Secrets,
    /// `http.send`.
    Http,
    /// `audit.emit`.
    Audit,
}

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// The capability that refused.
    pub capability: Capability,
    /// What was asked for: a field, a secret name, an origin.
    pub target: String,
    /// Why, in a few words.
    pub reason: String,
}

/// One outbound request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpCall {
    /// The HTTP method.
    pub method: String,
    /// `scheme://host:port` of the request (or of the redirect that was refused).
    pub origin: String,
    /// Response status, when there was one.
    pub status: Option<u16>,
    /// Time spent, milliseconds.
    pub duration_ms: u64,
    /// `ok`, `denied`, `timeout`, `too_large`, `transport`, `invalid`.
    pub outcome: String,
    /// Secret names substituted into this request.
    pub secrets: Vec<String>,
}

/// A business event from the step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepAuditEvent {
    /// e.g. `refund.executed`.
    pub action: String,
    /// The identifier the event is about.
    pub subject: String,
    /// JSON object metadata.
    pub metadata: serde_json::Value,
}

/// A kept log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// `trace` … `error`.
    pub level: &'static str,
    /// The message.
    pub message: String,
    /// Key/value fields.
    pub fields: BTreeMap<String, String>,
}

impl AttemptRecord {
    /// Every piece of free text the record holds, for tests and scanners that must prove
    /// no PII or secret value escaped.
    pub fn all_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
