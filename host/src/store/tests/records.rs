//! Round trips for namespaces, modules, workflows, tasks, steps and attempts.

use super::{NOW, both, seed_task, seed_workflow, task, workflow, write};
use crate::store::{
    AttemptRow, ModuleInfo, ModuleRow, NamespaceRow, StepRow, StepStatus, StoreError, TaskCursor,
    TaskFilter, TaskStatus,
};

fn module(digest: &str, version: &str) -> ModuleRow {
    ModuleRow {
        digest: digest.to_owned(),
        namespace: "payments".to_owned(),
        name: "validate".to_owned(),
        version: version.to_owned(),
        bytes: vec![0, 97, 115, 109, 1, 0, 0, 0],
        size: 8,
        uploader: "user_1".to_owned(),
        signature: Some(vec![9; 64]),
        created_at: NOW,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_round_trip_and_upsert_replaces_the_policy() {
    both(|store| async move {
        write(&store, async |tx| {
            tx.upsert_namespace("payments", r#"{"v":1}"#, NOW).await?;
            tx.upsert_namespace("payments", r#"{"v":2}"#, NOW + 5)
                .await?;
            tx.upsert_namespace("audit", "{}", NOW).await
        })
        .await
        .expect("upsert");
        let mut tx = store.begin_read().await.expect("begin");
        assert_eq!(
            tx.get_namespace("payments").await.expect("get"),
            Some(NamespaceRow {
                name: "payments".to_owned(),
                policy: r#"{"v":2}"#.to_owned(),
                created_at: NOW,
            })
        );
        assert_eq!(tx.get_namespace("nope").await.expect("get"), None);
        let names: Vec<String> = tx
            .list_namespaces()
            .await
            .expect("list")
            .into_iter()
            .map(|ns| ns.name)
            .collect();
        assert_eq!(names, ["audit", "payments"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_round_trip_and_are_immutable() {
    both(|store| async move {
        seed_workflow(&store).await;
        let stored = module("sha256_a", "1.0.0");
        write(&store, async |tx| tx.insert_module(&stored).await)
            .await
            .expect("insert");

        let mut tx = store.begin_read().await.expect("begin");
        let by_name = tx
            .get_module("payments", "validate", "1.0.0")
            .await
            .expect("get");
        assert_eq!(by_name.as_ref(), Some(&stored));
        assert_eq!(
            tx.get_module("payments", "validate", "2.0.0")
                .await
                .expect("get"),
            None
        );
        let listed = tx.list_modules("payments").await.expect("list");
        assert_eq!(
            listed,
            [ModuleInfo {
                digest: "sha256_a".to_owned(),
                namespace: "payments".to_owned(),
                name: "validate".to_owned(),
                version: "1.0.0".to_owned(),
                size: 8,
                uploader: "user_1".to_owned(),
                signed: true,
                created_at: NOW,
            }]
        );
        assert!(tx.list_modules("other").await.expect("list").is_empty());
        drop(tx);

        // The same namespace/name@version again, with the same or other bytes: a
        // conflict, modules are immutable.
        for again in [stored.clone(), module("sha256_b", "1.0.0")] {
            let err = write(&store, async |tx| tx.insert_module(&again).await)
                .await
                .expect_err("modules are immutable");
            assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        }
        // The same bytes as another version, or in another namespace: stored, each on
        // its own (one namespace's upload says nothing about another's).
        let mut same_bytes = module("sha256_a", "1.1.0");
        write(&store, async |tx| tx.insert_module(&same_bytes).await)
            .await
            .expect("same bytes, another version");
        same_bytes.namespace = "other".to_owned();
        same_bytes.version = "1.0.0".to_owned();
        write(&store, async |tx| {
            tx.upsert_namespace("other", "{}", NOW).await?;
            tx.insert_module(&same_bytes).await
        })
        .await
        .expect("same bytes, another namespace");
        let mut orphan = module("sha256_c", "1.0.0");
        orphan.namespace = "nowhere".to_owned();
        let err = write(&store, async |tx| tx.insert_module(&orphan).await)
            .await
            .expect_err("unknown namespace");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workflows_round_trip_are_immutable_and_the_latest_is_the_newest() {
    both(|store| async move {
        seed_workflow(&store).await;
        write(&store, async |tx| {
            tx.insert_workflow(&workflow("1.1.0", NOW + 10)).await?;
            tx.insert_workflow(&workflow("0.9.0", NOW - 10)).await
        })
        .await
        .expect("insert");
        let err = write(&store, async |tx| {
            tx.insert_workflow(&workflow("1.0.0", NOW)).await
        })
        .await
        .expect_err("versions are immutable");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        let mut tx = store.begin_read().await.expect("begin");
        assert_eq!(
            tx.get_workflow("payments", "refund", "1.0.0")
                .await
                .expect("get"),
            Some(workflow("1.0.0", NOW))
        );
        assert_eq!(
            tx.latest_workflow("payments", "refund")
                .await
                .expect("latest"),
            Some(workflow("1.1.0", NOW + 10))
        );
        assert_eq!(
            tx.latest_workflow("payments", "other")
                .await
                .expect("latest"),
            None
        );
        assert_eq!(tx.list_workflows("payments").await.expect("list").len(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_round_trip_and_finish_once() {
    both(|store| async move {
        seed_workflow(&store).await;
        let stored = task("task_1", NOW);
        write(&store, async |tx| tx.insert_task(&stored).await)
            .await
            .expect("insert");
        let mut tx = store.begin().await.expect("begin");
        assert_eq!(
            tx.get_task("task_1").await.expect("get").as_ref(),
            Some(&stored)
        );
        assert_eq!(tx.get_task("task_2").await.expect("get"), None);
        assert_eq!(
            tx.tasks_for_subject("bi_subject")
                .await
                .expect("subject")
                .len(),
            1
        );

        tx.set_task_status("task_1", TaskStatus::InProgress, None, NOW + 1)
            .await
            .expect("start");
        tx.set_task_status("task_1", TaskStatus::Error, Some("execute_refund"), NOW + 2)
            .await
            .expect("fail");
        let finished = tx.get_task("task_1").await.expect("get").expect("task");
        assert_eq!(finished.status, TaskStatus::Error);
        assert_eq!(finished.error_step.as_deref(), Some("execute_refund"));
        assert_eq!(
            (finished.updated_at, finished.finished_at),
            (NOW + 2, Some(NOW + 2))
        );

        let err = tx
            .set_task_status("task_1", TaskStatus::Cancelled, None, NOW + 3)
            .await
            .expect_err("finished tasks stay finished");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let err = tx
            .set_task_status("task_2", TaskStatus::Cancelled, None, NOW + 3)
            .await
            .expect_err("no such task");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        tx.commit().await.expect("commit");

        let err = write(&store, async |tx| tx.insert_task(&stored).await)
            .await
            .expect_err("duplicate id");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let mut orphan = task("task_3", NOW);
        orphan.workflow_version = "9.9.9".to_owned();
        let err = write(&store, async |tx| tx.insert_task(&orphan).await)
            .await
            .expect_err("unknown workflow");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_list_newest_first_in_pages() {
    both(|store| async move {
        seed_workflow(&store).await;
        write(&store, async |tx| {
            for n in 0..5 {
                // Two tasks share each millisecond, so the id breaks ties.
                let mut row = task(&format!("task_{n}"), NOW + n / 2);
                if n % 2 == 1 {
                    row.created_by = "user_2".to_owned();
                    row.status = TaskStatus::Complete;
                }
                tx.insert_task(&row).await?;
            }
            Ok(())
        })
        .await
        .expect("insert");
        let mut tx = store.begin_read().await.expect("begin");
        let mut seen = Vec::new();
        let mut cursor: Option<TaskCursor> = None;
        loop {
            let page = tx
                .list_tasks("payments", &TaskFilter::default(), 2, cursor.as_ref())
                .await
                .expect("list");
            let Some(last) = page.last() else { break };
            cursor = Some(TaskCursor::from(last));
            seen.extend(page.into_iter().map(|task| task.id));
        }
        assert_eq!(seen, ["task_4", "task_3", "task_2", "task_1", "task_0"]);
        let ids = |page: Vec<crate::store::TaskRow>| -> Vec<String> {
            page.into_iter().map(|task| task.id).collect()
        };
        let by_user_2 = TaskFilter {
            created_by: Some("user_2".to_owned()),
            ..TaskFilter::default()
        };
        let page = tx.list_tasks("payments", &by_user_2, 10, None).await;
        assert_eq!(ids(page.expect("list")), ["task_3", "task_1"]);
        let pending_after_3 = TaskFilter {
            status: Some(TaskStatus::Pending),
            ..TaskFilter::default()
        };
        let cursor = TaskCursor {
            created_at: NOW + 1,
            id: "task_3".to_owned(),
        };
        let page = tx
            .list_tasks("payments", &pending_after_3, 10, Some(&cursor))
            .await;
        assert_eq!(ids(page.expect("list")), ["task_2", "task_0"]);
        let other_workflow = TaskFilter {
            workflow: Some("payout".to_owned()),
            ..TaskFilter::default()
        };
        let page = tx.list_tasks("payments", &other_workflow, 10, None).await;
        assert!(page.expect("list").is_empty());
        let page = tx
            .list_tasks("other", &TaskFilter::default(), 10, None)
            .await;
        assert!(page.expect("list").is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_and_attempts_round_trip() {
    both(|store| async move {
        seed_workflow(&store).await;
        seed_task(
            &store,
            "task_1",
            &[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])],
        )
        .await;
        let attempt = AttemptRow {
            task_id: "task_1".to_owned(),
            step: "a".to_owned(),
            attempt: 1,
            worker: "w1".to_owned(),
            outcome: "complete".to_owned(),
            record: vec![0xAB; 16],
            started_at: NOW,
            duration_ms: 12,
        };
        write(&store, async |tx| tx.insert_attempt(&attempt).await)
            .await
            .expect("attempt");
        let err = write(&store, async |tx| tx.insert_attempt(&attempt).await)
            .await
            .expect_err("recorded once");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        let mut tx = store.begin_read().await.expect("begin");
        let steps = tx.get_steps("task_1").await.expect("steps");
        assert_eq!(
            steps,
            vec![
                StepRow::pending("task_1", "a", &[], NOW),
                StepRow::pending("task_1", "b", &["a"], NOW),
                StepRow::pending("task_1", "c", &["a", "b"], NOW),
            ]
        );
        assert_eq!(steps[0].status, StepStatus::Pending);
        assert_eq!(tx.get_step("task_1", "zz").await.expect("get"), None);
        assert_eq!(
            tx.get_attempts("task_1").await.expect("attempts"),
            vec![attempt]
        );
        drop(tx);

        let err = write(&store, async |tx| {
            tx.insert_steps(&[StepRow::pending("task_1", "a", &[], NOW)])
                .await
        })
        .await
        .expect_err("duplicate step");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_steps_insert_in_batches() {
    both(|store| async move {
        seed_workflow(&store).await;
        let steps: Vec<StepRow> = (0..1_205)
            .map(|n| StepRow::pending("task_1", &format!("s{n:04}"), &[], NOW))
            .collect();
        write(&store, async |tx| {
            tx.insert_task(&task("task_1", NOW)).await?;
            tx.insert_steps(&steps).await
        })
        .await
        .expect("insert");
        let mut tx = store.begin_read().await.expect("begin");
        assert_eq!(tx.get_steps("task_1").await.expect("steps"), steps);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unfinished_tasks_are_found_per_namespace() {
    both(|store| async move {
        seed_workflow(&store).await;
        write(&store, async |tx| {
            for n in 0..5 {
                tx.insert_task(&task(&format!("task_{n}"), NOW)).await?;
            }
            tx.set_task_status("task_1", TaskStatus::InProgress, None, NOW + 1)
                .await?;
            tx.set_task_status("task_2", TaskStatus::Complete, None, NOW + 1)
                .await?;
            tx.set_task_status("task_3", TaskStatus::Cancelled, None, NOW + 1)
                .await
        })
        .await
        .expect("seed");
        let mut tx = store.begin_read().await.expect("begin");
        // task_0 and task_4 pending, task_1 in progress; none in the other namespace.
        assert!(tx.any_unfinished_task("payments").await.expect("look"));
        assert!(!tx.any_unfinished_task("other").await.expect("look"));
        tx.commit().await.expect("commit");
        write(&store, async |tx| {
            for n in [0, 1, 4] {
                tx.set_task_status(&format!("task_{n}"), TaskStatus::Complete, None, NOW + 2)
                    .await?;
            }
            Ok(())
        })
        .await
        .expect("finish");
        let mut tx = store.begin_read().await.expect("begin");
        // The finished ones do not count.
        assert!(!tx.any_unfinished_task("payments").await.expect("look"));
    })
    .await;
}
