//! Operator control on both databases: cancelling a task (pending steps never run, a
//! worker mid-step commits nothing) and retrying a failed step (a fresh retry budget,
//! attempt numbers carrying on), with their audit events.

use serde_json::Value;
use stepbox::engine::{EngineError, Ran};
use stepbox::policy::NamespacePolicy;
use stepbox::store::{AuditRow, StepStatus, Store, StoreError, TaskStatus};

use crate::engine::{
    NS, Setup, agent, both, chain_is_intact, drain, refund_request, setup, task_status,
};
use crate::support::*;

const OPERATOR: &str = "user:ops_lead";

async fn events(store: &Store, action: &str) -> Vec<AuditRow> {
    let mut tx = store.begin_read().await.unwrap();
    let events = tx.audit_events(i64::MIN, 10_000).await.unwrap();
    tx.commit().await.unwrap();
    events.into_iter().filter(|e| e.action == action).collect()
}

/// Every recorded attempt of `step`: (attempt number, outcome).
async fn attempts(store: &Store, task: &str, step: &str) -> Vec<(i64, String)> {
    let mut tx = store.begin_read().await.unwrap();
    let rows = tx.get_attempts(task).await.unwrap();
    tx.commit().await.unwrap();
    rows.into_iter()
        .filter(|a| a.step == step)
        .map(|a| (a.attempt, a.outcome))
        .collect()
}

async fn step_row(store: &Store, task: &str, step: &str) -> stepbox::store::StepRow {
    let mut tx = store.begin_read().await.unwrap();
    let row = tx.get_step(task, step).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    row
}

#[tokio::test]
async fn a_cancelled_task_runs_no_further_step_and_a_finished_one_cannot_be_cancelled() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let created = engine.create_task(&agent(), refund_request(150.0)).await.unwrap();

        let cancelled = engine.cancel_task(&created.id, OPERATOR).await.unwrap();
        assert_eq!((cancelled.id.as_str(), cancelled.steps_cancelled), (created.id.as_str(), 4));
        assert_eq!(drain(&engine).await, vec![], "nothing runs after the cancel");
        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Cancelled);
        assert!(steps.iter().all(|(_, s)| *s == StepStatus::Cancelled), "{steps:?}");
        assert_eq!(attempts(&store, &created.id, "validate_refund_request").await, vec![]);
        assert!(server.seen().is_empty());
        let mut tx = store.begin_read().await.unwrap();
        let task = tx.get_task(&created.id).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        assert!(task.finished_at.is_some());

        let event = &events(&store, "task.cancelled").await[0];
        assert_eq!(event.seq, cancelled.audit_seq);
        assert_eq!((event.actor.as_str(), event.resource.clone()), (OPERATOR, format!("task/{}", created.id)));
        assert_eq!(event.namespace.as_deref(), Some(NS));
        assert_eq!(event.correlation_id.as_deref(), Some(created.id.as_str()));
        assert_eq!((event.classification.as_deref(), event.contains_pii), (Some("restricted"), true));
        let details: Value = serde_json::from_str(&event.details).unwrap();
        assert_eq!(details["steps_cancelled"], 4);

        let again = engine.cancel_task(&created.id, OPERATOR).await.unwrap_err();
        assert!(matches!(&again, EngineError::Conflict(m) if m.contains("already finished as cancelled")), "{again}");
        let done = engine.create_task(&agent(), refund_request(150.0)).await.unwrap();
        assert_eq!(drain(&engine).await.len(), 4);
        let finished = engine.cancel_task(&done.id, OPERATOR).await.unwrap_err();
        assert!(matches!(&finished, EngineError::Conflict(m) if m.contains("already finished as complete")), "{finished}");
        assert_eq!(task_status(&store, &done.id).await.0, TaskStatus::Complete);
        let missing = engine.cancel_task("task_nope", OPERATOR).await.unwrap_err();
        assert!(matches!(missing, EngineError::NotFound(_)), "{missing}");
        assert_eq!(events(&store, "task.cancelled").await.len(), 1, "refusals change nothing");
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test]
async fn a_claimed_step_whose_task_is_cancelled_cannot_be_committed() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup {
            engine,
            store,
            clock,
        } = setup(&url, &server, "/notify", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        let now = stepbox::engine::Clock::now_ms(&clock);
        let claim = store
            .claim_ready_step("worker-slow", now, 30_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claim.step, "validate_refund_request");

        let cancelled = engine.cancel_task(&created.id, OPERATOR).await.unwrap();
        assert_eq!(cancelled.steps_cancelled, 4, "the running step too");

        let mut tx = store.begin().await.unwrap();
        let complete = tx
            .complete_step(
                &claim.task_id,
                &claim.step,
                "worker-slow",
                claim.attempt,
                b"late",
                now,
            )
            .await
            .unwrap_err();
        assert!(matches!(complete, StoreError::Conflict(_)), "{complete:?}");
        tx.rollback().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let fail = tx
            .fail_step(
                &claim.task_id,
                &claim.step,
                "worker-slow",
                claim.attempt,
                "{}",
                Some(now + 1),
                now,
            )
            .await
            .unwrap_err();
        assert!(matches!(fail, StoreError::Conflict(_)), "{fail:?}");
        tx.rollback().await.unwrap();
        let row = step_row(&store, &created.id, &claim.step).await;
        assert_eq!((row.status, row.result), (StepStatus::Cancelled, None));
        assert_eq!(drain(&engine).await, vec![]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_running_a_step_when_its_task_is_cancelled_commits_nothing() {
    both(|url| async move {
        let server = TestServer::start().await;
        // The notification takes 0.4 s to answer: long enough to cancel meanwhile.
        let Setup { engine, store, .. } = setup(&url, &server, "/delay", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        for _ in 0..3 {
            assert!(matches!(
                engine.run_once("worker-test").await.unwrap(),
                Ran::Step { .. }
            ));
        }
        let running = tokio::spawn({
            let engine = engine.clone();
            async move { engine.run_once("worker-busy").await }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while server.seen().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the notification never started"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }

        let cancelled = engine.cancel_task(&created.id, OPERATOR).await.unwrap();
        assert_eq!(
            cancelled.steps_cancelled, 1,
            "only the running notification was left"
        );
        assert_eq!(running.await.unwrap().unwrap(), Ran::LostLease);

        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Cancelled);
        assert!(
            steps.contains(&("notify_customer".to_owned(), StepStatus::Cancelled)),
            "{steps:?}"
        );
        assert_eq!(
            attempts(&store, &created.id, "notify_customer").await,
            vec![],
            "no attempt recorded"
        );
        let row = step_row(&store, &created.id, "notify_customer").await;
        assert_eq!((row.result, row.error), (None, None));
        let committed = events(&store, "step.completed").await;
        assert!(
            committed
                .iter()
                .all(|e| !e.resource.ends_with("/notify_customer"))
        );
        assert!(events(&store, "step.failed").await.is_empty());
        assert!(events(&store, "task.completed").await.is_empty());
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test]
async fn a_failed_step_retried_by_hand_gets_a_fresh_budget_and_the_next_attempt_number() {
    both(|url| async move {
        let server = TestServer::start().await;
        server.set_down(true);
        let Setup {
            engine,
            store,
            clock,
        } = setup(&url, &server, "/switch", 2).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        drain(&engine).await;
        clock.advance(6_000);
        drain(&engine).await;
        let (status, _) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Error, "two attempts, both refused");
        assert_eq!(server.seen().len(), 2);

        let complete = engine
            .retry_step(&created.id, "execute_refund", OPERATOR)
            .await
            .unwrap_err();
        assert!(
            matches!(&complete, EngineError::Conflict(m) if m.contains("is complete, not error")),
            "{complete}"
        );
        let missing = engine
            .retry_step(&created.id, "no_such_step", OPERATOR)
            .await
            .unwrap_err();
        assert!(matches!(missing, EngineError::NotFound(_)), "{missing}");

        let retried = engine
            .retry_step(&created.id, "notify_customer", OPERATOR)
            .await
            .unwrap();
        assert_eq!(
            (
                retried.attempt_base,
                retried.next_attempt,
                retried.steps_resumed
            ),
            (2, 3, 0)
        );
        let mut tx = store.begin_read().await.unwrap();
        let task = tx.get_task(&created.id).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            (task.status, task.error_step, task.finished_at),
            (TaskStatus::InProgress, None, None)
        );
        let row = step_row(&store, &created.id, "notify_customer").await;
        assert_eq!(
            (row.status, row.error, row.attempt_base),
            (StepStatus::Pending, None, 2)
        );

        // Still down: the third attempt fails, but the fresh budget allows a fourth.
        drain(&engine).await;
        assert_eq!(
            step_row(&store, &created.id, "notify_customer")
                .await
                .status,
            StepStatus::WaitingForRetry
        );
        server.set_down(false);
        clock.advance(6_000);
        let ran = drain(&engine).await;
        assert_eq!(ran.len(), 1, "{ran:?}");
        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Complete, "{steps:?}");
        let numbers: Vec<i64> = attempts(&store, &created.id, "notify_customer")
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(numbers, vec![1, 2, 3, 4]);
        assert_eq!(
            attempts(&store, &created.id, "notify_customer").await[3].1,
            "success"
        );
        assert_eq!(server.seen().len(), 4);

        let event = &events(&store, "step.retry_requested").await[0];
        assert_eq!(event.seq, retried.audit_seq);
        assert_eq!(event.actor, OPERATOR);
        assert_eq!(
            event.resource,
            format!("step/{}/notify_customer", created.id)
        );
        assert_eq!(event.correlation_id.as_deref(), Some(created.id.as_str()));
        let details: Value = serde_json::from_str(&event.details).unwrap();
        assert_eq!(details["attempt_base"], 2);

        let done = engine
            .retry_step(&created.id, "notify_customer", OPERATOR)
            .await
            .unwrap_err();
        assert!(
            matches!(&done, EngineError::Conflict(m) if m.contains("is complete, not error")),
            "{done}"
        );
        chain_is_intact(&store).await;
    })
    .await;
}

#[tokio::test]
async fn retrying_a_denied_step_once_the_policy_allows_it_resumes_what_the_failure_cancelled() {
    both(|url| async move {
        let server = TestServer::start().await;
        let Setup { engine, store, .. } = setup(&url, &server, "/notify", 3).await;
        let created = engine
            .create_task(&agent(), refund_request(150.0))
            .await
            .unwrap();
        let mut policy = NamespacePolicy {
            hosts: [server.origin()].into(),
            secrets: ["NOTIFY_API_KEY".to_owned()].into(),
            revoked_permissions: [crate::engine::PERMISSION.to_owned()].into(),
            ..NamespacePolicy::default()
        };
        engine.set_policy(NS, &policy, "user:admin").await.unwrap();
        drain(&engine).await;
        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Error);
        assert!(
            steps.contains(&("notify_customer".to_owned(), StepStatus::Cancelled)),
            "{steps:?}"
        );

        policy.revoked_permissions.clear();
        engine.set_policy(NS, &policy, "user:admin").await.unwrap();
        let retried = engine
            .retry_step(&created.id, "execute_refund", OPERATOR)
            .await
            .unwrap();
        assert_eq!(
            (
                retried.attempt_base,
                retried.next_attempt,
                retried.steps_resumed
            ),
            (1, 2, 1)
        );
        let ran = drain(&engine).await;
        assert_eq!(
            ran.len(),
            2,
            "execute_refund, then notify_customer: {ran:?}"
        );
        let (status, steps) = task_status(&store, &created.id).await;
        assert_eq!(status, TaskStatus::Complete, "{steps:?}");
        assert_eq!(
            attempts(&store, &created.id, "execute_refund").await[0].0,
            2
        );
        assert_eq!(server.seen().len(), 1);
        chain_is_intact(&store).await;
    })
    .await;
}
