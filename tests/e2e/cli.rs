//! `stepbox step run` as a step author uses it: a process, flags, JSON on stdout, a
//! one-line message on stderr and a non-zero status on failure.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::*;

fn stepbox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stepbox"))
}

#[test]
fn step_run_prints_the_outcome_and_record_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context.json");
    std::fs::write(&context, json!({ "refund_amount": 80.0, "order_id": "ord_1", "reason": "late", "customer_email": CUSTOMER_EMAIL }).to_string()).unwrap();
    let output = stepbox()
        .arg("step")
        .arg("run")
        .arg(component_path("validate_refund_request"))
        .args([
            "--input",
            r#"{"max_amount": 500, "approval_threshold": 100}"#,
        ])
        .arg("--context")
        .arg(&context)
        .args([
            "--reads",
            "refund_amount,order_id,currency,reason",
            "--clearance",
            "confidential",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["outcome"]["status"], "success");
    assert_eq!(report["outcome"]["result"]["needs_approval"], false);
    assert_eq!(report["record"]["fields_read"][0]["field"], "refund_amount");
}

#[test]
fn step_run_exits_non_zero_with_one_line_on_a_containment() {
    let output = stepbox()
        .arg("step")
        .arg("run")
        .arg(component_path("hostile_infinite_loop"))
        .args(["--limits", r#"{"cpu": 100}"#])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("OutOfCpu"), "{stderr}");
}

#[test]
fn step_run_exits_non_zero_on_a_step_error_and_refuses_a_forbidden_component() {
    let output = stepbox()
        .arg("step")
        .arg("run")
        .arg(component_path("hostile_undeclared_read"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("context_undeclared"));

    let output = stepbox()
        .arg("step")
        .arg("run")
        .arg(component_path("forbidden_sockets"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("wasi:sockets/"));
}
