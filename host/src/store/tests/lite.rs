//! SQLite's hot write path (`store::lite`): whole transactions on the caller's thread.
//! It must keep every promise of the sqlx path it stands in for: all or nothing, fencing
//! row by row, and audit seqs that are the stored ones.

use super::claims::{LEASE, step_status};
use super::{NOW, seed_task, seed_workflow};
use crate::store::{
    AuditFilter, Completion, DatabaseUrl, HotWrites, NewAuditRow, StepStatus, Store, StoreError,
};

fn event(id: &str) -> NewAuditRow {
    NewAuditRow {
        id: id.to_owned(),
        ts: NOW,
        actor: "system:w1".to_owned(),
        action: "step.completed".to_owned(),
        resource: format!("step/{id}"),
        namespace: Some("payments".to_owned()),
        outcome: "success".to_owned(),
        classification: None,
        contains_pii: false,
        correlation_id: Some("t1".to_owned()),
        details: "{}".to_owned(),
    }
}

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("stepbox.db")))
        .await
        .expect("open");
    (store, dir)
}

async fn audit_ids(store: &Store) -> Vec<(i64, String)> {
    let mut tx = store.begin_read().await.expect("begin");
    let rows = tx
        .query_audit(&AuditFilter::default(), 100)
        .await
        .expect("query");
    rows.into_iter().map(|row| (row.seq, row.id)).collect()
}

/// Its futures never wait: poll once.
fn now<T>(future: impl std::future::Future<Output = T>) -> T {
    futures_util::FutureExt::now_or_never(future).expect("ready at once")
}

#[tokio::test]
async fn a_failed_transaction_leaves_nothing_and_the_next_one_commits() {
    let (store, _dir) = sqlite().await;
    let failed: Result<(), StoreError> = store
        .write_now(|tx| {
            now(tx.insert_audit_events(&[event("e1"), event("e2")]))?;
            Err(StoreError::Conflict("the caller changed its mind".into()))
        })
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict(_))));
    assert!(audit_ids(&store).await.is_empty(), "rolled back");

    let seqs = store
        .write_now(|tx| now(tx.insert_audit_events(&[event("e3"), event("e4"), event("e5")])))
        .await
        .expect("insert");
    let stored = audit_ids(&store).await;
    assert_eq!(
        stored,
        seqs.iter()
            .zip(["e3", "e4", "e5"])
            .map(|(seq, id)| (*seq, id.to_owned()))
            .collect::<Vec<_>>(),
        "the seqs returned are the stored ones, in order"
    );
    // And the ordinary path still writes on the same database afterwards.
    let mut tx = store.begin().await.expect("begin");
    tx.insert_audit_events(&[event("e6")])
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(audit_ids(&store).await.len(), 4);
}

#[tokio::test]
async fn a_duplicate_event_id_is_a_conflict_and_rolls_the_whole_transaction_back() {
    let (store, _dir) = sqlite().await;
    let outcome = store
        .write_now(|tx| {
            now(tx.insert_audit_events(&[event("e1")]))?;
            now(tx.insert_audit_events(&[event("e1")]))
        })
        .await;
    assert!(
        matches!(outcome, Err(StoreError::Conflict(_))),
        "{outcome:?}"
    );
    assert!(audit_ids(&store).await.is_empty());
}

#[tokio::test]
async fn claims_and_completions_are_fenced_on_the_fast_path_as_on_the_other() {
    let (store, _dir) = sqlite().await;
    seed_workflow(&store).await;
    seed_task(&store, "t1", &[("a", &[]), ("b", &["a"])]).await;
    let claims = store
        .write_now(|tx| tx.claim_ready_steps("w1", NOW, LEASE, 10))
        .await
        .expect("claim");
    assert_eq!(claims.len(), 1, "b waits for a");
    let claim = &claims[0];
    assert_eq!((claim.task_id.as_str(), claim.step.as_str()), ("t1", "a"));
    let again = store
        .write_now(|tx| tx.claim_ready_steps("w2", NOW, LEASE, 10))
        .await
        .expect("claim");
    assert!(again.is_empty(), "a leased step is not claimed twice");

    // A stale attempt and another worker commit nothing; failing it is a conflict.
    let stale = [Completion {
        task_id: "t1",
        step: "a",
        worker: "w1",
        attempt: claim.attempt - 1,
        result: b"sealed",
    }];
    let committed = store
        .write_now(|tx| now(tx.complete_steps(&stale, NOW + 1)))
        .await
        .expect("complete");
    assert!(committed.is_empty());
    let failed = store
        .write_now(|tx| now(tx.fail_step("t1", "a", "w2", claim.attempt, "{}", None, NOW + 1)))
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict(_))), "{failed:?}");
    let missing = store
        .write_now(|tx| now(tx.fail_step("t1", "zz", "w1", 1, "{}", None, NOW + 1)))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    let current = [Completion {
        attempt: claim.attempt,
        ..stale[0]
    }];
    let committed = store
        .write_now(|tx| {
            let committed = now(tx.complete_steps(&current, NOW + 2))?;
            now(tx.release_steps(&[("t1", "b", 1)]))?;
            Ok::<_, StoreError>(committed)
        })
        .await
        .expect("complete");
    assert_eq!(
        committed,
        [("t1".to_owned(), "a".to_owned(), claim.attempt)]
    );
    let row = step_status(&store, "t1", "a").await;
    assert_eq!(
        (row.status, row.result.as_deref()),
        (StepStatus::Complete, Some(&b"sealed"[..]))
    );
    let next = store
        .write_now(|tx| tx.claim_ready_steps("w1", NOW + 3, LEASE, 10))
        .await
        .expect("claim");
    assert_eq!(next.len(), 1, "b was released");
    assert_eq!(next[0].step, "b");
}
