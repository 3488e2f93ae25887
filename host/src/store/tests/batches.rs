//! The batched statements the workers use: many claims, completions, releases, task
//! completions, attempts and audit events per statement, each row fenced or checked on
//! its own.

use std::collections::HashSet;

use super::claims::{LEASE, step_status};
use super::{NOW, both, seed_task, seed_workflow, write};
use crate::store::{
    AttemptRow, ClaimedStep, Completion, NewAuditRow, StepStatus, Store, StoreError, TaskStatus,
};

async fn claim_batch(store: &Store, worker: &str, limit: usize) -> Vec<ClaimedStep> {
    write(store, async |tx| {
        tx.claim_ready_steps(worker, NOW, LEASE, limit).await
    })
    .await
    .expect("claim")
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batched_claim_takes_each_ready_step_once_and_starts_every_task() {
    both(|store| async move {
        seed_workflow(&store).await;
        for n in 0..5 {
            seed_task(&store, &format!("t{n}"), &[("a", &[]), ("b", &["a"])]).await;
        }
        let first = claim_batch(&store, "w1", 3).await;
        let second = claim_batch(&store, "w2", 10).await;
        assert_eq!((first.len(), second.len()), (3, 2), "the limit holds");
        let taken: HashSet<(String, String)> = first
            .iter()
            .chain(&second)
            .map(|c| (c.task_id.clone(), c.step.clone()))
            .collect();
        assert_eq!(taken.len(), 5, "no step claimed twice");
        assert!(taken.iter().all(|(_, step)| step == "a"), "b waits for a");
        let mut tx = store.begin_read().await.expect("begin");
        let ids: Vec<String> = (0..5).map(|n| format!("t{n}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let tasks = tx.get_tasks(&ids).await.expect("tasks");
        assert_eq!(tasks.len(), 5);
        assert!(tasks.iter().all(|t| t.status == TaskStatus::InProgress));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_completions_are_fenced_row_by_row_and_release_their_dependents() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "t1", &[("a", &[]), ("b", &[]), ("c", &["a", "b"])]).await;
        seed_task(&store, "t2", &[("a", &[])]).await;
        let claims = claim_batch(&store, "w1", 10).await;
        assert_eq!(claims.len(), 3);
        assert!(claims.iter().any(|c| c.task_id == "t2"), "t2/a claimed");
        let done: Vec<Completion<'_>> = claims
            .iter()
            .map(|c| Completion {
                task_id: &c.task_id,
                step: &c.step,
                worker: "w1",
                // The attempt of t2/a is stale: its lease went to a later attempt.
                attempt: if c.task_id == "t2" {
                    c.attempt - 1
                } else {
                    c.attempt
                },
                result: b"sealed",
            })
            .collect();
        let committed = write(&store, async |tx| {
            let committed = tx.complete_steps(&done, NOW + 5).await?;
            tx.release_steps(&[("t1", "c", 2)]).await?;
            Ok(committed)
        })
        .await
        .expect("complete");
        let committed: HashSet<(String, String, i64)> = committed.into_iter().collect();
        let expected: HashSet<(String, String, i64)> = claims
            .iter()
            .filter(|c| c.task_id == "t1")
            .map(|c| (c.task_id.clone(), c.step.clone(), c.attempt))
            .collect();
        assert_eq!(expected.len(), 2);
        assert_eq!(committed, expected, "the stale attempt commits nothing");
        let row = step_status(&store, "t2", "a").await;
        assert_eq!((row.status, row.result), (StepStatus::InProgress, None));
        assert_eq!(
            step_status(&store, "t1", "a").await.finished_at,
            Some(NOW + 5)
        );

        let next = claim_batch(&store, "w1", 10).await;
        assert_eq!(
            next.iter()
                .map(|c| (c.task_id.as_str(), c.step.as_str()))
                .collect::<Vec<_>>(),
            [("t1", "c")],
            "c waited on two and both were released"
        );
        let mut tx = store.begin_read().await.expect("begin");
        let results = tx.complete_results(&["t1", "t2"]).await.expect("results");
        let mut names: Vec<&str> = results.iter().map(|(_, s, _)| s.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["a", "b"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_running_tasks_with_every_step_complete_become_complete() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "done", &[("a", &[])]).await;
        seed_task(&store, "half", &[("a", &[]), ("b", &["a"])]).await;
        seed_task(&store, "cancelled", &[("a", &[])]).await;
        let claims = claim_batch(&store, "w1", 10).await;
        let done: Vec<Completion<'_>> = claims
            .iter()
            .map(|c| Completion {
                task_id: &c.task_id,
                step: &c.step,
                worker: "w1",
                attempt: c.attempt,
                result: b"r",
            })
            .collect();
        let completed = write(&store, async |tx| {
            tx.complete_steps(&done, NOW).await?;
            tx.set_task_status("cancelled", TaskStatus::Cancelled, None, NOW)
                .await?;
            tx.complete_finished_tasks(&["done", "half", "cancelled"], NOW + 7)
                .await
        })
        .await
        .expect("complete");
        assert_eq!(completed, ["done"]);
        let mut tx = store.begin_read().await.expect("begin");
        let tasks = tx
            .get_tasks(&["done", "half", "cancelled", "missing"])
            .await
            .expect("tasks");
        for task in tasks {
            let expected = match task.id.as_str() {
                "done" => TaskStatus::Complete,
                "half" => TaskStatus::InProgress,
                _ => TaskStatus::Cancelled,
            };
            assert_eq!(task.status, expected, "{}", task.id);
            if task.id == "done" {
                assert_eq!(task.finished_at, Some(NOW + 7));
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_audit_events_keep_their_order_and_a_raced_seal_changes_nothing() {
    both(|store| async move {
        let events: Vec<NewAuditRow> = (0..7).map(|n| event(&format!("e{n}"))).collect();
        let seqs = write(&store, async |tx| tx.insert_audit_events(&events).await)
            .await
            .expect("insert");
        let err = write(&store, async |tx| {
            tx.insert_audit_events(&[event("e7"), event("e0")]).await
        })
        .await
        .expect_err("ids are unique");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        let mut tx = store.begin().await.expect("begin");
        let rows = tx.unsealed_events(0, 100).await.expect("read");
        tx.commit().await.expect("commit");
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["e0", "e1", "e2", "e3", "e4", "e5", "e6"],
            "e7 rolled back"
        );
        // The seqs handed back are the ones stored, event by event.
        let stored: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, stored);

        // Another sealer sealed the third event first: the batch fails as a whole.
        write(&store, async |tx| {
            tx.seal_event(rows[2].seq, None, &[3; 32]).await
        })
        .await
        .expect("seal one");
        let seals: Vec<(i64, &[u8], &[u8])> = rows
            .iter()
            .map(|r| (r.seq, &[0u8; 32][..], &[1u8; 32][..]))
            .collect();
        let err = write(&store, async |tx| tx.seal_events(&seals).await)
            .await
            .expect_err("raced");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let mut tx = store.begin_read().await.expect("begin");
        let sealed: Vec<bool> = tx
            .audit_events(0, 100)
            .await
            .expect("read")
            .iter()
            .map(|r| r.hash.is_some())
            .collect();
        assert_eq!(sealed, [false, false, true, false, false, false, false]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_attempts_are_all_or_nothing() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "t1", &[("a", &[])]).await;
        let attempt = |n: i64| AttemptRow {
            task_id: "t1".into(),
            step: "a".into(),
            attempt: n,
            worker: "w1".into(),
            outcome: "success".into(),
            record: vec![n as u8],
            started_at: NOW,
            duration_ms: 3,
        };
        write(&store, async |tx| {
            tx.insert_attempts(&[attempt(1), attempt(2)]).await
        })
        .await
        .expect("insert");
        let err = write(&store, async |tx| {
            tx.insert_attempts(&[attempt(3), attempt(2)]).await
        })
        .await
        .expect_err("attempt 2 is recorded");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let mut tx = store.begin_read().await.expect("begin");
        let stored: Vec<i64> = tx
            .get_attempts("t1")
            .await
            .expect("read")
            .iter()
            .map(|a| a.attempt)
            .collect();
        assert_eq!(stored, [1, 2]);
    })
    .await;
}
