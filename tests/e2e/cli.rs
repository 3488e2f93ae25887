//! `stepbox step run` as a step author uses it: a process, flags, JSON on stdout, a
//! one-line message on stderr and a non-zero status on failure; and `stepbox token`.

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

#[test]
fn token_mints_a_development_token_that_only_its_data_directorys_key_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = stepbox()
        .args(["token", "--data-dir"])
        .arg(dir.path())
        .args([
            "--sub",
            "user_123",
            "--roles",
            "customer_success_agent,team_lead",
            "--permissions",
            "customer_success.process_refund:execute",
            "--email",
            "agent@example.com",
            "--mfa",
            "--ttl",
            "15m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    let key = stepbox::auth::DevKey::load_or_create(dir.path()).unwrap();
    let verifier = stepbox::auth::Verifier::new(
        key.key_set(),
        stepbox::auth::DEV_ISSUER,
        stepbox::auth::DEV_AUDIENCE,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let identity = verifier.verify(token, now).unwrap();
    assert_eq!(identity.principal.subject, "user_123");
    assert_eq!(identity.principal.roles.len(), 2);
    assert!(identity.mfa_at.is_some());
    assert_eq!(
        verifier.verify(token, now + 15 * 60 + 60),
        Err(stepbox::auth::AuthError::Expired)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !stderr.contains(token),
        "the token is printed once, on stdout"
    );

    let refused = stepbox()
        .args(["token", "--data-dir"])
        .arg(dir.path())
        .args(["--sub", "user_123", "--ttl", "90d"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("30d"));
}
