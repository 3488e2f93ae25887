//! One suite, both backends. Each test body is written once, as an async closure taking a
//! [`Store`] (or a [`DatabaseUrl`]), and [`both`] runs it against a fresh SQLite file and a
//! fresh PostgreSQL database of its own.
//!
//! PostgreSQL comes from `STEPBOX_TEST_POSTGRES_URL` (an admin URL; default
//! `postgres://postgres@127.0.0.1:5432/postgres`). If it is unreachable the PostgreSQL half
//! says `skipped: …` on stderr and passes, unless `STEPBOX_REQUIRE_POSTGRES=1`, in which
//! case it fails.

mod audit;
mod batches;
mod claims;
mod control;
mod keys;
mod lite;
mod open;
mod records;
mod secrets;

use std::future::Future;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::{Connection, Executor, PgConnection};

use super::backend::with_pool;
use super::{DatabaseUrl, StepRow, Store, TaskRow, TaskStatus, Tx, WorkflowRow};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long to wait for the PostgreSQL test server before calling it unreachable.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A fixed "now" for tests, unix ms.
pub(crate) const NOW: i64 = 1_700_000_000_000;

/// Runs `test` on a store over a fresh SQLite file, then over a fresh PostgreSQL database.
pub(crate) async fn both<F, Fut>(test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    both_at(|url| {
        let test = &test;
        async move {
            let store = Store::open(&url).await.expect("open the store");
            test(store.clone()).await;
            store.close().await;
        }
    })
    .await;
}

/// Runs `test` with the URL of a fresh SQLite file, then of a fresh PostgreSQL database;
/// the test opens (and reopens) the store itself.
pub(super) async fn both_at<F, Fut>(test: F)
where
    F: Fn(DatabaseUrl) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    test(DatabaseUrl::Sqlite(
        dir.path().join("data").join("stepbox.db"),
    ))
    .await;

    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let outcome = AssertUnwindSafe(test(database.url.clone()))
        .catch_unwind()
        .await;
    database.drop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A PostgreSQL database made for one test and dropped after it.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: DatabaseUrl,
}

impl TestDatabase {
    /// Creates `stepbox_test_<random hex>`, or returns `None` (having said so) if the
    /// server is unreachable and not required.
    async fn create() -> Option<Self> {
        let admin_url = std::env::var("STEPBOX_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let printable = DatabaseUrl::parse(&admin_url).expect("a postgres:// admin URL");
        let mut admin = match connect_admin(&admin_url).await {
            Ok(admin) => admin,
            Err(reason) => {
                let required = std::env::var("STEPBOX_REQUIRE_POSTGRES")
                    .is_ok_and(|value| !value.is_empty() && value != "0");
                assert!(
                    !required,
                    "PostgreSQL not reachable at {printable} ({reason}) and STEPBOX_REQUIRE_POSTGRES is set"
                );
                // Written to stderr directly: libtest captures `eprintln!` of passing tests,
                // and a skip must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: PostgreSQL not reachable at {printable} ({reason})"
                );
                return None;
            }
        };
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("random bytes");
        let name = format!("stepbox_test_{}", hex::encode(random));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let mut url = url::Url::parse(&admin_url).expect("admin URL");
        url.set_path(&format!("/{name}"));
        Some(Self {
            admin_url,
            name,
            url: DatabaseUrl::Postgres(url.to_string()),
        })
    }

    /// Drops the database, best effort.
    async fn drop(self) {
        if let Ok(mut admin) = connect_admin(&self.admin_url).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            if let Err(err) = admin.execute(sql.as_str()).await {
                eprintln!("could not drop test database {}: {err}", self.name);
            }
            let _ = admin.close().await;
        }
    }
}

async fn connect_admin(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(ADMIN_CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Runs one write transaction and commits it.
pub(super) async fn write<T>(
    store: &Store,
    work: impl AsyncFnOnce(&mut Tx<'_>) -> Result<T, super::StoreError>,
) -> Result<T, super::StoreError> {
    let mut tx = store.begin().await?;
    let value = work(&mut tx).await?;
    tx.commit().await?;
    Ok(value)
}

/// A scalar from a raw query, for checks the face does not offer.
pub(super) async fn scalar_i64(store: &Store, sql: &str) -> i64 {
    with_pool!(&store.pool, |pool| {
        sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await
    })
    .expect("raw query")
}

/// The namespace `payments`, workflow `payments.refund@1.0.0` and data key `dk_1`.
pub(super) async fn seed_workflow(store: &Store) {
    write(store, async |tx| {
        tx.upsert_namespace("payments", r#"{"hosts":[]}"#, NOW)
            .await?;
        tx.insert_workflow(&workflow("1.0.0", NOW)).await?;
        tx.insert_data_key(&super::DataKeyRow {
            id: "dk_1".to_owned(),
            kek_id: "kek_1".to_owned(),
            wrapped: vec![7; 40],
            subject: None,
            created_at: NOW,
            destroyed_at: None,
            pad: None,
        })
        .await
    })
    .await
    .expect("seed workflow");
}

pub(super) fn workflow(version: &str, created_at: i64) -> WorkflowRow {
    WorkflowRow {
        namespace: "payments".to_owned(),
        name: "refund".to_owned(),
        version: version.to_owned(),
        definition: format!(r#"{{"version":"{version}"}}"#),
        created_by: "user_1".to_owned(),
        created_at,
    }
}

pub(super) fn task(id: &str, created_at: i64) -> TaskRow {
    TaskRow {
        id: id.to_owned(),
        namespace: "payments".to_owned(),
        workflow_name: "refund".to_owned(),
        workflow_version: "1.0.0".to_owned(),
        status: TaskStatus::Pending,
        context: vec![0xC1, 0xC2, 0xC3],
        data_key_id: "dk_1".to_owned(),
        subject: Some("bi_subject".to_owned()),
        classification: "confidential".to_owned(),
        contains_pii: true,
        created_by: "user_1".to_owned(),
        principal: r#"{"sub":"user_1","permissions":["payments.refund:execute"]}"#.to_owned(),
        reason: Some("customer asked".to_owned()),
        tags: r#"{"ticket":"T-1"}"#.to_owned(),
        error_step: None,
        created_at,
        updated_at: created_at,
        finished_at: None,
    }
}

/// Stores task `id` with `steps` (name, dependencies), all pending and due at [`NOW`].
/// Expects [`seed_workflow`] to have run.
pub(super) async fn seed_task(store: &Store, id: &str, steps: &[(&str, &[&str])]) {
    let rows: Vec<StepRow> = steps
        .iter()
        .map(|(name, deps)| StepRow::pending(id, name, deps, NOW))
        .collect();
    write(store, async |tx| {
        tx.insert_task(&task(id, NOW)).await?;
        tx.insert_steps(&rows).await
    })
    .await
    .expect("seed task");
}
