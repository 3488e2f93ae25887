//! `context`: declared reads only; fields above the step's clearance read as
//! `"[REDACTED]"`; every read and every refusal recorded.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::bounded;
use crate::classify::{Classification, REDACTED, Redactor};
use crate::sandbox::bindings::context::{ContextError, Host};
use crate::sandbox::grants::TaskData;
use crate::sandbox::record::{Capability, Denial, FieldRead};
use crate::sandbox::state::View;

/// The context capability's allowed set and data.
pub(crate) struct ContextCap {
    reads: BTreeSet<String>,
    upstream: BTreeSet<String>,
    clearance: Classification,
    data: Arc<TaskData>,
    /// Masks the values of context fields above the clearance wherever an upstream result
    /// repeats them; built on the first upstream read (`Some(None)`: nothing to hide).
    hidden: Option<Option<Redactor>>,
    /// [`Redactor::generation`] when the attempt began.
    since: u64,
}

impl ContextCap {
    pub(crate) fn new(
        reads: BTreeSet<String>,
        upstream: BTreeSet<String>,
        clearance: Classification,
        data: Arc<TaskData>,
    ) -> Self {
        Self {
            reads,
            upstream,
            clearance,
            data,
            hidden: None,
            since: Redactor::generation(),
        }
    }

    fn hidden(&mut self) -> Option<&Redactor> {
        let (data, clearance, since) = (&self.data, self.clearance, self.since);
        self.hidden
            .get_or_insert_with(|| {
                let mut values = Vec::new();
                let mut only_pii = true;
                for (field, value) in &data.context {
                    if data.level_of(field) > clearance {
                        leaf_values(value, &mut values);
                        only_pii &= data
                            .classification
                            .fields
                            .get(field)
                            .is_some_and(|class| class.is_pii());
                    }
                }
                if values.is_empty() {
                    return None;
                }
                // Personal data only: the values the task's own redactor already masks,
                // kept as briefly and forgotten at the same erasures, so the steps of the
                // task with this clearance share one matcher. Anything else (credentials,
                // card numbers, business data) stays this attempt's own.
                Some(if only_pii {
                    Redactor::shared(values, since)
                } else {
                    Redactor::new(values)
                })
            })
            .as_ref()
    }
}

/// Every string and number inside `value`, as text.
fn leaf_values(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| leaf_values(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| leaf_values(v, out)),
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}

impl View<'_, ContextCap> {
    fn deny(&mut self, target: &str, reason: &str) {
        self.shared.record.denials.push(Denial {
            capability: Capability::Context,
            target: bounded(target),
            reason: reason.to_owned(),
        });
    }
}

impl Host for View<'_, ContextCap> {
    fn get(&mut self, field: String) -> wasmtime::Result<Result<String, ContextError>> {
        self.shared.charge()?;
        if !self.cap.reads.contains(&field) {
            self.deny(&field, "not among the step's declared reads");
            return Ok(Err(ContextError::Undeclared(field)));
        }
        let Some(value) = self.cap.data.context.get(&field) else {
            return Ok(Err(ContextError::NotFound(field)));
        };
        let redacted = self.cap.data.level_of(&field) > self.cap.clearance;
        let text = if redacted {
            serde_json::Value::from(REDACTED).to_string()
        } else {
            value.to_string()
        };
        self.shared
            .record
            .fields_read
            .push(FieldRead { field, redacted });
        Ok(Ok(text))
    }

    fn upstream(&mut self, step: String) -> wasmtime::Result<Result<String, ContextError>> {
        self.shared.charge()?;
        if !self.cap.upstream.contains(&step) {
            self.deny(&step, "not an upstream step of this step");
            return Ok(Err(ContextError::Undeclared(step)));
        }
        let data = self.cap.data.clone();
        let Some(result) = data.upstream.get(&step) else {
            return Ok(Err(ContextError::NotFound(step)));
        };
        // An upstream step with more clearance may have copied a field this step may not
        // see into its result: the clearance applies there too.
        let text = match self.cap.hidden() {
            Some(redactor) => redactor.redact_json(result).to_string(),
            None => result.to_string(),
        };
        self.shared.record.upstream_read.push(step);
        Ok(Ok(text))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::classify::{DataClass, FieldClasses, classify_context};
    use crate::sandbox::host::testing;
    use crate::sandbox::outcome::Abort;

    fn cap(clearance: Classification) -> ContextCap {
        let context = json!({
            "customer_email": "jane@example.com",
            "refund_amount": 150.0,
        });
        let context = context.as_object().unwrap().clone();
        let mut classes = FieldClasses::default();
        classes.declare("customer_email", DataClass::PiiContact);
        classes.declare("refund_amount", DataClass::Internal);
        let classification = classify_context(&classes, &context);
        let data = TaskData {
            context,
            classification,
            upstream: [
                ("validate".to_owned(), json!({"ok": true})),
                (
                    "lookup".to_owned(),
                    json!({"contact": {"email": "jane@example.com"}, "n": 3}),
                ),
            ]
            .into(),
        };
        ContextCap::new(
            [
                "customer_email".into(),
                "refund_amount".into(),
                "absent".into(),
            ]
            .into(),
            ["validate".into(), "lookup".into()].into(),
            clearance,
            Arc::new(data),
        )
    }

    #[test]
    fn declared_field_within_clearance_is_returned_and_recorded() {
        let mut cap = cap(Classification::Confidential);
        let mut shared = testing::shared(10);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        assert_eq!(
            view.get("customer_email".into()).unwrap(),
            Ok("\"jane@example.com\"".into())
        );
        assert_eq!(
            view.get("refund_amount".into()).unwrap(),
            Ok("150.0".into())
        );
        assert_eq!(shared.record.fields_read.len(), 2);
        assert!(!shared.record.fields_read[0].redacted);
    }

    #[test]
    fn field_above_clearance_reads_as_redacted() {
        let mut cap = cap(Classification::Internal);
        let mut shared = testing::shared(10);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        assert_eq!(
            view.get("customer_email".into()).unwrap(),
            Ok("\"[REDACTED]\"".into())
        );
        assert_eq!(
            shared.record.fields_read,
            vec![FieldRead {
                field: "customer_email".into(),
                redacted: true
            }]
        );
    }

    #[test]
    fn undeclared_field_is_refused_and_the_denial_recorded() {
        let mut cap = cap(Classification::Restricted);
        let mut shared = testing::shared(10);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        assert_eq!(
            view.get("customer_ssn".into()).unwrap(),
            Err(ContextError::Undeclared("customer_ssn".into()))
        );
        assert_eq!(
            view.upstream("other_step".into()).unwrap(),
            Err(ContextError::Undeclared("other_step".into()))
        );
        assert_eq!(shared.record.denials.len(), 2);
        assert_eq!(shared.record.denials[0].target, "customer_ssn");
        assert!(shared.record.fields_read.is_empty());
    }

    #[test]
    fn declared_but_absent_field_is_not_found() {
        let mut cap = cap(Classification::Restricted);
        let mut shared = testing::shared(10);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        assert_eq!(
            view.get("absent".into()).unwrap(),
            Err(ContextError::NotFound("absent".into()))
        );
        assert_eq!(
            view.upstream("validate".into()).unwrap(),
            Ok("{\"ok\":true}".into())
        );
    }

    #[test]
    fn upstream_results_obey_the_readers_clearance() {
        for (clearance, visible) in [
            (Classification::Internal, false),
            (Classification::Confidential, true),
        ] {
            let mut cap = cap(clearance);
            let mut shared = testing::shared(10);
            let mut view = View {
                cap: &mut cap,
                shared: &mut shared,
            };
            let text = view.upstream("lookup".into()).unwrap().unwrap();
            assert_eq!(
                text.contains("jane@example.com"),
                visible,
                "{clearance:?}: {text}"
            );
            assert!(text.contains("\"n\":3"), "{text}");
        }
    }

    #[test]
    fn upstream_results_mask_hidden_values_of_every_class_attempt_after_attempt() {
        // Personal data alone above the clearance (a matcher shared between attempts), and
        // a credential beside it (the attempt's own): masked either way, in every attempt,
        // including one after an erasure forgot the shared matchers.
        for with_credential in [false, true] {
            let mut context = json!({ "customer_email": "jane@example.com" });
            let mut classes = FieldClasses::default();
            classes.declare("customer_email", DataClass::PiiContact);
            if with_credential {
                context["api_token"] = json!("tok_9f8e7d6c");
                classes.declare("api_token", DataClass::Credential);
            }
            let context = context.as_object().unwrap().clone();
            let classification = classify_context(&classes, &context);
            let upstream = json!({ "echo": "jane@example.com / tok_9f8e7d6c", "n": 3 });
            let data = Arc::new(TaskData {
                context,
                classification,
                upstream: [("lookup".to_owned(), upstream)].into(),
            });
            for attempt in 0..3 {
                if attempt == 2 {
                    Redactor::forget_shared();
                }
                let mut cap = ContextCap::new(
                    BTreeSet::new(),
                    ["lookup".into()].into(),
                    Classification::Public,
                    data.clone(),
                );
                let mut shared = testing::shared(10);
                let mut view = View {
                    cap: &mut cap,
                    shared: &mut shared,
                };
                let text = view.upstream("lookup".into()).unwrap().unwrap();
                assert!(!text.contains("jane@example.com"), "{text}");
                assert_eq!(!text.contains("tok_9f8e7d6c"), with_credential, "{text}");
                assert!(text.contains("\"n\":3"), "{text}");
            }
        }
    }

    #[test]
    fn host_call_budget_traps() {
        let mut cap = cap(Classification::Restricted);
        let mut shared = testing::shared(1);
        let mut view = View {
            cap: &mut cap,
            shared: &mut shared,
        };
        assert!(view.get("refund_amount".into()).is_ok());
        let error = view.get("refund_amount".into()).unwrap_err();
        assert_eq!(error.downcast_ref::<Abort>(), Some(&Abort::HostCalls(1)));
    }
}
