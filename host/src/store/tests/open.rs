//! Opening, migrating, URLs, transactions and unreachable servers.

use std::time::Duration;

use super::{NOW, both, both_at, scalar_i64, write};
use crate::store::{Backend, DatabaseUrl, Store, StoreError, StoreOptions};

const TABLES: [&str; 11] = [
    "namespaces",
    "modules",
    "workflows",
    "data_keys",
    "subjects",
    "tasks",
    "steps",
    "step_attempts",
    "audit_events",
    "audit_checkpoints",
    "subject_aliases",
];

fn migration_files(backend: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("migrations directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn migrations_are_mirrored_file_for_file() {
    let sqlite = migration_files("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, migration_files("postgres"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_create_the_schema_on_a_fresh_database() {
    both(|store| async move {
        for table in TABLES {
            let rows = scalar_i64(&store, &format!("SELECT COUNT(*) FROM {table}")).await;
            assert_eq!(rows, 0, "{table} exists and is empty");
        }
        let applied = scalar_i64(&store, "SELECT COUNT(*) FROM _sqlx_migrations").await;
        assert_eq!(applied as usize, migration_files("sqlite").len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopening_runs_no_migration_twice_and_keeps_the_data() {
    both_at(|url| async move {
        let store = Store::open(&url).await.expect("first open");
        write(&store, async |tx| {
            tx.upsert_namespace("payments", "{}", NOW).await
        })
        .await
        .expect("write");
        store.close().await;

        let store = Store::open(&url).await.expect("second open");
        let applied = scalar_i64(&store, "SELECT COUNT(*) FROM _sqlx_migrations").await;
        assert_eq!(applied as usize, migration_files("sqlite").len());
        let mut tx = store.begin_read().await.expect("begin");
        assert!(tx.get_namespace("payments").await.expect("read").is_some());
        tx.commit().await.expect("commit");
        store.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_or_dropped_transaction_leaves_nothing() {
    both(|store| async move {
        let mut tx = store.begin().await.expect("begin");
        tx.upsert_namespace("rolled_back", "{}", NOW)
            .await
            .expect("write");
        tx.rollback().await.expect("rollback");
        {
            let mut tx = store.begin().await.expect("begin");
            tx.upsert_namespace("dropped", "{}", NOW)
                .await
                .expect("write");
        }
        let mut tx = store.begin().await.expect("begin");
        assert!(
            tx.get_namespace("rolled_back")
                .await
                .expect("read")
                .is_none()
        );
        assert!(tx.get_namespace("dropped").await.expect("read").is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_is_reported() {
    both(|store| async move {
        let expected = match store.url() {
            DatabaseUrl::Sqlite(_) => Backend::Sqlite,
            DatabaseUrl::Postgres(_) => Backend::Postgres,
        };
        assert_eq!(store.backend(), expected);
        assert_eq!(store.begin().await.expect("begin").backend(), expected);
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable_and_the_error_hides_the_password() {
    let url = DatabaseUrl::parse("postgres://stepbox:hunter2@127.0.0.1:1/stepbox").expect("url");
    let options = StoreOptions {
        acquire_timeout: Duration::from_millis(300),
        ..StoreOptions::default()
    };
    let err = Store::open_with(&url, &options)
        .await
        .expect_err("port 1 is closed");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn database_url_display_hides_the_password() {
    let url =
        DatabaseUrl::parse("postgres://stepbox:hunter2@db.internal:5432/stepbox?sslmode=require")
            .expect("url");
    for printed in [url.to_string(), format!("{url:?}")] {
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("stepbox:***@db.internal:5432/stepbox"),
            "{printed}"
        );
    }
    let url = DatabaseUrl::parse("postgresql://db/stepbox?user=s&password=hunter2").expect("url");
    assert!(!url.to_string().contains("hunter2"), "{url}");
}

#[test]
fn database_urls_parse() {
    assert_eq!(
        DatabaseUrl::parse("sqlite:///var/lib/stepbox/stepbox.db").expect("url"),
        DatabaseUrl::Sqlite("/var/lib/stepbox/stepbox.db".into())
    );
    assert_eq!(
        DatabaseUrl::parse("data/stepbox.db").expect("url"),
        DatabaseUrl::Sqlite("data/stepbox.db".into())
    );
    assert!(matches!(
        DatabaseUrl::parse("postgres://postgres@127.0.0.1/x"),
        Ok(DatabaseUrl::Postgres(_))
    ));
    for bad in [
        "mysql://u:hunter2@h/db",
        "sqlite::memory:",
        "",
        "data/stepbox.txt",
    ] {
        let err = DatabaseUrl::parse(bad).expect_err(bad);
        assert!(!err.to_string().contains("hunter2"));
    }
}

#[tokio::test]
async fn sqlite_creates_missing_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a").join("b").join("stepbox.db");
    let store = Store::open(&DatabaseUrl::Sqlite(path.clone()))
        .await
        .expect("open");
    assert!(path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(match &store.pool {
            crate::store::backend::Pool::Sqlite(pools) => &pools.readers,
            crate::store::backend::Pool::Postgres(_) => unreachable!(),
        })
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    store.close().await;
}
