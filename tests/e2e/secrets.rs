//! Secrets at rest on both databases: sealed in the `secrets` table, opened by the worker
//! for the step that is granted them, never in the clear on disk or in the audit trail,
//! still readable after KEK rotation, unreadable when moved to another secret's row; and
//! `stepbox secrets set` as an operator runs it.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;

use sqlx::Connection;
use stepbox::crypto::KeyRing;
use stepbox::engine::{Engine, EngineError, SystemClock};
use stepbox::policy::NamespacePolicy;
use stepbox::sandbox::SecretValue;
use stepbox::store::{DatabaseUrl, Store, TaskStatus};

use crate::engine::{NS, Setup, agent, both, drain, refund_request, setup, task_status};
use crate::support::*;

const SECRET: &str = "NOTIFY_API_KEY";

/// Run one statement on the raw database, around the store.
async fn raw_execute(url: &DatabaseUrl, sql: &str) {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        DatabaseUrl::Postgres(pg) => {
            let mut conn = sqlx::PgConnection::connect(pg).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

/// The `value` column of every stored secret, as the database holds it.
async fn raw_values(url: &DatabaseUrl) -> Vec<Vec<u8>> {
    let sql = "SELECT value FROM secrets";
    match url {
        DatabaseUrl::Sqlite(path) => {
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
        DatabaseUrl::Postgres(pg) => {
            let mut conn = sqlx::PgConnection::connect(pg).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn open_secrets(
    engine: &Engine,
    names: &[&str],
) -> Result<std::collections::BTreeMap<String, SecretValue>, EngineError> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut tx = engine.store().begin_read().await.unwrap();
    let opened = engine.step_secrets(&mut tx, NS, &names).await;
    tx.commit().await.unwrap();
    opened
}

#[tokio::test]
async fn a_secret_reaches_its_step_from_the_store_and_is_never_stored_in_the_clear() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        drain(&engine).await;
        assert_eq!(
            task_status(&store, &created.id).await.0,
            TaskStatus::Complete
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].headers["authorization"].to_str().unwrap(),
            format!("Bearer {NOTIFY_KEY}"),
            "the host substituted the stored value"
        );

        let values = raw_values(&url).await;
        assert_eq!(values.len(), 1);
        assert!(
            !contains(&values[0], NOTIFY_KEY),
            "the column holds ciphertext"
        );
        let mut tx = store.begin_read().await.unwrap();
        let events = tx.audit_events(i64::MIN, 10_000).await.unwrap();
        tx.commit().await.unwrap();
        let set = events
            .iter()
            .find(|e| e.action == "secret.set")
            .expect("secret.set audited");
        assert_eq!(set.resource, format!("secret/{NS}/{SECRET}"));
        assert!(set.details.contains(SECRET));
        for event in &events {
            assert!(
                !event.details.contains(NOTIFY_KEY),
                "{} carries the value",
                event.action
            );
        }

        if let DatabaseUrl::Sqlite(path) = &url {
            store.close().await;
            for file in [path.clone(), path.with_extension("db-wal")] {
                if let Ok(bytes) = std::fs::read(&file) {
                    assert!(
                        !contains(&bytes, NOTIFY_KEY),
                        "the value is in {}",
                        file.display()
                    );
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_secret_outside_the_policy_is_refused_and_an_unset_one_is_absent() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, .. } = setup(&url, &server, "/notify", 3).await;
        let error = engine
            .set_secret(
                NS,
                "OTHER_KEY",
                &SecretValue::new("sk_other_92f1"),
                "user:admin",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&error, EngineError::Invalid(m) if m.contains("policy")),
            "{error}"
        );
        assert!(!error.to_string().contains("sk_other_92f1"), "{error}");
        let missing = engine
            .set_secret("nowhere", SECRET, &SecretValue::new("x"), "user:admin")
            .await
            .unwrap_err();
        assert!(matches!(missing, EngineError::NotFound(_)), "{missing}");

        let opened = open_secrets(&engine, &[SECRET, "OTHER_KEY"]).await.unwrap();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[SECRET], SecretValue::new(NOTIFY_KEY));
    })
    .await;
}

#[tokio::test]
async fn a_secret_survives_kek_rotation_and_a_value_moved_to_another_row_does_not_open() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let policy = NamespacePolicy {
            hosts: [server.origin()].into(),
            secrets: [SECRET.to_owned(), "BACKUP_KEY".to_owned()].into(),
            ..NamespacePolicy::default()
        };
        engine.set_policy(NS, &policy, "user:admin").await.unwrap();
        engine
            .set_secret(
                NS,
                "BACKUP_KEY",
                &SecretValue::new("bk_live_0d2e77"),
                "user:admin",
            )
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("keys.json");
        engine.keys().save_file(&key_file).unwrap();
        let mut ring = KeyRing::load_file(&key_file).unwrap();
        let old = ring.active_id().clone();
        ring.rotate().unwrap();
        let rotation = stepbox::engine::rewrap_all(&store, &ring, "user:admin", 1)
            .await
            .unwrap();
        assert_eq!(rotation.rewrapped, 2, "one data key per secret");
        ring.retire(&old).unwrap();
        let rotated = Engine::new(
            store.clone(),
            Arc::new(ring),
            sandbox().clone(),
            Arc::new(SystemClock),
        );
        let opened = open_secrets(&rotated, &[SECRET, "BACKUP_KEY"])
            .await
            .unwrap();
        assert_eq!(opened[SECRET], SecretValue::new(NOTIFY_KEY));
        assert_eq!(opened["BACKUP_KEY"], SecretValue::new("bk_live_0d2e77"));
        let stale = open_secrets(&engine, &[SECRET]).await.unwrap_err();
        assert!(
            matches!(stale, EngineError::Crypto(_)),
            "the retired KEK no longer opens it: {stale}"
        );

        // Another row's ciphertext, with its data key: the associated data names the row.
        raw_execute(
            &url,
            "UPDATE secrets SET value = (SELECT value FROM secrets WHERE name = 'NOTIFY_API_KEY'),
                    data_key_id = (SELECT data_key_id FROM secrets WHERE name = 'NOTIFY_API_KEY')
             WHERE name = 'BACKUP_KEY'",
        )
        .await;
        let error = open_secrets(&rotated, &["BACKUP_KEY"]).await.unwrap_err();
        assert!(error.to_string().contains("decryption failed"), "{error}");
        assert_eq!(
            open_secrets(&rotated, &[SECRET]).await.unwrap()[SECRET],
            SecretValue::new(NOTIFY_KEY)
        );
    })
    .await;
}

/// Run `stepbox secrets set NS name` with `stdin` as its input.
fn secrets_set(
    data_dir: &std::path::Path,
    extra: &[&str],
    name: &str,
    stdin: &str,
) -> std::process::Output {
    let mut args = vec!["secrets", "set", NS, name];
    args.extend_from_slice(extra);
    let mut child = stepbox(&args, data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn stepbox_secrets_set_reads_the_value_from_stdin_or_an_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path();
    assert!(
        stepbox(&["keys", "init"], data_dir)
            .output()
            .unwrap()
            .status
            .success()
    );
    let store = Store::open(&DatabaseUrl::in_data_dir(data_dir))
        .await
        .unwrap();
    let ring = KeyRing::load_file(&data_dir.join("keys.json")).unwrap();
    let engine = Engine::new(
        store,
        Arc::new(ring),
        sandbox().clone(),
        Arc::new(SystemClock),
    );
    let policy = NamespacePolicy {
        secrets: [SECRET.to_owned()].into(),
        ..NamespacePolicy::default()
    };
    engine.set_policy(NS, &policy, "user:admin").await.unwrap();

    let output = secrets_set(data_dir, &[], SECRET, "nk_from_stdin_51d0\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        printed,
        serde_json::json!({ "namespace": NS, "name": SECRET })
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("nk_from_stdin"));
    assert_eq!(
        open_secrets(&engine, &[SECRET]).await.unwrap()[SECRET],
        SecretValue::new("nk_from_stdin_51d0")
    );

    let output = stepbox(
        &[
            "secrets",
            "set",
            NS,
            SECRET,
            "--from-env",
            "STEPBOX_TEST_VALUE",
        ],
        data_dir,
    )
    .env("STEPBOX_TEST_VALUE", "nk_from_env_77aa")
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("nk_from_env"));
    assert_eq!(
        open_secrets(&engine, &[SECRET]).await.unwrap()[SECRET],
        SecretValue::new("nk_from_env_77aa")
    );

    let refused = secrets_set(data_dir, &[], "OTHER_KEY", "nk_refused_3c\n");
    assert_eq!(refused.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("policy") && !stderr.contains("nk_refused"),
        "{stderr}"
    );
    let two_lines = secrets_set(data_dir, &[], SECRET, "line one\nline two\n");
    assert_eq!(two_lines.status.code(), Some(3));
    assert_eq!(
        open_secrets(&engine, &[SECRET]).await.unwrap()[SECRET],
        SecretValue::new("nk_from_env_77aa")
    );
}
