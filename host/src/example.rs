//! The seed story's workflow: `customer_success.process_refund@1.0.0`, four steps —
//! validate the request, get a manager's approval, execute the refund (which needs the
//! workflow's own permission), notify the customer. `stepbox serve` loads it on first
//! start; the tests and benchmarks run the same definition.

use serde_json::{Value, json};

/// The namespace the example lives in.
pub const NAMESPACE: &str = "customer_success";
/// The permission `execute_refund` requires, and that a sensitive refund workflow needs.
pub const REFUND_PERMISSION: &str = "customer_success.process_refund:execute";

/// How the last step notifies the customer.
#[derive(Debug, Clone)]
pub enum Notify<'a> {
    /// `notify_customer@0.1.0` POSTs to `endpoint` (on the granted `origin`) with the
    /// namespace's `NOTIFY_API_KEY`, retrying up to `max_attempts` times with backoff
    /// from `initial_backoff_ms`, capped at 5 s.
    Http {
        /// The notification service's URL.
        endpoint: &'a str,
        /// Its origin, granted to the step.
        origin: &'a str,
        /// Attempts before the step fails.
        max_attempts: u32,
        /// The first retry's delay.
        initial_backoff_ms: u64,
    },
    /// `noop@0.1.0` in its place: no network, for measuring the engine alone.
    Noop,
}

/// The refund workflow's definition (JSON text), its last step as `notify` says.
pub fn refund_workflow(notify: &Notify<'_>) -> String {
    let last: Value = match notify {
        Notify::Http {
            endpoint,
            origin,
            max_attempts,
            initial_backoff_ms,
        } => json!({
            "name": "notify_customer", "module": "notify_customer@0.1.0",
            "depends_on": ["execute_refund"], "reads": ["customer_email"], "clearance": "confidential",
            "retry": { "max_attempts": max_attempts, "initial_backoff_ms": initial_backoff_ms, "max_backoff_ms": 5000 },
            "secrets": ["NOTIFY_API_KEY"], "hosts": [origin],
            "config": { "endpoint": endpoint }
        }),
        Notify::Noop => json!({
            "name": "notify_customer", "module": "noop@0.1.0",
            "depends_on": ["execute_refund"], "reads": ["customer_email"], "clearance": "confidential"
        }),
    };
    json!({
        "namespace": NAMESPACE, "name": "process_refund", "version": "1.0.0",
        "input_schema": {
            "type": "object",
            "required": ["customer_id", "customer_email", "order_id", "refund_amount", "reason"],
            "properties": {
                "customer_id": { "type": "string", "x-data-classification": "pii-identifier", "x-data-subject": true },
                "customer_email": { "type": "string", "format": "email", "x-data-classification": "pii-contact" },
                "order_id": { "type": "string", "x-data-classification": "internal" },
                "refund_amount": { "type": "number", "x-data-classification": "financial" },
                "currency": { "type": "string", "x-data-classification": "internal" },
                "reason": { "type": "string", "x-data-classification": "internal" }
            }
        },
        "steps": [
            { "name": "validate_refund_request", "module": "validate_refund_request@0.1.0",
              "reads": ["refund_amount", "order_id", "currency", "reason"], "clearance": "confidential",
              "config": { "max_amount": 1000.0, "approval_threshold": 100.0 } },
            { "name": "get_manager_approval", "module": "get_manager_approval@0.1.0",
              "depends_on": ["validate_refund_request"], "clearance": "confidential",
              "config": { "auto_approve_limit": 500.0, "on_exceed": "reject" } },
            { "name": "execute_refund", "module": "execute_refund@0.1.0",
              "requires_permission": REFUND_PERMISSION,
              "depends_on": ["get_manager_approval", "validate_refund_request"], "clearance": "confidential" },
            last
        ]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::WorkflowDef;

    #[test]
    fn both_forms_of_the_refund_workflow_are_valid_four_step_chains() {
        for notify in [
            Notify::Noop,
            Notify::Http {
                endpoint: "http://127.0.0.1:9/v1/messages",
                origin: "http://127.0.0.1:9",
                max_attempts: 3,
                initial_backoff_ms: 500,
            },
        ] {
            let (def, classes) = WorkflowDef::parse(&refund_workflow(&notify)).unwrap();
            let order: Vec<&str> = def
                .order()
                .unwrap()
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(
                order,
                [
                    "validate_refund_request",
                    "get_manager_approval",
                    "execute_refund",
                    "notify_customer"
                ]
            );
            assert_eq!(classes.subject_field(), Some("customer_id"));
        }
    }
}
