//! Operator transitions: cancelling a task's unfinished steps, and putting a failed task
//! back to work (its failed step with a fresh retry budget, the steps its failure cancelled).
//!
//! Each is one conditional update, so it fences concurrent writers the way `claim` does:
//! a cancelled in-progress step is no longer `in_progress`, so the worker running it gets
//! `Conflict` from `complete_step`/`fail_step` and commits nothing.

use super::backend::with_conn;
use super::error::Context;
use super::{StoreError, Tx};

impl Tx<'_> {
    /// Cancels every unfinished step of `task_id` (pending, waiting_for_retry and
    /// in_progress) and returns how many. Unlike [`Tx::cancel_pending_steps`] this takes
    /// running steps too: their workers are fenced out and their outcome is dropped.
    pub async fn cancel_unfinished_steps(
        &mut self,
        task_id: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE steps SET status = 'cancelled', lease_expires_at = NULL, finished_at = $2
                 WHERE task_id = $1 AND status IN ('pending', 'waiting_for_retry', 'in_progress')",
            )
            .bind(task_id)
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("cancel unfinished steps")
    }

    /// Puts a failed step back: pending, due at `now`, its error cleared, and a fresh retry
    /// budget (`attempt_base` becomes `attempts`; attempt numbers keep increasing, as the
    /// fencing token must). Returns the new `attempt_base`. `Conflict` unless the step is
    /// in error; `NotFound` if there is no such step.
    pub async fn retry_failed_step(
        &mut self,
        task_id: &str,
        step: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        let base: Option<i64> = with_conn!(self, |conn| {
            sqlx::query_scalar(
                "UPDATE steps SET status = 'pending', next_run_at = $3, error = NULL,
                                  lease_expires_at = NULL, finished_at = NULL,
                                  attempt_base = attempts
                 WHERE task_id = $1 AND name = $2 AND status = 'error'
                 RETURNING attempt_base",
            )
            .bind(task_id)
            .bind(step)
            .bind(now)
            .fetch_optional(conn)
            .await
        })
        .ctx("retry step")?;
        if let Some(base) = base {
            return Ok(base);
        }
        match self.get_step(task_id, step).await? {
            None => Err(StoreError::NotFound(format!("step {task_id}/{step}"))),
            Some(row) => Err(StoreError::Conflict(format!(
                "step {task_id}/{step} is {}, not error",
                row.status
            ))),
        }
    }

    /// Makes the cancelled steps of `task_id` pending again, due at `now`, and returns how
    /// many: the steps a failure cancelled, when the failed step is retried.
    pub async fn resume_cancelled_steps(
        &mut self,
        task_id: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE steps SET status = 'pending', next_run_at = $2, finished_at = NULL
                 WHERE task_id = $1 AND status = 'cancelled'",
            )
            .bind(task_id)
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("resume cancelled steps")
    }

    /// Reopens a failed task: in_progress again, `error_step` and `finished_at` cleared.
    /// The one way out of a terminal status. `Conflict` unless the task is in error;
    /// `NotFound` if there is no such task.
    pub async fn reopen_failed_task(&mut self, id: &str, now: i64) -> Result<(), StoreError> {
        let updated = with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE tasks SET status = 'in_progress', error_step = NULL, finished_at = NULL,
                                  updated_at = $2
                 WHERE id = $1 AND status = 'error'",
            )
            .bind(id)
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("reopen task")?;
        if updated == 1 {
            return Ok(());
        }
        match self.get_task(id).await? {
            None => Err(StoreError::NotFound(format!("task {id}"))),
            Some(task) => Err(StoreError::Conflict(format!(
                "task {id} is {}, not error",
                task.status
            ))),
        }
    }
}
