//! How an event reads to an auditor: the stored row with its details pulled apart into
//! request, workflow and step sections and the compliance regimes the data it touched
//! falls under; and the export line, which keeps every stored column exactly so that an
//! export verifies offline.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::{AuditRow, CheckpointRow};

/// Actions that change what runs or who may do what: change management (SOX).
const CHANGE_ACTIONS: [&str; 5] = [
    "module.uploaded",
    "workflow.applied",
    "namespace.policy_set",
    "key.rotated",
    "secret.set",
];

/// A unix-ms timestamp as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ts_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// An RFC 3339 timestamp as unix ms, if it is one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The regimes an event concerns, from the classes of the data it touched: personal data
/// is GDPR's, card and bank data PCI DSS's, financial data and changes to what runs
/// SOX's.
pub fn compliance_tags(row: &AuditRow, details: &Value) -> Vec<&'static str> {
    let classes: Vec<&str> = details["data_classes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut tags = Vec::new();
    if row.contains_pii
        || classes.iter().any(|c| c.starts_with("pii-"))
        || row.action.starts_with("gdpr.")
    {
        tags.push("gdpr");
    }
    let financial = classes.contains(&"financial");
    if financial {
        tags.push("pci_dss");
    }
    if financial || CHANGE_ACTIONS.contains(&row.action.as_str()) {
        tags.push("sox");
    }
    tags
}

/// `user:<id>` → `("user", "<id>")`; `system:<worker>`, `anonymous`.
fn actor_parts(actor: &str) -> (&str, &str) {
    actor.split_once(':').unwrap_or((actor, ""))
}

/// `name@version` → `(name, version)`.
fn workflow_parts(text: &str) -> (&str, &str) {
    text.split_once('@').unwrap_or((text, ""))
}

/// A request detail (`ip`, `user_agent`, …) of an event: in its `request` section, or at
/// the top of a refused token's details.
fn request_field<'a>(details: &'a Value, name: &str) -> &'a Value {
    match &details["request"][name] {
        Value::Null => &details[name],
        value => value,
    }
}

/// The event as the trail API shows it.
pub fn event_view(row: &AuditRow) -> Value {
    let details: Value = serde_json::from_str(&row.details).unwrap_or(Value::Null);
    let (actor_type, actor_id) = actor_parts(&row.actor);
    let pick = |name: &str| request_field(&details, name).clone();
    let has_request = details.get("request").is_some() || details.get("ip").is_some();
    let workflow = details["workflow"].as_str().map(|text| {
        let (name, version) = workflow_parts(text);
        json!({
            "namespace": row.namespace,
            "name": name,
            "version": version,
            "classification": row.classification,
            "contains_pii": row.contains_pii,
        })
    });
    let step = details["step"].as_str().map(|name| {
        json!({
            "name": name,
            "attempt": details["attempt"],
            "duration_ms": details["duration_ms"],
            "outcome": details["outcome"],
            "fields_read": details["fields_read"],
            "hosts_called": details["hosts_called"],
        })
    });
    json!({
        "seq": row.seq,
        "id": row.id,
        "time": rfc3339(row.ts),
        "ts": row.ts,
        "actor": row.actor,
        "actor_type": actor_type,
        "user_id": (actor_type == "user").then_some(actor_id),
        "action": row.action,
        "resource": row.resource,
        "namespace": row.namespace,
        "outcome": row.outcome,
        "classification": row.classification,
        "contains_pii": row.contains_pii,
        "correlation_id": row.correlation_id,
        "request": has_request.then(|| json!({
            "ip": pick("ip"),
            "user_agent": pick("user_agent"),
            "method": pick("method"),
            "session_id": pick("session_id"),
        })),
        "workflow": workflow,
        "step": step,
        "compliance_tags": compliance_tags(row, &details),
        "details": details,
        "sealed": row.hash.is_some(),
    })
}

/// One line of a JSON Lines export: an event with every stored column as stored (the
/// details as their JSON text, the hashes in hex), or a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExportLine {
    /// The export's first line.
    Header {
        /// Always `stepbox-audit-export`.
        format: String,
        /// The format's version, 1.
        version: u32,
        /// Whether the export is a filtered selection (its events do not link up).
        filtered: bool,
    },
    /// A signed checkpoint, right after the event it signs.
    Checkpoint {
        /// The checkpoint.
        checkpoint: ExportCheckpoint,
    },
    /// An event.
    Event(Box<ExportEvent>),
}

/// An event as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEvent {
    seq: i64,
    id: String,
    ts: i64,
    /// Informative: derived from `ts`, not covered by the hash.
    #[serde(default)]
    time: String,
    actor: String,
    action: String,
    resource: String,
    namespace: Option<String>,
    outcome: String,
    classification: Option<String>,
    contains_pii: bool,
    correlation_id: Option<String>,
    details: String,
    /// Informative: derived from the classification, not covered by the hash.
    #[serde(default)]
    compliance_tags: Vec<String>,
    prev_hash: Option<String>,
    hash: Option<String>,
}

/// A checkpoint as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportCheckpoint {
    seq: i64,
    hash: String,
    signature: String,
    key_id: String,
    created_at: i64,
}

/// The first line of an export.
pub fn export_header(filtered: bool) -> ExportLine {
    ExportLine::Header {
        format: "stepbox-audit-export".into(),
        version: 1,
        filtered,
    }
}

impl From<&AuditRow> for ExportEvent {
    fn from(row: &AuditRow) -> Self {
        let details: Value = serde_json::from_str(&row.details).unwrap_or(Value::Null);
        Self {
            seq: row.seq,
            id: row.id.clone(),
            ts: row.ts,
            time: rfc3339(row.ts),
            actor: row.actor.clone(),
            action: row.action.clone(),
            resource: row.resource.clone(),
            namespace: row.namespace.clone(),
            outcome: row.outcome.clone(),
            classification: row.classification.clone(),
            contains_pii: row.contains_pii,
            correlation_id: row.correlation_id.clone(),
            compliance_tags: compliance_tags(row, &details)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            details: row.details.clone(),
            prev_hash: row.prev_hash.as_deref().map(hex::encode),
            hash: row.hash.as_deref().map(hex::encode),
        }
    }
}

impl ExportEvent {
    /// The stored row back, for verification. A hash that is not hex is kept as bytes
    /// no hash matches.
    pub fn row(&self) -> AuditRow {
        let bytes = |text: &Option<String>| {
            text.as_deref()
                .map(|t| hex::decode(t).unwrap_or_else(|_| vec![0xff]))
        };
        AuditRow {
            seq: self.seq,
            id: self.id.clone(),
            ts: self.ts,
            actor: self.actor.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            outcome: self.outcome.clone(),
            classification: self.classification.clone(),
            contains_pii: self.contains_pii,
            correlation_id: self.correlation_id.clone(),
            details: self.details.clone(),
            prev_hash: bytes(&self.prev_hash),
            hash: bytes(&self.hash),
        }
    }
}

impl From<&CheckpointRow> for ExportCheckpoint {
    fn from(row: &CheckpointRow) -> Self {
        Self {
            seq: row.seq,
            hash: hex::encode(&row.hash),
            signature: hex::encode(&row.signature),
            key_id: row.key_id.clone(),
            created_at: row.created_at,
        }
    }
}

impl ExportCheckpoint {
    /// The stored checkpoint back; bytes that are not hex become bytes no key signed.
    pub fn row(&self) -> CheckpointRow {
        CheckpointRow {
            seq: self.seq,
            hash: hex::decode(&self.hash).unwrap_or_default(),
            signature: hex::decode(&self.signature).unwrap_or_default(),
            key_id: self.key_id.clone(),
            created_at: self.created_at,
        }
    }
}

/// The CSV export's columns.
pub const CSV_HEADER: [&str; 18] = [
    "seq",
    "id",
    "time",
    "actor",
    "action",
    "resource",
    "namespace",
    "outcome",
    "classification",
    "contains_pii",
    "correlation_id",
    "ip",
    "user_agent",
    "session_id",
    "compliance_tags",
    "details",
    "prev_hash",
    "hash",
];

/// An event as one CSV record, in [`CSV_HEADER`]'s order.
pub fn csv_record(row: &AuditRow) -> [String; 18] {
    let details: Value = serde_json::from_str(&row.details).unwrap_or(Value::Null);
    let text = |name: &str| match request_field(&details, name) {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let tags = compliance_tags(row, &details);
    [
        row.seq.to_string(),
        row.id.clone(),
        rfc3339(row.ts),
        row.actor.clone(),
        row.action.clone(),
        row.resource.clone(),
        row.namespace.clone().unwrap_or_default(),
        row.outcome.clone(),
        row.classification.clone().unwrap_or_default(),
        row.contains_pii.to_string(),
        row.correlation_id.clone().unwrap_or_default(),
        text("ip"),
        text("user_agent"),
        text("session_id"),
        tags.join(";"),
        row.details.clone(),
        row.prev_hash
            .as_deref()
            .map(hex::encode)
            .unwrap_or_default(),
        row.hash.as_deref().map(hex::encode).unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, pii: bool, details: Value) -> AuditRow {
        AuditRow {
            seq: 3,
            id: "evt_1".into(),
            ts: 1_767_225_600_000,
            actor: "user:user_123".into(),
            action: action.into(),
            resource: "task/task_ab".into(),
            namespace: Some("customer_success".into()),
            outcome: "success".into(),
            classification: Some("restricted".into()),
            contains_pii: pii,
            correlation_id: Some("req_1".into()),
            details: details.to_string(),
            prev_hash: Some(vec![0; 32]),
            hash: Some(vec![1; 32]),
        }
    }

    #[test]
    fn tags_follow_the_classes_of_the_data_touched() {
        let refund = row(
            "task.created",
            true,
            json!({ "data_classes": ["financial", "internal", "pii-contact"] }),
        );
        assert_eq!(
            compliance_tags(&refund, &serde_json::from_str(&refund.details).unwrap()),
            ["gdpr", "pci_dss", "sox"]
        );
        let plain = row(
            "task.created",
            false,
            json!({ "data_classes": ["internal"] }),
        );
        assert!(compliance_tags(&plain, &json!({ "data_classes": ["internal"] })).is_empty());
        let change = row("workflow.applied", false, json!({}));
        assert_eq!(compliance_tags(&change, &json!({})), ["sox"]);
    }

    #[test]
    fn a_view_pulls_request_workflow_and_step_apart() {
        let event = row(
            "step.completed",
            true,
            json!({
                "request": { "ip": "10.0.0.7", "user_agent": "curl/8", "session_id": "s_1" },
                "workflow": "process_refund@1.0.0",
                "step": "notify_customer", "attempt": 2, "duration_ms": 4,
                "fields_read": [{ "field": "customer_email", "redacted": false }],
                "hosts_called": [],
            }),
        );
        let view = event_view(&event);
        assert_eq!(view["time"], "2026-01-01T00:00:00Z");
        assert_eq!(view["user_id"], "user_123");
        assert_eq!(view["request"]["ip"], "10.0.0.7");
        assert_eq!(view["request"]["session_id"], "s_1");
        assert_eq!(view["workflow"]["name"], "process_refund");
        assert_eq!(view["workflow"]["version"], "1.0.0");
        assert_eq!(view["step"]["attempt"], 2);
        assert_eq!(view["step"]["fields_read"][0]["field"], "customer_email");
        assert_eq!(view["sealed"], true);
    }

    #[test]
    fn an_export_line_gives_back_the_stored_row() {
        let event = row("task.created", true, json!({ "b": 1, "a": "x" }));
        let line = serde_json::to_string(&ExportLine::Event(Box::new((&event).into()))).unwrap();
        let ExportLine::Event(back) = serde_json::from_str(&line).unwrap() else {
            panic!("not an event: {line}");
        };
        assert_eq!(back.row(), event);
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Some(event.ts));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
