//! Aggregates for compliance reports: counts over the audit trail and the tasks of a
//! period, and how much of the stored data is sealed, measured from the rows themselves.

use super::backend::{TxInner, with_conn};
use super::error::Context;
use super::{StoreError, Tx};

/// How many stored values of one kind there are, and how many are sealed envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Coverage {
    /// Stored values.
    pub stored: i64,
    /// Of which sealed: they start with the envelope's version byte and are at least an
    /// envelope long (a JSON document in the clear starts with `{`, `[` or `"`).
    pub sealed: i64,
}

/// The stored columns that hold task data or secrets, and what they are called in reports.
const SEALED_COLUMNS: [(&str, &str, &str); 4] = [
    ("task_contexts", "tasks", "context"),
    ("step_results", "steps", "result"),
    ("attempt_records", "step_attempts", "record"),
    ("secrets", "secrets", "value"),
];

/// The shortest sealed value: version byte, 96-bit nonce, 128-bit tag.
const SEALED_MIN_LEN: i64 = 29;

impl Tx<'_> {
    /// The SQL of an event's `details.code` (a refusal's reason) on this backend.
    fn details_code(&self) -> &'static str {
        match self.inner {
            TxInner::Sqlite(_) => "json_extract(details, '$.code')",
            TxInner::Postgres(_) => "(details::jsonb ->> 'code')",
        }
    }

    /// Events with `from_ts <= ts < until_ts`, counted by action and outcome.
    pub async fn audit_counts(
        &mut self,
        from_ts: i64,
        until_ts: i64,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT action, outcome, COUNT(*) FROM audit_events
                 WHERE ts >= $1 AND ts < $2 GROUP BY action, outcome ORDER BY action, outcome",
            )
            .bind(from_ts)
            .bind(until_ts)
            .fetch_all(conn)
            .await
        })
        .ctx("count audit events")
    }

    /// Events of `action` in the period, counted by the `code` their details give (a
    /// refusal's reason).
    pub async fn audit_codes(
        &mut self,
        action: &str,
        from_ts: i64,
        until_ts: i64,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        let code = self.details_code();
        let sql = format!(
            "SELECT {code}, COUNT(*) FROM audit_events
             WHERE action = $1 AND ts >= $2 AND ts < $3 GROUP BY 1 ORDER BY 1"
        );
        with_conn!(self, |conn| {
            sqlx::query_as(&sql)
                .bind(action)
                .bind(from_ts)
                .bind(until_ts)
                .fetch_all(conn)
                .await
        })
        .ctx("count audit events by code")
    }

    /// Denied events in the period, counted by action and the refusal's code.
    pub async fn denial_counts(
        &mut self,
        from_ts: i64,
        until_ts: i64,
    ) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
        let code = self.details_code();
        let sql = format!(
            "SELECT action, {code}, COUNT(*) FROM audit_events
             WHERE outcome = 'denied' AND ts >= $1 AND ts < $2 GROUP BY 1, 2 ORDER BY 1, 2"
        );
        with_conn!(self, |conn| {
            sqlx::query_as(&sql)
                .bind(from_ts)
                .bind(until_ts)
                .fetch_all(conn)
                .await
        })
        .ctx("count denials")
    }

    /// Tasks created in the period, counted by namespace, workflow, classification, PII
    /// and status.
    pub async fn task_counts(
        &mut self,
        from_ts: i64,
        until_ts: i64,
    ) -> Result<Vec<TaskCount>, StoreError> {
        let rows: Vec<(String, String, String, bool, String, i64)> = with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT namespace, workflow_name, classification, contains_pii, status, COUNT(*)
                 FROM tasks WHERE created_at >= $1 AND created_at < $2
                 GROUP BY namespace, workflow_name, classification, contains_pii, status
                 ORDER BY namespace, workflow_name, classification, contains_pii, status",
            )
            .bind(from_ts)
            .bind(until_ts)
            .fetch_all(conn)
            .await
        })
        .ctx("count tasks")?;
        Ok(rows
            .into_iter()
            .map(
                |(namespace, workflow, classification, contains_pii, status, count)| TaskCount {
                    namespace,
                    workflow,
                    classification,
                    contains_pii,
                    status,
                    count,
                },
            )
            .collect())
    }

    /// For each kind of sealed data, how many values are stored and how many are sealed.
    pub async fn sealed_coverage(&mut self) -> Result<Vec<(&'static str, Coverage)>, StoreError> {
        let mut out = Vec::with_capacity(SEALED_COLUMNS.len());
        for (name, table, column) in SEALED_COLUMNS {
            let first_byte = match self.inner {
                TxInner::Sqlite(_) => format!("substr({column}, 1, 1) = X'01'"),
                TxInner::Postgres(_) => {
                    format!("substring({column} from 1 for 1) = '\\x01'::bytea")
                }
            };
            let sql = format!(
                "SELECT COUNT({column}),
                        COALESCE(SUM(CASE WHEN {first_byte} AND length({column}) >= {SEALED_MIN_LEN}
                                          THEN 1 ELSE 0 END), 0)
                 FROM {table}"
            );
            let (stored, sealed): (i64, i64) =
                with_conn!(self, |conn| sqlx::query_as(&sql).fetch_one(conn).await)
                    .ctx("measure encryption coverage")?;
            out.push((name, Coverage { stored, sealed }));
        }
        Ok(out)
    }

    /// When the latest event of `action` happened, if one did.
    pub async fn last_audit_ts(&mut self, action: &str) -> Result<Option<i64>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_scalar("SELECT MAX(ts) FROM audit_events WHERE action = $1")
                .bind(action)
                .fetch_one(conn)
                .await
        })
        .ctx("read the latest event of an action")
    }

    /// Data keys: (held, destroyed by erasure).
    pub async fn data_key_counts(&mut self) -> Result<(i64, i64), StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN destroyed_at IS NULL THEN 0 ELSE 1 END), 0)
                 FROM data_keys",
            )
            .fetch_one(conn)
            .await
        })
        .ctx("count data keys")
    }

    /// Data keys by the key-encryption key that wraps them (destroyed ones excluded).
    pub async fn data_keys_by_kek(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT kek_id, COUNT(*) FROM data_keys WHERE destroyed_at IS NULL
                 GROUP BY kek_id ORDER BY kek_id",
            )
            .fetch_all(conn)
            .await
        })
        .ctx("count data keys by key-encryption key")
    }
}

/// One group of [`Tx::task_counts`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskCount {
    /// The namespace.
    pub namespace: String,
    /// The workflow.
    pub workflow: String,
    /// The context's classification.
    pub classification: String,
    /// Whether the context holds PII.
    pub contains_pii: bool,
    /// The task's status now.
    pub status: String,
    /// How many.
    pub count: i64,
}
