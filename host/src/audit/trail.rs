//! The trail in the database: recording an event inside the caller's transaction,
//! sealing committed events into the chain, and verifying the stored chain.
//!
//! Why a sealer rather than hashing on insert: with many writers on PostgreSQL, hashing on
//! insert would make every transaction that records an event wait for the previous one
//! to commit (each needs its predecessor's hash) — one global lock around all writes.
//! Instead events are inserted unsealed with a database-assigned `seq` (writers take a
//! shared barrier lock and never wait for each other), and a sealer links committed
//! events in `seq` order; it takes the barrier exclusively for the instant it reads, so it
//! never seals past an event still being written. An event slipped in later behind the
//! sealed head stays unsealed there and verification reports it as inserted.
//!
//! SQLite has one writer, so there the engine's hot path (which holds the write lock for
//! the whole of its transaction) chains its events as it inserts them, after sealing what
//! other writers left behind the tip; the sealer then only has the events written through
//! sqlx (API denials, operator actions) to seal.

use serde::Serialize;

use super::chain::{GENESIS, Verification, Verifier, link_hash, stored_hash};
use super::checkpoint::CheckpointKeys;
use crate::store::{AuditRow, Backend, CheckpointRow, NewAuditRow, Store, StoreError, Tx};

/// Events sealed per round trip.
const SEAL_BATCH: i64 = 1_000;
/// Events read per page while verifying.
const VERIFY_PAGE: i64 = 10_000;

/// Why recording, sealing or verifying failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An event to record: what happened, to what, by whom. Never raw PII.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewEvent {
    /// `user:<sub>` or `system:<worker>`.
    pub actor: String,
    /// e.g. `task.created`.
    pub action: String,
    /// e.g. `task/task_01…`.
    pub resource: String,
    /// The namespace, if any.
    pub namespace: Option<String>,
    /// `success`, `denied`, `failure`.
    pub outcome: String,
    /// Classification of the data involved.
    pub classification: Option<String>,
    /// Whether PII was involved.
    pub contains_pii: bool,
    /// Request correlation id.
    pub correlation_id: Option<String>,
    /// Further details, a JSON object.
    pub details: serde_json::Value,
}

/// Record `event` at time `now_ms` inside `tx`, so it commits or rolls back with the change
/// it describes. Returns its sequence number.
pub async fn record(tx: &mut Tx<'_>, event: &NewEvent, now_ms: i64) -> Result<i64, AuditError> {
    Ok(tx.insert_audit_event(&row(event, now_ms)).await?)
}

/// Record `events` at time `now_ms` inside `tx`, many per statement, in the order given;
/// returns their sequence numbers in that order.
pub async fn record_many(
    tx: &mut Tx<'_>,
    events: &[NewEvent],
    now_ms: i64,
) -> Result<Vec<i64>, AuditError> {
    record_many_in(tx, events, now_ms).await
}

/// [`record_many`] on either write path (see `store::HotWrites`). On SQLite's hot path
/// the events go in already chained ([`record_chained`]).
pub(crate) async fn record_many_in<W: crate::store::HotWrites>(
    tx: &mut W,
    events: &[NewEvent],
    now_ms: i64,
) -> Result<Vec<i64>, AuditError> {
    record_rows_in(tx, &[], events, now_ms).await
}

/// The rows `events` will be stored as, built ahead of the transaction that records
/// them ([`record_rows_in`]): ids drawn and details serialized, so that little of an
/// event's cost is paid while that transaction holds the database.
pub(crate) fn rows(events: &[NewEvent], now_ms: i64) -> Vec<NewAuditRow> {
    events.iter().map(|event| row(event, now_ms)).collect()
}

/// Record rows built ahead ([`rows`]), then `events`, in that order inside `tx`, all at
/// time `now_ms` (the time of the change they describe, which commits with them).
pub(crate) async fn record_rows_in<W: crate::store::HotWrites>(
    tx: &mut W,
    built: &[&NewAuditRow],
    events: &[NewEvent],
    now_ms: i64,
) -> Result<Vec<i64>, AuditError> {
    let rows = built
        .iter()
        .map(|&built| NewAuditRow {
            ts: now_ms,
            ..built.clone()
        })
        .chain(events.iter().map(|event| row(event, now_ms)))
        .collect::<Vec<_>>();
    if let Some(mut hot) = tx.hot_path()
        && let Some(prev) = seal_behind(&mut hot)?
    {
        return Ok(record_chained(&mut hot, rows, prev)?);
    }
    Ok(tx.insert_audit_events(&rows).await?)
}

/// On SQLite's hot path, insert `rows` sealed: chained to the tip (whose hash is `prev`)
/// as they are written, rather than written unsealed for the sealer to read back and
/// update. The transaction holds SQLite's only write lock, so the tip cannot move under
/// it, and what another writer left unsealed after the tip was committed before and has
/// just been sealed ([`seal_behind`]), so the chain stays in `seq` order. Each event is
/// then written once, and the sealer finds nothing to do.
fn record_chained(
    tx: &mut crate::store::LiteTx<'_>,
    rows: Vec<NewAuditRow>,
    mut prev: [u8; 32],
) -> Result<Vec<i64>, StoreError> {
    let first = tx.next_audit_seq()?;
    let mut chained = Vec::with_capacity(rows.len());
    for (seq, row) in (first..).zip(rows) {
        let mut event = row.at(seq);
        let hash = link_hash(&event, &prev);
        event.prev_hash = Some(prev.to_vec());
        event.hash = Some(hash.to_vec());
        prev = hash;
        chained.push(event);
    }
    tx.insert_sealed_audit_events(&chained)?;
    Ok(chained.iter().map(|e| e.seq).collect())
}

/// Seal the events after the chain's tip that are still unsealed (written by sqlx, or by
/// another process), and return the new tip's hash; `None` if a sealer's batch or more
/// is waiting: that backlog is the sealer's, and new events go in unsealed behind it.
fn seal_behind(tx: &mut crate::store::LiteTx<'_>) -> Result<Option<[u8; 32]>, StoreError> {
    let (after, prev) = tip(tx.last_sealed()?);
    let rows = tx.unsealed_events(after, SEAL_BATCH)?;
    if rows.len() >= SEAL_BATCH as usize {
        return Ok(None);
    }
    let (seals, prev) = links(&rows, prev);
    if !seals.is_empty() {
        tx.seal_events(&as_params(&seals))?;
    }
    Ok(Some(prev))
}

/// Where sealing resumes: after the tip's seq, from its hash (genesis for an empty chain).
fn tip(last: Option<(i64, Vec<u8>)>) -> (i64, [u8; 32]) {
    match last {
        Some((seq, hash)) => (seq, stored_hash(Some(&hash)).unwrap_or(GENESIS)),
        None => (0, GENESIS),
    }
}

/// Each of `rows` linked to the one before, the first to `prev`: (seq, prev_hash, hash),
/// and the last hash.
fn links(rows: &[AuditRow], mut prev: [u8; 32]) -> (Vec<(i64, [u8; 32], [u8; 32])>, [u8; 32]) {
    let mut seals = Vec::with_capacity(rows.len());
    for row in rows {
        let hash = link_hash(row, &prev);
        seals.push((row.seq, prev, hash));
        prev = hash;
    }
    (seals, prev)
}

/// `seals` as the store takes them.
fn as_params(seals: &[(i64, [u8; 32], [u8; 32])]) -> Vec<(i64, &[u8], &[u8])> {
    seals
        .iter()
        .map(|(seq, prev, hash)| (*seq, &prev[..], &hash[..]))
        .collect()
}

fn row(event: &NewEvent, now_ms: i64) -> NewAuditRow {
    NewAuditRow {
        id: crate::crypto::ordered_id("evt_"),
        ts: now_ms,
        actor: event.actor.clone(),
        action: event.action.clone(),
        resource: event.resource.clone(),
        namespace: event.namespace.clone(),
        outcome: event.outcome.clone(),
        classification: event.classification.clone(),
        contains_pii: event.contains_pii,
        correlation_id: event.correlation_id.clone(),
        details: event.details.to_string(),
    }
}

/// Seal every event committed before this call and not yet in the chain, in `seq` order.
/// Safe to run from several processes at once: a sealer that loses a race stops and
/// starts over. Returns how many events this call sealed.
///
/// It stops after the first pass that finds less than a full batch, rather than chase
/// events committed while it runs: under load a sealer that looped until it found none
/// would take the write lock every other transaction. The next call seals those.
pub async fn seal_pending(store: &Store) -> Result<u64, AuditError> {
    let mut sealed = 0;
    loop {
        // Read in a short transaction of its own: on PostgreSQL the read briefly holds
        // back new audit writers. On SQLite a reader's snapshot never has a gap behind a
        // later event (one writer, `seq` assigned and committed in order), so the read
        // leaves the write lock to the writers.
        let mut tx = match store.backend() {
            Backend::Sqlite => store.begin_read().await?,
            Backend::Postgres => store.begin().await?,
        };
        let last = tx.last_sealed().await?;
        let tip_seq = last.as_ref().map(|(seq, _)| *seq);
        let (after, prev) = tip(last);
        let rows = tx.unsealed_events(after, SEAL_BATCH).await?;
        tx.commit().await?;
        if rows.is_empty() {
            return Ok(sealed);
        }
        let (seals, _) = links(&rows, prev);
        let seals = as_params(&seals);
        // Another sealer may have moved the tip since the read (linking from a stale tip
        // would fork the chain), or sealed some of these events first: then nothing is
        // written, and this starts over from the new tip.
        let written = match store.backend() {
            Backend::Sqlite => store.write_now(|tx| tx.seal_from(tip_seq, &seals)).await,
            Backend::Postgres => seal_in(store, tip_seq, &seals).await,
        };
        match written {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
        let batch = seals.len() as u64;
        sealed += batch;
        if rows.len() < SEAL_BATCH as usize {
            return Ok(sealed);
        }
    }
}

/// Write `seals` in a transaction of its own if the chain's tip is still `tip_seq`
/// (`Conflict` otherwise, and nothing written).
async fn seal_in(
    store: &Store,
    tip_seq: Option<i64>,
    seals: &[(i64, &[u8], &[u8])],
) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    tx.lock_sealer().await?;
    if tx.last_sealed().await?.map(|(seq, _)| seq) != tip_seq {
        return Err(StoreError::Conflict("the chain's tip moved".to_owned()));
    }
    tx.seal_events(seals).await?;
    tx.commit().await
}

/// Walk the whole stored chain, page by page, in constant memory.
pub async fn verify(store: &Store) -> Result<Verification, AuditError> {
    walk(store, Verifier::default(), false).await
}

/// Walk the whole stored chain and check every signed checkpoint against `keys` on the
/// way: a checkpoint that does not verify, or whose event is gone or differs, is named.
pub async fn verify_signed(
    store: &Store,
    keys: &CheckpointKeys,
) -> Result<Verification, AuditError> {
    walk(store, Verifier::default().with_keys(keys.clone()), true).await
}

/// The checkpoint the stored chain resumes at when retention purged its start: the one
/// of the event the first kept event links to. `None` for a chain that starts at genesis
/// (or whose anchor is gone, which verification then reports).
pub(crate) async fn chain_anchor(tx: &mut Tx<'_>) -> Result<Option<CheckpointRow>, StoreError> {
    let first = tx.audit_events(i64::MIN, 1).await?;
    let Some(first) = first.first() else {
        return Ok(None);
    };
    let Some(prev) = first.prev_hash.as_ref().filter(|p| p[..] != GENESIS[..]) else {
        return Ok(None);
    };
    Ok(tx
        .checkpoint_at_or_before(first.seq - 1)
        .await?
        .filter(|anchor| anchor.hash == *prev))
}

async fn walk(
    store: &Store,
    mut verifier: Verifier,
    checkpoints: bool,
) -> Result<Verification, AuditError> {
    let mut from = i64::MIN;
    // A chain whose start retention purged resumes at the checkpoint of the last purged
    // event; without one, the first event's link is checked against nothing and fails.
    let mut tx = store.begin_read().await?;
    if let Some(anchor) = chain_anchor(&mut tx).await? {
        verifier.anchor(&anchor);
        from = anchor.seq + 1;
    }
    tx.commit().await?;
    loop {
        let mut tx = store.begin_read().await?;
        let rows = tx.audit_events(from, VERIFY_PAGE).await?;
        // The checkpoints this page covers, read in the same snapshot; past the last
        // page, every checkpoint left (one past the end shows a cut-off tail).
        let through = match rows.last() {
            Some(last) => last.seq,
            None => i64::MAX,
        };
        if checkpoints {
            for checkpoint in tx.checkpoints_between(from, through).await? {
                verifier.expect(checkpoint);
            }
        }
        tx.commit().await?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            break;
        };
        for row in rows {
            verifier.push(&row);
        }
        from = last + 1;
    }
    Ok(verifier.finish())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sqlx::Connection;

    use super::*;
    use crate::audit::{Break, Problem};
    use crate::store::DatabaseUrl;
    use crate::store::tests::{NOW, both};

    fn event(n: usize) -> NewEvent {
        NewEvent {
            actor: "user:user_123".into(),
            action: "task.created".into(),
            resource: format!("task/task_{n}"),
            namespace: Some("customer_success".into()),
            outcome: "success".into(),
            classification: Some("confidential".into()),
            contains_pii: true,
            correlation_id: None,
            details: json!({ "n": n }),
        }
    }

    async fn record_each(store: &Store, count: usize) -> Vec<i64> {
        let mut seqs = Vec::new();
        for n in 0..count {
            let mut tx = store.begin().await.unwrap();
            seqs.push(record(&mut tx, &event(n), NOW + n as i64).await.unwrap());
            tx.commit().await.unwrap();
        }
        seqs
    }

    /// Tamper with the database behind the store's back, as an attacker with file or SQL
    /// access would.
    async fn tamper(store: &Store, statements: &[&str]) {
        match store.url() {
            DatabaseUrl::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.unwrap();
                }
            }
            DatabaseUrl::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                // An attacker with SQL access can lift the identity column's protection.
                sqlx::query("ALTER TABLE audit_events ALTER COLUMN seq SET GENERATED BY DEFAULT")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.unwrap();
                }
            }
        }
    }

    #[tokio::test]
    async fn recorded_events_are_sealed_in_order_and_verify() {
        both(|store| async move {
            record_each(&store, 25).await;
            assert_eq!(verify(&store).await.unwrap().unsealed, 25);
            assert_eq!(seal_pending(&store).await.unwrap(), 25);
            assert_eq!(seal_pending(&store).await.unwrap(), 0);
            record_each(&store, 5).await;
            assert_eq!(seal_pending(&store).await.unwrap(), 5);
            let report = verify(&store).await.unwrap();
            assert!(report.is_intact(), "{report:?}");
            assert_eq!((report.checked, report.unsealed), (30, 0));
        })
        .await;
    }

    #[tokio::test]
    async fn an_event_in_a_rolled_back_transaction_never_joins_the_chain() {
        both(|store| async move {
            record_each(&store, 3).await;
            let mut tx = store.begin().await.unwrap();
            record(&mut tx, &event(99), NOW).await.unwrap();
            tx.rollback().await.unwrap();
            record_each(&store, 3).await;
            seal_pending(&store).await.unwrap();
            let report = verify(&store).await.unwrap();
            assert!(report.is_intact(), "{report:?}");
            assert_eq!(report.checked, 6);
        })
        .await;
    }

    #[tokio::test]
    async fn concurrent_writers_and_sealers_keep_one_intact_chain() {
        both(|store| async move {
            let writers: Vec<_> = (0..4)
                .map(|w| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for n in 0..25 {
                            let mut tx = store.begin().await.unwrap();
                            record(&mut tx, &event(w * 100 + n), NOW).await.unwrap();
                            tx.commit().await.unwrap();
                        }
                    })
                })
                .collect();
            let sealers: Vec<_> = (0..2)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let mut sealed = 0;
                        for _ in 0..20 {
                            sealed += seal_pending(&store).await.unwrap();
                            tokio::task::yield_now().await;
                        }
                        sealed
                    })
                })
                .collect();
            for writer in writers {
                writer.await.unwrap();
            }
            for sealer in sealers {
                sealer.await.unwrap();
            }
            seal_pending(&store).await.unwrap();
            let report = verify(&store).await.unwrap();
            assert!(report.is_intact(), "{report:?}");
            assert_eq!((report.checked, report.unsealed), (100, 0));
        })
        .await;
    }

    async fn sealed_chain(store: &Store) -> Vec<i64> {
        let seqs = record_each(store, 10).await;
        seal_pending(store).await.unwrap();
        assert!(verify(store).await.unwrap().is_intact());
        seqs
    }

    #[tokio::test]
    async fn editing_a_row_is_detected() {
        both(|store| async move {
            let seqs = sealed_chain(&store).await;
            tamper(
                &store,
                &[&format!(
                    "UPDATE audit_events SET actor = 'user:mallory' WHERE seq = {}",
                    seqs[4]
                )],
            )
            .await;
            let broken = verify(&store).await.unwrap().broken;
            assert_eq!(
                broken,
                Some(Break {
                    seq: seqs[4],
                    problem: Problem::Edited
                })
            );
        })
        .await;
    }

    #[tokio::test]
    async fn deleting_a_row_is_detected() {
        both(|store| async move {
            let seqs = sealed_chain(&store).await;
            tamper(
                &store,
                &[&format!("DELETE FROM audit_events WHERE seq = {}", seqs[6])],
            )
            .await;
            let broken = verify(&store).await.unwrap().broken;
            assert_eq!(
                broken,
                Some(Break {
                    seq: seqs[7],
                    problem: Problem::Missing
                })
            );
        })
        .await;
    }

    #[tokio::test]
    async fn inserting_a_row_behind_the_sealed_head_is_detected() {
        both(|store| async move {
            let seqs = sealed_chain(&store).await;
            // Replace row 3 with a forged, unsealed one at the same position.
            tamper(
                &store,
                &[
                    &format!("DELETE FROM audit_events WHERE seq = {}", seqs[3]),
                    &format!(
                        "INSERT INTO audit_events (seq, id, ts, actor, action, resource, outcome, contains_pii, details) \
                         VALUES ({}, 'evt_forged', {NOW}, 'user:mallory', 'task.deleted', 'task/x', 'success', false, '{{}}')",
                        seqs[3]
                    ),
                ],
            )
            .await;
            let broken = verify(&store).await.unwrap().broken;
            assert_eq!(broken, Some(Break { seq: seqs[3], problem: Problem::Inserted }));
        })
        .await;
    }

    #[tokio::test]
    async fn reordering_rows_is_detected() {
        both(|store| async move {
            let seqs = sealed_chain(&store).await;
            let (a, b) = (seqs[2], seqs[5]);
            tamper(
                &store,
                &[
                    &format!("UPDATE audit_events SET seq = -1 WHERE seq = {a}"),
                    &format!("UPDATE audit_events SET seq = {a} WHERE seq = {b}"),
                    &format!("UPDATE audit_events SET seq = {b} WHERE seq = -1"),
                ],
            )
            .await;
            let broken = verify(&store).await.unwrap().broken;
            assert_eq!(
                broken,
                Some(Break {
                    seq: a,
                    problem: Problem::Reordered
                })
            );
        })
        .await;
    }

    /// A store over a fresh SQLite file, which the hot path writes.
    async fn sqlite() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("stepbox.db")))
            .await
            .unwrap();
        (store, dir)
    }

    /// Record `count` events in one transaction of the SQLite hot path.
    async fn record_hot(store: &Store, from: usize, count: usize) -> Vec<i64> {
        let events: Vec<NewEvent> = (from..from + count).map(event).collect();
        store
            .write_now(|tx| crate::store::ready(record_many_in(tx, &events, NOW)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_sqlite_hot_path_chains_its_events_after_what_others_left_unsealed() {
        let (store, _dir) = sqlite().await;
        // Written through sqlx, unsealed; the hot path seals them before its own.
        let before = record_each(&store, 3).await;
        let hot = record_hot(&store, 3, 4).await;
        assert!(
            hot.iter().all(|seq| *seq > before[2]),
            "{before:?} then {hot:?}"
        );
        let report = verify(&store).await.unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.checked, report.unsealed), (7, 0));
        assert_eq!(
            seal_pending(&store).await.unwrap(),
            0,
            "nothing left to seal"
        );

        // The events sealed in passing are in the chain like any other: an edit shows.
        tamper(
            &store,
            &[&format!(
                "UPDATE audit_events SET actor = 'user:mallory' WHERE seq = {}",
                before[1]
            )],
        )
        .await;
        let broken = verify(&store).await.unwrap().broken;
        assert_eq!(
            broken,
            Some(Break {
                seq: before[1],
                problem: Problem::Edited
            })
        );
        store.close().await;
    }

    #[tokio::test]
    async fn the_hot_path_never_gives_a_deleted_events_seq_to_a_new_one() {
        let (store, _dir) = sqlite().await;
        let first = record_hot(&store, 0, 5).await;
        // Remove the last event: the next one must not take its place in the chain.
        tamper(
            &store,
            &[&format!(
                "DELETE FROM audit_events WHERE seq = {}",
                first[4]
            )],
        )
        .await;
        let next = record_hot(&store, 5, 1).await;
        assert!(next[0] > first[4], "seq {} reused", first[4]);
        // The new event links to the tip that is left: a cut-off tail is what signed
        // checkpoints show (a checkpoint whose event is gone), and one at the deleted seq
        // must never find another event there.
        let report = verify(&store).await.unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.checked, 5);

        // A deleted event inside the chain is missing, hot path or not.
        tamper(
            &store,
            &[&format!(
                "DELETE FROM audit_events WHERE seq = {}",
                first[2]
            )],
        )
        .await;
        record_hot(&store, 6, 1).await;
        let broken = verify(&store).await.unwrap().broken;
        assert_eq!(
            broken,
            Some(Break {
                seq: first[3],
                problem: Problem::Missing
            })
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_backlog_of_a_sealers_batch_is_left_to_the_sealer() {
        let (store, _dir) = sqlite().await;
        let events: Vec<NewEvent> = (0..SEAL_BATCH as usize).map(event).collect();
        let mut tx = store.begin().await.unwrap();
        record_many(&mut tx, &events, NOW).await.unwrap();
        tx.commit().await.unwrap();
        // Too much to seal inside a step commit: it goes in unsealed behind the backlog.
        record_hot(&store, SEAL_BATCH as usize, 2).await;
        assert_eq!(
            verify(&store).await.unwrap().unsealed,
            SEAL_BATCH as u64 + 2
        );
        assert_eq!(seal_pending(&store).await.unwrap(), SEAL_BATCH as u64 + 2);
        // Then the hot path chains again.
        record_hot(&store, SEAL_BATCH as usize + 2, 1).await;
        let report = verify(&store).await.unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.unsealed, 0);
        store.close().await;
    }
}
