//! What retention purges: finished tasks past their keep-until (with their steps and
//! attempts), and a prefix of the audit trail whose every event is past its own.

use super::backend::with_conn;
use super::error::Context;
use super::{StoreError, Tx};

/// A task due for purging: its id, data key and subject (a blind index).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueTask {
    /// The task.
    pub id: String,
    /// Its data key.
    pub data_key_id: String,
    /// Its data subject, if any (whose key other tasks may share).
    pub subject: Option<String>,
}

/// How long one namespace keeps its audit events: events of `namespace` before
/// `before_ts` are due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCutoff {
    /// The namespace.
    pub namespace: String,
    /// Events before this time (unix ms) are due.
    pub before_ts: i64,
}

impl Tx<'_> {
    /// Up to `limit` finished tasks of `namespace` with this classification and PII flag
    /// that finished before `before_ts`.
    pub async fn due_tasks(
        &mut self,
        namespace: &str,
        classification: &str,
        contains_pii: bool,
        before_ts: i64,
        limit: i64,
    ) -> Result<Vec<DueTask>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT id, data_key_id, subject FROM tasks
                 WHERE namespace = $1 AND classification = $2 AND contains_pii = $3
                   AND finished_at IS NOT NULL AND finished_at < $4
                 ORDER BY finished_at, id LIMIT $5",
            )
            .bind(namespace)
            .bind(classification)
            .bind(contains_pii)
            .bind(before_ts)
            .bind(limit)
            .fetch_all(conn)
            .await
        })
        .ctx("find tasks due for purging")
    }

    /// How many tasks [`Tx::due_tasks`] would find without a limit.
    pub async fn count_due_tasks(
        &mut self,
        namespace: &str,
        classification: &str,
        contains_pii: bool,
        before_ts: i64,
    ) -> Result<i64, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM tasks
                 WHERE namespace = $1 AND classification = $2 AND contains_pii = $3
                   AND finished_at IS NOT NULL AND finished_at < $4",
            )
            .bind(namespace)
            .bind(classification)
            .bind(contains_pii)
            .bind(before_ts)
            .fetch_one(conn)
            .await
        })
        .ctx("count tasks due for purging")
    }

    /// Deletes the tasks `ids` with their steps and attempts; returns how many tasks.
    pub async fn delete_tasks(&mut self, ids: &[String]) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for id in ids {
            for sql in [
                "DELETE FROM step_attempts WHERE task_id = $1",
                "DELETE FROM steps WHERE task_id = $1",
                "DELETE FROM tasks WHERE id = $1",
            ] {
                let n = with_conn!(self, |conn| {
                    sqlx::query(sql)
                        .bind(id)
                        .execute(conn)
                        .await
                        .map(|done| done.rows_affected())
                })
                .ctx("delete a task")?;
                if sql.starts_with("DELETE FROM tasks") {
                    deleted += n;
                }
            }
        }
        Ok(deleted)
    }

    /// The smallest `seq` of an event that is *not* due: an event is due when its
    /// namespace's cutoff says so, and one of no namespace when every namespace's does
    /// (`shared_before_ts`, the earliest cutoff; `None`: such events are kept). `None`
    /// when every event is due.
    pub async fn first_kept_audit_seq(
        &mut self,
        cutoffs: &[AuditCutoff],
        shared_before_ts: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut due: Vec<String> = Vec::new();
        let mut params: Vec<(String, i64)> = Vec::new();
        for cutoff in cutoffs {
            params.push((cutoff.namespace.clone(), cutoff.before_ts));
            let n = params.len() * 2;
            due.push(format!("(namespace = ${} AND ts < ${n})", n - 1));
        }
        if let Some(ts) = shared_before_ts {
            due.push(format!("(namespace IS NULL AND ts < {ts})"));
        }
        let condition = if due.is_empty() {
            "1 = 1".to_owned()
        } else {
            format!("NOT ({})", due.join(" OR "))
        };
        let sql = format!("SELECT MIN(seq) FROM audit_events WHERE {condition}");
        with_conn!(self, |conn| {
            let mut query = sqlx::query_scalar(&sql);
            for (namespace, ts) in &params {
                query = query.bind(namespace.as_str()).bind(*ts);
            }
            query.fetch_one(conn).await
        })
        .ctx("find the first audit event kept")
    }

    /// Deletes every audit event up to `seq` and every checkpoint before it (the one at
    /// `seq` stays: it anchors the chain that is left). Returns how many events.
    pub async fn delete_audit_through(&mut self, seq: i64) -> Result<u64, StoreError> {
        let events = with_conn!(self, |conn| {
            sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
                .bind(seq)
                .execute(conn)
                .await
                .map(|done| done.rows_affected())
        })
        .ctx("purge audit events")?;
        with_conn!(self, |conn| {
            sqlx::query("DELETE FROM audit_checkpoints WHERE seq < $1")
                .bind(seq)
                .execute(conn)
                .await
                .map(|done| done.rows_affected())
        })
        .ctx("purge audit checkpoints")?;
        Ok(events)
    }

    /// The last checkpoint at or before `seq`.
    pub async fn checkpoint_at_or_before(
        &mut self,
        seq: i64,
    ) -> Result<Option<super::CheckpointRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT seq, hash, signature, key_id, created_at FROM audit_checkpoints
                 WHERE seq <= $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(seq)
            .fetch_optional(conn)
            .await
        })
        .ctx("read an audit checkpoint")
    }
}
