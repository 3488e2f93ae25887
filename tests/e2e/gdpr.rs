//! `/v1/gdpr` on a real socket, on both databases: a subject found by customer id or by
//! email through the blind index — and a subject with a similar email not confused with
//! them; the export holds their data in the clear; after erasure nothing of theirs opens,
//! not even from rows copied before (a backup), other subjects are untouched, and the
//! audit chain still verifies and never held their values.

use serde_json::{Value, json};
use stepbox::crypto::{Aad, KeyId, WrappedKey};
use stepbox::store::{AuditFilter, DataKeyRow, TaskRow};

use crate::api_tasks::{Api, answer, both_apis, events, get, refund_body, token};
use crate::engine::{NS, drain};
use crate::support::CUSTOMER_EMAIL;

/// Another customer whose email differs from the seed's by one letter.
const OTHER_EMAIL: &str = "jane.doe@example.co";

async fn post(api: &Api, token: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", api.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn refund(api: &Api, customer_id: &str, email: &str) -> String {
    let agent = token(api, "user_123", &["customer_success_agent"], &[], true, 0);
    let mut body = refund_body();
    body["context"]["customer_id"] = json!(customer_id);
    body["context"]["customer_email"] = json!(email);
    let (status, task) = post(api, &agent, "/v1/tasks", body).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().unwrap().to_owned()
}

fn ids(tasks: &Value) -> Vec<String> {
    let mut ids: Vec<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// What a backup taken now would hold of `task`: its row and its data key's row.
async fn backup(api: &Api, task: &str) -> (TaskRow, DataKeyRow) {
    let mut tx = api.store.begin_read().await.unwrap();
    let row = tx.get_task(task).await.unwrap().unwrap();
    let key = tx.get_data_key(&row.data_key_id).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    (row, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subject_is_found_exported_and_erased_for_good_and_no_one_else_is() {
    both_apis(|api| async move {
        let mut policy = api.engine.namespace_policy(NS).await.unwrap();
        policy.legal_basis = Some("contract".into());
        policy.retention.pii_task_days = Some(3 * 365);
        api.engine
            .set_policy(NS, &policy, "user:admin")
            .await
            .unwrap();
        let mut jane = vec![
            refund(&api, "cus_8812", CUSTOMER_EMAIL).await,
            refund(&api, "cus_8812", CUSTOMER_EMAIL).await,
        ];
        jane.sort();
        let other = refund(&api, "cus_7777", OTHER_EMAIL).await;
        drain(&api.engine).await;
        let officer = token(&api, "user_800", &["compliance_officer"], &[], false, 0);

        // Access, by email (however it is written) and by customer id: exactly her tasks.
        for identifier in ["  Jane.Doe@Example.COM ", "cus_8812"] {
            let (status, found) = post(
                &api,
                &officer,
                "/v1/gdpr/access",
                json!({ "subject": identifier }),
            )
            .await;
            assert_eq!(status, 200, "{found}");
            assert_eq!(found["status"], "found");
            assert_eq!(ids(&found["tasks"]), jane, "{identifier}");
            let task = &found["tasks"][0];
            assert_eq!(task["legal_basis"], "contract");
            assert_eq!(task["retention_days"], 3 * 365);
            let categories = task["data_categories"].to_string();
            assert!(categories.contains("pii-contact") && categories.contains("financial"));
            assert_eq!(found["step_results"], 8);
            assert!(found["audit_events"].as_array().unwrap().len() >= 12);
            assert!(!found.to_string().contains(CUSTOMER_EMAIL), "{found}");
        }
        let (_, similar) = post(
            &api,
            &officer,
            "/v1/gdpr/access",
            json!({ "subject": OTHER_EMAIL }),
        )
        .await;
        assert_eq!(ids(&similar["tasks"]), [other.clone()]);
        let (_, nobody) = post(
            &api,
            &officer,
            "/v1/gdpr/access",
            json!({ "subject": "nobody@example.com" }),
        )
        .await;
        assert_eq!(
            (
                nobody["status"].as_str(),
                nobody["tasks"].as_array().map(Vec::len)
            ),
            (Some("not_found"), Some(0))
        );

        // Export: her data in the clear, every step's result.
        let (status, bundle) = post(
            &api,
            &officer,
            "/v1/gdpr/export",
            json!({ "subject": CUSTOMER_EMAIL }),
        )
        .await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["format"], "stepbox-subject-export");
        assert_eq!(ids(&bundle["tasks"]), jane);
        assert_eq!(
            bundle["tasks"][0]["context"]["customer_email"],
            CUSTOMER_EMAIL
        );
        assert_eq!(bundle["tasks"][0]["context"]["customer_id"], "cus_8812");
        assert_eq!(
            bundle["tasks"][0]["step_results"]
                .as_object()
                .unwrap()
                .len(),
            4
        );

        // What a backup holds of her first task, taken before the erasure.
        let (row, key) = backup(&api, &jane[0]).await;
        // Her key is masked with a pad of the vault, filed under an id of its own.
        let pad_key = key.pad_key().expect("a subject's key has a pad").to_owned();
        assert!(pad_key.starts_with("pad_"), "{pad_key}");
        let vault = api.engine.subject_vault().unwrap();
        assert!(vault.pad(&pad_key).await.unwrap().is_some());

        let (status, erased) = post(
            &api,
            &officer,
            "/v1/gdpr/erase",
            json!({ "subject": "cus_8812", "reason": "ticket 4411" }),
        )
        .await;
        assert_eq!(status, 200, "{erased}");
        assert_eq!(
            (
                erased["status"].as_str(),
                erased["tasks_anonymized"].as_u64()
            ),
            (Some("erased"), Some(2))
        );
        let (_, again) = post(
            &api,
            &officer,
            "/v1/gdpr/erase",
            json!({ "subject": "cus_8812" }),
        )
        .await;
        assert_eq!(again["status"], "already_erased");

        // Nothing of hers opens: not through the API, not from the backup's rows with
        // every key this installation holds.
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
        let (status, gone) = get(&api, &agent, &format!("/v1/tasks/{}", jane[0])).await;
        assert_eq!((status, gone["code"].as_str()), (410, Some("data_erased")));
        assert!(
            vault.pad(&pad_key).await.unwrap().is_none(),
            "her pad outlived the erasure"
        );
        let reopened = stepbox::crypto::SubjectVault::open_existing(vault.path())
            .await
            .unwrap();
        assert!(
            reopened.pad(&pad_key).await.unwrap().is_none(),
            "in the file"
        );
        let wrapped = WrappedKey {
            kek_id: KeyId::new(key.kek_id.clone()).unwrap(),
            bytes: key.wrapped.clone(),
        };
        let unwrapped = api.engine.keys().unwrap(&wrapped, &key.id).unwrap();
        let aad = Aad {
            table: "tasks",
            row: &row.id,
            field: "context",
        };
        assert!(
            unwrapped.open(&row.context, aad).is_err(),
            "the backup's key opened her context"
        );

        let (_, after) = post(
            &api,
            &officer,
            "/v1/gdpr/access",
            json!({ "subject": CUSTOMER_EMAIL }),
        )
        .await;
        assert_eq!(after["status"], "erased", "{after}");
        assert!(
            after["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["anonymized_at"].is_number())
        );
        let (_, after) = post(
            &api,
            &officer,
            "/v1/gdpr/export",
            json!({ "subject": CUSTOMER_EMAIL }),
        )
        .await;
        assert_eq!(
            (
                after["status"].as_str(),
                after["tasks"].as_array().map(Vec::len)
            ),
            (Some("erased"), Some(0))
        );

        // The other customer is untouched.
        let (_, theirs) = post(
            &api,
            &officer,
            "/v1/gdpr/export",
            json!({ "subject": OTHER_EMAIL }),
        )
        .await;
        assert_eq!(theirs["tasks"][0]["context"]["customer_email"], OTHER_EMAIL);
        let (status, _) = get(&api, &agent, &format!("/v1/tasks/{other}")).await;
        assert_eq!(status, 200);

        // The chain verifies, every request is on it with who asked, and it never held
        // a subject's value.
        let auditor = token(&api, "user_900", &["auditor"], &[], false, 0);
        let (_, verified) = get(&api, &auditor, "/v1/audit/verify").await;
        assert_eq!(verified["intact"], true, "{verified}");
        let erasures = events(&api.store, "gdpr.erased").await;
        assert_eq!(erasures.len(), 2);
        assert_eq!(erasures[0].0, "user:user_800");
        assert_eq!(erasures[0].1["reason"], "ticket 4411");
        assert_eq!(events(&api.store, "gdpr.accessed").await.len(), 5);
        assert_eq!(events(&api.store, "gdpr.exported").await.len(), 3);
        let mut tx = api.store.begin_read().await.unwrap();
        let all = tx
            .query_audit(&AuditFilter::default(), 10_000)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let text = format!("{all:?}");
        for value in [CUSTOMER_EMAIL, "cus_8812", OTHER_EMAIL, "cus_7777"] {
            assert!(!text.contains(value), "the trail holds {value}");
        }

        // On SQLite, the database files themselves: no value of either customer.
        if let stepbox::store::DatabaseUrl::Sqlite(path) = api.store.url() {
            for file in [path.clone(), path.with_extension("db-wal")] {
                let Ok(bytes) = std::fs::read(&file) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&bytes);
                for value in [CUSTOMER_EMAIL, "cus_8812", OTHER_EMAIL, "cus_7777"] {
                    assert!(!text.contains(value), "{} holds {value}", file.display());
                }
            }
        }

        // Only for holders of gdpr:manage.
        let (status, problem) = post(
            &api,
            &auditor,
            "/v1/gdpr/access",
            json!({ "subject": "cus_7777" }),
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("permission_denied"))
        );
        let (status, problem) =
            post(&api, &officer, "/v1/gdpr/erase", json!({ "subject": "" })).await;
        assert_eq!((status, problem["code"].as_str()), (422, Some("invalid")));
        assert_eq!(events(&api.store, "gdpr.denied").await.len(), 1);
    })
    .await;
}
