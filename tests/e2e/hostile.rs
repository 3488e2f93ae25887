//! Every hostile step is contained with the expected outcome, and the sandbox keeps
//! serving afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stepbox::classify::Classification;
use stepbox::sandbox::{
    Capability, Containment, ErrorKind, Grants, Limits, Origin, Outcome, SecretValue,
};

use crate::support::*;

fn limited(name: &str, limits: Limits) -> stepbox::sandbox::Attempt {
    let mut attempt = attempt(name, json!({}), Grants::default(), Arc::default());
    attempt.limits = limits;
    attempt
}

async fn expect_contained(
    name: &str,
    limits: Limits,
    expected: Containment,
) -> stepbox::sandbox::AttemptReport {
    let report = run(name, limited(name, limits)).await;
    assert_eq!(
        report.outcome.containment(),
        Some(expected),
        "{name}: {:?}",
        report.outcome
    );
    assert_still_serving().await;
    report
}

#[tokio::test]
async fn an_infinite_loop_runs_out_of_cpu() {
    let limits = Limits {
        cpu: Duration::from_millis(200),
        ..Limits::default()
    };
    let report = expect_contained("hostile_infinite_loop", limits, Containment::OutOfCpu).await;
    assert!(report.duration_ms < 3_000, "took {} ms", report.duration_ms);
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    expect_contained("hostile_memory_bomb", limits, Containment::MemoryLimit).await;
}

#[tokio::test]
async fn unbounded_recursion_overflows_the_stack() {
    expect_contained(
        "hostile_deep_recursion",
        Limits::default(),
        Containment::StackOverflow,
    )
    .await;
}

#[tokio::test]
async fn growing_the_resource_table_without_end_hits_the_resource_limit() {
    let limits = Limits {
        resources: 200,
        ..Limits::default()
    };
    expect_contained("hostile_table_bomb", limits, Containment::ResourceLimit).await;
}

#[tokio::test]
async fn a_log_flood_is_capped_and_stopped_by_the_host_call_budget() {
    let limits = Limits {
        host_calls: 2_000,
        log_bytes: 16 << 10,
        ..Limits::default()
    };
    let report = expect_contained("hostile_log_flood", limits, Containment::HostCallLimit).await;
    let kept: usize = report.record.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 16 << 10, "kept {kept} bytes of logs");
    assert!(
        report.record.logs_dropped > 1_000,
        "dropped {}",
        report.record.logs_dropped
    );
    assert_eq!(report.record.host_calls, 2_000);
}

#[tokio::test]
async fn a_huge_output_is_refused() {
    let limits = Limits {
        output_bytes: 1 << 20,
        ..Limits::default()
    };
    expect_contained("hostile_huge_output", limits, Containment::OutputTooLarge).await;
}

#[tokio::test]
async fn malformed_output_is_refused() {
    expect_contained(
        "hostile_malformed_output",
        Limits::default(),
        Containment::InvalidOutput,
    )
    .await;
}

#[tokio::test]
async fn a_panic_is_a_trap_with_the_message_captured() {
    let report = expect_contained("hostile_panic", Limits::default(), Containment::Trap).await;
    let Outcome::Contained { detail, .. } = &report.outcome else {
        unreachable!()
    };
    assert!(detail.contains("panicked on purpose"), "{detail}");
    assert!(report.record.stderr.contains("panicked on purpose"));
}

#[tokio::test]
async fn reading_an_undeclared_field_is_refused_and_recorded() {
    let attempt = attempt(
        "hostile_undeclared_read",
        json!({}),
        grants(&["order_id"], &[], Classification::Restricted),
        refund_data(10.0, Default::default()),
    );
    let report = run("hostile_undeclared_read", attempt).await;
    assert!(
        matches!(&report.outcome, Outcome::StepError { kind: ErrorKind::Permanent, code, .. } if code == "context_undeclared"),
        "{:?}",
        report.outcome
    );
    let denial = &report.record.denials[0];
    assert_eq!(
        (denial.capability, denial.target.as_str()),
        (Capability::Context, "customer_ssn")
    );
    assert!(!report.record.all_text().contains("123-45-6789"));
}

#[tokio::test]
async fn asking_for_an_ungranted_secret_is_refused_and_recorded() {
    let mut grants = Grants::default();
    grants
        .secrets
        .insert("NOTIFY_API_KEY".into(), SecretValue::new(NOTIFY_KEY));
    let report = run(
        "hostile_ungranted_secret",
        attempt(
            "hostile_ungranted_secret",
            json!({}),
            grants,
            Arc::default(),
        ),
    )
    .await;
    assert!(
        matches!(&report.outcome, Outcome::StepError { code, .. } if code == "secret_not_granted"),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.record.denials[0].capability, Capability::Secrets);
    assert_eq!(report.record.denials[0].target, "PAYMENTS_DB_PASSWORD");
    assert!(report.record.secrets_used.is_empty());
}

#[tokio::test]
async fn a_request_to_a_host_not_allowed_never_leaves_the_host() {
    let server = TestServer::start().await;
    let mut grants = Grants::default();
    grants
        .origins
        .insert(Origin::parse("https://notify.example.com").unwrap());
    let attempt = attempt(
        "hostile_forbidden_host",
        json!({ "url": server.url("/exfiltrate") }),
        grants,
        Arc::default(),
    );
    let report = run("hostile_forbidden_host", attempt).await;
    assert!(
        matches!(&report.outcome, Outcome::StepError { code, .. } if code == "http_denied"),
        "{:?}",
        report.outcome
    );
    assert!(server.seen().is_empty());
    assert_eq!(report.record.denials[0].capability, Capability::Http);
    assert_eq!(report.record.http_calls[0].outcome, "denied");
}

#[tokio::test]
async fn a_step_cannot_get_a_secret_or_pii_value_into_its_logs() {
    let server = TestServer::start().await;
    let mut grants = grants(&["customer_email"], &[], Classification::Restricted);
    grants
        .secrets
        .insert("NOTIFY_API_KEY".into(), SecretValue::new(NOTIFY_KEY));
    grants
        .origins
        .insert(Origin::parse(&server.origin()).unwrap());
    let config = json!({ "secret": "NOTIFY_API_KEY", "echo_url": server.url("/echo") });
    let report = run(
        "hostile_leak_secret_and_pii",
        attempt(
            "hostile_leak_secret_and_pii",
            config,
            grants,
            refund_data(10.0, Default::default()),
        ),
    )
    .await;
    assert!(report.outcome.is_success(), "{:?}", report.outcome);

    // The host did substitute the secret on the way out (the echo server saw it)…
    assert_eq!(
        server.seen()[0].headers["authorization"],
        format!("Bearer {NOTIFY_KEY}").as_str()
    );
    // …and nothing the step could write holds the secret or the email.
    let text = report.record.all_text();
    assert!(!text.contains(NOTIFY_KEY), "secret leaked: {text}");
    assert!(
        !text.to_lowercase().contains(CUSTOMER_EMAIL),
        "email leaked: {text}"
    );
    assert!(
        !report.record.logs.is_empty()
            && !report.record.stdout.is_empty()
            && !report.record.stderr.is_empty()
    );
}

#[tokio::test]
async fn a_spinning_step_does_not_stop_the_host_serving_others() {
    let spinner = tokio::spawn(async {
        let limits = Limits {
            cpu: Duration::from_secs(2),
            // Far above the CPU limit, so the CPU limit is what stops it even on a busy
            // machine where the spinner gets only part of a core.
            wall_time: Duration::from_secs(10),
            ..Limits::default()
        };
        run(
            "hostile_infinite_loop",
            limited("hostile_infinite_loop", limits),
        )
        .await
    });
    // Let the spinner get going, then run quick steps on the same runtime meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for _ in 0..10 {
        assert_still_serving().await;
    }
    let quick = started.elapsed();
    assert!(
        !spinner.is_finished(),
        "the spinner should still be running"
    );
    assert!(
        quick < Duration::from_millis(1_500),
        "ten quick steps took {quick:?}"
    );
    let report = spinner.await.unwrap();
    assert_eq!(report.outcome.containment(), Some(Containment::OutOfCpu));
}

#[tokio::test]
async fn growing_a_core_table_without_end_hits_the_table_limit() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../example-steps/wat/hostile_core_table_bomb.wat");
    let wasm = wat::parse_file(&path).expect("the WAT component parses");
    let module = sandbox()
        .load(&wasm)
        .expect("the table bomb is a valid step component");
    let mut attempt = limited(
        "hostile_core_table_bomb",
        Limits {
            table_elements: 10_000,
            ..Limits::default()
        },
    );
    attempt.limits.cpu = Duration::from_secs(5);
    let report = sandbox().run(&module, attempt).await;
    assert_eq!(
        report.outcome.containment(),
        Some(Containment::TableLimit),
        "{:?}",
        report.outcome
    );
    assert_still_serving().await;
}

#[tokio::test]
async fn overflowing_the_shadow_stack_in_linear_memory_is_a_stack_overflow() {
    expect_contained(
        "hostile_shadow_stack_overflow",
        Limits::default(),
        Containment::StackOverflow,
    )
    .await;
}
