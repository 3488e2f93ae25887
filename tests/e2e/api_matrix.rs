//! The authorization matrix: every endpoint, as every role, in its own namespace and in
//! another one, against the expected decision. An operation is allowed when the answer
//! is a success or a conflict about the state of the thing (the gate was passed); it is
//! denied when the answer is a 403 or a 404 hiding a task. Any other answer, and any
//! allow the table does not list, fails the test.

use serde_json::Value;

use crate::api_tasks::{Api, both_apis, refund_body, token};
use crate::support::component;

const ROLES: [&str; 6] = [
    "ns_admin",
    "customer_success_agent",
    "team_lead",
    "auditor",
    "payments_agent",
    "nobody",
];

/// One request: method, path, content type and body.
struct Call {
    method: &'static str,
    path: String,
    media: Option<&'static str>,
    body: Vec<u8>,
}

fn call(method: &'static str, path: String) -> Call {
    Call {
        method,
        path,
        media: None,
        body: Vec::new(),
    }
}

async fn send(api: &Api, token: &str, call: Call) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{}", api.base, call.path);
    let mut request = match call.method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        _ => client.put(url),
    }
    .bearer_auth(token);
    if let Some(media) = call.media {
        request = request.header("content-type", media).body(call.body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A fresh task of `customer_success` created by `user_owner` (an agent), so that each
/// row acts on a task it did not create.
async fn foreign_task(api: &Api) -> String {
    let owner = token(api, "user_owner", &["customer_success_agent"], &[], true, 0);
    let body = refund_body().to_string();
    let call = Call {
        method: "POST",
        path: "/v1/tasks".into(),
        media: Some("application/json"),
        body: body.into_bytes(),
    };
    let (status, task) = send(api, &owner, call).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().unwrap().to_owned()
}

fn workflow(version: &str) -> Vec<u8> {
    format!(
        "namespace: customer_success\nname: matrix\nversion: {version}\n\
         input_schema: {{ type: object, properties: {{}} }}\n\
         steps: [{{ name: only, module: execute_refund@0.1.0 }}]\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_as_every_role_is_decided_as_the_policy_says() {
    both_apis(|api| async move {
        let readers = ["ns_admin", "customer_success_agent", "team_lead", "auditor"];
        let rows: Vec<(&str, Vec<&str>)> = vec![
            ("create refund (sensitive)", vec!["customer_success_agent"]),
            ("list others' tasks", readers.to_vec()),
            ("get a task", readers.to_vec()),
            ("get a task's steps", readers.to_vec()),
            ("cancel another's task", vec!["ns_admin"]),
            ("retry another's step", vec!["ns_admin"]),
            ("list modules", readers.to_vec()),
            ("get a module", readers.to_vec()),
            ("upload a module", vec!["ns_admin"]),
            ("list workflows", readers.to_vec()),
            ("get a workflow", readers.to_vec()),
            ("apply a workflow", vec!["ns_admin"]),
            ("list modules of payments", vec!["payments_agent"]),
            ("list tasks of payments by others", vec!["payments_agent"]),
            ("read metrics", vec![]),
            ("query the audit trail", vec!["auditor"]),
            ("audit a task", vec!["auditor"]),
            ("export the audit trail", vec!["auditor"]),
            ("verify the audit chain", vec!["auditor"]),
        ];
        let noop = component("noop");
        let mut unexpected = Vec::new();
        for (n, role) in ROLES.iter().enumerate() {
            let roles: Vec<&str> = if *role == "nobody" {
                vec![]
            } else {
                vec![role]
            };
            let caller = token(&api, &format!("user_{role}"), &roles, &[], true, 0);
            for (row, allowed) in &rows {
                let call = match *row {
                    "create refund (sensitive)" => Call {
                        method: "POST",
                        path: "/v1/tasks".into(),
                        media: Some("application/json"),
                        body: refund_body().to_string().into_bytes(),
                    },
                    "list others' tasks" => call(
                        "GET",
                        "/v1/tasks?namespace=customer_success&created_by=user_owner".into(),
                    ),
                    "get a task" => call("GET", format!("/v1/tasks/{}", foreign_task(&api).await)),
                    "get a task's steps" => call(
                        "GET",
                        format!("/v1/tasks/{}/steps", foreign_task(&api).await),
                    ),
                    "cancel another's task" => call(
                        "POST",
                        format!("/v1/tasks/{}/cancel", foreign_task(&api).await),
                    ),
                    "retry another's step" => call(
                        "POST",
                        format!(
                            "/v1/tasks/{}/steps/notify_customer/retry",
                            foreign_task(&api).await
                        ),
                    ),
                    "list modules" => call("GET", "/v1/modules?namespace=customer_success".into()),
                    "get a module" => call(
                        "GET",
                        "/v1/modules/customer_success/execute_refund/0.1.0".into(),
                    ),
                    "upload a module" => Call {
                        method: "PUT",
                        path: format!("/v1/modules/customer_success/noop/0.{n}.0"),
                        media: Some("application/wasm"),
                        body: noop.clone(),
                    },
                    "list workflows" => {
                        call("GET", "/v1/workflows?namespace=customer_success".into())
                    }
                    "get a workflow" => call(
                        "GET",
                        "/v1/workflows/customer_success/process_refund".into(),
                    ),
                    "apply a workflow" => Call {
                        method: "POST",
                        path: "/v1/workflows".into(),
                        media: Some("application/yaml"),
                        body: workflow(&format!("1.{n}.0")),
                    },
                    "list modules of payments" => {
                        call("GET", "/v1/modules?namespace=payments".into())
                    }
                    "list tasks of payments by others" => call(
                        "GET",
                        "/v1/tasks?namespace=payments&created_by=user_owner".into(),
                    ),
                    "read metrics" => call("GET", "/metrics".into()),
                    "query the audit trail" => {
                        call("GET", "/v1/audit/trail?user_id=user_owner".into())
                    }
                    "audit a task" => call(
                        "GET",
                        format!("/v1/audit/tasks/{}", foreign_task(&api).await),
                    ),
                    "export the audit trail" => call(
                        "GET",
                        "/v1/audit/export?format=csv&action=task.created".into(),
                    ),
                    "verify the audit chain" => call("GET", "/v1/audit/verify".into()),
                    other => unreachable!("{other}"),
                };
                let (status, body) = send(&api, &caller, call).await;
                let allow = (200..300).contains(&status) || status == 409;
                let deny = status == 403 || (status == 404 && body["code"] == "not_found");
                assert!(allow || deny, "{role} / {row}: {status} {body}");
                if allow != allowed.contains(role) {
                    unexpected.push(format!("{role} / {row}: {status} {}", body["code"]));
                }
            }
        }
        assert!(
            unexpected.is_empty(),
            "decisions not as the table says:\n{}",
            unexpected.join("\n")
        );
    })
    .await;
}
