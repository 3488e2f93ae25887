//! `/v1/openapi.json` describes the API that answers: it is served without a token, and
//! every operation it documents is routed (no `no_route`, no 405) on a real server.
//! `/metrics` counts what was answered, for holders of `metrics:read` only.

use serde_json::Value;

use crate::api_tasks::{answer, start, token};
use crate::engine::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_operation_is_served() {
    let db = TestDb::sqlite();
    let api = start(&db.url).await;
    let response = reqwest::get(format!("{}/v1/openapi.json", api.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "served without a token");
    let (_, doc) = answer(response).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let admin = token(&api, "user_1", &["ns_admin"], &[], true, 0);
    let client = reqwest::Client::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{namespace}", "customer_success")
            .replace("{name}", "process_refund")
            .replace("{version}", "1.0.0")
            .replace("{id}", "task_00ff")
            .replace("{step}", "notify_customer");
        for method in ["get", "post", "put"] {
            let Some(operation) = item.get(method) else {
                continue;
            };
            operations += 1;
            let needs_namespace = operation["parameters"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p["$ref"] == "#/components/parameters/namespace")
            });
            let url = format!(
                "{}{concrete}{}",
                api.base,
                if needs_namespace {
                    "?namespace=customer_success"
                } else {
                    ""
                }
            );
            let request = match method {
                "get" => client.get(&url),
                "post" => client.post(&url),
                _ => client.put(&url),
            };
            let response = request.bearer_auth(&admin).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value =
                serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
            assert_ne!(status, 405, "{method} {path}");
            assert_ne!(body["code"], "no_route", "{method} {path}");
        }
    }
    assert_eq!(operations, 28, "the document covers every route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_answers_and_are_shown_only_with_the_permission() {
    let db = TestDb::sqlite();
    let api = start(&db.url).await;
    let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
    let scraper = token(&api, "prometheus", &[], &["metrics:read"], false, 0);
    let client = reqwest::Client::new();
    let metrics = format!("{}/metrics", api.base);
    let (status, problem) = answer(
        client
            .get(&metrics)
            .bearer_auth(&agent)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("permission_denied"))
    );
    let anonymous = client.get(&metrics).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let text = client
        .get(&metrics)
        .bearer_auth(&scraper)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"stepbox_http_requests_total{method="GET",status="403"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"stepbox_http_requests_total{method="GET",status="401"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("stepbox_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(!text.contains("user_123"), "no subject in labels");
    let denied = crate::api_tasks::events(&api.store, "metrics.denied").await;
    assert_eq!(denied.len(), 1);
}
