//! `/v1/audit` on a real socket with real tokens, on both databases: the seed scenario
//! (several users run refunds; an auditor asks what one user did in a period, everything
//! about one task, and exports the trail), the export verified offline with only the
//! public key, tampering with an export line or a checkpoint named, and the trail's own
//! readers on the trail.

use serde_json::Value;
use stepbox::audit::{self, CheckpointKeys, Problem};

use crate::api_tasks::{Api, answer, both_apis, events, get, refund_body, token};
use crate::engine::drain;
use crate::support::CUSTOMER_EMAIL;

/// The manual clock's start in `engine::setup`: 2025-11-24T16:00:00Z.
const START: &str = "2025-11-24T16:00:00Z";

async fn create(api: &Api, token: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/tasks", api.base))
        .bearer_auth(token)
        .header("user-agent", "refund-desk/2.1")
        .header("content-type", "application/json")
        .body(refund_body().to_string())
        .send()
        .await
        .unwrap();
    let (status, task) = answer(response).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().unwrap().to_owned()
}

async fn text(api: &Api, token: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn actions(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

/// Three refunds by two agents, run to completion; user_123 reads one of its tasks back.
async fn scenario(api: &Api) -> (String, String) {
    let jane = token(api, "user_123", &["customer_success_agent"], &[], true, 0);
    let omar = token(api, "user_456", &["customer_success_agent"], &[], true, 0);
    let first = create(api, &jane).await;
    create(api, &jane).await;
    let other = create(api, &omar).await;
    drain(&api.engine).await;
    let (status, _) = get(api, &jane, &format!("/v1/tasks/{first}")).await;
    assert_eq!(status, 200);
    (first, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_auditor_answers_who_did_what_when_and_everything_about_a_task() {
    both_apis(|api| async move {
        let (task, _) = scenario(&api).await;
        let auditor = token(&api, "user_900", &["auditor"], &[], false, 0);

        // What did user_123 do in the period? Two creations and one read, each with where
        // the request came from and the regimes the refund's data falls under.
        let (status, page) = get(
            &api,
            &auditor,
            &format!("/v1/audit/trail?user_id=user_123&from={START}&to=2025-11-25T00:00:00Z"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 3, "{page}");
        assert_eq!(
            actions(&page["items"]),
            ["task.created", "task.created", "task.read"]
        );
        let created = &page["items"][0];
        assert_eq!(created["user_id"], "user_123");
        assert_eq!(created["time"], START);
        assert_eq!(created["request"]["ip"], "127.0.0.1");
        assert_eq!(created["request"]["user_agent"], "refund-desk/2.1");
        assert!(
            created["correlation_id"]
                .as_str()
                .unwrap()
                .starts_with("req_")
        );
        assert_eq!(created["workflow"]["name"], "process_refund");
        assert_eq!(created["workflow"]["contains_pii"], true);
        assert_eq!(
            created["compliance_tags"],
            serde_json::json!(["gdpr", "pci_dss", "sox"])
        );
        assert!(!page.to_string().contains(CUSTOMER_EMAIL), "{page}");
        assert!(!page.to_string().contains("cus_8812"), "{page}");

        // Outside the period: nothing. A page at a time: the same events, the same total.
        let (_, later) = get(
            &api,
            &auditor,
            "/v1/audit/trail?user_id=user_123&from=2025-11-24T16:00:01Z",
        )
        .await;
        assert_eq!(
            (
                later["total"].as_i64(),
                later["items"].as_array().map(Vec::len)
            ),
            (Some(0), Some(0))
        );
        let (_, one) = get(&api, &auditor, "/v1/audit/trail?user_id=user_123&limit=2").await;
        assert_eq!(actions(&one["items"]), ["task.created", "task.created"]);
        let cursor = one["next_cursor"].as_str().unwrap();
        let (_, two) = get(
            &api,
            &auditor,
            &format!("/v1/audit/trail?user_id=user_123&limit=2&cursor={cursor}"),
        )
        .await;
        assert_eq!(actions(&two["items"]), ["task.read"]);
        assert_eq!(
            (two["total"].as_i64(), two["next_cursor"].is_null()),
            (Some(3), true)
        );

        // Everything about the task: created, each step with what it read and called, the
        // completion, and the data access.
        let (status, about) = get(&api, &auditor, &format!("/v1/audit/tasks/{task}")).await;
        assert_eq!(status, 200, "{about}");
        let seen = actions(&about["events"]);
        assert_eq!(seen.first().map(String::as_str), Some("task.created"));
        assert_eq!(
            seen.iter().filter(|a| *a == "step.completed").count(),
            4,
            "{seen:?}"
        );
        assert!(
            seen.contains(&"task.completed".to_owned()) && seen.contains(&"task.read".to_owned())
        );
        let notify = about["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["step"]["name"] == "notify_customer" && e["action"] == "step.completed")
            .unwrap();
        assert_eq!(notify["actor_type"], "system");
        assert_eq!(notify["step"]["attempt"], 1);
        assert!(notify["step"]["duration_ms"].is_number());
        assert_eq!(notify["step"]["fields_read"][0]["field"], "customer_email");
        assert_eq!(
            notify["step"]["hosts_called"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(notify["compliance_tags"], serde_json::json!(["gdpr"]));
        assert_eq!(about["task"]["created_by"], "user_123");
        assert!(about["data_accesses"].as_array().unwrap().len() >= 2);
        assert!(!about.to_string().contains(CUSTOMER_EMAIL));

        // Reading the trail is on the trail, with who read and what they asked.
        let reads = events(&api.store, "audit.queried").await;
        assert_eq!(reads.len(), 4);
        assert!(reads.iter().all(|(actor, _)| actor == "user:user_900"));
        assert_eq!(reads[0].1["user_id"], "user_123");
        assert_eq!(reads[0].1["total"], 3);
        assert_eq!(events(&api.store, "audit.task_viewed").await.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_csv_export_agrees_with_the_trail_and_the_jsonl_export_verifies_offline() {
    both_apis(|api| async move {
        scenario(&api).await;
        let auditor = token(&api, "user_900", &["auditor"], &[], false, 0);

        let (status, csv) = text(
            &api,
            &auditor,
            "/v1/audit/export?format=csv&user_id=user_123",
        )
        .await;
        assert_eq!(status, 200, "{csv}");
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        let column = |name: &str| header.iter().position(|h| h == name).unwrap();
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        let exported: Vec<&str> = rows.iter().map(|r| &r[column("action")]).collect();
        assert_eq!(exported, ["task.created", "task.created", "task.read"]);
        assert!(rows.iter().all(|r| &r[column("actor")] == "user:user_123"));
        assert_eq!(&rows[0][column("compliance_tags")], "gdpr;pci_dss;sox");
        assert_eq!(&rows[0][column("ip")], "127.0.0.1");
        assert!(!csv.contains(CUSTOMER_EMAIL));

        // The whole trail, verified by someone holding only the public key.
        let (_, key) = get(&api, &auditor, "/v1/audit/public-key").await;
        let keys = CheckpointKeys::from_pem(key["public_key_pem"].as_str().unwrap()).unwrap();
        let (status, jsonl) = text(&api, &auditor, "/v1/audit/export").await;
        assert_eq!(status, 200);
        let report = audit::verify_export(jsonl.as_bytes(), &keys).unwrap();
        assert!(report.is_intact() && report.linked, "{report:?}");
        let (last_seq, _) = report.head.clone().unwrap();
        assert_eq!(
            report.signed_through,
            Some(last_seq),
            "the export's tip is signed"
        );
        assert!(report.checked > 20, "{report:?}");

        let lines: Vec<&str> = jsonl.lines().collect();
        let seq_of = |line: &str| {
            serde_json::from_str::<Value>(line).unwrap()["seq"]
                .as_i64()
                .unwrap()
        };
        let verify = |lines: &[String]| {
            audit::verify_export(lines.join("\n").as_bytes(), &keys)
                .unwrap()
                .broken
                .unwrap()
        };
        let owned = || {
            lines
                .iter()
                .map(|l| (*l).to_owned())
                .collect::<Vec<String>>()
        };

        // An edited line.
        let mut edited = owned();
        let at = lines
            .iter()
            .position(|l| l.contains("\"actor\":\"user:user_123\""))
            .unwrap();
        edited[at] = edited[at].replace("user:user_123", "user:user_999");
        let broken = verify(&edited);
        assert_eq!(
            (broken.seq, broken.problem),
            (seq_of(lines[at]), Problem::Edited)
        );

        // A removed line, and the tail cut off after a re-hash.
        let mut removed = owned();
        removed.remove(7);
        assert_eq!(verify(&removed).problem, Problem::Missing);
        let events_only: Vec<String> = owned()
            .into_iter()
            .filter(|l| !l.contains("\"checkpoint\""))
            .collect();
        let mut cut = owned();
        let last_event = cut
            .iter()
            .rposition(|l| !l.contains("\"checkpoint\""))
            .unwrap();
        cut.remove(last_event);
        let broken = verify(&cut);
        assert_eq!((broken.seq, broken.problem), (last_seq, Problem::Missing));
        assert!(
            events_only.len() < lines.len(),
            "the export carries checkpoints"
        );

        // Two lines swapped.
        let mut swapped = owned();
        swapped.swap(3, 4);
        assert_eq!(verify(&swapped).problem, Problem::Reordered);

        // A checkpoint whose signature was altered.
        let mut forged = owned();
        let at = forged
            .iter()
            .position(|l| l.contains("\"checkpoint\""))
            .unwrap();
        let mut checkpoint: Value = serde_json::from_str(&forged[at]).unwrap();
        let signature = checkpoint["checkpoint"]["signature"]
            .as_str()
            .unwrap()
            .to_owned();
        let flipped = if signature.starts_with('0') { "1" } else { "0" };
        checkpoint["checkpoint"]["signature"] = format!("{flipped}{}", &signature[1..]).into();
        forged[at] = checkpoint.to_string();
        assert_eq!(verify(&forged).problem, Problem::BadSignature);

        // The stored chain and its checkpoints, verified online.
        let (status, verified) = get(&api, &auditor, "/v1/audit/verify").await;
        assert_eq!(status, 200, "{verified}");
        assert_eq!(verified["intact"], true, "{verified}");
        assert!(verified["checkpoints"].as_i64().unwrap() >= 1);
        assert_eq!(events(&api.store, "audit.exported").await.len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trail_is_for_auditors_only_and_a_bad_query_is_named() {
    both_apis(|api| async move {
        scenario(&api).await;
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
        for path in [
            "/v1/audit/trail",
            "/v1/audit/verify",
            "/v1/audit/export",
            "/v1/audit/public-key",
        ] {
            let (status, problem) = get(&api, &agent, path).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (403, Some("permission_denied")),
                "{path}"
            );
        }
        let denied = events(&api.store, "audit.denied").await;
        assert_eq!(denied.len(), 4);
        assert!(denied.iter().all(|(actor, _)| actor == "user:user_123"));

        let auditor = token(&api, "user_900", &["auditor"], &[], false, 0);
        for (path, code) in [
            ("/v1/audit/trail?from=yesterday", "invalid_query"),
            ("/v1/audit/trail?colour=blue", "invalid_query"),
            ("/v1/audit/trail?limit=0", "invalid_query"),
            ("/v1/audit/trail?cursor=bm9wZQ", "invalid_cursor"),
            ("/v1/audit/trail?task_id=../../etc", "invalid_query"),
            ("/v1/audit/export?format=xml", "invalid_query"),
        ] {
            let (status, problem) = get(&api, &auditor, path).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (422, Some(code)),
                "{path}: {problem}"
            );
        }
        let (status, _) = get(&api, &auditor, "/v1/audit/tasks/task_00ff").await;
        assert_eq!(status, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_quarterly_report_and_the_controls_agree_with_what_happened() {
    both_apis(|api| async move {
        scenario(&api).await;
        // One refusal by policy (no MFA for the sensitive refund), one refused token.
        let no_mfa = token(&api, "user_777", &["customer_success_agent"], &[], false, 0);
        let response = reqwest::Client::new()
            .post(format!("{}/v1/tasks", api.base))
            .bearer_auth(&no_mfa)
            .header("content-type", "application/json")
            .body(refund_body().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403);
        let (status, _) = get(&api, "not-a-token", "/v1/tasks?namespace=customer_success").await;
        assert_eq!(status, 401);

        let officer = token(&api, "user_800", &["compliance_officer"], &[], false, 0);
        let (status, report) = get(&api, &officer, "/v1/compliance/report?period=quarterly").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["period"]["from"], "2025-10-01T00:00:00Z");
        assert_eq!(report["period"]["to"], "2026-01-01T00:00:00Z");
        let runs = &report["workflow_executions"];
        assert_eq!(
            (runs["created"].as_i64(), runs["completed"].as_i64()),
            (Some(3), Some(3)),
            "{runs}"
        );
        assert_eq!(runs["by_workflow"]["customer_success.process_refund"], 3);
        assert_eq!(report["unauthorized_attempts"]["total"], 1, "{report}");
        assert_eq!(
            report["unauthorized_attempts"]["by_code"]["mfa_required"],
            1
        );
        assert_eq!(report["authentication_failures"]["total"], 1);
        assert_eq!(report["data_access_requests"]["task_reads"], 1);
        assert_eq!(
            report["pii_workflows"]["customer_success.process_refund"],
            3
        );
        assert_eq!(report["tasks_by_classification"]["restricted"], 3);
        let coverage = &report["encryption_coverage"];
        assert_eq!(coverage["task_contexts"]["stored"], 3, "{coverage}");
        assert_eq!(coverage["task_contexts"]["sealed"], 3);
        assert_eq!(coverage["step_results"]["stored"], 12);
        assert_eq!(coverage["overall"]["percent"], 100.0);
        assert_eq!(report["audit_chain"]["intact"], true);
        assert!(report["audit_chain"]["checkpoints"].as_i64().unwrap() >= 1);
        assert_eq!(report["keys"]["key_encryption_keys"][0]["active"], true);
        assert_eq!(report["changes"]["module_uploads"], 4);
        assert!(!report.to_string().contains(CUSTOMER_EMAIL));

        // The quarter before: nothing ran. As CSV: the same figures.
        let (_, before) = get(
            &api,
            &officer,
            "/v1/compliance/report?from=2025-07-01T00:00:00Z&to=2025-10-01T00:00:00Z",
        )
        .await;
        assert_eq!(before["workflow_executions"]["created"], 0, "{before}");
        let (status, csv) = text(
            &api,
            &officer,
            "/v1/compliance/report?period=quarterly&format=csv",
        )
        .await;
        assert_eq!(status, 200);
        let row = csv::Reader::from_reader(csv.as_bytes())
            .records()
            .map(Result::unwrap)
            .find(|r| &r[0] == "workflow_executions" && &r[1] == "created")
            .unwrap();
        assert_eq!(&row[2], "3");

        let (status, controls) = get(&api, &officer, "/v1/compliance/controls").await;
        assert_eq!(status, 200, "{controls}");
        let by_id = |id: &str| {
            controls["controls"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == id)
                .unwrap()
                .clone()
        };
        for id in ["CC6.1", "CC6.2", "CC6.3", "CC6.7", "CC7.2", "CC8.1"] {
            assert_eq!(by_id(id)["status"], "effective", "{id}: {}", by_id(id));
        }
        assert_eq!(by_id("CC6.1")["evidence"]["tasks_created"], 3);
        assert_eq!(by_id("CC6.2")["evidence"]["tokens_refused"], 1);
        assert_eq!(by_id("CC8.1")["evidence"]["workflow_versions"], 1);

        // For compliance officers only, and each report is on the trail.
        let auditor = token(&api, "user_900", &["auditor"], &[], false, 0);
        let (status, problem) = get(&api, &auditor, "/v1/compliance/report").await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("permission_denied"))
        );
        let (status, problem) = get(&api, &officer, "/v1/compliance/report?period=weekly").await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("invalid_query"))
        );
        assert_eq!(events(&api.store, "compliance.reported").await.len(), 4);
        assert_eq!(events(&api.store, "compliance.denied").await.len(), 1);
    })
    .await;
}
