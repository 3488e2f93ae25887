//! `/v1/tasks` on a real socket with real tokens, on both databases: the refund story
//! (an agent with the workflow's permission and a fresh MFA claim creates a task and sees
//! its PII redacted), and every refusal a 403 problem with a stable code and an audit
//! event, never a task, never a PII value in the answer.

use serde_json::{Value, json};
use stepbox::api::{self, ApiState};
use stepbox::auth::{DEV_AUDIENCE, DEV_ISSUER, DevKey, DevTokenRequest, Verifier};
use stepbox::engine::Engine;
use stepbox::policy::{AccessPolicy, NamespacePolicy};
use stepbox::store::{AuditFilter, Store};

use crate::engine::{NS, Setup, both, drain, setup};
use crate::support::{CUSTOMER_EMAIL, TestServer};

/// The manual clock's time in `engine::setup`, in seconds.
const NOW: i64 = 1_764_000_000;

struct Api {
    base: String,
    engine: Engine,
    store: Store,
    key: DevKey,
    _notify: TestServer,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn access() -> AccessPolicy {
    serde_json::from_value(json!({ "roles": {
        "customer_success_agent": ["customer_success:read", "customer_success.process_refund:execute"],
        "team_lead": ["customer_success:execute", "customer_success:read"],
        "auditor": ["customer_success:read"],
        "payments_agent": ["payments:read", "payments:execute"]
    }}))
    .unwrap()
}

async fn start(url: &stepbox::store::DatabaseUrl) -> Api {
    let notify = TestServer::start().await;
    let Setup { engine, store, .. } = setup(url, &notify, "/notify", 3).await;
    let policy = NamespacePolicy {
        hosts: [notify.origin()].into(),
        secrets: ["NOTIFY_API_KEY".to_owned()].into(),
        sensitive_workflows: ["process_refund".to_owned()].into(),
        mfa_max_age_secs: Some(300),
        ..NamespacePolicy::default()
    };
    engine.set_policy(NS, &policy, "user:admin").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let verifier = Verifier::new(key.key_set(), DEV_ISSUER, DEV_AUDIENCE);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = ApiState::new(engine.clone(), verifier).with_access(access());
    tokio::spawn(api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Api {
        base,
        engine,
        store,
        key,
        _notify: notify,
        _dir: dir,
        stop: Some(stop),
    }
}

/// A token for `sub` with `roles` and `permissions`, issued `age` seconds ago (its MFA
/// claim, if any, as old).
fn token(
    api: &Api,
    sub: &str,
    roles: &[&str],
    permissions: &[&str],
    mfa: bool,
    age: i64,
) -> String {
    let request = DevTokenRequest {
        sub: sub.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        mfa,
        ttl_secs: 3600,
        ..DevTokenRequest::default()
    };
    api.key.mint(&request, NOW - age).unwrap()
}

fn refund_body() -> Value {
    json!({
        "namespace": NS, "name": "process_refund",
        "context": {
            "customer_id": "cus_8812", "customer_email": CUSTOMER_EMAIL, "order_id": "ord_5521",
            "refund_amount": 150.0, "currency": "EUR", "reason": "item arrived damaged"
        },
        "reason": "customer called", "tags": ["phone"]
    })
}

async fn post(api: &Api, token: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/tasks", api.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn get(api: &Api, token: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// The status and the JSON body.
async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

async fn events(store: &Store, action: &str) -> Vec<(String, Value)> {
    let mut tx = store.begin_read().await.unwrap();
    let rows = tx
        .query_audit(
            &AuditFilter {
                action: Some(action.into()),
                ..AuditFilter::default()
            },
            100,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    rows.into_iter()
        .map(|e| (e.actor, serde_json::from_str(&e.details).unwrap()))
        .collect()
}

async fn task_count(store: &Store) -> i64 {
    let mut tx = store.begin_read().await.unwrap();
    let counts = tx.count_tasks(NS).await.unwrap();
    tx.commit().await.unwrap();
    counts.iter().map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_with_the_permission_and_fresh_mfa_creates_a_refund_and_sees_pii_redacted() {
    both(|url| async move {
        let api = start(&url).await;
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 60);
        let (status, task) = post(&api, &agent, refund_body().to_string()).await;
        assert_eq!(status, 201, "{task}");
        assert!(!task.to_string().contains(CUSTOMER_EMAIL), "{task}");
        assert_eq!(task["context"]["customer_email"], "[REDACTED]");
        assert_eq!(task["context"]["customer_id"], "[REDACTED]");
        assert_eq!(task["context"]["order_id"], "ord_5521");
        assert_eq!(task["status"], "pending");
        let security = &task["security_context"];
        assert_eq!(security["created_by"], "user_123");
        assert_eq!(security["role"], "customer_success_agent");
        assert_eq!(security["data_classification"], "restricted");
        assert_eq!(security["contains_pii"], true);
        let id = task["id"].as_str().unwrap().to_owned();
        assert_eq!(security["audit_trail_id"], format!("task/{id}"));
        assert!(security["audit_seq"].as_i64().unwrap() > 0);

        // The role's permissions went into the snapshot the workers re-check: the
        // permission-gated step runs, and the task completes.
        drain(&api.engine).await;
        let (status, done) = get(&api, &agent, &format!("/v1/tasks/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(done["status"], "complete", "{done}");
        assert_eq!(done["context"]["customer_email"], "[REDACTED]");

        // A reader of the namespace sees the task, redacted; one holding pii:read sees
        // the email; a reader of another namespace is refused, and that is audited.
        let auditor = token(&api, "user_900", &["auditor"], &[], false, 0);
        let (status, seen) = get(&api, &auditor, &format!("/v1/tasks/{id}")).await;
        assert_eq!(
            (status, &seen["context"]["customer_email"]),
            (200, &json!("[REDACTED]"))
        );
        let privileged = token(
            &api,
            "user_901",
            &["auditor"],
            &["customer_success:pii:read"],
            false,
            0,
        );
        let (status, seen) = get(&api, &privileged, &format!("/v1/tasks/{id}")).await;
        assert_eq!(
            (status, &seen["context"]["customer_email"]),
            (200, &json!(CUSTOMER_EMAIL))
        );
        let stranger = token(&api, "user_777", &["payments_agent"], &[], true, 0);
        // Answered as no such task (its existence is not confirmed), and audited.
        let (status, refused) = get(&api, &stranger, &format!("/v1/tasks/{id}")).await;
        assert_eq!((status, refused["code"].as_str()), (404, Some("not_found")));
        assert!(!refused.to_string().contains(CUSTOMER_EMAIL));
        let denied = events(&api.store, "task.read_denied").await;
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0].0, "user:user_777");

        let (status, missing) = get(&api, &agent, "/v1/tasks/task_00ff").await;
        assert_eq!((status, missing["code"].as_str()), (404, Some("not_found")));
        let (status, _) = get(&api, &agent, "/v1/tasks/..%2Fetc").await;
        assert_eq!(status, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creation_is_refused_without_the_grant_or_fresh_mfa_and_each_refusal_is_audited() {
    both(|url| async move {
        let api = start(&url).await;
        let body = refund_body().to_string();
        let cases = [
            // (who, roles, permissions, mfa, token age) → code
            (
                "user_1",
                vec!["customer_success_agent"],
                vec![],
                false,
                0,
                "mfa_required",
            ),
            (
                "user_2",
                vec!["customer_success_agent"],
                vec![],
                true,
                600,
                "mfa_too_old",
            ),
            (
                "user_3",
                vec!["team_lead"],
                vec![],
                true,
                0,
                "explicit_permission_required",
            ),
            (
                "user_4",
                vec!["auditor"],
                vec![],
                true,
                0,
                "permission_denied",
            ),
            (
                "user_5",
                vec![],
                vec!["payments.process_refund:execute"],
                true,
                0,
                "permission_denied",
            ),
        ];
        for (sub, roles, permissions, mfa, age, code) in &cases {
            let token = token(&api, sub, roles, permissions, *mfa, *age);
            let (status, problem) = post(&api, &token, body.clone()).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (403, Some(*code)),
                "{sub}: {problem}"
            );
            assert!(!problem.to_string().contains(CUSTOMER_EMAIL));
        }
        // An unknown namespace is refused like a forbidden one, not found.
        let lead = token(&api, "user_6", &["team_lead"], &[], true, 0);
        let (status, problem) = post(
            &api,
            &lead,
            json!({ "namespace": "secret_ns", "name": "x", "context": {} }).to_string(),
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("permission_denied"))
        );

        // The namespace's policy as it is now counts: a revoked permission is not held,
        // and a suspended subject may do nothing there.
        let mut policy = api.engine.namespace_policy(NS).await.unwrap();
        policy
            .revoked_permissions
            .insert("customer_success.process_refund:execute".into());
        policy.suspended_subjects.insert("user_8".into());
        api.engine
            .set_policy(NS, &policy, "user:admin")
            .await
            .unwrap();
        for (sub, code) in [("user_7", "permission_denied"), ("user_8", "suspended")] {
            let token = token(&api, sub, &["customer_success_agent"], &[], true, 0);
            let (status, problem) = post(&api, &token, body.clone()).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (403, Some(code)),
                "{sub}: {problem}"
            );
        }

        assert_eq!(task_count(&api.store).await, 0, "no refusal created a task");
        let denied = events(&api.store, "task.denied").await;
        let got: Vec<(&str, &str)> = denied
            .iter()
            .map(|(actor, details)| (actor.as_str(), details["code"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("user:user_1", "mfa_required"),
                ("user:user_2", "mfa_too_old"),
                ("user:user_3", "explicit_permission_required"),
                ("user:user_4", "permission_denied"),
                ("user:user_5", "permission_denied"),
                ("user:user_6", "permission_denied"),
                ("user:user_7", "permission_denied"),
                ("user:user_8", "suspended"),
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_request_gets_a_precise_problem_that_echoes_no_value() {
    both(|url| async move {
        let api = start(&url).await;
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
        let mut unknown = refund_body();
        unknown["priority"] = json!("high");
        let mut wrong_type = refund_body();
        wrong_type["name"] = json!(CUSTOMER_EMAIL.len());
        wrong_type["reason"] = json!({ "email": CUSTOMER_EMAIL });
        let mut bad_name = refund_body();
        bad_name["namespace"] = json!("../customer_success");
        let mut bad_context = refund_body();
        bad_context["context"]["refund_amount"] = json!(CUSTOMER_EMAIL);
        let cases = [
            (
                format!("{{\"namespace\": \"{CUSTOMER_EMAIL}\""),
                400,
                "malformed_json",
            ),
            (unknown.to_string(), 422, "invalid_body"),
            (wrong_type.to_string(), 422, "invalid_body"),
            (bad_name.to_string(), 422, "invalid"),
            (bad_context.to_string(), 422, "invalid"),
        ];
        for (body, status, code) in cases {
            let (got, problem) = post(&api, &agent, body).await;
            assert_eq!(
                (got, problem["code"].as_str()),
                (status, Some(code)),
                "{problem}"
            );
            assert!(!problem.to_string().contains(CUSTOMER_EMAIL), "{problem}");
        }
        let (_, problem) = post(&api, &agent, unknown.to_string()).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("priority"),
            "{problem}"
        );
        assert_eq!(task_count(&api.store).await, 0);
    })
    .await;
}
