//! `audit`: the step's own business events, validated and redacted before they join the
//! attempt's record (the engine writes them to the audit chain).

use std::sync::LazyLock;

use regex::Regex;

use super::bounded;
use crate::sandbox::bindings::audit::Host;
use crate::sandbox::record::{Capability, Denial, StepAuditEvent};
use crate::sandbox::state::View;

/// Events one attempt may record: a refund step records one or two.
const MAX_EVENTS: usize = 100;
/// Bytes of metadata JSON per event.
const MAX_METADATA_BYTES: usize = 16 << 10;

static ACTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,4}$").expect("valid regex")
});

/// The audit capability's count of events so far.
#[derive(Default)]
pub(crate) struct AuditCap {
    events: usize,
}

impl View<'_, AuditCap> {
    fn refuse(&mut self, action: &str, reason: String) -> wasmtime::Result<Result<(), String>> {
        self.shared.record.denials.push(Denial {
            capability: Capability::Audit,
            target: bounded(action),
            reason: reason.clone(),
        });
        Ok(Err(reason))
    }
}

impl Host for View<'_, AuditCap> {
    fn emit(
        &mut self,
        action: String,
        subject: String,
        metadata: String,
    ) -> wasmtime::Result<Result<(), String>> {
        self.shared.charge()?;
        if self.cap.events >= MAX_EVENTS {
            return self.refuse(
                &action,
                format!("at most {MAX_EVENTS} audit events per attempt"),
            );
        }
        if action.len() > 64 || !ACTION.is_match(&action) {
            return self.refuse(
                &action,
                "action must look like `resource.verb` (lowercase)".into(),
            );
        }
        if metadata.len() > MAX_METADATA_BYTES {
            return self.refuse(
                &action,
                format!("metadata exceeds {MAX_METADATA_BYTES} bytes"),
            );
        }
        let metadata: serde_json::Value = match serde_json::from_str(&metadata) {
            Ok(value @ serde_json::Value::Object(_)) => value,
            _ => return self.refuse(&action, "metadata must be a JSON object".into()),
        };
        let redactor = self.shared.redactor().clone();
        self.cap.events += 1;
        self.shared.record.audit_events.push(StepAuditEvent {
            action,
            subject: redactor.redact_text(&bounded(&subject)).into_owned(),
            metadata: redactor.redact_json(&metadata),
        });
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::host::testing;

    #[test]
    fn valid_event_is_recorded_with_pii_redacted() {
        let mut cap = AuditCap::default();
        let mut shared = testing::shared(10);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        let result = view.emit(
            "refund.executed".into(),
            "rf_0011".into(),
            r#"{"amount": 150, "note": "for jane@example.com"}"#.into(),
        );
        assert_eq!(result.unwrap(), Ok(()));
        let event = &shared.record.audit_events[0];
        assert_eq!(event.action, "refund.executed");
        assert_eq!(event.metadata["amount"], 150);
        assert!(!event.metadata.to_string().contains("jane@example.com"));
    }

    #[test]
    fn malformed_events_are_refused_and_recorded_as_denials() {
        let mut cap = AuditCap::default();
        let mut shared = testing::shared(10);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        assert!(
            view.emit("Refund Executed".into(), "x".into(), "{}".into())
                .unwrap()
                .is_err()
        );
        assert!(
            view.emit("refund.executed".into(), "x".into(), "[1]".into())
                .unwrap()
                .is_err()
        );
        assert!(
            view.emit("refund.executed".into(), "x".into(), "{".into())
                .unwrap()
                .is_err()
        );
        assert_eq!(shared.record.denials.len(), 3);
        assert!(shared.record.audit_events.is_empty());
    }
}
