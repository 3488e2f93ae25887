//! The refund workflow's four steps, alone and chained, in the real sandbox.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use stepbox::classify::Classification;
use stepbox::sandbox::{ErrorKind, Limits, Origin, Outcome, SecretValue};

use crate::support::*;

const VALIDATE_READS: &[&str] = &["refund_amount", "order_id", "currency", "reason"];

fn validate_config() -> Value {
    json!({ "max_amount": 1000.0, "approval_threshold": 100.0 })
}

fn expect_error(outcome: &Outcome, kind: ErrorKind, code: &str) {
    match outcome {
        Outcome::StepError {
            kind: k, code: c, ..
        } => {
            assert_eq!((k, c.as_str()), (&kind, code), "{outcome:?}");
        }
        other => panic!("expected step error {code}, got {other:?}"),
    }
}

fn result(outcome: &Outcome) -> &Value {
    match outcome {
        Outcome::Success { result } => result,
        other => panic!("expected success, got {other:?}"),
    }
}

async fn validate(amount: f64, clearance: Classification) -> Outcome {
    let attempt = attempt(
        "validate_refund_request",
        validate_config(),
        grants(VALIDATE_READS, &[], clearance),
        refund_data(amount, BTreeMap::new()),
    );
    run("validate_refund_request", attempt).await.outcome
}

#[tokio::test]
async fn validate_accepts_a_sound_request_and_decides_on_approval() {
    let outcome = validate(150.0, Classification::Confidential).await;
    let result = result(&outcome);
    assert_eq!(result["amount"], 150.0);
    assert_eq!(result["currency"], "EUR");
    assert_eq!(result["needs_approval"], true);
    let small = validate(40.0, Classification::Confidential).await;
    assert_eq!(crate::refund::result(&small)["needs_approval"], false);
}

#[tokio::test]
async fn validate_refuses_bad_amounts_permanently() {
    expect_error(
        &validate(5000.0, Classification::Confidential).await,
        ErrorKind::Permanent,
        "amount_over_maximum",
    );
    expect_error(
        &validate(-3.0, Classification::Confidential).await,
        ErrorKind::Permanent,
        "invalid_amount",
    );
    expect_error(
        &validate(0.0, Classification::Confidential).await,
        ErrorKind::Permanent,
        "invalid_amount",
    );
}

#[tokio::test]
async fn a_field_above_the_steps_clearance_is_redacted() {
    // refund_amount is financial (confidential); an internal-cleared step sees "[REDACTED]".
    let attempt = attempt(
        "validate_refund_request",
        validate_config(),
        grants(VALIDATE_READS, &[], Classification::Internal),
        refund_data(150.0, BTreeMap::new()),
    );
    let report = run("validate_refund_request", attempt).await;
    expect_error(&report.outcome, ErrorKind::Permanent, "context_redacted");
    assert!(
        report
            .record
            .fields_read
            .iter()
            .any(|r| r.field == "refund_amount" && r.redacted)
    );
}

fn validated(amount: f64, needs_approval: bool) -> BTreeMap<String, Value> {
    BTreeMap::from([(
        "validate_refund_request".to_owned(),
        json!({ "order_id": "ord_5521", "amount": amount, "currency": "EUR", "reason": "damaged", "needs_approval": needs_approval }),
    )])
}

async fn approve(amount: f64, on_exceed: &str) -> Outcome {
    let attempt = attempt(
        "get_manager_approval",
        json!({ "auto_approve_limit": 500.0, "on_exceed": on_exceed }),
        grants(
            &[],
            &["validate_refund_request"],
            Classification::Confidential,
        ),
        refund_data(amount, validated(amount, amount > 100.0)),
    );
    run("get_manager_approval", attempt).await.outcome
}

#[tokio::test]
async fn approval_is_automatic_under_the_limit_and_refused_or_pending_above() {
    assert_eq!(result(&approve(150.0, "reject").await)["approved"], true);
    expect_error(
        &approve(800.0, "reject").await,
        ErrorKind::Permanent,
        "approval_denied",
    );
    let pending = approve(800.0, "pending").await;
    expect_error(&pending, ErrorKind::Retryable, "approval_pending");
    assert!(matches!(
        pending,
        Outcome::StepError {
            retry_after_ms: Some(60_000),
            ..
        }
    ));
}

#[tokio::test]
async fn execute_refund_is_idempotent_per_task_and_audits_the_refund() {
    let mut upstream = validated(150.0, true);
    upstream.insert(
        "get_manager_approval".into(),
        json!({ "approved": true, "approver": "policy:auto_approve_limit", "amount": 150.0 }),
    );
    let data = refund_data(150.0, upstream);
    let deps = ["validate_refund_request", "get_manager_approval"];
    let first = run(
        "execute_refund",
        attempt(
            "execute_refund",
            json!({}),
            grants(&[], &deps, Classification::Confidential),
            data.clone(),
        ),
    )
    .await;
    let second = run(
        "execute_refund",
        attempt(
            "execute_refund",
            json!({}),
            grants(&[], &deps, Classification::Confidential),
            data,
        ),
    )
    .await;
    let refund_id = result(&first.outcome)["refund_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(refund_id.starts_with("rf_"), "{refund_id}");
    assert_eq!(result(&second.outcome)["refund_id"], refund_id.as_str());
    assert_eq!(result(&first.outcome)["amount"], 150.0);
    let event = &first.record.audit_events[0];
    assert_eq!(
        (event.action.as_str(), event.subject.as_str()),
        ("refund.executed", refund_id.as_str())
    );
    assert_eq!(event.metadata["amount"], 150.0);
}

fn executed() -> BTreeMap<String, Value> {
    BTreeMap::from([(
        "execute_refund".to_owned(),
        json!({ "refund_id": "rf_00aa11bb22cc33dd", "order_id": "ord_5521", "amount": 150.0, "currency": "EUR", "status": "executed" }),
    )])
}

fn notify_attempt(
    endpoint: String,
    allowed: &str,
    clearance: Classification,
) -> stepbox::sandbox::Attempt {
    let mut grants = grants(&["customer_email"], &["execute_refund"], clearance);
    grants
        .secrets
        .insert("NOTIFY_API_KEY".into(), SecretValue::new(NOTIFY_KEY));
    grants.origins.insert(Origin::parse(allowed).unwrap());
    attempt(
        "notify_customer",
        json!({ "endpoint": endpoint }),
        grants,
        refund_data(150.0, executed()),
    )
}

#[tokio::test]
async fn notify_reaches_an_allowed_server_with_the_secret_substituted_by_the_host() {
    let server = TestServer::start().await;
    let report = run(
        "notify_customer",
        notify_attempt(
            server.url("/notify"),
            &server.origin(),
            Classification::Confidential,
        ),
    )
    .await;
    assert_eq!(result(&report.outcome)["notified"], true);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/notify")
    );
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {NOTIFY_KEY}").as_str()
    );
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["to"], CUSTOMER_EMAIL);
    assert_eq!(body["refund_id"], "rf_00aa11bb22cc33dd");

    let call = &report.record.http_calls[0];
    assert_eq!((call.status, call.outcome.as_str()), (Some(200), "ok"));
    assert_eq!(call.secrets, vec!["NOTIFY_API_KEY".to_owned()]);
    let text = report.record.all_text();
    assert!(
        !text.contains(CUSTOMER_EMAIL),
        "email leaked into the record: {text}"
    );
    assert!(
        !text.contains(NOTIFY_KEY),
        "secret leaked into the record: {text}"
    );
}

#[tokio::test]
async fn notify_to_a_host_not_allowed_is_refused_before_any_byte_is_sent() {
    let server = TestServer::start().await;
    let report = run(
        "notify_customer",
        notify_attempt(
            server.url("/notify"),
            "https://notify.example.com",
            Classification::Confidential,
        ),
    )
    .await;
    expect_error(&report.outcome, ErrorKind::Permanent, "http_denied");
    assert!(server.seen().is_empty(), "the server must not be reached");
    assert_eq!(report.record.denials[0].target, server.origin());
}

#[tokio::test]
async fn a_redirect_to_an_origin_not_allowed_is_refused() {
    let server = TestServer::start().await;
    let elsewhere = TestServer::start().await;
    let url = server.url(&format!("/redirect?to={}", elsewhere.url("/notify")));
    let report = run(
        "notify_customer",
        notify_attempt(url, &server.origin(), Classification::Confidential),
    )
    .await;
    expect_error(&report.outcome, ErrorKind::Permanent, "http_denied");
    assert_eq!(server.seen().len(), 1);
    assert!(
        elsewhere.seen().is_empty(),
        "the redirect target must not be reached"
    );
}

#[tokio::test]
async fn an_unavailable_service_is_a_retryable_error() {
    let server = TestServer::start().await;
    let report = run(
        "notify_customer",
        notify_attempt(
            server.url("/unavailable"),
            &server.origin(),
            Classification::Confidential,
        ),
    )
    .await;
    expect_error(&report.outcome, ErrorKind::Retryable, "notify_unavailable");
}

#[tokio::test]
async fn notify_without_clearance_for_the_email_sends_nothing() {
    let server = TestServer::start().await;
    let report = run(
        "notify_customer",
        notify_attempt(
            server.url("/notify"),
            &server.origin(),
            Classification::Internal,
        ),
    )
    .await;
    expect_error(&report.outcome, ErrorKind::Permanent, "context_redacted");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_slow_service_hits_the_wall_clock_limit_not_the_cpu_limit() {
    let server = TestServer::start().await;
    let mut attempt = notify_attempt(
        server.url("/slow"),
        &server.origin(),
        Classification::Confidential,
    );
    attempt.limits = Limits {
        wall_time: Duration::from_millis(500),
        ..Limits::default()
    };
    let report = run("notify_customer", attempt).await;
    assert_eq!(
        report.outcome.containment(),
        Some(stepbox::sandbox::Containment::Timeout),
        "{:?}",
        report.outcome
    );
    assert!(report.duration_ms < 2_000, "took {} ms", report.duration_ms);
    assert_still_serving().await;
}

#[tokio::test]
async fn the_refund_workflow_runs_end_to_end_with_results_flowing_downstream() {
    let server = TestServer::start().await;
    let mut upstream = BTreeMap::new();

    let report = run(
        "validate_refund_request",
        attempt(
            "validate_refund_request",
            validate_config(),
            grants(VALIDATE_READS, &[], Classification::Confidential),
            refund_data(250.0, upstream.clone()),
        ),
    )
    .await;
    upstream.insert(
        "validate_refund_request".to_owned(),
        result(&report.outcome).clone(),
    );

    let report = run(
        "get_manager_approval",
        attempt(
            "get_manager_approval",
            json!({ "auto_approve_limit": 500.0, "on_exceed": "pending" }),
            grants(
                &[],
                &["validate_refund_request"],
                Classification::Confidential,
            ),
            refund_data(250.0, upstream.clone()),
        ),
    )
    .await;
    upstream.insert(
        "get_manager_approval".to_owned(),
        result(&report.outcome).clone(),
    );

    let report = run(
        "execute_refund",
        attempt(
            "execute_refund",
            json!({}),
            grants(
                &[],
                &["validate_refund_request", "get_manager_approval"],
                Classification::Confidential,
            ),
            refund_data(250.0, upstream.clone()),
        ),
    )
    .await;
    let refund = result(&report.outcome).clone();
    upstream.insert("execute_refund".to_owned(), refund.clone());

    let mut notify = notify_attempt(
        server.url("/notify"),
        &server.origin(),
        Classification::Confidential,
    );
    notify.data = refund_data(250.0, upstream);
    let report = run("notify_customer", notify).await;
    assert_eq!(result(&report.outcome)["refund_id"], refund["refund_id"]);
    let body: Value = serde_json::from_slice(&server.seen()[0].body).unwrap();
    assert_eq!(body["refund_id"], refund["refund_id"]);
    assert_eq!(body["amount"], 250.0);
}

#[tokio::test]
async fn an_upstream_result_cannot_smuggle_a_field_past_the_readers_clearance() {
    // validate_refund_request copies the (financial) amount into its result; an approval
    // step cleared only for internal data must not read it there either.
    let attempt = attempt(
        "get_manager_approval",
        json!({ "auto_approve_limit": 500.0, "on_exceed": "reject" }),
        grants(&[], &["validate_refund_request"], Classification::Internal),
        refund_data(150.0, validated(150.0, true)),
    );
    let report = run("get_manager_approval", attempt).await;
    expect_error(&report.outcome, ErrorKind::Permanent, "upstream_type");
    assert!(!report.record.all_text().contains("150"));
}
