//! The lease protocol: readiness, exclusive claims, expiry, fencing, retries, cancelling.

use std::collections::HashSet;
use std::sync::Arc;

use super::{NOW, both, seed_task, seed_workflow, write};
use crate::store::{ClaimedStep, StepStatus, Store, StoreError, TaskStatus};

pub(super) const LEASE: i64 = 30_000;

pub(super) async fn claim(store: &Store, worker: &str, now: i64) -> Option<ClaimedStep> {
    store
        .claim_ready_step(worker, now, LEASE)
        .await
        .expect("claim")
}

async fn complete(
    store: &Store,
    claimed: &ClaimedStep,
    worker: &str,
    result: &[u8],
) -> Result<(), StoreError> {
    write(store, async |tx| {
        tx.complete_step(
            &claimed.task_id,
            &claimed.step,
            worker,
            claimed.attempt,
            result,
            NOW,
        )
        .await
    })
    .await
}

pub(super) async fn step_status(store: &Store, task: &str, step: &str) -> crate::store::StepRow {
    let mut tx = store.begin_read().await.expect("begin");
    tx.get_step(task, step).await.expect("get").expect("step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_takes_only_steps_whose_dependencies_are_complete() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(
            &store,
            "t1",
            &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])],
        )
        .await;

        let a = claim(&store, "w1", NOW).await.expect("a is ready");
        assert_eq!(
            (a.task_id.as_str(), a.step.as_str(), a.attempt),
            ("t1", "a", 1)
        );
        assert_eq!(a.lease_expires_at, NOW + LEASE);
        assert_eq!(claim(&store, "w1", NOW).await, None, "b and c wait for a");
        let mut tx = store.begin_read().await.expect("begin");
        let task = tx.get_task("t1").await.expect("get").expect("task");
        assert_eq!(
            task.status,
            TaskStatus::InProgress,
            "the first claim starts the task"
        );
        drop(tx);

        complete(&store, &a, "w1", b"out-a")
            .await
            .expect("complete a");
        let first = claim(&store, "w1", NOW).await.expect("b or c");
        let second = claim(&store, "w2", NOW).await.expect("the other one");
        let mut names = [first.step.clone(), second.step.clone()];
        names.sort();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(claim(&store, "w3", NOW).await, None, "d waits for b and c");

        complete(&store, &first, "w1", b"out")
            .await
            .expect("complete");
        assert_eq!(
            claim(&store, "w3", NOW).await,
            None,
            "d still waits for one"
        );
        complete(&store, &second, "w2", b"out")
            .await
            .expect("complete");
        let d = claim(&store, "w3", NOW).await.expect("d is ready");
        assert_eq!(d.step, "d");
        let row = step_status(&store, "t1", "a").await;
        assert_eq!(row.status, StepStatus::Complete);
        assert_eq!(row.result.as_deref(), Some(&b"out-a"[..]));
        assert_eq!((row.started_at, row.finished_at), (Some(NOW), Some(NOW)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_claimers_get_one_ready_step_exactly_once() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "t1", &[("only", &[])]).await;
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let claimers: Vec<_> = (0..8)
            .map(|n| {
                let (store, start) = (store.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    store.claim_ready_step(&format!("w{n}"), NOW, LEASE).await
                })
            })
            .collect();
        let mut winners = 0;
        for claimer in claimers {
            if claimer.await.expect("join").expect("claim").is_some() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
        assert_eq!(step_status(&store, "t1", "only").await.attempts, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_drain_many_steps_without_a_double_claim() {
    both(|store| async move {
        seed_workflow(&store).await;
        for n in 0..10 {
            seed_task(
                &store,
                &format!("t{n}"),
                &[("x", &[]), ("y", &[]), ("z", &["x"])],
            )
            .await;
        }
        let workers: Vec<_> = (0..8)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let worker = format!("w{n}");
                    let mut mine = Vec::new();
                    let mut idle = 0;
                    while idle < 3 {
                        match claim(&store, &worker, NOW).await {
                            Some(claimed) => {
                                idle = 0;
                                complete(&store, &claimed, &worker, b"r")
                                    .await
                                    .expect("complete");
                                mine.push((claimed.task_id, claimed.step));
                            }
                            None => {
                                idle += 1;
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.await.expect("join"));
        }
        let unique: HashSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), 30, "every step once: {all:?}");
        assert_eq!(unique.len(), 30);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_is_reclaimed_and_the_old_worker_is_fenced_off() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "t1", &[("a", &[])]).await;
        let first = claim(&store, "w1", NOW).await.expect("claim");
        assert_eq!(
            claim(&store, "w2", NOW + LEASE - 1).await,
            None,
            "lease still held"
        );

        store
            .renew_lease("t1", "a", "w1", NOW + 10, LEASE)
            .await
            .expect("the owner renews");
        assert_eq!(
            claim(&store, "w2", NOW + LEASE + 5).await,
            None,
            "renewed lease holds"
        );

        let later = NOW + 10 + LEASE + 1;
        let second = claim(&store, "w2", later)
            .await
            .expect("expired lease is reclaimed");
        assert_eq!((second.step.as_str(), second.attempt), ("a", 2));
        assert_eq!(second.lease_expires_at, later + LEASE);

        let err = store
            .renew_lease("t1", "a", "w1", later, LEASE)
            .await
            .expect_err("w1 lost the lease");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let err = complete(&store, &first, "w1", b"stale")
            .await
            .expect_err("fenced");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let row = step_status(&store, "t1", "a").await;
        assert_eq!((row.status, row.result), (StepStatus::InProgress, None));

        complete(&store, &second, "w2", b"fresh")
            .await
            .expect("w2 completes");
        let err = complete(&store, &first, "w1", b"stale")
            .await
            .expect_err("still fenced");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let err = complete(&store, &second, "w2", b"again")
            .await
            .expect_err("once only");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let row = step_status(&store, "t1", "a").await;
        assert_eq!(row.status, StepStatus::Complete);
        assert_eq!(
            row.result.as_deref(),
            Some(&b"fresh"[..]),
            "the result is unchanged"
        );
        assert_eq!(row.attempts, 2);
        assert_eq!(row.started_at, Some(NOW), "first start is kept");

        let err = store
            .renew_lease("t1", "nope", "w1", later, LEASE)
            .await
            .expect_err("no such step");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_step_waits_for_its_retry_time_then_fails_for_good() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "t1", &[("a", &[]), ("b", &["a"])]).await;
        let first = claim(&store, "w1", NOW).await.expect("claim");
        write(&store, async |tx| {
            tx.fail_step(
                "t1",
                "a",
                "w1",
                first.attempt,
                r#"{"kind":"retryable"}"#,
                Some(NOW + 500),
                NOW,
            )
            .await
        })
        .await
        .expect("fail");
        let row = step_status(&store, "t1", "a").await;
        assert_eq!(
            (row.status, row.next_run_at),
            (StepStatus::WaitingForRetry, NOW + 500)
        );
        assert_eq!(row.error.as_deref(), Some(r#"{"kind":"retryable"}"#));
        assert_eq!(claim(&store, "w1", NOW + 499).await, None, "not due yet");

        let second = claim(&store, "w2", NOW + 500).await.expect("due");
        assert_eq!((second.step.as_str(), second.attempt), ("a", 2));
        let err = write(&store, async |tx| {
            tx.fail_step("t1", "a", "w1", first.attempt, "{}", None, NOW + 501)
                .await
        })
        .await
        .expect_err("the first attempt is fenced off");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        write(&store, async |tx| {
            tx.fail_step(
                "t1",
                "a",
                "w2",
                second.attempt,
                r#"{"kind":"permanent"}"#,
                None,
                NOW + 600,
            )
            .await
        })
        .await
        .expect("fail for good");
        let row = step_status(&store, "t1", "a").await;
        assert_eq!(
            (row.status, row.finished_at),
            (StepStatus::Error, Some(NOW + 600))
        );
        assert_eq!(
            claim(&store, "w1", NOW + 10_000).await,
            None,
            "b never becomes ready"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_stops_pending_steps_and_finished_tasks_are_not_claimed() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "t1", &[("a", &[]), ("b", &[]), ("c", &["a"])]).await;
        let a = claim(&store, "w1", NOW).await.expect("claim");
        let cancelled = write(&store, async |tx| {
            let cancelled = tx.cancel_pending_steps("t1", NOW + 1).await?;
            tx.set_task_status("t1", TaskStatus::Cancelled, None, NOW + 1)
                .await?;
            Ok(cancelled)
        })
        .await
        .expect("cancel");
        assert_eq!(cancelled, 2, "b and c; a is running");
        assert_eq!(
            step_status(&store, "t1", "b").await.status,
            StepStatus::Cancelled
        );
        assert_eq!(
            claim(&store, "w2", NOW + 10 * LEASE).await,
            None,
            "cancelled task"
        );
        complete(&store, &a, "w1", b"late")
            .await
            .expect("a running step may still finish");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_takes_only_released_steps_that_are_ready_and_whose_data_still_opens() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(
            &store,
            "t1",
            &[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])],
        )
        .await;
        let take = |steps: Vec<(&'static str, &'static str)>, worker: &'static str| {
            let store = store.clone();
            async move {
                write(&store, async |tx| {
                    tx.take_released(&steps, worker, NOW, LEASE).await
                })
                .await
                .expect("take")
            }
        };
        assert_eq!(
            take(vec![("t1", "b")], "w1").await,
            vec![],
            "b still waits for a"
        );
        let a = claim(&store, "w1", NOW).await.expect("a");
        assert_eq!(
            take(vec![("t1", "a")], "w2").await,
            vec![],
            "a is leased to w1 already"
        );
        complete(&store, &a, "w1", b"out-a")
            .await
            .expect("complete a");

        let taken = take(vec![("t1", "b"), ("t1", "c")], "w1").await;
        assert_eq!(taken.len(), 1, "c still waits for b: {taken:?}");
        assert_eq!(
            (
                taken[0].step.as_str(),
                taken[0].attempt,
                taken[0].lease_expires_at
            ),
            ("b", 1, NOW + LEASE)
        );
        let b = step_status(&store, "t1", "b").await;
        assert_eq!(
            (b.status, b.lease_owner.as_deref()),
            (StepStatus::InProgress, Some("w1"))
        );
        assert_eq!(
            claim(&store, "w2", NOW).await,
            None,
            "a taken step is not claimed again"
        );
        assert_eq!(
            take(vec![("t1", "b")], "w2").await,
            vec![],
            "nor taken twice"
        );

        // Once its data key is destroyed, a ready step is left for a claim to refuse.
        complete(&store, &taken[0], "w1", b"out-b")
            .await
            .expect("complete b");
        write(&store, async |tx| tx.destroy_data_key("dk_1", NOW).await)
            .await
            .expect("destroy");
        assert_eq!(take(vec![("t1", "c")], "w1").await, vec![]);
        assert_eq!(
            step_status(&store, "t1", "c").await.status,
            StepStatus::Pending
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_takes_no_step_of_a_cancelled_task() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(&store, "t1", &[("a", &[]), ("b", &["a"])]).await;
        let a = claim(&store, "w1", NOW).await.expect("a");
        complete(&store, &a, "w1", b"out-a")
            .await
            .expect("complete a");
        write(&store, async |tx| {
            tx.set_task_status("t1", TaskStatus::Cancelled, None, NOW + 1)
                .await
        })
        .await
        .expect("cancel");
        let taken = write(&store, async |tx| {
            tx.take_released(&[("t1", "b")], "w1", NOW + 2, LEASE).await
        })
        .await
        .expect("take");
        assert_eq!(taken, vec![]);
    })
    .await;
}
