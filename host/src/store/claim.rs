//! The lease protocol: claiming ready steps, and committing a step's outcome exactly once.
//!
//! A claim sets `lease_owner`, `lease_expires_at` and bumps `attempts`; the attempt number
//! is the fencing token. Completing or failing a step is a conditional update on
//! (owner, attempt, status = in_progress), so of two workers that both ran a step (one
//! whose lease expired and another that reclaimed it) exactly one commits its outcome; the
//! other gets `Conflict` and must drop its result.
//!
//! Claiming is the one place the backends differ in kind:
//! - PostgreSQL runs many claimers at once. Each claim statement picks one candidate
//!   `FOR UPDATE SKIP LOCKED` (claimers skip a row another claimer is taking instead of
//!   queueing behind it) and updates it, all in one statement; after locking, PostgreSQL
//!   re-checks the candidate's conditions against its latest committed version, so a step
//!   another claimer already took is passed over, never taken twice.
//! - SQLite has one writer at a time. Each claim statement is a single `UPDATE` whose
//!   subquery chooses the step, run under that one write lock, so choosing and taking
//!   cannot interleave with another claim. The transaction is `BEGIN IMMEDIATE` (see
//!   [`Store::begin`](super::Store::begin)): it takes the write lock up front, so
//!   concurrent claimers queue for up to the busy timeout instead of failing with
//!   `SQLITE_BUSY_SNAPSHOT` when they try to upgrade a stale read.
//!
//! Each claim first looks for an in-progress step whose lease expired (its worker died),
//! then for a runnable one; both use a partial index so an idle poll reads next to nothing.

use super::backend::{BATCH_ROWS, TxInner, with_conn};
use super::error::Context;
use super::{StoreError, Tx};

/// A step leased to a worker by a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedStep {
    /// The task.
    pub task_id: String,
    /// The step's name.
    pub step: String,
    /// This attempt's number (1 for the first run): pass it back to complete or fail.
    pub attempt: i64,
    /// The attempt number the step's retry budget counts from: 0, or the attempts made
    /// before an operator last retried it by hand. `attempt - attempt_base` attempts of the
    /// current budget have been used, this one included.
    pub attempt_base: i64,
    /// When the lease runs out unless renewed, unix ms.
    pub lease_expires_at: i64,
}

/// The step's task is still running. A correlated `EXISTS` rather than a join, so the
/// planner walks the partial step index in order and stops at the first hit instead of
/// starting from the tasks and sorting.
macro_rules! task_running {
    () => {
        "EXISTS (SELECT 1 FROM tasks t WHERE t.id = s.task_id
                   AND t.status IN ('pending', 'in_progress'))"
    };
}

/// The runnable-step condition, shared by both backends' claims: due, every dependency
/// complete (`waiting_on`, kept by [`Tx::complete_step`]), task still running. `s` is the
/// step, `$1` now. Matches the `steps_ready` partial index's predicate, so a claim reads
/// that index in due order.
macro_rules! runnable {
    () => {
        concat!(
            "s.status IN ('pending', 'waiting_for_retry') AND s.waiting_on = 0
             AND s.next_run_at <= $1 AND ",
            task_running!()
        )
    };
}

/// An in-progress step whose worker's lease ran out, in a task still running.
macro_rules! expired {
    () => {
        concat!(
            "s.status = 'in_progress' AND s.lease_expires_at < $1 AND ",
            task_running!()
        )
    };
}

pub(super) const SQLITE_CLAIM_EXPIRED: &str = concat!(
    "UPDATE steps SET lease_owner = $2, lease_expires_at = $3, attempts = attempts + 1
     WHERE rowid IN (SELECT s.rowid FROM steps s WHERE ",
    expired!(),
    " ORDER BY s.lease_expires_at LIMIT $4)
     RETURNING task_id, name, attempts, attempt_base, lease_expires_at"
);

pub(super) const SQLITE_CLAIM_RUNNABLE: &str = concat!(
    "UPDATE steps SET status = 'in_progress', lease_owner = $2, lease_expires_at = $3,
                      attempts = attempts + 1, started_at = COALESCE(started_at, $1)
     WHERE rowid IN (SELECT s.rowid FROM steps s WHERE ",
    runnable!(),
    " ORDER BY s.next_run_at LIMIT $4)
     RETURNING task_id, name, attempts, attempt_base, lease_expires_at"
);

/// The statement of [`Tx::take_released`], with the placeholders of the lease owner, the
/// lease's end, now, the (task, step) rows and now again.
pub(super) fn take_released_sql(
    owner: &str,
    expires: &str,
    now: &str,
    rows: &str,
    now_again: &str,
) -> String {
    format!(
        "UPDATE steps SET status = 'in_progress', lease_owner = {owner},
                          lease_expires_at = {expires}, attempts = steps.attempts + 1,
                          started_at = COALESCE(steps.started_at, {now})
         FROM (VALUES {rows}) AS v
         WHERE steps.task_id = v.column1 AND steps.name = v.column2
           AND steps.status = 'pending' AND steps.waiting_on = 0
           AND steps.next_run_at <= {now_again}
           AND EXISTS (SELECT 1 FROM tasks t JOIN data_keys k ON k.id = t.data_key_id
                       WHERE t.id = steps.task_id AND t.status IN ('pending', 'in_progress')
                         AND k.destroyed_at IS NULL)
         RETURNING steps.task_id, steps.name, steps.attempts, steps.attempt_base,
                   steps.lease_expires_at"
    )
}

const POSTGRES_CLAIM_EXPIRED: &str = concat!(
    "WITH candidate AS (
         SELECT s.task_id, s.name FROM steps s WHERE ",
    expired!(),
    "    ORDER BY s.lease_expires_at LIMIT $4
         FOR UPDATE SKIP LOCKED)
     UPDATE steps SET lease_owner = $2, lease_expires_at = $3, attempts = steps.attempts + 1
     FROM candidate WHERE steps.task_id = candidate.task_id AND steps.name = candidate.name
     RETURNING steps.task_id, steps.name, steps.attempts, steps.attempt_base,
               steps.lease_expires_at"
);

const POSTGRES_CLAIM_RUNNABLE: &str = concat!(
    "WITH candidate AS (
         SELECT s.task_id, s.name FROM steps s WHERE ",
    runnable!(),
    "    ORDER BY s.next_run_at LIMIT $4
         FOR UPDATE SKIP LOCKED),
     claimed AS (
         UPDATE steps SET status = 'in_progress', lease_owner = $2, lease_expires_at = $3,
                          attempts = steps.attempts + 1,
                          started_at = COALESCE(steps.started_at, $1)
         FROM candidate WHERE steps.task_id = candidate.task_id AND steps.name = candidate.name
         RETURNING steps.task_id, steps.name, steps.attempts, steps.attempt_base,
               steps.lease_expires_at),
     started AS (
         UPDATE tasks SET status = 'in_progress', updated_at = $1
         FROM claimed WHERE tasks.id = claimed.task_id AND tasks.status = 'pending')
     SELECT task_id, name, attempts, attempt_base, lease_expires_at FROM claimed"
);

/// One fewer dependency to wait for, for each step of task `$1` that depends on `$2`.
const SQLITE_RELEASE_DEPENDENTS: &str = "UPDATE steps SET waiting_on = waiting_on - 1
     WHERE task_id = $1 AND EXISTS (SELECT 1 FROM json_each(steps.depends_on) WHERE value = $2)";
const POSTGRES_RELEASE_DEPENDENTS: &str = "UPDATE steps SET waiting_on = waiting_on - 1
     WHERE task_id = $1 AND depends_on::jsonb ? $2";

pub(super) type ClaimRecord = (String, String, i64, i64, i64);

impl From<ClaimRecord> for ClaimedStep {
    fn from((task_id, step, attempt, attempt_base, lease_expires_at): ClaimRecord) -> Self {
        ClaimedStep {
            task_id,
            step,
            attempt,
            attempt_base,
            lease_expires_at,
        }
    }
}

/// A step's result to commit with [`Tx::complete_steps`], fenced like
/// [`Tx::complete_step`].
#[derive(Clone, Copy, Debug)]
pub struct Completion<'a> {
    /// The task.
    pub task_id: &'a str,
    /// The step.
    pub step: &'a str,
    /// The worker that holds the lease.
    pub worker: &'a str,
    /// The attempt the worker ran.
    pub attempt: i64,
    /// The result, ciphertext.
    pub result: &'a [u8],
}

impl Tx<'_> {
    /// Leases one ready step to `worker` until `now + lease_ms`, or returns `None`; see
    /// [`Tx::claim_ready_steps`].
    pub async fn claim_ready_step(
        &mut self,
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedStep>, StoreError> {
        Ok(self
            .claim_ready_steps(worker, now, lease_ms, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Leases up to `limit` ready steps to `worker` until `now + lease_ms`.
    ///
    /// Ready means either an in-progress step whose lease expired (its worker died; it is
    /// taken over as a new attempt) or a pending / waiting_for_retry step that is due
    /// (`next_run_at <= now`) and whose `depends_on` steps are all complete; in both cases
    /// its task must be pending or in_progress. Each step becomes in_progress with
    /// `attempts + 1` and `started_at` set on its first claim; a pending task becomes
    /// in_progress. Expired leases first, then earliest due first.
    pub async fn claim_ready_steps(
        &mut self,
        worker: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<ClaimedStep>, StoreError> {
        let lease_expires_at = now.saturating_add(lease_ms);
        let (expired, runnable) = match self.inner {
            TxInner::Sqlite(_) => (SQLITE_CLAIM_EXPIRED, SQLITE_CLAIM_RUNNABLE),
            TxInner::Postgres(_) => (POSTGRES_CLAIM_EXPIRED, POSTGRES_CLAIM_RUNNABLE),
        };
        let mut claimed: Vec<ClaimRecord> = Vec::new();
        for sql in [expired, runnable] {
            let wanted = limit.saturating_sub(claimed.len());
            if wanted == 0 {
                break;
            }
            let rows: Vec<ClaimRecord> = with_conn!(self, |conn| {
                sqlx::query_as::<_, ClaimRecord>(sql)
                    .bind(now)
                    .bind(worker)
                    .bind(lease_expires_at)
                    .bind(i64::try_from(wanted).unwrap_or(i64::MAX))
                    .fetch_all(conn)
                    .await
            })
            .ctx("claim steps")?;
            claimed.extend(rows);
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        if let TxInner::Sqlite(_) = self.inner {
            // PostgreSQL did this in the claim statement itself.
            let mut task_ids: Vec<&str> = claimed.iter().map(|c| c.0.as_str()).collect();
            task_ids.sort_unstable();
            task_ids.dedup();
            let sql = format!(
                // `+status`: look the tasks up by id; SQLite would otherwise walk every
                // pending task through the status index.
                "UPDATE tasks SET status = 'in_progress', updated_at = {}
                 WHERE +status = 'pending' AND id IN ({})",
                self.param_list(1, 1),
                self.param_list(2, task_ids.len())
            );
            with_conn!(self, |conn| {
                let mut query = sqlx::query(&sql).bind(now);
                for id in &task_ids {
                    query = query.bind(*id);
                }
                query.execute(conn).await.map(|done| done.rows_affected())
            })
            .ctx("start tasks")?;
        }
        Ok(claimed.into_iter().map(ClaimedStep::from).collect())
    }

    /// Commits many steps' results in one statement, each fenced as in
    /// [`Tx::complete_step`]; returns the (task, step, attempt) of each that was
    /// committed. A completion missing from the answer was no longer leased to its worker
    /// at that attempt, and nothing of it changed. (The attempt matters: a worker may hold
    /// a stale and a current attempt of the same step in one batch, and only the current
    /// one commits.) Steps waiting on the committed ones are not released: the
    /// caller does that with [`Tx::release_steps`], knowing the workflow.
    pub async fn complete_steps(
        &mut self,
        done: &[Completion<'_>],
        now: i64,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let mut committed = Vec::with_capacity(done.len());
        for batch in done.chunks(BATCH_ROWS) {
            let sql = format!(
                "UPDATE steps SET status = 'complete', result = v.column5, error = NULL,
                                  lease_expires_at = NULL, finished_at = {}
                 FROM (VALUES {}) AS v
                 WHERE steps.task_id = v.column1 AND steps.name = v.column2
                   AND steps.lease_owner = v.column3 AND steps.attempts = v.column4
                   AND steps.status = 'in_progress'
                 RETURNING steps.task_id, steps.name, steps.attempts",
                self.param_list(1, 1),
                self.row_list(2, batch.len(), 5)
            );
            let rows: Vec<(String, String, i64)> = with_conn!(self, |conn| {
                let mut query = sqlx::query_as(&sql).bind(now);
                for c in batch {
                    query = query
                        .bind(c.task_id)
                        .bind(c.step)
                        .bind(c.worker)
                        .bind(c.attempt)
                        .bind(c.result);
                }
                query.fetch_all(conn).await
            })
            .ctx("complete steps")?;
            committed.extend(rows);
        }
        Ok(committed)
    }

    /// Of `steps` (task, step), just released by a commit in this transaction, lease to
    /// `worker` those that are now ready: pending, waiting on nothing, due, of a task
    /// still running whose data key is not destroyed. The committing worker runs them
    /// next without a claim of its own (`engine::pool`); the rest wait for a claimer.
    pub async fn take_released(
        &mut self,
        steps: &[(&str, &str)],
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedStep>, StoreError> {
        let lease_expires_at = now.saturating_add(lease_ms);
        let mut taken = Vec::with_capacity(steps.len());
        for batch in steps.chunks(BATCH_ROWS) {
            // `now` twice: SQLite's `?` are positional.
            let sql = take_released_sql(
                &self.param_list(1, 1),
                &self.param_list(2, 1),
                &self.param_list(3, 1),
                &self.row_list(4, batch.len(), 2),
                &self.param_list(4 + 2 * batch.len(), 1),
            );
            let rows: Vec<ClaimRecord> = with_conn!(self, |conn| {
                let mut query = sqlx::query_as(&sql)
                    .bind(worker)
                    .bind(lease_expires_at)
                    .bind(now);
                for (task_id, step) in batch {
                    query = query.bind(*task_id).bind(*step);
                }
                query.bind(now).fetch_all(conn).await
            })
            .ctx("take released steps")?;
            taken.extend(rows.into_iter().map(ClaimedStep::from));
        }
        Ok(taken)
    }

    /// A namespace's stored policy (JSON).
    pub async fn namespace_policy(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get_namespace(name).await?.map(|row| row.policy))
    }

    /// Each (task, step, n): the step waits on `n` fewer dependencies, because `n` of
    /// them were just completed.
    pub async fn release_steps(
        &mut self,
        released: &[(&str, &str, i64)],
    ) -> Result<(), StoreError> {
        for batch in released.chunks(BATCH_ROWS) {
            let sql = format!(
                "UPDATE steps SET waiting_on = steps.waiting_on - v.column3
                 FROM (VALUES {}) AS v
                 WHERE steps.task_id = v.column1 AND steps.name = v.column2",
                self.row_list(1, batch.len(), 3)
            );
            with_conn!(self, |conn| {
                let mut query = sqlx::query(&sql);
                for (task_id, step, n) in batch {
                    query = query.bind(*task_id).bind(*step).bind(*n);
                }
                query.execute(conn).await.map(|done| done.rows_affected())
            })
            .ctx("release dependent steps")?;
        }
        Ok(())
    }

    /// Commits a step's result: the step becomes complete with `result` (ciphertext).
    /// `Conflict` unless the step is in progress under `worker` at `attempt`: the lease was
    /// lost (another worker reclaimed the step, or it already finished), and the stored
    /// outcome stays as it is. `NotFound` if there is no such step.
    pub async fn complete_step(
        &mut self,
        task_id: &str,
        step: &str,
        worker: &str,
        attempt: i64,
        result: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        let done = Completion {
            task_id,
            step,
            worker,
            attempt,
            result,
        };
        let updated = self.complete_steps(&[done], now).await?.len() as u64;
        self.fenced(updated, task_id, step, worker, attempt).await?;
        let release = match self.inner {
            TxInner::Sqlite(_) => SQLITE_RELEASE_DEPENDENTS,
            TxInner::Postgres(_) => POSTGRES_RELEASE_DEPENDENTS,
        };
        with_conn!(self, |conn| {
            sqlx::query(release)
                .bind(task_id)
                .bind(step)
                .execute(conn)
                .await
                .map(|done| done.rows_affected())
        })
        .ctx("release dependent steps")?;
        Ok(())
    }

    /// Records a step's failure with `error_json`. With `retry_at` the step waits for
    /// another attempt (waiting_for_retry, claimable from `retry_at`); without it the step
    /// ends in error. Same fencing as [`Tx::complete_step`].
    #[allow(clippy::too_many_arguments)] // the fencing triple plus the outcome
    pub async fn fail_step(
        &mut self,
        task_id: &str,
        step: &str,
        worker: &str,
        attempt: i64,
        error_json: &str,
        retry_at: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (status, finished_at) = match retry_at {
            Some(_) => ("waiting_for_retry", None),
            None => ("error", Some(now)),
        };
        let updated = with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE steps SET status = $5, error = $6, next_run_at = COALESCE($7, next_run_at),
                                  lease_expires_at = NULL, finished_at = $8
                 WHERE task_id = $1 AND name = $2 AND lease_owner = $3 AND attempts = $4
                   AND status = 'in_progress'",
            )
            .bind(task_id)
            .bind(step)
            .bind(worker)
            .bind(attempt)
            .bind(status)
            .bind(error_json)
            .bind(retry_at)
            .bind(finished_at)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("fail step")?;
        self.fenced(updated, task_id, step, worker, attempt).await
    }

    /// Cancels the steps of `task_id` that have not started (pending or
    /// waiting_for_retry) and returns how many. Steps in progress run on; their outcome
    /// can still be committed.
    pub async fn cancel_pending_steps(
        &mut self,
        task_id: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE steps SET status = 'cancelled', finished_at = $2
                 WHERE task_id = $1 AND status IN ('pending', 'waiting_for_retry')",
            )
            .bind(task_id)
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("cancel steps")
    }

    /// Turns a fenced update's row count into the caller's answer.
    async fn fenced(
        &mut self,
        updated: u64,
        task_id: &str,
        step: &str,
        worker: &str,
        attempt: i64,
    ) -> Result<(), StoreError> {
        if updated == 1 {
            return Ok(());
        }
        self.step_exists(task_id, step).await?;
        Err(StoreError::Conflict(format!(
            "step {task_id}/{step} attempt {attempt} is no longer leased to {worker}"
        )))
    }
}
