//! Step runs of a task and the record of each attempt. Claiming, leases and completion
//! live in `claim`.

use std::fmt;
use std::str::FromStr;

use super::backend::{BATCH_ROWS, with_conn};
use super::error::{Context, internal};
use super::{StoreError, Tx};

macro_rules! columns {
    () => {
        "task_id, name, status, depends_on, attempts, attempt_base, next_run_at, lease_owner,
         lease_expires_at, result, error, started_at, finished_at"
    };
}
/// The column list, for the SQLite hot path's statements (`store::lite`).
pub(super) use columns as step_columns;

/// Bind parameters per row of a multi-row insert: the columns above and `waiting_on`.
pub(super) const STEP_COLUMNS: usize = 14;

/// Where a step run is: pending → in_progress → complete | error, through
/// waiting_for_retry between attempts, or cancelled with its task. A step is *ready* when
/// it is pending or waiting_for_retry, due, and every step it depends on is complete;
/// readiness is stored as `waiting_on`, the count of dependencies not yet complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepStatus {
    /// Not yet run.
    Pending,
    /// Leased to a worker that is running it.
    InProgress,
    /// Failed with a retryable error; runs again at `next_run_at`.
    WaitingForRetry,
    /// Finished; `result` holds its output.
    Complete,
    /// Failed for good; `error` says why.
    Error,
    /// Cancelled with its task before it ran.
    Cancelled,
}

impl StepStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::WaitingForRetry => "waiting_for_retry",
            Self::Complete => "complete",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the step has finished (complete, error or cancelled).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Error | Self::Cancelled)
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepStatus {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "pending" => Self::Pending,
            "in_progress" => Self::InProgress,
            "waiting_for_retry" => Self::WaitingForRetry,
            "complete" => Self::Complete,
            "error" => Self::Error,
            "cancelled" => Self::Cancelled,
            _ => return Err(StoreError::Internal("unknown step status".to_owned())),
        })
    }
}

impl TryFrom<String> for StepStatus {
    type Error = StoreError;

    fn try_from(text: String) -> Result<Self, StoreError> {
        text.parse()
    }
}

/// A step run as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRow {
    /// The task it belongs to.
    pub task_id: String,
    /// The step's name in the workflow.
    pub name: String,
    /// Where it is.
    pub status: StepStatus,
    /// Names of the steps of the same task that must complete first.
    pub depends_on: Vec<String>,
    /// How many times it has been claimed.
    pub attempts: i64,
    /// Where its retry budget counts from: `attempts` as it was when an operator last
    /// retried it by hand (0 if never).
    pub attempt_base: i64,
    /// Not to be claimed before this time, unix ms.
    pub next_run_at: i64,
    /// The worker that holds (or last held) its lease.
    pub lease_owner: Option<String>,
    /// When the current lease runs out, unix ms; `None` when not running.
    pub lease_expires_at: Option<i64>,
    /// Its output, ciphertext, once complete.
    pub result: Option<Vec<u8>>,
    /// Its last error, JSON text.
    pub error: Option<String>,
    /// When it was first claimed, unix ms.
    pub started_at: Option<i64>,
    /// When it finished, unix ms.
    pub finished_at: Option<i64>,
}

impl StepRow {
    /// A new, pending step due at `now`.
    pub fn pending(task_id: &str, name: &str, depends_on: &[&str], now: i64) -> Self {
        Self {
            task_id: task_id.to_owned(),
            name: name.to_owned(),
            status: StepStatus::Pending,
            depends_on: depends_on.iter().map(|dep| (*dep).to_owned()).collect(),
            attempts: 0,
            attempt_base: 0,
            next_run_at: now,
            lease_owner: None,
            lease_expires_at: None,
            result: None,
            error: None,
            started_at: None,
            finished_at: None,
        }
    }

    /// This new step leased to `worker` until `expires` for its first attempt, started
    /// `now`: as a claim would take it (`store::claim`), for the transaction that creates
    /// it to hand it to a worker at once.
    pub fn lease_to(&mut self, worker: &str, expires: i64, now: i64) {
        self.status = StepStatus::InProgress;
        self.attempts = 1;
        self.lease_owner = Some(worker.to_owned());
        self.lease_expires_at = Some(expires);
        self.started_at = Some(now);
    }
}

/// A step row as the database returns it, `depends_on` still JSON text.
#[derive(sqlx::FromRow)]
struct StepRecord {
    task_id: String,
    name: String,
    #[sqlx(try_from = "String")]
    status: StepStatus,
    depends_on: String,
    attempts: i64,
    attempt_base: i64,
    next_run_at: i64,
    lease_owner: Option<String>,
    lease_expires_at: Option<i64>,
    result: Option<Vec<u8>>,
    error: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl TryFrom<StepRecord> for StepRow {
    type Error = StoreError;

    fn try_from(record: StepRecord) -> Result<Self, StoreError> {
        let depends_on = serde_json::from_str(&record.depends_on)
            .map_err(|err| internal(err, "decode a step's dependencies"))?;
        Ok(Self {
            task_id: record.task_id,
            name: record.name,
            status: record.status,
            depends_on,
            attempts: record.attempts,
            attempt_base: record.attempt_base,
            next_run_at: record.next_run_at,
            lease_owner: record.lease_owner,
            lease_expires_at: record.lease_expires_at,
            result: record.result,
            error: record.error,
            started_at: record.started_at,
            finished_at: record.finished_at,
        })
    }
}

/// One attempt at a step, as recorded after it ran.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptRow {
    /// The task.
    pub task_id: String,
    /// The step's name.
    pub step: String,
    /// Which attempt (1 for the first), as returned by the claim.
    pub attempt: i64,
    /// The worker that ran it.
    pub worker: String,
    /// How it ended (`complete`, `retryable_error`, `timeout`, …).
    pub outcome: String,
    /// What happened (fields read, calls made, logs), ciphertext.
    pub record: Vec<u8>,
    /// When it started, unix ms.
    pub started_at: i64,
    /// How long it ran.
    pub duration_ms: i64,
}

/// How many different steps `depends_on` names: what a step starts out waiting on.
pub(super) fn distinct(depends_on: &[String]) -> i64 {
    let names: std::collections::BTreeSet<&String> = depends_on.iter().collect();
    i64::try_from(names.len()).unwrap_or(i64::MAX)
}

impl Tx<'_> {
    /// Stores a task's steps. `Conflict` if one exists already; `NotFound` if the task
    /// does not. Rows go in multi-row `INSERT`s, one round trip per 500 steps.
    pub async fn insert_steps(&mut self, steps: &[StepRow]) -> Result<(), StoreError> {
        for batch in steps.chunks(BATCH_ROWS) {
            let sql = format!(
                concat!("INSERT INTO steps (", columns!(), ", waiting_on) VALUES {}"),
                self.row_list(1, batch.len(), STEP_COLUMNS)
            );
            let depends_on = batch
                .iter()
                .map(|step| {
                    serde_json::to_string(&step.depends_on)
                        .map_err(|err| internal(err, "encode a step's dependencies"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            with_conn!(self, |conn| {
                let mut query = sqlx::query(&sql);
                for (step, depends_on) in batch.iter().zip(&depends_on) {
                    query = query
                        .bind(&step.task_id)
                        .bind(&step.name)
                        .bind(step.status.as_str())
                        .bind(depends_on)
                        .bind(step.attempts)
                        .bind(step.attempt_base)
                        .bind(step.next_run_at)
                        .bind(&step.lease_owner)
                        .bind(step.lease_expires_at)
                        .bind(&step.result)
                        .bind(&step.error)
                        .bind(step.started_at)
                        .bind(step.finished_at)
                        .bind(distinct(&step.depends_on));
                }
                query.execute(conn).await.map(|done| done.rows_affected())
            })
            .ctx("insert steps")?;
        }
        Ok(())
    }

    /// Every step of `task_id`, by name.
    pub async fn get_steps(&mut self, task_id: &str) -> Result<Vec<StepRow>, StoreError> {
        let records: Vec<StepRecord> = with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM steps WHERE task_id = $1 ORDER BY name"
            ))
            .bind(task_id)
            .fetch_all(conn)
            .await
        })
        .ctx("get steps")?;
        records.into_iter().map(StepRow::try_from).collect()
    }

    /// The step `task_id`/`name`, if any.
    pub async fn get_step(
        &mut self,
        task_id: &str,
        name: &str,
    ) -> Result<Option<StepRow>, StoreError> {
        let record: Option<StepRecord> = with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM steps WHERE task_id = $1 AND name = $2"
            ))
            .bind(task_id)
            .bind(name)
            .fetch_optional(conn)
            .await
        })
        .ctx("get step")?;
        record.map(StepRow::try_from).transpose()
    }

    /// `Ok` if the step exists, `NotFound` otherwise.
    pub(crate) async fn step_exists(
        &mut self,
        task_id: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        match self.get_step(task_id, name).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("step {task_id}/{name}"))),
        }
    }

    /// Records one attempt. `Conflict` if that attempt is recorded already; `NotFound`
    /// if the step does not exist.
    pub async fn insert_attempt(&mut self, attempt: &AttemptRow) -> Result<(), StoreError> {
        self.insert_attempts(std::slice::from_ref(attempt)).await
    }

    /// Records attempts, many per statement. `Conflict` if one is recorded already (and
    /// then none is); `NotFound` if a step does not exist.
    pub async fn insert_attempts(&mut self, attempts: &[AttemptRow]) -> Result<(), StoreError> {
        for batch in attempts.chunks(BATCH_ROWS) {
            let sql = format!(
                "INSERT INTO step_attempts (task_id, step, attempt, worker, outcome, record,
                                            started_at, duration_ms)
                 VALUES {}",
                self.row_list(1, batch.len(), 8)
            );
            with_conn!(self, |conn| {
                let mut query = sqlx::query(&sql);
                for attempt in batch {
                    query = query
                        .bind(&attempt.task_id)
                        .bind(&attempt.step)
                        .bind(attempt.attempt)
                        .bind(&attempt.worker)
                        .bind(&attempt.outcome)
                        .bind(&attempt.record)
                        .bind(attempt.started_at)
                        .bind(attempt.duration_ms);
                }
                query.execute(conn).await.map(|done| done.rows_affected())
            })
            .ctx("insert attempt")?;
        }
        Ok(())
    }

    /// The result (ciphertext) of every complete step of the given tasks: what their
    /// next steps read as upstream data.
    pub async fn complete_results(
        &mut self,
        task_ids: &[&str],
    ) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        self.fetch_by_ids(
            "SELECT task_id, name, result FROM steps
             WHERE task_id IN ({}) AND status = 'complete' AND result IS NOT NULL",
            task_ids,
            "get step results",
        )
        .await
    }

    /// Every recorded attempt of every step of `task_id`, by step then attempt.
    pub async fn get_attempts(&mut self, task_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT task_id, step, attempt, worker, outcome, record, started_at, duration_ms
                 FROM step_attempts WHERE task_id = $1 ORDER BY step, attempt",
            )
            .bind(task_id)
            .fetch_all(conn)
            .await
        })
        .ctx("get attempts")
    }
}
