//! Retention on both databases with the clock moved by hand: PII task data goes after 3
//! years, other task data after 5, audit events after 7 — each exactly then, never
//! earlier — every purge is on the trail, and the chain that remains verifies online and
//! as an export from the signed checkpoint it now starts at.

use serde_json::json;
use stepbox::audit::{self, CheckpointKeys};
use stepbox::engine::CreateTask;

use crate::api_tasks::{Api, both_apis, events, get, token};
use crate::engine::{NS, agent, drain, refund_request};

const DAY_MS: i64 = 86_400_000;
const YEAR_MS: i64 = 365 * DAY_MS;

/// A token for `sub` with `roles`, minted at the manual clock's time now.
fn token_now(api: &Api, sub: &str, roles: &[&str]) -> String {
    use stepbox::engine::Clock;
    let age = 1_764_000_000 - api.clock.now_ms() / 1000;
    token(api, sub, roles, &[], false, age)
}

async fn exists(api: &Api, id: &str) -> bool {
    let mut tx = api.store.begin_read().await.unwrap();
    let task = tx.get_task(id).await.unwrap();
    tx.commit().await.unwrap();
    task.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_purges_exactly_what_is_due_and_the_chain_verifies_after() {
    both_apis(|api| async move {
        let mut policy = api.engine.namespace_policy(NS).await.unwrap();
        policy.retention.pii_task_days = Some(3 * 365);
        policy.retention.task_days = Some(5 * 365);
        policy.retention.audit_days = Some(7 * 365);
        api.engine.set_policy(NS, &policy, "user:admin").await.unwrap();
        api.engine
            .apply_workflow(
                "namespace: customer_success\nname: plain\nversion: 1.0.0\n\
                 input_schema: { type: object, properties: { note: { type: string, x-data-classification: internal } } }\n\
                 steps: [{ name: only, module: validate_refund_request@0.1.0 }]\n",
                "user:admin",
            )
            .await
            .unwrap();
        let pii = api.engine.create_task(&agent(), refund_request(40.0)).await.unwrap();
        assert!(pii.contains_pii);
        let plain = CreateTask {
            namespace: NS.into(),
            workflow: "plain".into(),
            version: None,
            context: json!({ "note": "restock" }),
            reason: None,
            tags: vec![],
            correlation_id: None,
            request: None,
        };
        let plain = api.engine.create_task(&agent(), plain).await.unwrap();
        assert!(!plain.contains_pii);
        drain(&api.engine).await;

        // An auditor's export signs the chain's tip now: the checkpoint a later purge of
        // the trail can anchor at.
        let auditor = token(&api, "user_900", &["auditor"], &[], false, 0);
        let (status, _) = get(&api, &auditor, "/v1/audit/verify").await;
        assert_eq!(status, 200);
        let response = reqwest::Client::new()
            .get(format!("{}/v1/audit/export", api.base))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut tx = api.store.begin_read().await.unwrap();
        let anchor = tx.last_checkpoint().await.unwrap().unwrap();
        tx.commit().await.unwrap();

        // A day short of three years: nothing goes.
        api.clock.advance(3 * YEAR_MS - DAY_MS);
        let run = api.engine.run_retention("system:retention").await.unwrap();
        assert!(run.tasks_purged.is_empty() && run.audit_events_purged == 0, "{run:?}");
        assert!(exists(&api, &pii.id).await && exists(&api, &plain.id).await);

        // Past three years: the PII task, not the other; its trail stays.
        api.clock.advance(2 * DAY_MS);
        let run = api.engine.run_retention("system:retention").await.unwrap();
        assert_eq!(run.tasks_purged.get(NS), Some(&1), "{run:?}");
        assert!(!exists(&api, &pii.id).await && exists(&api, &plain.id).await);
        let purges = events(&api.store, "retention.purged").await;
        assert_eq!(purges.len(), 1);
        assert_eq!(purges[0].1["tasks"], json!([pii.id]));
        let auditor = token_now(&api, "user_900", &["auditor"]);
        let (status, trail) = get(&api, &auditor, &format!("/v1/audit/tasks/{}", pii.id)).await;
        assert_eq!(status, 200, "{trail}");
        assert!(trail["task"].is_null());
        assert!(trail["events"].as_array().unwrap().len() >= 5);

        // Past five years: the other task, and its own data key destroyed.
        api.clock.advance(2 * YEAR_MS);
        let run = api.engine.run_retention("system:retention").await.unwrap();
        assert_eq!(
            (run.tasks_purged.get(NS), run.data_keys_destroyed, run.audit_events_purged),
            (Some(&1), 1, 0),
            "{run:?}"
        );
        assert!(!exists(&api, &plain.id).await);

        // Past seven years: the trail up to the checkpoint goes; the rest verifies from it.
        api.clock.advance(2 * YEAR_MS);
        let run = api.engine.run_retention("system:retention").await.unwrap();
        assert_eq!(run.audit_resumes_after, Some(anchor.seq), "{run:?}");
        assert!(run.audit_events_purged > 10, "{run:?}");
        let mut tx = api.store.begin_read().await.unwrap();
        let left = tx.audit_events(i64::MIN, 1).await.unwrap();
        tx.commit().await.unwrap();
        assert!(left[0].seq > anchor.seq);
        assert_eq!(events(&api.store, "retention.purged").await.len(), 3, "the year-3 and year-5 purges stay");

        let auditor = token_now(&api, "user_900", &["auditor"]);
        let (_, verified) = get(&api, &auditor, "/v1/audit/verify").await;
        assert_eq!(verified["intact"], true, "{verified}");
        assert_eq!(verified["resumed_after"], anchor.seq);
        let (_, key) = get(&api, &auditor, "/v1/audit/public-key").await;
        let keys = CheckpointKeys::from_pem(key["public_key_pem"].as_str().unwrap()).unwrap();
        let export = reqwest::Client::new()
            .get(format!("{}/v1/audit/export", api.base))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let report = audit::verify_export(export.as_bytes(), &keys).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.resumed_after, Some(anchor.seq));

        // The compliance report counts nothing overdue and names the runs.
        let officer = token_now(&api, "user_800", &["compliance_officer"]);
        let (_, compliance) = get(&api, &officer, "/v1/compliance/report?period=annual").await;
        assert_eq!(compliance["retention"]["status"], "compliant", "{}", compliance["retention"]);
        assert_eq!(compliance["retention"]["runs"], 4);
    })
    .await;
}
