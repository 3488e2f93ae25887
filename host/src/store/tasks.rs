//! Tasks: one run of a workflow, its encrypted context and its creator's permission
//! snapshot.

use std::fmt;
use std::str::FromStr;

use super::backend::{BATCH_ROWS, TxInner, with_conn};
use super::error::Context;
use super::{StoreError, Tx};

macro_rules! columns {
    () => {
        "id, namespace, workflow_name, workflow_version, status, context, data_key_id, subject,
         classification, contains_pii, created_by, principal, reason, tags, error_step,
         created_at, updated_at, finished_at"
    };
}
/// The column list, for the SQLite hot path's statements (`store::lite`).
pub(super) use columns as task_columns;

/// Where a task is in its life: pending → in_progress → complete | error | cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Created; no step claimed yet.
    Pending,
    /// At least one step has been claimed.
    InProgress,
    /// Every step completed.
    Complete,
    /// A step failed for good (named by `error_step`).
    Error,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Complete => "complete",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the task has finished (complete, error or cancelled).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Error | Self::Cancelled)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "pending" => Self::Pending,
            "in_progress" => Self::InProgress,
            "complete" => Self::Complete,
            "error" => Self::Error,
            "cancelled" => Self::Cancelled,
            _ => return Err(StoreError::Internal("unknown task status".to_owned())),
        })
    }
}

impl TryFrom<String> for TaskStatus {
    type Error = StoreError;

    fn try_from(text: String) -> Result<Self, StoreError> {
        text.parse()
    }
}

/// A task as stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TaskRow {
    /// The task's id.
    pub id: String,
    /// The namespace it runs in.
    pub namespace: String,
    /// The workflow it runs.
    pub workflow_name: String,
    /// The workflow version it runs.
    pub workflow_version: String,
    /// Where it is in its life.
    #[sqlx(try_from = "String")]
    pub status: TaskStatus,
    /// The task context, encrypted under `data_key_id`.
    pub context: Vec<u8>,
    /// The data key that encrypts `context` (and the steps' results).
    pub data_key_id: String,
    /// Blind index of the data subject, if the context names one.
    pub subject: Option<String>,
    /// The context's overall classification.
    pub classification: String,
    /// Whether the context holds PII.
    pub contains_pii: bool,
    /// Who created it.
    pub created_by: String,
    /// The creator's identity and permissions when it was created, JSON text.
    pub principal: String,
    /// Why it was created, as given by its creator.
    pub reason: Option<String>,
    /// Free-form tags, JSON text.
    pub tags: String,
    /// The step whose failure ended it in `error`.
    pub error_step: Option<String>,
    /// When it was created, unix ms.
    pub created_at: i64,
    /// When its status last changed, unix ms.
    pub updated_at: i64,
    /// When it finished, unix ms.
    pub finished_at: Option<i64>,
}

impl fmt::Debug for TaskRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The principal snapshot can hold an email address and the context is ciphertext:
        // neither belongs in a log line.
        f.debug_struct("TaskRow")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("workflow_name", &self.workflow_name)
            .field("workflow_version", &self.workflow_version)
            .field("status", &self.status)
            .field("classification", &self.classification)
            .field("contains_pii", &self.contains_pii)
            .field("created_by", &self.created_by)
            .field("error_step", &self.error_step)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("finished_at", &self.finished_at)
            .finish_non_exhaustive()
    }
}

/// A position in a newest-first task listing: the last task of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskCursor {
    /// That task's `created_at`.
    pub created_at: i64,
    /// That task's id (orders tasks created in the same millisecond).
    pub id: String,
}

/// Which tasks a listing shows; every field unset shows all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks of this workflow (name).
    pub workflow: Option<String>,
    /// Only tasks this subject created.
    pub created_by: Option<String>,
}

impl From<&TaskRow> for TaskCursor {
    fn from(task: &TaskRow) -> Self {
        Self {
            created_at: task.created_at,
            id: task.id.clone(),
        }
    }
}

impl Tx<'_> {
    /// Stores a new task. `Conflict` if the id is taken; `NotFound` if its workflow or
    /// data key does not exist.
    pub async fn insert_task(&mut self, task: &TaskRow) -> Result<(), StoreError> {
        self.insert_tasks(std::slice::from_ref(task)).await
    }

    /// Stores tasks, many per statement. `Conflict` if an id is taken (and then none is
    /// stored).
    pub async fn insert_tasks(&mut self, tasks: &[TaskRow]) -> Result<(), StoreError> {
        const WIDTH: usize = 18;
        for batch in tasks.chunks(BATCH_ROWS) {
            let sql = format!(
                concat!("INSERT INTO tasks (", columns!(), ") VALUES {}"),
                self.row_list(1, batch.len(), WIDTH)
            );
            with_conn!(self, |conn| {
                let mut query = sqlx::query(&sql);
                for task in batch {
                    query = query
                        .bind(&task.id)
                        .bind(&task.namespace)
                        .bind(&task.workflow_name)
                        .bind(&task.workflow_version)
                        .bind(task.status.as_str())
                        .bind(&task.context)
                        .bind(&task.data_key_id)
                        .bind(&task.subject)
                        .bind(&task.classification)
                        .bind(task.contains_pii)
                        .bind(&task.created_by)
                        .bind(&task.principal)
                        .bind(&task.reason)
                        .bind(&task.tags)
                        .bind(&task.error_step)
                        .bind(task.created_at)
                        .bind(task.updated_at)
                        .bind(task.finished_at);
                }
                query.execute(conn).await.map(|done| done.rows_affected())
            })
            .ctx("insert task")?;
        }
        Ok(())
    }

    /// The task `id`, if any.
    pub async fn get_task(&mut self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(concat!("SELECT ", columns!(), " FROM tasks WHERE id = $1"))
                .bind(id)
                .fetch_optional(conn)
                .await
        })
        .ctx("get task")
    }

    /// The tasks among `ids` that exist, in no particular order.
    pub async fn get_tasks(&mut self, ids: &[&str]) -> Result<Vec<TaskRow>, StoreError> {
        self.fetch_by_ids(
            concat!("SELECT ", columns!(), " FROM tasks WHERE id IN ({})"),
            ids,
            "get tasks",
        )
        .await
    }

    /// Of the still-running tasks among `ids`, those whose every step is complete become
    /// complete (`finished_at = now`); returns their ids. A task already finished — an
    /// error or a cancellation committed first — stays as it is.
    pub async fn complete_finished_tasks(
        &mut self,
        ids: &[&str],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut completed = Vec::new();
        for batch in ids.chunks(BATCH_ROWS) {
            // SQLite's `+status`: look the tasks up by id. Without it SQLite may walk
            // every running task through the status index, a scan that grows with the
            // backlog. (PostgreSQL has no unary `+` on text, and its planner needs none.)
            let status = match self.inner {
                TxInner::Sqlite(_) => "+status",
                TxInner::Postgres(_) => "status",
            };
            let sql = format!(
                "UPDATE tasks SET status = 'complete', error_step = NULL, updated_at = {},
                                  finished_at = {}
                 WHERE id IN ({}) AND {status} IN ('pending', 'in_progress')
                   AND NOT EXISTS (SELECT 1 FROM steps s
                                   WHERE s.task_id = tasks.id AND s.status <> 'complete')
                 RETURNING id",
                self.param_list(1, 1),
                self.param_list(2, 1),
                self.param_list(3, batch.len())
            );
            let ids: Vec<String> = with_conn!(self, |conn| {
                let mut query = sqlx::query_scalar(&sql).bind(now).bind(now);
                for id in batch {
                    query = query.bind(*id);
                }
                query.fetch_all(conn).await
            })
            .ctx("complete tasks")?;
            completed.extend(ids);
        }
        Ok(completed)
    }

    /// Moves a task to `status`, recording `error_step` and, for a terminal status,
    /// `finished_at = now`. A finished task never changes again: `Conflict` if it already
    /// is complete, error or cancelled (another worker finished it first); `NotFound` if
    /// there is no such task.
    pub async fn set_task_status(
        &mut self,
        id: &str,
        status: TaskStatus,
        error_step: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let updated = with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE tasks SET status = $2, error_step = $3, updated_at = $4,
                                  finished_at = COALESCE($5, finished_at)
                 WHERE id = $1 AND status NOT IN ('complete', 'error', 'cancelled')",
            )
            .bind(id)
            .bind(status.as_str())
            .bind(error_step)
            .bind(now)
            .bind(status.is_terminal().then_some(now))
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("set task status")?;
        if updated == 1 {
            return Ok(());
        }
        match self.get_task(id).await? {
            None => Err(StoreError::NotFound(format!("task {id}"))),
            Some(task) => Err(StoreError::Conflict(format!(
                "task {id} already finished as {}",
                task.status
            ))),
        }
    }

    /// Up to `limit` tasks of `namespace` that pass `filter`, newest first, after `after`
    /// (the last task of the previous page; `None` for the first page). One statement:
    /// an unset filter field is a NULL parameter that matches every row.
    pub async fn list_tasks(
        &mut self,
        namespace: &str,
        filter: &TaskFilter,
        limit: i64,
        after: Option<&TaskCursor>,
    ) -> Result<Vec<TaskRow>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM tasks WHERE namespace = $1
                AND ($2 IS NULL OR status = $2)
                AND ($3 IS NULL OR workflow_name = $3)
                AND ($4 IS NULL OR created_by = $4)
                AND ($5 IS NULL OR created_at < $5 OR (created_at = $5 AND id < $6))
              ORDER BY created_at DESC, id DESC LIMIT $7"
        );
        let status = filter.status.map(TaskStatus::as_str);
        with_conn!(self, |conn| {
            sqlx::query_as(SQL)
                .bind(namespace)
                .bind(status)
                .bind(filter.workflow.as_deref())
                .bind(filter.created_by.as_deref())
                .bind(after.map(|c| c.created_at))
                .bind(after.map(|c| c.id.as_str()))
                .bind(limit)
                .fetch_all(conn)
                .await
        })
        .ctx("list tasks")
    }

    /// How many tasks of `namespace` are in each status (statuses with none are absent).
    pub async fn count_tasks(
        &mut self,
        namespace: &str,
    ) -> Result<Vec<(TaskStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT status, COUNT(*) FROM tasks WHERE namespace = $1 GROUP BY status",
            )
            .bind(namespace)
            .fetch_all(conn)
            .await
        })
        .ctx("count tasks")?;
        rows.into_iter()
            .map(|(status, n)| Ok((status.parse::<TaskStatus>()?, n)))
            .collect()
    }

    /// Whether any task of `namespace` is pending or in progress. Stops at the first one
    /// (through the status index): a poll that waits for a namespace's tasks to finish
    /// costs next to nothing while they run, unlike a count of them.
    pub async fn any_unfinished_task(&mut self, namespace: &str) -> Result<bool, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM tasks
                                WHERE status IN ('pending', 'in_progress') AND namespace = $1)",
            )
            .bind(namespace)
            .fetch_one(conn)
            .await
        })
        .ctx("look for unfinished tasks")
    }

    /// Every task about the data subject `subject` (a blind index), oldest first: for
    /// subject-access export and erasure.
    pub async fn tasks_for_subject(&mut self, subject: &str) -> Result<Vec<TaskRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM tasks WHERE subject = $1 ORDER BY created_at, id"
            ))
            .bind(subject)
            .fetch_all(conn)
            .await
        })
        .ctx("list tasks for subject")
    }
}
