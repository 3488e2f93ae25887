//! `/v1/tasks` on a real socket with real tokens, on both databases: the refund story
//! (an agent with the workflow's permission and a fresh MFA claim creates a task and sees
//! its PII redacted), and every refusal a 403 problem with a stable code and an audit
//! event, never a task, never a PII value in the answer.

use serde_json::{Value, json};
use stepbox::api::{self, ApiState, RateLimits};
use stepbox::audit::AuditSigner;
use stepbox::auth::{DEV_AUDIENCE, DEV_ISSUER, DevKey, DevTokenRequest, Verifier};
use stepbox::engine::{Engine, ManualClock};
use stepbox::policy::{AccessPolicy, NamespacePolicy};
use stepbox::store::{AuditFilter, Store};

use crate::engine::{NS, Setup, both, drain, setup};
use crate::support::{CUSTOMER_EMAIL, TestServer};

/// The manual clock's time in `engine::setup`, in seconds.
const NOW: i64 = 1_764_000_000;

pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) engine: Engine,
    pub(crate) store: Store,
    pub(crate) clock: ManualClock,
    key: DevKey,
    pub(crate) notify: TestServer,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// What the server routes, for a second server over the same API.
    state: ApiState,
}

impl Api {
    /// Stop serving (a graceful shutdown, as Ctrl-C does) and wait until `serve` returns.
    pub(crate) async fn shut_down(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.served.take().expect("served once").await.unwrap()
    }
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
        "ns_admin": ["customer_success:manage", "customer_success:read"],
        "customer_success_agent": ["customer_success:read", "customer_success.process_refund:execute"],
        "team_lead": ["customer_success:execute", "customer_success:read"],
        "auditor": ["customer_success:read", "audit:read"],
        "compliance_officer": ["audit:read", "compliance:read", "gdpr:manage"],
        "payments_agent": ["payments:read", "payments:execute"]
    }}))
    .unwrap()
}

/// The API over the refund setup of `engine::setup` (its last step calls `/switch`, two
/// attempts), with the namespace's refund workflow sensitive. Roles: see [`access`].
pub(crate) async fn start(url: &stepbox::store::DatabaseUrl) -> Api {
    start_limited(url, RateLimits::default()).await
}

/// [`start`] with `limits`.
pub(crate) async fn start_limited(url: &stepbox::store::DatabaseUrl, limits: RateLimits) -> Api {
    let notify = TestServer::start().await;
    let Setup {
        engine,
        store,
        clock,
    } = setup(url, &notify, "/switch", 2).await;
    let policy = NamespacePolicy {
        hosts: [notify.origin()].into(),
        secrets: ["NOTIFY_API_KEY".to_owned()].into(),
        sensitive_workflows: ["process_refund".to_owned()].into(),
        mfa_max_age_secs: Some(300),
        ..NamespacePolicy::default()
    };
    engine.set_policy(NS, &policy, "user:admin").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let signer = AuditSigner::load_or_create(&dir.path().join("audit-signing.pem")).unwrap();
    let engine = engine.with_audit_signer(std::sync::Arc::new(signer));
    assert!(
        engine.audit_signer().is_some(),
        "the engine was shared before its signer was set"
    );
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let verifier = Verifier::new(key.key_set(), DEV_ISSUER, DEV_AUDIENCE);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = ApiState::new(engine.clone(), verifier)
        .with_access(access())
        .with_rate_limits(limits);
    let served = tokio::spawn(api::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Api {
        base,
        engine,
        store,
        clock,
        key,
        notify,
        _dir: dir,
        stop: Some(stop),
        served: Some(served),
        state,
    }
}

/// A token for `sub` with `roles` and `permissions`, issued `age` seconds ago (its MFA
/// claim, if any, as old).
pub(crate) fn token(
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

pub(crate) fn refund_body() -> Value {
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

pub(crate) async fn get(api: &Api, token: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// The status and the JSON body.
pub(crate) async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

pub(crate) async fn events(store: &Store, action: &str) -> Vec<(String, Value)> {
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

        // The caller's correlation id is the task.created event's.
        let response = reqwest::Client::new()
            .post(format!("{}/v1/tasks", api.base))
            .bearer_auth(&agent)
            .header("content-type", "application/json")
            .header("x-request-id", "req-support-4711")
            .body(refund_body().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-request-id"], "req-support-4711");
        let (_, second) = answer(response).await;
        let mut tx = api.store.begin_read().await.unwrap();
        let created = tx
            .query_audit(
                &AuditFilter {
                    action: Some("task.created".into()),
                    ..AuditFilter::default()
                },
                100,
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let event = created
            .iter()
            .find(|e| e.resource == format!("task/{}", second["id"].as_str().unwrap()))
            .unwrap();
        assert_eq!(event.correlation_id.as_deref(), Some("req-support-4711"));

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

/// `POST path` with an empty body.
pub(crate) async fn post_empty(api: &Api, token: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    answer(response).await
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_are_listed_a_page_at_a_time_and_readers_without_the_grant_see_only_their_own() {
    both(|url| async move {
        let api = start(&url).await;
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
        let colleague = token(&api, "user_124", &["customer_success_agent"], &[], true, 0);
        // Holds only the workflow's permission: may create tasks, may not read others'.
        let outsider = token(
            &api,
            "user_555",
            &[],
            &["customer_success.process_refund:execute"],
            true,
            0,
        );
        let mut created = Vec::new();
        for (who, n) in [(&agent, 3), (&colleague, 1), (&outsider, 1)] {
            for _ in 0..n {
                let (status, task) = post(&api, who, refund_body().to_string()).await;
                assert_eq!(status, 201, "{task}");
                created.push(task["id"].as_str().unwrap().to_owned());
                // Distinct creation times, so "newest first" is one order.
                api.clock.advance(1);
            }
        }
        let newest_first: Vec<String> = created.iter().rev().cloned().collect();

        let mut seen = Vec::new();
        let mut path = format!("/v1/tasks?namespace={NS}&limit=2");
        let mut pages = 0;
        loop {
            let (status, page) = get(&api, &agent, &path).await;
            assert_eq!(status, 200, "{page}");
            assert!(!page.to_string().contains(CUSTOMER_EMAIL), "{page}");
            assert!(
                page["items"][0].get("context").is_none(),
                "no context in lists"
            );
            seen.extend(ids(&page));
            pages += 1;
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/v1/tasks?namespace={NS}&limit=2&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!((seen, pages), (newest_first.clone(), 3));

        let (_, page) = get(
            &api,
            &agent,
            &format!("/v1/tasks?namespace={NS}&created_by=user_124"),
        )
        .await;
        assert_eq!(ids(&page), [created[3].clone()]);
        let (_, page) = get(
            &api,
            &agent,
            &format!("/v1/tasks?namespace={NS}&status=complete"),
        )
        .await;
        assert!(ids(&page).is_empty());

        // Without `customer_success:read`: its own tasks only, and asking for someone
        // else's is refused and audited.
        let (status, page) = get(&api, &outsider, &format!("/v1/tasks?namespace={NS}")).await;
        assert_eq!((status, ids(&page)), (200, vec![created[4].clone()]));
        let (status, problem) = get(
            &api,
            &outsider,
            &format!("/v1/tasks?namespace={NS}&created_by=user_123"),
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("read_denied"))
        );
        let denied = events(&api.store, "task.list_denied").await;
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0].0, "user:user_555");

        for (query, code) in [
            ("namespace=customer_success&limit=0", "invalid"),
            ("namespace=customer_success&limit=101", "invalid"),
            ("namespace=customer_success&status=finished", "invalid"),
            (
                "namespace=customer_success&cursor=bm90LWEtY3Vyc29y",
                "invalid_cursor",
            ),
            ("namespace=customer_success&colour=red", "invalid_query"),
            ("limit=2", "invalid_query"),
            ("namespace=..%2Fetc", "invalid"),
        ] {
            let (status, problem) = get(&api, &agent, &format!("/v1/tasks?{query}")).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (422, Some(code)),
                "{query}: {problem}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_show_progress_and_only_the_owner_or_a_manager_cancels_or_retries() {
    both(|url| async move {
        let api = start(&url).await;
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
        let colleague = token(&api, "user_124", &["customer_success_agent"], &[], true, 0);
        let admin = token(&api, "user_1", &["ns_admin"], &[], false, 0);
        let stranger = token(&api, "user_777", &["payments_agent"], &[], true, 0);

        // The notification service is down: the last step fails twice and the task errs.
        api.notify.set_down(true);
        let (_, task) = post(&api, &agent, refund_body().to_string()).await;
        let failing = task["id"].as_str().unwrap().to_owned();
        drain(&api.engine).await;
        api.clock.advance(6_000);
        drain(&api.engine).await;
        let (status, steps) = get(&api, &colleague, &format!("/v1/tasks/{failing}/steps")).await;
        assert_eq!(status, 200, "{steps}");
        assert!(!steps.to_string().contains(CUSTOMER_EMAIL), "{steps}");
        let notify = steps["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "notify_customer")
            .unwrap();
        assert_eq!(notify["status"], "error", "{steps}");
        assert_eq!(notify["attempts"], 2);
        assert_eq!(notify["history"].as_array().unwrap().len(), 2);
        assert!(notify["error"].is_object(), "{notify}");
        let first = steps["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "validate_refund_request")
            .unwrap();
        assert_eq!(first["status"], "complete");
        assert_eq!(first["history"][0]["outcome"], "success");
        let (status, _) = get(&api, &stranger, &format!("/v1/tasks/{failing}/steps")).await;
        assert_eq!(status, 404, "a task it may not read does not exist for it");

        // Retry: not the colleague's to retry; the owner may, once the service is back.
        let retry = format!("/v1/tasks/{failing}/steps/notify_customer/retry");
        let (status, problem) = post_empty(&api, &colleague, &retry).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("not_task_owner"))
        );
        let (status, _) = post_empty(&api, &stranger, &retry).await;
        assert_eq!(status, 404);
        api.notify.set_down(false);
        let (status, retried) = post_empty(&api, &agent, &retry).await;
        assert_eq!(status, 200, "{retried}");
        assert_eq!(retried["next_attempt"], 3);
        let (status, problem) = post_empty(&api, &agent, &retry).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (409, Some("conflict")),
            "pending again, not failed"
        );
        drain(&api.engine).await;
        let (_, done) = get(&api, &agent, &format!("/v1/tasks/{failing}")).await;
        assert_eq!(done["status"], "complete", "{done}");

        // Cancel: the colleague may not, the owner may; a manager may cancel anyone's.
        let (_, mine) = post(&api, &agent, refund_body().to_string()).await;
        let (_, theirs) = post(&api, &colleague, refund_body().to_string()).await;
        let mine = mine["id"].as_str().unwrap().to_owned();
        let theirs = theirs["id"].as_str().unwrap().to_owned();
        let (status, problem) =
            post_empty(&api, &colleague, &format!("/v1/tasks/{mine}/cancel")).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("not_task_owner"))
        );
        let (status, cancelled) =
            post_empty(&api, &agent, &format!("/v1/tasks/{mine}/cancel")).await;
        assert_eq!(
            (status, cancelled["status"].as_str()),
            (200, Some("cancelled")),
            "{cancelled}"
        );
        assert_eq!(cancelled["steps_cancelled"], 4);
        let (status, problem) = post_empty(&api, &agent, &format!("/v1/tasks/{mine}/cancel")).await;
        assert_eq!((status, problem["code"].as_str()), (409, Some("conflict")));
        let (status, _) = post_empty(&api, &admin, &format!("/v1/tasks/{theirs}/cancel")).await;
        assert_eq!(status, 200);
        drain(&api.engine).await;
        for id in [&mine, &theirs] {
            let (_, task) = get(&api, &agent, &format!("/v1/tasks/{id}")).await;
            assert_eq!(task["status"], "cancelled");
        }

        let refusals: Vec<String> = [
            events(&api.store, "step.retry_denied").await,
            events(&api.store, "task.cancel_denied").await,
        ]
        .concat()
        .into_iter()
        .map(|(actor, details)| format!("{actor} {}", details["code"].as_str().unwrap()))
        .collect();
        assert_eq!(
            refusals,
            [
                "user:user_124 not_task_owner",
                "user:user_124 not_task_owner"
            ]
        );
        assert_eq!(
            events(&api.store, "task.read_denied").await.len(),
            2,
            "the stranger's two 404s"
        );
    })
    .await;
}

/// `GET path` as `token` in a task of its own: its answer, and how long it took.
fn read_in_background(
    base: &str,
    token: &str,
    path: &str,
) -> tokio::task::JoinHandle<((u16, Value), std::time::Duration)> {
    let (url, token) = (format!("{base}{path}"), token.to_owned());
    tokio::spawn(async move {
        let began = std::time::Instant::now();
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (answer(response).await, began.elapsed())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_read_is_answered_when_the_task_ends_and_only_to_who_may_read_it() {
    use std::time::Duration;
    both(|url| async move {
        let api = start(&url).await;
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
        let stranger = token(&api, "user_777", &["payments_agent"], &[], true, 0);
        let (_, task) = post(&api, &agent, refund_body().to_string()).await;
        let id = task["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/tasks/{id}?wait_ms=20000");

        // A caller who may not read the task is refused before any wait, as if it did not
        // exist: waiting would tell it the task is there.
        let began = std::time::Instant::now();
        let (status, problem) = get(&api, &stranger, &path).await;
        assert_eq!(status, 404, "{problem}");
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the refusal waited for the task"
        );
        assert_eq!(events(&api.store, "task.read_denied").await.len(), 1);

        // Waits out of bounds, or not numbers, are refused with a precise problem.
        for (query, code) in [
            ("wait_ms=30001", "invalid"),
            ("wait_ms=soon", "invalid_query"),
            ("wait_ms=-1", "invalid_query"),
            ("wait=5", "invalid_query"),
        ] {
            let (status, problem) = get(&api, &agent, &format!("/v1/tasks/{id}?{query}")).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (422, Some(code)),
                "{query}: {problem}"
            );
        }

        // The owner's read waits, and is answered when the steps end the task.
        let waiting = read_in_background(&api.base, &agent, &path);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the read did not wait for the task");
        drain(&api.engine).await;
        let ((status, done), took) = waiting.await.unwrap();
        assert_eq!(
            (status, done["status"].as_str()),
            (200, Some("complete")),
            "{done}"
        );
        assert!(
            took < Duration::from_secs(15),
            "answered at the wait's end ({took:?})"
        );
        assert_eq!(done["context"]["customer_email"], "[REDACTED]");

        // A cancel ends a task as well, and wakes whoever waits on it.
        let (_, other) = post(&api, &agent, refund_body().to_string()).await;
        let other = other["id"].as_str().unwrap().to_owned();
        let waiting = read_in_background(
            &api.base,
            &agent,
            &format!("/v1/tasks/{other}?wait_ms=20000"),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the read did not wait for the task");
        let (status, _) = post_empty(&api, &agent, &format!("/v1/tasks/{other}/cancel")).await;
        assert_eq!(status, 200);
        let ((status, cancelled), took) = waiting.await.unwrap();
        assert_eq!(
            (status, cancelled["status"].as_str()),
            (200, Some("cancelled")),
            "{cancelled}"
        );
        assert!(
            took < Duration::from_secs(15),
            "answered at the wait's end ({took:?})"
        );

        // A task already ended is answered at once; every answered read is audited.
        let began = std::time::Instant::now();
        let (status, again) = get(&api, &agent, &path).await;
        assert_eq!((status, again["status"].as_str()), (200, Some("complete")));
        assert!(began.elapsed() < Duration::from_secs(10));
        assert_eq!(events(&api.store, "task.read").await.len(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_shutdown_answers_its_waiting_reads_at_once_and_no_other_servers() {
    use std::time::Duration;
    let db = crate::engine::TestDb::sqlite();
    let mut api = start(&db.url).await;
    let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
    let (_, task) = post(&api, &agent, refund_body().to_string()).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/tasks/{id}?wait_ms=30000");

    // A second server over the same API (as a process serving plain HTTP and TLS at once
    // would run), which keeps serving.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_base = format!("http://{}", listener.local_addr().unwrap());
    let (other_stop, other_stopped) = tokio::sync::oneshot::channel::<()>();
    let other = tokio::spawn(api::serve(listener, api.state.clone(), async {
        let _ = other_stopped.await;
    }));

    // Nothing runs the task's steps here: each read would wait its whole 30 s.
    let waiting = read_in_background(&api.base, &agent, &path);
    let waiting_elsewhere = read_in_background(&other_base, &agent, &path);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the read did not wait for the task");

    tokio::time::timeout(Duration::from_secs(10), api.shut_down())
        .await
        .expect("the shutdown waited for the read's wait to run out")
        .unwrap();
    // The read was answered, with the task as it is, not cut off.
    let ((status, read), took) = waiting.await.unwrap();
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["id"], id.as_str());
    assert!(
        matches!(read["status"].as_str(), Some("pending" | "in_progress")),
        "{read}"
    );
    assert!(took < Duration::from_secs(15), "answered after {took:?}");
    assert_eq!(read["context"]["customer_email"], "[REDACTED]");

    // The other server's read still waits: its server is not stopping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting_elsewhere.is_finished(),
        "stopping one server answered another server's wait"
    );
    let _ = other_stop.send(());
    let ((status, read), _) = tokio::time::timeout(Duration::from_secs(10), waiting_elsewhere)
        .await
        .expect("the second server's shutdown did not answer its wait")
        .unwrap();
    assert_eq!(
        (status, read["id"].as_str()),
        (200, Some(id.as_str())),
        "{read}"
    );
    tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .expect("the second server did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_client_gets_429_with_retry_after_and_others_are_still_served() {
    let db = crate::engine::TestDb::sqlite();
    let limits = RateLimits {
        per_ip: std::num::NonZeroU32::new(20).unwrap(),
        per_principal: std::num::NonZeroU32::new(3).unwrap(),
    };
    let api = start_limited(&db.url, limits).await;
    let began = std::time::Instant::now();
    let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
    let colleague = token(&api, "user_124", &["customer_success_agent"], &[], true, 0);
    let path = format!("/v1/tasks?namespace={NS}");
    // A burst of twice the rate, then refusals.
    for n in 0..6 {
        assert_eq!(get(&api, &agent, &path).await.0, 200, "request {n}");
    }
    for _ in 0..3 {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", api.base))
            .bearer_auth(&agent)
            .send()
            .await
            .unwrap();
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");
        let (status, problem) = answer(response).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (429, Some("rate_limited"))
        );
    }
    assert_eq!(
        get(&api, &colleague, &path).await.0,
        200,
        "another principal has its own budget"
    );
    let limited = events(&api.store, "api.rate_limited").await;
    assert_eq!(limited.len(), 1, "audited once, not once per refusal");
    assert_eq!(limited[0].0, "user:user_123");

    // The address's own budget: guessed tokens are cut off before they are checked. It
    // holds a burst of 40, of which the 10 requests above took their share, and earns 20
    // a second back.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(get(&api, "guessed.token.value", &path).await.0);
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let earned = (began.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429) && statuses.contains(&429),
        "{statuses:?}"
    );
    assert!(
        checked >= 1 && 10 + checked <= 40 + earned,
        "{checked} guessed tokens checked, {earned} earned back: {statuses:?}"
    );
    let health = reqwest::get(format!("{}/health/live", api.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health checks are not rate limited");
}

/// Run `test` against a fresh API on SQLite and on PostgreSQL.
pub(crate) async fn both_apis<F, Fut>(test: F)
where
    F: Fn(Api) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    both(|url| {
        let test = &test;
        async move { test(start(&url).await).await }
    })
    .await;
}
