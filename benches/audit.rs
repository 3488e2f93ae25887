//! The audit trail's costs, each against a baseline measured in the same run:
//!
//! - **append**: events recorded by concurrent writers, one per transaction and 14 per
//!   transaction (a refund task's worth), on SQLite and PostgreSQL, against the same rows
//!   inserted into a bare table of the same columns (no index, no barrier, no chain);
//!   then the sealer's cost per event.
//! - **verify**: the chain verifier over N sealed events in memory, against SHA-256 of
//!   the same canonical bytes alone (target ≥ 1,000,000 events/s); and the online
//!   verification of a SQLite database of N events, against reading them.
//! - **report**: the compliance report over that database, against a bare count of it.
//!
//! `cargo bench --bench audit` (what `./dev bench` runs). Under `cargo test` (no `--bench`
//! argument) a few thousand events, so the benchmark itself stays working. Environment:
//! `STEPBOX_BENCH_EVENTS` (default 1,000,000: the verify and report database),
//! `STEPBOX_BENCH_APPEND` (events per append configuration, default 20,000),
//! `STEPBOX_BENCH_WRITERS` (default 8), `STEPBOX_BENCH_BACKEND` (`sqlite` or `postgres`).

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_URL, drop_postgres_db, env_usize, postgres_db};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Connection;
use stepbox::audit::{self, NewEvent, ReportInputs, Verifier};
use stepbox::crypto::KeyRing;
use stepbox::store::{AuditRow, DatabaseUrl, Store};

const NOW: i64 = 1_764_000_000_000;

fn event(n: usize) -> NewEvent {
    NewEvent {
        actor: format!("user:user_{}", n % 50),
        action: [
            "task.created",
            "step.completed",
            "task.completed",
            "task.read",
        ][n % 4]
            .into(),
        resource: format!("task/task_{n:08x}"),
        namespace: Some("customer_success".into()),
        outcome: "success".into(),
        classification: Some("restricted".into()),
        contains_pii: true,
        correlation_id: Some(format!("req_{n:012x}")),
        details: json!({ "workflow": "process_refund@1.0.0", "attempt": 1, "duration_ms": 4,
                         "data_classes": ["financial", "pii-contact"] }),
    }
}

fn row(n: usize) -> AuditRow {
    let e = event(n);
    AuditRow {
        seq: n as i64 + 1,
        id: format!("evt_{n:032x}"),
        ts: NOW + n as i64,
        actor: e.actor,
        action: e.action,
        resource: e.resource,
        namespace: e.namespace,
        outcome: e.outcome,
        classification: e.classification,
        contains_pii: e.contains_pii,
        correlation_id: e.correlation_id,
        details: e.details.to_string(),
        prev_hash: None,
        hash: None,
    }
}

fn per_event(elapsed: Duration, events: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / events as f64
}

/// `writers` tasks each recording its share of `events`, `per_tx` per transaction.
async fn append(store: &Store, events: usize, writers: usize, per_tx: usize) -> Duration {
    let started = Instant::now();
    let share = events / writers;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let batch: Vec<NewEvent> = (0..per_tx).map(|i| event(w * share + i)).collect();
                for _ in 0..share / per_tx {
                    let mut tx = store.begin().await.unwrap();
                    audit::record_many(&mut tx, &batch, NOW).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    started.elapsed()
}

/// The baseline of [`append`]: the same rows into a bare table of the same columns.
async fn append_bare(url: &DatabaseUrl, events: usize, writers: usize, per_tx: usize) -> Duration {
    const CREATE: &str = "CREATE TABLE IF NOT EXISTS bare_events (
        id TEXT NOT NULL, ts BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        resource TEXT NOT NULL, namespace TEXT, outcome TEXT NOT NULL, classification TEXT,
        contains_pii BOOLEAN NOT NULL, correlation_id TEXT, details TEXT NOT NULL)";
    let share = events / writers;
    let rows = |w: usize| -> Vec<AuditRow> { (0..per_tx).map(|i| row(w * share + i)).collect() };
    let sql = |n: usize| {
        let values: Vec<String> = (0..n)
            .map(|r| {
                let p: Vec<String> = (1..=11).map(|c| format!("${}", r * 11 + c)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO bare_events (id, ts, actor, action, resource, namespace, outcome, \
             classification, contains_pii, correlation_id, details) VALUES {}",
            values.join(", ")
        )
    };
    macro_rules! bind_all {
        ($query:expr, $rows:expr) => {{
            let mut q = $query;
            for r in $rows {
                q = q
                    .bind(r.id.clone())
                    .bind(r.ts)
                    .bind(r.actor.clone())
                    .bind(r.action.clone())
                    .bind(r.resource.clone())
                    .bind(r.namespace.clone())
                    .bind(r.outcome.clone())
                    .bind(r.classification.clone())
                    .bind(r.contains_pii)
                    .bind(r.correlation_id.clone())
                    .bind(r.details.clone());
            }
            q
        }};
    }
    // Each writer inserts its share, `per_tx` rows per transaction, into `$pool`.
    macro_rules! run_writers {
        ($pool:expr) => {{
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let (pool, batch, sql) = ($pool.clone(), rows(w), sql(per_tx));
                    tokio::spawn(async move {
                        for _ in 0..share / per_tx {
                            let mut tx = pool.begin().await.unwrap();
                            bind_all!(sqlx::query(&sql), &batch)
                                .execute(&mut *tx)
                                .await
                                .unwrap();
                            tx.commit().await.unwrap();
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.await.unwrap();
            }
        }};
    }
    let started;
    match url {
        DatabaseUrl::Sqlite(path) => {
            // The store's own settings: WAL, synchronous NORMAL, one writer at a time.
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30));
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            sqlx::query(CREATE).execute(&pool).await.unwrap();
            started = Instant::now();
            run_writers!(pool);
        }
        DatabaseUrl::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(CREATE).execute(&pool).await.unwrap();
            started = Instant::now();
            run_writers!(pool);
        }
    }
    started.elapsed()
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let events = if benching {
        env_usize("STEPBOX_BENCH_EVENTS", 1_000_000)
    } else {
        5_000
    };
    let appended = if benching {
        env_usize("STEPBOX_BENCH_APPEND", 20_000)
    } else {
        1_120
    };
    let writers = env_usize("STEPBOX_BENCH_WRITERS", 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let only = std::env::var("STEPBOX_BENCH_BACKEND").ok();
        let mut backends = Vec::new();
        if only.as_deref() != Some("postgres") {
            backends.push("sqlite");
        }
        if only.as_deref() != Some("sqlite") {
            if sqlx::PgConnection::connect(ADMIN_URL).await.is_ok() {
                backends.push("postgres");
            } else {
                assert!(
                    std::env::var("STEPBOX_REQUIRE_POSTGRES").is_err(),
                    "PostgreSQL required but unreachable"
                );
                eprintln!("skipped: PostgreSQL not reachable at {ADMIN_URL}");
            }
        }

        println!("audit append: {appended} events per configuration, {writers} concurrent writers");
        for backend in backends {
            for per_tx in [1, 14] {
                let dir = tempfile::tempdir().unwrap();
                let (url, pg) = match backend {
                    "sqlite" => (DatabaseUrl::Sqlite(dir.path().join("stepbox.db")), None),
                    _ => {
                        let (url, name) = postgres_db().await;
                        (url, Some(name))
                    }
                };
                let store = Store::open(&url).await.unwrap();
                let bare = append_bare(&url, appended, writers, per_tx).await;
                let chained = append(&store, appended, writers, per_tx).await;
                let sealing = Instant::now();
                let sealed = audit::seal_pending(&store).await.unwrap()
                    + audit::seal_pending(&store).await.unwrap();
                let sealing = sealing.elapsed();
                let report = audit::verify(&store).await.unwrap();
                assert!(report.is_intact() && report.unsealed == 0, "{report:?}");
                assert_eq!(sealed as usize, report.checked as usize);
                println!(
                    "  {backend:8} {per_tx:2}/tx: audit {:7.1} µs/event, bare table {:7.1} µs/event \
                     (×{:.2}); sealing {:5.1} µs/event",
                    per_event(chained, appended),
                    per_event(bare, appended),
                    chained.as_secs_f64() / bare.as_secs_f64(),
                    per_event(sealing, sealed as usize),
                );
                store.close().await;
                if let Some(name) = pg {
                    drop_postgres_db(&name).await;
                }
            }
        }

        // Verification in memory.
        let mut rows: Vec<AuditRow> = (0..events).map(row).collect();
        audit::seal_in_order(&mut rows, audit::GENESIS);
        let started = Instant::now();
        let mut verifier = Verifier::default();
        rows.iter().for_each(|r| verifier.push(r));
        let report = verifier.finish();
        let verifying = started.elapsed();
        assert!(report.is_intact() && report.checked as usize == events);
        let started = Instant::now();
        let mut sink = 0u8;
        for r in &rows {
            sink ^= Sha256::digest(audit::canonical(r))[0];
        }
        let hashing = started.elapsed();
        println!(
            "audit verify, {events} events in memory: {:.0} events/s (target ≥ 1,000,000); \
             SHA-256 of the canonical bytes alone {:.0} events/s (×{:.2}) [{sink}]",
            events as f64 / verifying.as_secs_f64(),
            events as f64 / hashing.as_secs_f64(),
            verifying.as_secs_f64() / hashing.as_secs_f64(),
        );
        drop(rows);

        // A SQLite trail of `events`, verified online and reported on.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("stepbox.db")))
            .await
            .unwrap();
        let started = Instant::now();
        for chunk in (0..events).collect::<Vec<_>>().chunks(10_000) {
            let batch: Vec<NewEvent> = chunk.iter().map(|n| event(*n)).collect();
            let mut tx = store.begin().await.unwrap();
            audit::record_many(&mut tx, &batch, NOW).await.unwrap();
            tx.commit().await.unwrap();
        }
        while audit::seal_pending(&store).await.unwrap() > 0 {}
        let loading = started.elapsed();
        let started = Instant::now();
        let report = audit::verify(&store).await.unwrap();
        let online = started.elapsed();
        assert!(report.is_intact() && report.checked as usize == events, "{report:?}");
        let started = Instant::now();
        let mut read = 0;
        let mut from = i64::MIN;
        loop {
            let mut tx = store.begin_read().await.unwrap();
            let page = tx.audit_events(from, 10_000).await.unwrap();
            tx.commit().await.unwrap();
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            read += page.len();
        }
        let reading = started.elapsed();
        assert_eq!(read, events);
        println!(
            "audit verify online (SQLite, {events} events, loaded in {:.1} s): {:.0} events/s; \
             reading them alone {:.0} events/s (×{:.2})",
            loading.as_secs_f64(),
            events as f64 / online.as_secs_f64(),
            events as f64 / reading.as_secs_f64(),
            online.as_secs_f64() / reading.as_secs_f64(),
        );

        let ring = KeyRing::generate().unwrap();
        let inputs = ReportInputs {
            ring: &ring,
            checkpoint_keys: None,
            now_ms: NOW + events as i64,
        };
        let started = Instant::now();
        let report = audit::compliance_report(&store, &inputs, NOW, NOW + events as i64 + 1)
            .await
            .unwrap();
        let reporting = started.elapsed();
        assert_eq!(report["events_in_period"], events as i64);
        let started = Instant::now();
        let mut tx = store.begin_read().await.unwrap();
        let counts = tx.audit_counts(NOW, NOW + events as i64 + 1).await.unwrap();
        tx.commit().await.unwrap();
        let counting = started.elapsed();
        assert_eq!(counts.iter().map(|(_, _, n)| n).sum::<i64>(), events as i64);
        println!(
            "compliance report over {events} events: {:.2} s (chain verification included); \
             one grouped count of the period alone {:.2} s",
            reporting.as_secs_f64(),
            counting.as_secs_f64(),
        );
    });
}
