//! The HTTP capability's defences, tried one by one with a step that sends whatever its
//! config says: a secret may reach an allowed origin, but never come back readable, never
//! move to another origin, and never make the host allocate without bound.

use serde_json::{Value, json};
use stepbox::sandbox::{AttemptReport, Grants, Origin, Outcome, SecretValue};

use crate::support::*;

async fn probe(server: &TestServer, config: Value) -> AttemptReport {
    let mut grants = Grants::default();
    grants
        .secrets
        .insert("NOTIFY_API_KEY".into(), SecretValue::new(NOTIFY_KEY));
    grants
        .origins
        .insert(Origin::parse(&server.origin()).unwrap());
    run(
        "hostile_http_probe",
        attempt("hostile_http_probe", config, grants, Default::default()),
    )
    .await
}

fn code(report: &AttemptReport) -> String {
    match &report.outcome {
        Outcome::StepError { code, .. } => code.clone(),
        other => panic!("expected a step error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_echoed_secret_comes_back_masked() {
    let server = TestServer::start().await;
    let config = json!({ "method": "POST", "url": server.url("/echo"), "secret": "NOTIFY_API_KEY",
        "headers": [["authorization", "Bearer {secret}"]], "body": "key={secret}" });
    let report = probe(&server, config).await;
    let Outcome::Success { result } = &report.outcome else {
        panic!("{:?}", report.outcome)
    };
    assert_eq!(
        server.seen()[0].body,
        format!("key={NOTIFY_KEY}").as_bytes()
    );
    let body = result["body"].as_str().unwrap();
    assert!(!body.contains(NOTIFY_KEY), "{body}");
    assert!(body.contains("[REDACTED]"), "{body}");
}

#[tokio::test]
async fn asking_for_a_compressed_or_partial_echo_is_refused() {
    let server = TestServer::start().await;
    for header in ["accept-encoding", "range", "te"] {
        let config =
            json!({ "method": "GET", "url": server.url("/echo"), "headers": [[header, "gzip"]] });
        assert_eq!(
            code(&probe(&server, config).await),
            "http_invalid",
            "{header}"
        );
    }
    assert!(server.seen().is_empty());
    // A service that encodes anyway, or answers with a byte range, is not believed either.
    for path in ["/gzip", "/partial"] {
        let config = json!({ "method": "POST", "url": server.url(path), "secret": "NOTIFY_API_KEY", "body": "{secret}" });
        let report = probe(&server, config).await;
        assert_eq!(code(&report), "http_transport", "{path}");
        assert!(!report.record.all_text().contains(NOTIFY_KEY));
    }
    assert_eq!(server.seen()[0].headers["accept-encoding"], "identity");
}

#[tokio::test]
async fn a_307_redirect_cannot_carry_a_secret_in_the_body_to_another_origin() {
    let server = TestServer::start().await;
    let elsewhere = TestServer::start().await;
    let mut grants = Grants::default();
    grants
        .secrets
        .insert("NOTIFY_API_KEY".into(), SecretValue::new(NOTIFY_KEY));
    grants
        .origins
        .insert(Origin::parse(&server.origin()).unwrap());
    grants
        .origins
        .insert(Origin::parse(&elsewhere.origin()).unwrap());
    let url = server.url(&format!("/redirect307?to={}", elsewhere.url("/echo")));
    let config =
        json!({ "method": "POST", "url": url, "secret": "NOTIFY_API_KEY", "body": "{secret}" });
    let report = run(
        "hostile_http_probe",
        attempt("hostile_http_probe", config, grants, Default::default()),
    )
    .await;
    assert_eq!(code(&report), "http_denied");
    assert!(
        elsewhere.seen().is_empty(),
        "the secret must not reach the second origin"
    );
}

#[tokio::test]
async fn placeholders_cannot_expand_a_request_past_its_limits() {
    let server = TestServer::start().await;
    // 51-byte placeholders expand to a longer value: 1 MiB of them would pass the raw
    // check and must still be refused, before the host builds the expanded body.
    let mut grants = Grants::default();
    grants
        .secrets
        .insert("BIG".into(), SecretValue::new("x".repeat(4096)));
    grants
        .origins
        .insert(Origin::parse(&server.origin()).unwrap());
    let config = json!({ "method": "POST", "url": server.url("/echo"), "secret": "BIG", "body": "{secret}", "repeat": 10_000 });
    let report = run(
        "hostile_http_probe",
        attempt(
            "hostile_http_probe",
            config,
            grants.clone(),
            Default::default(),
        ),
    )
    .await;
    assert_eq!(code(&report), "http_invalid");
    let config = json!({ "method": "GET", "url": server.url("/echo"), "secret": "BIG", "headers": [["x-key", "{secret}"]], "repeat": 3 });
    let report = run(
        "hostile_http_probe",
        attempt("hostile_http_probe", config, grants, Default::default()),
    )
    .await;
    assert_eq!(code(&report), "http_invalid");
    assert!(server.seen().is_empty());
}
