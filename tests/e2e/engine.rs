//! The engine end to end on both databases: real components, real SQLite and
//! PostgreSQL, real HTTP for the notification step, the audit chain verified afterwards.

use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::Connection;
use stepbox::audit;
use stepbox::crypto::KeyRing;
use stepbox::engine::{Clock, CreateTask, Engine, ManualClock, Ran};
use stepbox::policy::{NamespacePolicy, Principal};
use stepbox::sandbox::SecretValue;
use stepbox::store::{DatabaseUrl, StepStatus, Store, TaskStatus};

use crate::support::*;

pub(crate) const NS: &str = "customer_success";
pub(crate) const PERMISSION: &str = "customer_success.process_refund:execute";
const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for one test: a SQLite file, or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: DatabaseUrl,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            url: DatabaseUrl::Sqlite(dir.path().join("stepbox.db")),
            _dir: Some(dir),
            pg_name: None,
        }
    }

    /// `None` (after saying so) when PostgreSQL is unreachable and not required.
    pub async fn postgres() -> Option<Self> {
        let admin = match sqlx::PgConnection::connect(ADMIN_URL).await {
            Ok(conn) => conn,
            Err(e) => {
                assert!(
                    std::env::var("STEPBOX_REQUIRE_POSTGRES").is_err(),
                    "PostgreSQL required but unreachable: {e}"
                );
                eprintln!("skipped: PostgreSQL not reachable at {ADMIN_URL}");
                return None;
            }
        };
        let mut admin = admin;
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).unwrap();
        let name = format!("stepbox_e2e_{}", hex::encode(bytes));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = DatabaseUrl::Postgres(format!("postgres://postgres@127.0.0.1:5432/{name}"));
        Some(Self {
            url,
            _dir: None,
            pg_name: Some(name),
        })
    }

    /// Drop the PostgreSQL database (best effort).
    pub async fn drop(self) {
        if let Some(name) = self.pg_name
            && let Ok(mut admin) = sqlx::PgConnection::connect(ADMIN_URL).await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
    }
}

/// Run `test` on SQLite, then on PostgreSQL.
pub(crate) async fn both<F, Fut>(test: F)
where
    F: Fn(DatabaseUrl) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sqlite = TestDb::sqlite();
    test(sqlite.url.clone()).await;
    if let Some(pg) = TestDb::postgres().await {
        let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(test(
            pg.url.clone(),
        )))
        .await;
        pg.drop().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

fn definition(notify_endpoint: &str, notify_origin: &str, max_attempts: u32) -> String {
    stepbox::example::refund_workflow(&stepbox::example::Notify::Http {
        endpoint: notify_endpoint,
        origin: notify_origin,
        max_attempts,
        initial_backoff_ms: 1000,
    })
}

pub(crate) struct Setup {
    pub(crate) engine: Engine,
    pub(crate) clock: ManualClock,
    pub(crate) store: Store,
}

pub(crate) async fn setup(
    url: &DatabaseUrl,
    server: &TestServer,
    path: &str,
    max_attempts: u32,
) -> Setup {
    let store = Store::open(url).await.unwrap();
    let clock = ManualClock::at(1_764_000_000_000);
    let keys = Arc::new(KeyRing::generate().unwrap());
    let engine = Engine::new(
        store.clone(),
        keys,
        sandbox().clone(),
        Arc::new(clock.clone()),
    )
    .with_subject_vault(crate::support::vault().await);
    let policy = NamespacePolicy {
        hosts: [server.origin()].into(),
        secrets: ["NOTIFY_API_KEY".to_owned()].into(),
        ..NamespacePolicy::default()
    };
    engine.set_policy(NS, &policy, "user:admin").await.unwrap();
    engine
        .set_secret(
            NS,
            "NOTIFY_API_KEY",
            &SecretValue::new(NOTIFY_KEY),
            "user:admin",
        )
        .await
        .unwrap();
    for name in [
        "validate_refund_request",
        "get_manager_approval",
        "execute_refund",
        "notify_customer",
    ] {
        engine
            .register_module(NS, name, "0.1.0", &component(name), "user:team_lead")
            .await
            .unwrap();
    }
    engine
        .apply_workflow(
            &definition(&server.url(path), &server.origin(), max_attempts),
            "user:team_lead",
        )
        .await
        .unwrap();
    Setup {
        engine,
        clock,
        store,
    }
}

pub(crate) fn agent() -> Principal {
    Principal {
        subject: "user_123".into(),
        roles: ["customer_success_agent".to_owned()].into(),
        permissions: [PERMISSION.to_owned()].into(),
    }
}

pub(crate) fn refund_request(amount: f64) -> CreateTask {
    CreateTask {
        namespace: NS.into(),
        workflow: "process_refund".into(),
        version: None,
        context: json!({
            "customer_id": "cus_8812", "customer_email": CUSTOMER_EMAIL, "order_id": "ord_5521",
            "refund_amount": amount, "currency": "EUR", "reason": "item arrived damaged"
        }),
        reason: Some("customer called".into()),
        tags: vec![],
        correlation_id: None,
        request: None,
    }
}

/// Run steps until none is ready.
pub(crate) async fn drain(engine: &Engine) -> Vec<Ran> {
    let mut ran = Vec::new();
    loop {
        match engine.run_once("worker-test").await.unwrap() {
            Ran::Idle => return ran,
            other => ran.push(other),
        }
    }
}

/// A pool of two workers named `w`, running until stopped.
struct Pool {
    stop: tokio::sync::watch::Sender<bool>,
    workers: tokio::task::JoinHandle<()>,
}

impl Pool {
    fn start(engine: &Engine) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let workers = tokio::spawn({
            let engine = engine.clone();
            async move {
                engine
                    .run_workers(2, "w", std::time::Duration::from_millis(10), stopped)
                    .await
            }
        });
        Self { stop, workers }
    }

    /// Wait until task `id` is `status` (20 s at most), then stop the pool.
    async fn stop_once(self, store: &Store, id: &str, status: TaskStatus) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while task_status(store, id).await.0 != status {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                task_status(store, id).await
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.stop.send(true).unwrap();
        self.workers.await.unwrap();
    }
}

/// Run a pool of two workers until task `id` is `status` (20 s at most), then stop it.
async fn run_pool_until(engine: &Engine, store: &Store, id: &str, status: TaskStatus) {
    Pool::start(engine).stop_once(store, id, status).await;
}

pub(crate) async fn task_status(
    store: &Store,
    id: &str,
) -> (TaskStatus, Vec<(String, StepStatus)>) {
    let mut tx = store.begin_read().await.unwrap();
    let task = tx.get_task(id).await.unwrap().unwrap();
    let steps = tx
        .get_steps(id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.status))
        .collect();
    tx.commit().await.unwrap();
    (task.status, steps)
}

pub(crate) async fn chain_is_intact(store: &Store) -> u64 {
    audit::seal_pending(store).await.unwrap();
    let report = audit::verify(store).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    report.checked
}

#[tokio::test]
async fn the_refund_workflow_runs_to_completion_on_both_databases() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        assert_eq!(
            (created.classification.as_str(), created.contains_pii),
            ("restricted", true)
        );

        let ran = drain(&engine).await;
        assert_eq!(ran.len(), 4, "{ran:?}");
        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Complete, "{steps:?}");
        assert!(steps.iter().all(|(_, s)| *s == StepStatus::Complete));
        let body: Value = serde_json::from_slice(&server.seen()[0].body).unwrap();
        assert_eq!(body["to"], CUSTOMER_EMAIL);
        assert!(body["refund_id"].as_str().unwrap().starts_with("rf_"));
        assert!(chain_is_intact(&store).await >= 10);

        if let DatabaseUrl::Sqlite(path) = &url {
            // Nothing readable at rest: the database files hold no plaintext context.
            store.close().await;
            for file in [path.clone(), path.with_extension("db-wal")] {
                if let Ok(bytes) = std::fs::read(&file) {
                    let text = String::from_utf8_lossy(&bytes);
                    for secret in [
                        CUSTOMER_EMAIL,
                        "cus_8812",
                        "item arrived damaged",
                        NOTIFY_KEY,
                    ] {
                        assert!(
                            !text.contains(secret),
                            "{secret} found in {}",
                            file.display()
                        );
                    }
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_permission_revoked_after_creation_stops_the_step_before_it_runs() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let created = engine.create_task(&agent(), refund_request(150.0)).await.unwrap();
        let revoked = NamespacePolicy {
            hosts: [server.origin()].into(),
            secrets: ["NOTIFY_API_KEY".to_owned()].into(),
            revoked_permissions: [PERMISSION.to_owned()].into(),
            ..NamespacePolicy::default()
        };
        engine.set_policy(NS, &revoked, "user:admin").await.unwrap();

        let ran = drain(&engine).await;
        assert!(ran.iter().any(|r| matches!(r, Ran::Step { step, status, .. } if step == "execute_refund" && status == "denied")), "{ran:?}");
        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Error);
        let mut tx = store.begin_read().await.unwrap();
        let attempts = tx.get_attempts(&created.id).await.unwrap();
        tx.commit().await.unwrap();
        assert!(attempts.iter().all(|a| a.step != "execute_refund"), "the denied step must not run");
        assert!(steps.iter().any(|(name, s)| name == "notify_customer" && *s == StepStatus::Cancelled), "{steps:?}");
        assert!(server.seen().is_empty());
        chain_is_intact(&store).await;
        let mut tx = store.begin_read().await.unwrap();
        let events = tx.audit_events(i64::MIN, 1000).await.unwrap();
        tx.commit().await.unwrap();
        assert!(events.iter().any(|e| e.action == "step.denied" && e.outcome == "denied"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_its_worker_takes_on_commit_is_checked_against_the_policy_first() {
    // Through the pool, each step after the first is taken by the commit of the one before
    // (`engine::pool`), not by a claim: the revoked permission must stop it all the same.
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        let revoked = NamespacePolicy {
            hosts: [server.origin()].into(),
            secrets: ["NOTIFY_API_KEY".to_owned()].into(),
            revoked_permissions: [PERMISSION.to_owned()].into(),
            ..NamespacePolicy::default()
        };
        engine.set_policy(NS, &revoked, "user:admin").await.unwrap();

        run_pool_until(&engine, &store, &created.id, TaskStatus::Error).await;

        let (_, steps) = task_status(&store, &created.id).await;
        assert!(
            steps.contains(&("get_manager_approval".to_owned(), StepStatus::Complete)),
            "{steps:?}"
        );
        assert!(
            steps.contains(&("execute_refund".to_owned(), StepStatus::Error)),
            "{steps:?}"
        );
        assert!(
            steps.contains(&("notify_customer".to_owned(), StepStatus::Cancelled)),
            "{steps:?}"
        );
        let mut tx = store.begin_read().await.unwrap();
        let attempts = tx.get_attempts(&created.id).await.unwrap();
        let events = tx.audit_events(i64::MIN, 1000).await.unwrap();
        tx.commit().await.unwrap();
        assert!(
            attempts.iter().all(|a| a.step != "execute_refund"),
            "the denied step must not run"
        );
        assert_eq!(
            attempts.len(),
            2,
            "each allowed step ran once: {attempts:?}"
        );
        assert!(events.iter().any(|e| e.action == "step.denied"
            && e.resource == format!("step/{}/execute_refund", created.id)));
        assert!(server.seen().is_empty());
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_while_the_pool_runs_starts_at_once_and_each_step_runs_once() {
    // The creation's own transaction leases the first step to the running pool
    // (`engine::create`): the task it answers with has started, before any claim.
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let pool = Pool::start(&engine);
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        assert_eq!(created.view.status, TaskStatus::InProgress);
        pool.stop_once(&store, &created.id, TaskStatus::Complete)
            .await;

        let mut tx = store.begin_read().await.unwrap();
        let attempts = tx.get_attempts(&created.id).await.unwrap();
        tx.commit().await.unwrap();
        let mut steps: Vec<&str> = attempts.iter().map(|a| a.step.as_str()).collect();
        steps.sort_unstable();
        assert_eq!(
            steps,
            [
                "execute_refund",
                "get_manager_approval",
                "notify_customer",
                "validate_refund_request"
            ],
            "each step ran exactly once"
        );
        assert!(
            attempts.iter().all(|a| a.worker == "w" && a.attempt == 1),
            "{attempts:?}"
        );
        assert_eq!(server.seen().len(), 1);
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_step_started_at_creation_is_checked_against_the_policy_first() {
    // The first step is handed to the pool by the creation, not claimed: a permission the
    // namespace policy revokes must stop it before instantiation all the same.
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        engine
            .register_module(NS, "noop", "0.1.0", &component("noop"), "user:team_lead")
            .await
            .unwrap();
        let definition = json!({
            "namespace": NS, "name": "gated", "version": "1.0.0",
            "input_schema": { "type": "object", "properties": {} },
            "steps": [ { "name": "first", "module": "noop@0.1.0", "requires_permission": PERMISSION },
                       { "name": "second", "module": "noop@0.1.0", "depends_on": ["first"] } ]
        });
        engine
            .apply_workflow(&definition.to_string(), "user:team_lead")
            .await
            .unwrap();
        let revoked = NamespacePolicy {
            hosts: [server.origin()].into(),
            revoked_permissions: [PERMISSION.to_owned()].into(),
            ..NamespacePolicy::default()
        };
        engine.set_policy(NS, &revoked, "user:admin").await.unwrap();

        let pool = Pool::start(&engine);
        let request = CreateTask {
            namespace: NS.into(),
            workflow: "gated".into(),
            version: None,
            context: json!({}),
            reason: None,
            tags: vec![],
            correlation_id: None,
            request: None,
        };
        let created = engine.create_task(&agent(), request).await.unwrap();
        assert_eq!(created.view.status, TaskStatus::InProgress);
        pool.stop_once(&store, &created.id, TaskStatus::Error).await;

        let (_, steps) = task_status(&store, &created.id).await;
        assert!(steps.contains(&("first".to_owned(), StepStatus::Error)), "{steps:?}");
        assert!(steps.contains(&("second".to_owned(), StepStatus::Cancelled)), "{steps:?}");
        let mut tx = store.begin_read().await.unwrap();
        let attempts = tx.get_attempts(&created.id).await.unwrap();
        let events = tx.audit_events(i64::MIN, 1000).await.unwrap();
        tx.commit().await.unwrap();
        assert!(attempts.is_empty(), "the denied step must not run: {attempts:?}");
        assert!(events.iter().any(|e| e.action == "step.denied"
            && e.resource == format!("step/{}/first", created.id)));
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test]
async fn retries_follow_backoff_and_stop_at_the_limit() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup {
            engine,
            clock,
            store,
        } = setup(&url, &server, "/unavailable", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        drain(&engine).await;
        let (_, steps) = task_status(&store, &created.id).await;
        assert!(
            steps.contains(&("notify_customer".to_owned(), StepStatus::WaitingForRetry)),
            "{steps:?}"
        );
        assert_eq!(server.seen().len(), 1);
        // Not before the backoff has passed (1 s ± 20 %)…
        clock.advance(700);
        assert_eq!(drain(&engine).await, vec![]);
        // …then again, and a third time, and then it stops.
        clock.advance(6_000);
        drain(&engine).await;
        assert_eq!(server.seen().len(), 2);
        clock.advance(6_000);
        drain(&engine).await;
        assert_eq!(server.seen().len(), 3);
        clock.advance(60_000);
        assert_eq!(drain(&engine).await, vec![]);
        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Error);
        assert!(steps.contains(&("notify_customer".to_owned(), StepStatus::Error)));
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test]
async fn a_permanent_error_stops_at_once_and_a_bad_context_is_refused() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(5_000.0))
            .await
            .unwrap();
        drain(&engine).await;
        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Error);
        assert!(
            steps.contains(&("validate_refund_request".to_owned(), StepStatus::Error)),
            "{steps:?}"
        );

        let mut bad = refund_request(10.0);
        bad.context["refund_amount"] = json!("a lot");
        bad.context["customer_email"] = json!("jane.doe@example.com");
        let error = engine
            .create_task(&agent(), bad)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("/refund_amount"), "{error}");
        assert!(
            !error.contains("a lot") && !error.contains("jane.doe"),
            "the error must not echo values: {error}"
        );
    })
    .await;
}

/// Read every task's context back (a worker would): proves each still decrypts.
async fn contexts_decrypt(engine: &Engine, ids: &[String]) -> Result<(), String> {
    for id in ids {
        engine.task_context(id).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test]
async fn after_key_rotation_everything_still_decrypts_and_a_moved_ciphertext_does_not() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup {
            engine,
            store,
            clock,
        } = setup(&url, &server, "/notify", 3).await;
        let first = engine
            .create_task(&agent(), refund_request(20.0))
            .await
            .unwrap();
        let mut other = refund_request(30.0);
        other.context["customer_id"] = json!("cus_9999");
        let second = engine.create_task(&agent(), other).await.unwrap();
        let ids = vec![first.id.clone(), second.id.clone()];

        // Rotate: a new active KEK; the old one kept only to unwrap during the re-wrap.
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("keys.json");
        engine.keys().save_file(&key_file).unwrap();
        let mut ring = KeyRing::load_file(&key_file).unwrap();
        let old = ring.active_id().clone();
        ring.rotate().unwrap();
        let rotation = stepbox::engine::rewrap_all(&store, &ring, "user:admin", clock.now_ms())
            .await
            .unwrap();
        assert_eq!(rotation.rewrapped, 3, "two subjects' keys and the secret's");
        ring.retire(&old).unwrap();
        // The notification step's secret now comes from the store, under the new KEK.
        let rotated = Engine::new(
            store.clone(),
            Arc::new(ring),
            sandbox().clone(),
            Arc::new(clock.clone()),
        )
        .with_subject_vault(engine.subject_vault().unwrap().clone());
        contexts_decrypt(&rotated, &ids).await.unwrap();
        drain(&rotated).await;
        assert_eq!(task_status(&store, &first.id).await.0, TaskStatus::Complete);

        // Copy one task's sealed context onto the other: it must not open there.
        let copy =
            "UPDATE tasks SET context = (SELECT context FROM tasks WHERE id = $1) WHERE id = $2";
        match &url {
            DatabaseUrl::Sqlite(path) => {
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                sqlx::query(copy)
                    .bind(&first.id)
                    .bind(&second.id)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            DatabaseUrl::Postgres(pg) => {
                let mut conn = sqlx::PgConnection::connect(pg).await.unwrap();
                sqlx::query(copy)
                    .bind(&first.id)
                    .bind(&second.id)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
        let error = rotated
            .task_context(&second.id)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("decryption failed"), "{error}");
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_branches_of_a_dag_run_concurrently() {
    both(|url| async move {
        let server = TestServer::start().await;
        let store = Store::open(&url).await.unwrap();
        let clock = stepbox::engine::SystemClock;
        let engine = Engine::new(store.clone(), Arc::new(KeyRing::generate().unwrap()), sandbox().clone(), Arc::new(clock));
        let policy = NamespacePolicy { hosts: [server.origin()].into(), ..NamespacePolicy::default() };
        engine.set_policy(NS, &policy, "user:admin").await.unwrap();
        engine.register_module(NS, "noop", "0.1.0", &component("noop"), "user:team_lead").await.unwrap();
        engine.register_module(NS, "probe", "0.1.0", &component("hostile_http_probe"), "user:team_lead").await.unwrap();
        let branch = |name: &str| json!({ "name": name, "module": "probe@0.1.0", "depends_on": ["start"],
            "hosts": [server.origin()], "config": { "method": "GET", "url": server.url("/delay") } });
        let definition = json!({
            "namespace": NS, "name": "fan_out", "version": "1.0.0",
            "input_schema": { "type": "object", "properties": {} },
            "steps": [ { "name": "start", "module": "noop@0.1.0" }, branch("left"), branch("right"),
                       { "name": "join", "module": "noop@0.1.0", "depends_on": ["left", "right"] } ]
        });
        engine.apply_workflow(&definition.to_string(), "user:team_lead").await.unwrap();
        let request = CreateTask { namespace: NS.into(), workflow: "fan_out".into(), version: None, context: json!({}), reason: None, tags: vec![], correlation_id: None, request: None };
        let created = engine.create_task(&agent(), request).await.unwrap();

        run_pool_until(&engine, &store, &created.id, TaskStatus::Complete).await;
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        // Each branch waits 0.4 s on the server: run one after the other, the second
        // request would arrive at least 0.4 s after the first.
        let gap = seen[1].at.duration_since(seen[0].at);
        assert!(gap < std::time::Duration::from_millis(300), "branches ran one after the other ({gap:?} apart)");
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test]
async fn a_step_whose_data_no_longer_opens_fails_once_and_is_not_claimed_again() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        // The subject's key is destroyed (as erasure will): the context can no longer open.
        let mut tx = store.begin().await.unwrap();
        let task = tx.get_task(&created.id).await.unwrap().unwrap();
        tx.destroy_data_key(&task.data_key_id, 1_764_000_000_001)
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let ran = engine.run_once("w1").await.unwrap();
        assert_eq!(
            ran,
            Ran::Step {
                task_id: created.id.clone(),
                step: "validate_refund_request".into(),
                status: "error".into()
            }
        );
        assert_eq!(
            engine.run_once("w1").await.unwrap(),
            Ran::Idle,
            "not claimed again"
        );
        assert_eq!(task_status(&store, &created.id).await.0, TaskStatus::Error);
        let mut tx = store.begin_read().await.unwrap();
        let failed = tx
            .get_step(&created.id, "validate_refund_request")
            .await
            .unwrap()
            .unwrap();
        tx.commit().await.unwrap();
        assert!(
            failed.error.as_deref().unwrap().contains("unrunnable"),
            "{:?}",
            failed.error
        );
        let mut tx = store.begin_read().await.unwrap();
        let events = tx.audit_events(i64::MIN, 1000).await.unwrap();
        tx.commit().await.unwrap();
        assert!(events.iter().any(|e| e.action == "step.failed"
            && e.details.contains("unrunnable")
            && !e.details.contains(CUSTOMER_EMAIL)));
        chain_is_intact(&store).await;
    })
    .await;
}

fn request_for(customer: &str, amount: f64) -> CreateTask {
    let mut request = refund_request(amount);
    request.context["customer_id"] = json!(customer);
    request
}

#[tokio::test]
async fn creations_made_at_once_are_stored_together_and_one_that_cannot_be_keyed_fails_alone() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        // A subject whose key is destroyed (erased): new tasks about them cannot be sealed.
        let erased = engine
            .create_task(&agent(), request_for("cus_erased", 10.0))
            .await
            .unwrap();
        let mut tx = store.begin().await.unwrap();
        let erased_key = tx.get_task(&erased.id).await.unwrap().unwrap().data_key_id;
        tx.destroy_data_key(&erased_key, 1_764_000_000_001)
            .await
            .unwrap();
        tx.commit().await.unwrap();

        // Thirty creations at once: three new customers, ten tasks each, and one for the
        // erased subject among them.
        let creations: Vec<_> = (0..31)
            .map(|n| {
                let engine = engine.clone();
                let customer = if n == 30 {
                    "cus_erased".to_owned()
                } else {
                    format!("cus_new_{}", n % 3)
                };
                tokio::spawn(async move {
                    engine
                        .create_task(&agent(), request_for(&customer, 20.0 + n as f64))
                        .await
                })
            })
            .collect();
        let mut created = Vec::new();
        let mut refused = Vec::new();
        for creation in creations {
            match creation.await.unwrap() {
                Ok(task) => created.push(task),
                Err(e) => refused.push(e.to_string()),
            }
        }
        assert_eq!(created.len(), 30, "refused: {refused:?}");
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("destroyed"), "{refused:?}");

        // Each new customer got one key, shared by their ten tasks; each task's audit
        // sequence number is its own `task.created` event.
        let mut tx = store.begin_read().await.unwrap();
        let mut keys = std::collections::HashMap::new();
        for task in &created {
            let row = tx.get_task(&task.id).await.unwrap().unwrap();
            keys.entry(row.subject.clone().unwrap())
                .or_insert_with(std::collections::HashSet::new)
                .insert(row.data_key_id.clone());
            let events = tx
                .query_audit(
                    &stepbox::store::AuditFilter {
                        resource: Some(format!("task/{}", task.id)),
                        action: Some("task.created".into()),
                        ..Default::default()
                    },
                    10,
                )
                .await
                .unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].seq, task.audit_seq, "{}", task.id);
            assert_eq!(tx.get_steps(&task.id).await.unwrap().len(), 4);
        }
        tx.commit().await.unwrap();
        assert_eq!(keys.len(), 3, "three subjects");
        assert!(keys.values().all(|ids| ids.len() == 1), "{keys:?}");

        // And they all run.
        drain(&engine).await;
        for task in &created {
            assert_eq!(task_status(&store, &task.id).await.0, TaskStatus::Complete);
        }
        chain_is_intact(&store).await;
    })
    .await;
}
