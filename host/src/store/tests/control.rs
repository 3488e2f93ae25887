//! Operator transitions: cancelling running steps fences their workers out; retrying a
//! failed step gives it a fresh budget while attempt numbers carry on; reopening a failed
//! task.

use super::claims::{LEASE, claim, step_status};
use super::{NOW, both, seed_task, seed_workflow, write};
use crate::store::{StepStatus, StoreError, TaskStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_unfinished_steps_takes_running_ones_and_fences_their_workers() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(
            &store,
            "t1",
            &[("a", &[]), ("b", &["a"]), ("c", &[]), ("d", &[])],
        )
        .await;
        // Who holds what: (worker, claim) for a, c and d, whichever order they come in.
        let mut claims = Vec::new();
        for worker in ["w1", "w2", "w3"] {
            let claimed = claim(&store, worker, NOW)
                .await
                .expect("a, c and d are ready");
            claims.push((worker, claimed));
        }
        let held = |name: &str| {
            claims
                .iter()
                .find(|(_, c)| c.step == name)
                .cloned()
                .expect("claimed")
        };
        let ((a_by, a), (c_by, c), (d_by, d)) = (held("a"), held("c"), held("d"));
        write(&store, async |tx| {
            tx.complete_step("t1", "d", d_by, d.attempt, b"done", NOW)
                .await?;
            tx.fail_step("t1", "c", c_by, c.attempt, "{}", Some(NOW + 500), NOW)
                .await
        })
        .await
        .expect("d completes, c waits for a retry");

        let cancelled = write(&store, async |tx| {
            tx.cancel_unfinished_steps("t1", NOW + 1).await
        })
        .await
        .expect("cancel");
        assert_eq!(
            cancelled, 3,
            "a (running), b (pending), c (waiting for retry)"
        );
        for name in ["a", "b", "c"] {
            let row = step_status(&store, "t1", name).await;
            assert_eq!(
                (row.status, row.finished_at),
                (StepStatus::Cancelled, Some(NOW + 1))
            );
            assert_eq!(row.lease_expires_at, None);
        }
        assert_eq!(
            step_status(&store, "t1", "d").await.status,
            StepStatus::Complete
        );

        let owner = a_by;
        let err = write(&store, async |tx| {
            tx.complete_step("t1", "a", owner, a.attempt, b"late", NOW + 2)
                .await
        })
        .await
        .expect_err("the running worker is fenced out");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let err = write(&store, async |tx| {
            tx.fail_step("t1", "a", owner, a.attempt, "{}", None, NOW + 2)
                .await
        })
        .await
        .expect_err("failing is fenced too");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let err = store
            .renew_lease("t1", "a", owner, NOW + 2, LEASE)
            .await
            .expect_err("no lease to renew");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let row = step_status(&store, "t1", "a").await;
        assert_eq!((row.status, row.result), (StepStatus::Cancelled, None));
        assert_eq!(claim(&store, "w4", NOW + 10 * LEASE).await, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_step_runs_again_with_a_fresh_budget_and_the_next_attempt_number() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "t1", &[("a", &[]), ("b", &["a"]), ("c", &[])]).await;
        let first = claim(&store, "w1", NOW).await.expect("claim");
        let other = claim(&store, "w2", NOW).await.expect("claim");
        assert_eq!((first.attempt, first.attempt_base), (1, 0));
        let (failed, done) = if first.step == "a" {
            (&first, &other)
        } else {
            (&other, &first)
        };
        let (failed_by, done_by) = if first.step == "a" {
            ("w1", "w2")
        } else {
            ("w2", "w1")
        };
        write(&store, async |tx| {
            tx.complete_step("t1", &done.step, done_by, done.attempt, b"c", NOW)
                .await?;
            tx.fail_step(
                "t1",
                "a",
                failed_by,
                failed.attempt,
                r#"{"code":"down"}"#,
                None,
                NOW,
            )
            .await?;
            tx.cancel_pending_steps("t1", NOW).await?;
            tx.set_task_status("t1", TaskStatus::Error, Some("a"), NOW)
                .await
        })
        .await
        .expect("a fails, the task with it");

        let err = write(&store, async |tx| {
            tx.retry_failed_step("t1", "b", NOW).await
        })
        .await
        .expect_err("b did not fail");
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("cancelled")),
            "{err:?}"
        );
        let err = write(&store, async |tx| {
            tx.retry_failed_step("t1", "zz", NOW).await
        })
        .await
        .expect_err("no such step");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        let err = write(&store, async |tx| tx.reopen_failed_task("t9", NOW).await)
            .await
            .expect_err("no such task");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

        let later = NOW + 1_000;
        let (base, resumed) = write(&store, async |tx| {
            let base = tx.retry_failed_step("t1", "a", later).await?;
            let resumed = tx.resume_cancelled_steps("t1", later).await?;
            tx.reopen_failed_task("t1", later).await?;
            Ok((base, resumed))
        })
        .await
        .expect("retry");
        assert_eq!(
            (base, resumed),
            (1, 1),
            "a had one attempt; b was cancelled"
        );
        let row = step_status(&store, "t1", "a").await;
        assert_eq!(
            (row.status, row.attempts, row.attempt_base, row.next_run_at),
            (StepStatus::Pending, 1, 1, later)
        );
        assert_eq!(
            (row.error, row.finished_at, row.lease_expires_at),
            (None, None, None)
        );
        let b = step_status(&store, "t1", "b").await;
        assert_eq!((b.status, b.finished_at), (StepStatus::Pending, None));
        assert_eq!(
            step_status(&store, "t1", "c").await.status,
            StepStatus::Complete
        );
        let mut tx = store.begin_read().await.expect("begin");
        let task = tx.get_task("t1").await.expect("get").expect("task");
        tx.commit().await.expect("commit");
        assert_eq!(
            (
                task.status,
                task.error_step,
                task.finished_at,
                task.updated_at
            ),
            (TaskStatus::InProgress, None, None, later)
        );
        let err = write(&store, async |tx| tx.reopen_failed_task("t1", later).await)
            .await
            .expect_err("already running");
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("in_progress")),
            "{err:?}"
        );

        let again = claim(&store, "w3", later).await.expect("a is due again");
        assert_eq!(
            (again.step.as_str(), again.attempt, again.attempt_base),
            ("a", 2, 1)
        );
    })
    .await;
}
