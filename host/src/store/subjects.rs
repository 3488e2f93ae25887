//! Data subjects beyond their data key: the aliases they are found by, and marking their
//! tasks anonymized once erased.

use super::backend::{BATCH_ROWS, with_conn};
use super::error::Context;
use super::{StoreError, Tx};

impl Tx<'_> {
    /// Records that `alias` (a blind index of an identifier) names `subject` (a blind
    /// index); recording it twice changes nothing.
    pub async fn insert_subject_aliases(
        &mut self,
        aliases: &[(String, String)],
        now: i64,
    ) -> Result<(), StoreError> {
        for batch in aliases.chunks(BATCH_ROWS) {
            let sql = format!(
                "INSERT INTO subject_aliases (alias, subject, created_at) VALUES {}
                 ON CONFLICT (alias, subject) DO NOTHING",
                self.row_list(1, batch.len(), 3)
            );
            with_conn!(self, |conn| {
                let mut query = sqlx::query(&sql);
                for (alias, subject) in batch {
                    query = query.bind(alias).bind(subject).bind(now);
                }
                query.execute(conn).await.map(|done| done.rows_affected())
            })
            .ctx("insert subject aliases")?;
        }
        Ok(())
    }

    /// The subjects `alias` names, in order.
    pub async fn subjects_by_alias(&mut self, alias: &str) -> Result<Vec<String>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_scalar(
                "SELECT subject FROM subject_aliases WHERE alias = $1 ORDER BY subject",
            )
            .bind(alias)
            .fetch_all(conn)
            .await
        })
        .ctx("find subject by alias")
    }

    /// Marks every task about `subject` anonymized at `now` (kept from the first time);
    /// returns how many tasks it touched.
    pub async fn anonymize_subject_tasks(
        &mut self,
        subject: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE tasks SET anonymized_at = COALESCE(anonymized_at, $2) WHERE subject = $1",
            )
            .bind(subject)
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("anonymize tasks")
    }

    /// When task `id` was anonymized, if it was.
    pub async fn task_anonymized_at(&mut self, id: &str) -> Result<Option<i64>, StoreError> {
        let at: Option<Option<i64>> = with_conn!(self, |conn| {
            sqlx::query_scalar("SELECT anonymized_at FROM tasks WHERE id = $1")
                .bind(id)
                .fetch_optional(conn)
                .await
        })
        .ctx("read anonymized_at")?;
        Ok(at.flatten())
    }
}
