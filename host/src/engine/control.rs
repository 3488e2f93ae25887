//! Operator control of tasks: cancelling one that is still running, and retrying the step
//! a failed one stopped at. Each is one write transaction with its audit event, and each
//! leans on the lease protocol's fencing rather than on workers noticing: a cancelled
//! in-progress step is no longer `in_progress`, so the worker running it commits nothing.

use serde::Serialize;
use serde_json::json;

use super::EngineError;
use super::core::Engine;
use crate::audit::{self, NewEvent};
use crate::store::{StepStatus, TaskRow, TaskStatus, Tx};

/// What [`Engine::cancel_task`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CancelledTask {
    /// The task.
    pub id: String,
    /// Steps cancelled: pending, waiting for a retry, or in progress (whose workers'
    /// outcomes are dropped).
    pub steps_cancelled: u64,
    /// Sequence number of the `task.cancelled` audit event.
    pub audit_seq: i64,
}

/// What [`Engine::retry_step`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetriedStep {
    /// The task, running again.
    pub task_id: String,
    /// The step, pending again.
    pub step: String,
    /// The attempt number its next run will have (attempt numbers never restart).
    pub next_attempt: i64,
    /// Attempts made before this retry; the fresh budget of `retry.max_attempts` counts
    /// from here.
    pub attempt_base: i64,
    /// Steps the failure had cancelled, pending again.
    pub steps_resumed: u64,
    /// Sequence number of the `step.retry_requested` audit event.
    pub audit_seq: i64,
}

impl Engine {
    /// Cancel a pending or in-progress task: the task becomes cancelled and so does every
    /// step of it that has not finished, including steps a worker is running right now
    /// (that worker's outcome is refused when it tries to commit). `NotFound` if there is
    /// no such task; `Conflict` if it already finished.
    pub async fn cancel_task(
        &self,
        task_id: &str,
        actor: &str,
    ) -> Result<CancelledTask, EngineError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let task = task_row(&mut tx, task_id).await?;
        if task.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "task {task_id} already finished as {}",
                task.status
            )));
        }
        // Steps before the task, the order a worker's commit takes them in, so the two
        // never wait for each other in a cycle on PostgreSQL. A worker that finished the
        // task meanwhile makes `set_task_status` answer `Conflict`, and nothing is kept.
        let steps_cancelled = tx.cancel_unfinished_steps(task_id, now).await?;
        tx.set_task_status(task_id, TaskStatus::Cancelled, None, now)
            .await?;
        let event = task_event(
            &task,
            actor,
            "task.cancelled",
            format!("task/{task_id}"),
            json!({ "steps_cancelled": steps_cancelled }),
        );
        let audit_seq = audit::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        self.inner.endings.ended([task_id]);
        Ok(CancelledTask {
            id: task_id.to_owned(),
            steps_cancelled,
            audit_seq,
        })
    }

    /// Retry the failed step `step` of the failed task `task_id`: the step becomes pending
    /// and due now with its error cleared and a fresh budget of `retry.max_attempts`
    /// (attempt numbers carry on: they are the lease's fencing token); the steps the
    /// failure cancelled become pending again; the task is in progress again. Use it once
    /// the cause is fixed (a service back up, a secret replaced). `NotFound` if the task or
    /// step does not exist; `Conflict` unless both are in error.
    pub async fn retry_step(
        &self,
        task_id: &str,
        step: &str,
        actor: &str,
    ) -> Result<RetriedStep, EngineError> {
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let task = task_row(&mut tx, task_id).await?;
        if task.status != TaskStatus::Error {
            return Err(EngineError::Conflict(format!(
                "task {task_id} is {}, not error: only a failed task's step can be retried",
                task.status
            )));
        }
        let row = tx
            .get_step(task_id, step)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("step {task_id}/{step}")))?;
        if row.status != StepStatus::Error {
            return Err(EngineError::Conflict(format!(
                "step {task_id}/{step} is {}, not error: only a failed step can be retried",
                row.status
            )));
        }
        let attempt_base = tx.retry_failed_step(task_id, step, now).await?;
        let steps_resumed = tx.resume_cancelled_steps(task_id, now).await?;
        tx.reopen_failed_task(task_id, now).await?;
        let event = task_event(
            &task,
            actor,
            "step.retry_requested",
            format!("step/{task_id}/{step}"),
            json!({
                "step": step,
                "attempt_base": attempt_base,
                "steps_resumed": steps_resumed,
            }),
        );
        let audit_seq = audit::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        Ok(RetriedStep {
            task_id: task_id.to_owned(),
            step: step.to_owned(),
            next_attempt: attempt_base + 1,
            attempt_base,
            steps_resumed,
            audit_seq,
        })
    }
}

async fn task_row(tx: &mut Tx<'_>, task_id: &str) -> Result<TaskRow, EngineError> {
    tx.get_task(task_id)
        .await?
        .ok_or_else(|| EngineError::NotFound(format!("task {task_id}")))
}

/// An operator's action on `task` (or one of its steps), correlated with the task.
fn task_event(
    task: &TaskRow,
    actor: &str,
    action: &str,
    resource: String,
    details: serde_json::Value,
) -> NewEvent {
    NewEvent {
        actor: actor.to_owned(),
        action: action.into(),
        resource,
        namespace: Some(task.namespace.clone()),
        outcome: "success".into(),
        classification: Some(task.classification.clone()),
        contains_pii: task.contains_pii,
        correlation_id: Some(task.id.clone()),
        details,
    }
}
