//! The operator commands as processes against a real data directory: `keys init`,
//! `worker` (killed with SIGKILL at random moments and restarted), `audit verify`,
//! `keys rotate`.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stepbox::crypto::KeyRing;
use stepbox::engine::{CreateTask, Engine, SystemClock};
use stepbox::policy::{NamespacePolicy, Principal};
use stepbox::store::{DatabaseUrl, Store, TaskStatus};

use crate::support::*;

const NS: &str = "customer_success";

/// A worker process on the data directory's database, or on `database` if given.
fn worker(data_dir: &Path, database: Option<&str>, name: &str) -> Child {
    let mut command = stepbox(
        &[
            "worker",
            "--workers",
            "2",
            "--lease-ms",
            "500",
            "--name",
            name,
        ],
        data_dir,
    );
    if let Some(url) = database {
        command.arg("--database").arg(url);
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn open_engine(data_dir: &Path) -> Engine {
    open_engine_on(data_dir, &DatabaseUrl::in_data_dir(data_dir)).await
}

async fn open_engine_on(data_dir: &Path, url: &DatabaseUrl) -> Engine {
    let store = Store::open(url).await.unwrap();
    let ring = KeyRing::load_file(&data_dir.join("keys.json")).unwrap();
    let vault = stepbox::crypto::SubjectVault::open(&data_dir.join("subject-vault.db"))
        .await
        .unwrap();
    Engine::new(
        store,
        Arc::new(ring),
        sandbox().clone(),
        Arc::new(SystemClock),
    )
    .with_subject_vault(Arc::new(vault))
}

async fn setup(data_dir: &Path) -> Engine {
    setup_on(data_dir, &DatabaseUrl::in_data_dir(data_dir)).await
}

async fn setup_on(data_dir: &Path, url: &DatabaseUrl) -> Engine {
    let engine = open_engine_on(data_dir, url).await;
    engine
        .set_policy(NS, &NamespacePolicy::default(), "user:admin")
        .await
        .unwrap();
    for name in [
        "validate_refund_request",
        "get_manager_approval",
        "execute_refund",
    ] {
        engine
            .register_module(NS, name, "0.1.0", &component(name), "user:team_lead")
            .await
            .unwrap();
    }
    let definition = json!({
        "namespace": NS, "name": "process_refund", "version": "1.0.0",
        "input_schema": { "type": "object", "properties": {
            "customer_id": { "type": "string", "x-data-classification": "pii-identifier", "x-data-subject": true },
            "order_id": { "type": "string" }, "currency": { "type": "string" }, "refund_amount": { "type": "number", "x-data-classification": "financial" },
            "reason": { "type": "string" } } },
        "steps": [
            { "name": "validate_refund_request", "module": "validate_refund_request@0.1.0", "clearance": "confidential",
              "reads": ["refund_amount", "order_id", "currency", "reason"], "config": { "max_amount": 1000.0, "approval_threshold": 100.0 } },
            { "name": "get_manager_approval", "module": "get_manager_approval@0.1.0", "clearance": "confidential",
              "depends_on": ["validate_refund_request"], "config": { "auto_approve_limit": 500.0, "on_exceed": "reject" } },
            { "name": "execute_refund", "module": "execute_refund@0.1.0", "clearance": "confidential",
              "depends_on": ["get_manager_approval", "validate_refund_request"] }
        ]
    });
    engine
        .apply_workflow(&definition.to_string(), "user:team_lead")
        .await
        .unwrap();
    engine
}

async fn create_tasks(engine: &Engine, count: usize) -> Vec<String> {
    let principal = Principal {
        subject: "user_123".into(),
        ..Principal::default()
    };
    let mut ids = Vec::new();
    for n in 0..count {
        let request = CreateTask {
            namespace: NS.into(),
            workflow: "process_refund".into(),
            version: None,
            context: json!({ "customer_id": format!("cus_{n}"), "order_id": format!("ord_{n}"), "refund_amount": 50.0 + n as f64, "reason": "damaged" }),
            reason: None,
            tags: vec![],
            correlation_id: None,
            request: None,
        };
        ids.push(engine.create_task(&principal, request).await.unwrap().id);
    }
    ids
}

async fn all_complete(store: &Store, ids: &[String]) -> bool {
    let mut tx = store.begin_read().await.unwrap();
    let mut done = true;
    for id in ids {
        let task = tx.get_task(id).await.unwrap().unwrap();
        assert_ne!(
            task.status,
            TaskStatus::Error,
            "task {id} failed at {:?}",
            task.error_step
        );
        done &= task.status == TaskStatus::Complete;
    }
    tx.commit().await.unwrap();
    done
}

/// A worker process that gets SIGKILL when dropped, even when the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn random_ms(max: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes) % max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_moments_lose_nothing_and_commit_nothing_twice_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::in_data_dir(dir.path());
    kill_workers_at_random(dir.path(), &url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_moments_lose_nothing_and_commit_nothing_twice_on_postgres() {
    let Some(db) = crate::engine::TestDb::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let DatabaseUrl::Postgres(text) = &db.url else {
        unreachable!()
    };
    let text = text.clone();
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        kill_workers_at_random(dir.path(), &db.url, Some(&text)),
    ))
    .await;
    db.drop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Two worker processes at once on one database, each killed with SIGKILL at random
/// moments and restarted, until every task completes: nothing lost, no step result
/// committed twice, the chain intact.
async fn kill_workers_at_random(data: &Path, url: &DatabaseUrl, database: Option<&str>) {
    assert!(stepbox(&["keys", "init"], data).status().unwrap().success());
    let engine = setup_on(data, url).await;
    let store = engine.store().clone();
    let ids = create_tasks(&engine, 40).await;

    let mut kills = 0;
    let mut workers = [
        KillOnDrop(worker(data, database, "a-0")),
        KillOnDrop(worker(data, database, "b-0")),
    ];
    for round in 1..=8 {
        tokio::time::sleep(Duration::from_millis(100 + random_ms(300))).await;
        let victim = usize::try_from(random_ms(2)).unwrap();
        let name = format!("{}-{round}", ["a", "b"][victim]);
        workers[victim] = KillOnDrop(worker(data, database, &name));
        kills += 1;
    }
    let interrupted = !all_complete(&store, &ids).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_complete(&store, &ids).await {
        assert!(
            Instant::now() < deadline,
            "tasks did not complete after the crashes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(workers);
    eprintln!("{kills} kills; work left after them: {interrupted}");

    // Each step's result was committed exactly once.
    let mut tx = store.begin_read().await.unwrap();
    let events = tx.audit_events(i64::MIN, 100_000).await.unwrap();
    tx.commit().await.unwrap();
    for id in &ids {
        for step in [
            "validate_refund_request",
            "get_manager_approval",
            "execute_refund",
        ] {
            let resource = format!("step/{id}/{step}");
            let completed = events
                .iter()
                .filter(|e| e.action == "step.completed" && e.resource == resource)
                .count();
            assert_eq!(completed, 1, "{resource}");
        }
    }
    store.close().await;

    // The chain is intact, from the CLI.
    let mut verify = stepbox(&["audit", "verify"], data);
    if let Some(url) = database {
        verify.arg("--database").arg(url);
    }
    let output = verify.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["broken"], Value::Null);
}

#[tokio::test]
async fn keys_rotate_and_audit_verify_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    assert!(stepbox(&["keys", "init"], data).status().unwrap().success());
    let refused = stepbox(&["keys", "init"], data).output().unwrap();
    assert!(!refused.status.success(), "init must not overwrite keys");
    let engine = setup(data).await;
    let ids = create_tasks(&engine, 3).await;
    engine.store().close().await;

    let output = stepbox(&["keys", "rotate", "--retire-old"], data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rotation: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rotation["rewrapped"], 3);
    let key_file = std::fs::read_to_string(data.join("keys.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&key_file).unwrap()["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A new process with only the new key reads every task.
    let engine = open_engine(data).await;
    for id in &ids {
        engine.task_context(id).await.unwrap();
    }
    engine.store().close().await;

    let verify = stepbox(&["audit", "verify"], data).output().unwrap();
    assert!(verify.status.success());
    // Tamper with one event: verify names it and fails.
    let db = data.join("stepbox.db");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        db.display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE audit_events SET actor = 'user:mallory' WHERE seq = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let verify = stepbox(&["audit", "verify"], data).output().unwrap();
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains("sequence 3"),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn a_worker_without_the_installations_subject_vault_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path();
    assert!(
        stepbox(&["keys", "init"], data_dir)
            .output()
            .unwrap()
            .status
            .success()
    );
    // Started with an empty vault of its own, every subject would look erased to it.
    let refused = stepbox(&["worker", "--workers", "1"], data_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("subject-vault.db") && stderr.contains("installation's vault"),
        "{stderr}"
    );
    assert!(!data_dir.join("subject-vault.db").exists());
}
