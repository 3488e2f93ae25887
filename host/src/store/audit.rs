//! Audit events and signed checkpoints: storage only. The chain (what is hashed, in what
//! order, how it is verified) belongs to the `audit` module.
//!
//! Writers insert events unsealed (`hash` NULL) in the same transaction as the change they
//! record; the database assigns `seq`, so writers never contend on a chain tip. A sealer
//! later chains events in `seq` order. `seq` can have gaps (a rolled-back insert consumes
//! its PostgreSQL identity value): chain in `seq` order, never by `seq + 1`.
//!
//! The sealer must not seal an event while an event with a smaller `seq` is still
//! uncommitted, or that event would land behind the chain tip. On SQLite this cannot
//! happen (one writer at a time, and a `seq` is assigned and committed under the write
//! lock). On PostgreSQL identity values are handed out at insert and committed in any
//! order, so [`Tx::insert_audit_event`] holds a shared advisory lock until its
//! transaction ends and [`Tx::unsealed_events`] takes the same lock exclusively: it waits
//! until every transaction inserting events has finished, and everything it then reads is
//! a complete prefix. Writers share the lock and never wait for each other.

use super::backend::{BATCH_ROWS, TxInner, with_conn};
use super::error::Context;
use super::{StoreError, Tx};

/// The PostgreSQL advisory lock key of the audit barrier ("STEPAUDT").
const AUDIT_BARRIER: i64 = 0x5354_4550_4155_4454;
/// Advisory lock key serialising sealers on PostgreSQL ("STEPSEAL").
const SEALER_LOCK: i64 = 0x5354_4550_5345_414c;

macro_rules! columns {
    () => {
        "seq, id, ts, actor, action, resource, namespace, outcome, classification,
         contains_pii, correlation_id, details, prev_hash, hash"
    };
}

macro_rules! insert_columns {
    () => {
        "id, ts, actor, action, resource, namespace, outcome, classification, contains_pii,
         correlation_id, details"
    };
}

/// An audit event to record. Never raw PII: subjects appear as blind-index references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuditRow {
    /// The event's unique id.
    pub id: String,
    /// When it happened, unix ms.
    pub ts: i64,
    /// Who did it: a user id, or `system:<worker>`.
    pub actor: String,
    /// What was done (`task.created`, `step.denied`, …).
    pub action: String,
    /// What it was done to (`task/<id>`, `step/<task>/<name>`, …).
    pub resource: String,
    /// The namespace it happened in.
    pub namespace: Option<String>,
    /// How it ended (`success`, `denied`, `error`, …).
    pub outcome: String,
    /// The classification of the data involved.
    pub classification: Option<String>,
    /// Whether PII was involved.
    pub contains_pii: bool,
    /// Ties events of one request or task together.
    pub correlation_id: Option<String>,
    /// Everything else, JSON text.
    pub details: String,
}

impl NewAuditRow {
    /// The event as stored at `seq`, not yet sealed.
    pub fn at(self, seq: i64) -> AuditRow {
        AuditRow {
            seq,
            id: self.id,
            ts: self.ts,
            actor: self.actor,
            action: self.action,
            resource: self.resource,
            namespace: self.namespace,
            outcome: self.outcome,
            classification: self.classification,
            contains_pii: self.contains_pii,
            correlation_id: self.correlation_id,
            details: self.details,
            prev_hash: None,
            hash: None,
        }
    }
}

/// An audit event as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    /// Position in the log, assigned by the database; increasing, possibly with gaps.
    pub seq: i64,
    /// The event's unique id.
    pub id: String,
    /// When it happened, unix ms.
    pub ts: i64,
    /// Who did it.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub resource: String,
    /// The namespace it happened in.
    pub namespace: Option<String>,
    /// How it ended.
    pub outcome: String,
    /// The classification of the data involved.
    pub classification: Option<String>,
    /// Whether PII was involved.
    pub contains_pii: bool,
    /// Ties events of one request or task together.
    pub correlation_id: Option<String>,
    /// Everything else, JSON text.
    pub details: String,
    /// The previous event's hash, once sealed.
    pub prev_hash: Option<Vec<u8>>,
    /// This event's hash, once sealed.
    pub hash: Option<Vec<u8>>,
}

/// A signed checkpoint of the chain: the hash at `seq`, signed.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckpointRow {
    /// The last event the checkpoint covers.
    pub seq: i64,
    /// That event's hash.
    pub hash: Vec<u8>,
    /// The signature over the checkpoint.
    pub signature: Vec<u8>,
    /// Which signing key made it.
    pub key_id: String,
    /// When it was made, unix ms.
    pub created_at: i64,
}

/// Which events [`Tx::query_audit`] returns: every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this actor's events.
    pub actor: Option<String>,
    /// Only events on this resource.
    pub resource: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only events in this namespace.
    pub namespace: Option<String>,
    /// Only events with this correlation id.
    pub correlation_id: Option<String>,
    /// Only events with this outcome.
    pub outcome: Option<String>,
    /// Only events about this task: the task itself and each of its steps.
    pub task: Option<String>,
    /// Only events at or after this time, unix ms.
    pub from_ts: Option<i64>,
    /// Only events before this time, unix ms.
    pub until_ts: Option<i64>,
    /// Only events after this `seq` (for paging).
    pub after_seq: Option<i64>,
    /// Only events up to this `seq` (an export's snapshot of the tip).
    pub through_seq: Option<i64>,
}

impl AuditFilter {
    /// Whether it selects by anything but position: such a selection's events do not
    /// link up into one chain.
    pub fn selects(&self) -> bool {
        let Self {
            actor,
            resource,
            action,
            namespace,
            correlation_id,
            outcome,
            task,
            from_ts,
            until_ts,
            after_seq: _,
            through_seq: _,
        } = self;
        actor.is_some()
            || resource.is_some()
            || action.is_some()
            || namespace.is_some()
            || correlation_id.is_some()
            || outcome.is_some()
            || task.is_some()
            || from_ts.is_some()
            || until_ts.is_some()
    }
}

/// Binds a [`NewAuditRow`]'s columns in `insert_columns!` order.
macro_rules! bind_event {
    ($query:expr, $event:expr) => {
        $query
            .bind(&$event.id)
            .bind($event.ts)
            .bind(&$event.actor)
            .bind(&$event.action)
            .bind(&$event.resource)
            .bind(&$event.namespace)
            .bind(&$event.outcome)
            .bind(&$event.classification)
            .bind($event.contains_pii)
            .bind(&$event.correlation_id)
            .bind(&$event.details)
    };
}

/// One stored event as [`sqlite_page`] reads it: the columns in order, hashes in hex.
type PageRow = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

/// A page of events from SQLite as one row holding a JSON array. sqlx's SQLite driver
/// hands rows one at a time from its own thread, and a reader as fast as the verifier
/// waits for each: about 19 µs a row, so verification ran at 53,000 events/s. One row
/// per page makes it one hand-over; the text columns round-trip through JSON exactly.
///
/// `select` is a `SELECT * FROM audit_events …` (its own `ORDER BY seq LIMIT`), with
/// `params` bound in order.
async fn sqlite_page(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    select: &str,
    params: &[Param<'_>],
) -> Result<Vec<AuditRow>, StoreError> {
    let sql = format!(
        "SELECT json_group_array(json_array(seq, id, ts, actor, action, resource, namespace,
                    outcome, classification, contains_pii, correlation_id, details,
                    CASE WHEN prev_hash IS NULL THEN NULL ELSE hex(prev_hash) END,
                    CASE WHEN hash IS NULL THEN NULL ELSE hex(hash) END))
         FROM ({select})"
    );
    let mut query = sqlx::query_scalar(&sql);
    for param in params {
        query = match param {
            Param::Text(value) => query.bind(*value),
            Param::Owned(value) => query.bind(value.as_str()),
            Param::Int(value) => query.bind(*value),
        };
    }
    let page: Option<String> = query.fetch_one(&mut **tx).await.ctx("read audit events")?;
    let rows: Vec<PageRow> = serde_json::from_str(page.as_deref().unwrap_or("[]"))
        .map_err(|e| StoreError::Internal(format!("read audit events: {e}")))?;
    // A hash that is not hex can only be tampering: kept as bytes no hash matches.
    let bytes = |text: Option<String>| text.map(|t| hex::decode(t).unwrap_or_else(|_| vec![0xff]));
    let mut events: Vec<AuditRow> = rows
        .into_iter()
        .map(|r| AuditRow {
            seq: r.0,
            id: r.1,
            ts: r.2,
            actor: r.3,
            action: r.4,
            resource: r.5,
            namespace: r.6,
            outcome: r.7,
            classification: r.8,
            contains_pii: r.9 != 0,
            correlation_id: r.10,
            details: r.11,
            prev_hash: bytes(r.12),
            hash: bytes(r.13),
        })
        .collect();
    // json_group_array keeps the subquery's order in practice; the chain must not
    // depend on it.
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

/// A bind parameter of [`Tx::query_audit`]'s dynamically built query.
enum Param<'a> {
    Text(&'a str),
    Owned(String),
    Int(i64),
}

/// `select` with a `WHERE` for every condition `filter` sets, and their parameters.
/// Every condition can use an index: a task's step events are the resource range
/// `step/<id>/` up to `step/<id>0` (`0` sorts right after `/`).
fn filtered<'a>(select: &str, filter: &'a AuditFilter) -> (String, Vec<Param<'a>>) {
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<Param<'a>> = Vec::new();
    let texts = [
        ("actor =", &filter.actor),
        ("resource =", &filter.resource),
        ("action =", &filter.action),
        ("namespace =", &filter.namespace),
        ("correlation_id =", &filter.correlation_id),
        ("outcome =", &filter.outcome),
    ];
    for (clause, value) in texts {
        if let Some(value) = value {
            params.push(Param::Text(value));
            conditions.push(format!("{clause} ${}", params.len()));
        }
    }
    if let Some(task) = &filter.task {
        params.push(Param::Owned(format!("task/{task}")));
        params.push(Param::Owned(format!("step/{task}/")));
        params.push(Param::Owned(format!("step/{task}0")));
        let n = params.len();
        conditions.push(format!(
            "(resource = ${} OR (resource >= ${} AND resource < ${n}))",
            n - 2,
            n - 1
        ));
    }
    let ints = [
        ("ts >=", filter.from_ts),
        ("ts <", filter.until_ts),
        ("seq >", filter.after_seq),
        ("seq <=", filter.through_seq),
    ];
    for (clause, value) in ints {
        if let Some(value) = value {
            params.push(Param::Int(value));
            conditions.push(format!("{clause} ${}", params.len()));
        }
    }
    let mut sql = select.to_owned();
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    (sql, params)
}

impl Tx<'_> {
    /// Records an event, unsealed, and returns its `seq`. `Conflict` if its id is taken.
    pub async fn insert_audit_event(&mut self, event: &NewAuditRow) -> Result<i64, StoreError> {
        let seqs = self
            .insert_audit_events(std::slice::from_ref(event))
            .await?;
        seqs.first().copied().ok_or_else(|| {
            StoreError::Internal("an inserted audit event returned no seq".to_owned())
        })
    }

    /// Records events, unsealed, many per statement, their `seq`s increasing in the
    /// order given; returns the `seq`s in that order. `Conflict` if an id is taken (and
    /// then none is recorded).
    pub async fn insert_audit_events(
        &mut self,
        events: &[NewAuditRow],
    ) -> Result<Vec<i64>, StoreError> {
        let mut seqs = Vec::with_capacity(events.len());
        const WIDTH: usize = 11;
        let postgres = matches!(self.inner, TxInner::Postgres(_));
        for batch in events.chunks(BATCH_ROWS) {
            let sql = match self.inner {
                TxInner::Sqlite(_) => format!(
                    concat!(
                        "INSERT INTO audit_events (",
                        insert_columns!(),
                        ") VALUES {}"
                    ),
                    self.row_list(1, batch.len(), WIDTH)
                ),
                // The shared barrier lock is taken in the same statement, and (a
                // materialised CTE is evaluated first) before the identity values are
                // drawn; the ordinal keeps `seq` in the order given.
                TxInner::Postgres(_) => {
                    let rows: Vec<String> = (0..batch.len())
                        .map(|row| format!("({}, {row})", self.param_list(2 + row * WIDTH, WIDTH)))
                        .collect();
                    format!(
                        concat!(
                            "WITH barrier AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($1))
                             INSERT INTO audit_events (",
                            insert_columns!(),
                            ") SELECT v.column1, v.column2, v.column3, v.column4, v.column5,
                                      v.column6, v.column7, v.column8, v.column9, v.column10,
                                      v.column11
                               FROM barrier, (VALUES {}) AS v ORDER BY v.column12
                             RETURNING id, seq"
                        ),
                        rows.join(", ")
                    )
                }
            };
            if let TxInner::Sqlite(tx) = &mut self.inner {
                // One writer, and a multi-row INSERT gives its rows consecutive rowids in
                // the order of its VALUES: the last one, from the statement's own result,
                // gives them all, without RETURNING's row-by-row hand-over from sqlx's
                // worker thread (about 19 µs a row).
                let mut query = sqlx::query(&sql);
                for event in batch {
                    query = bind_event!(query, event);
                }
                let done = query.execute(&mut **tx).await.ctx("insert audit events")?;
                let last = done.last_insert_rowid();
                let first = last - batch.len() as i64 + 1;
                if done.rows_affected() != batch.len() as u64 {
                    return Err(StoreError::Internal(
                        "inserted audit events were not all stored".to_owned(),
                    ));
                }
                seqs.extend(first..=last);
                continue;
            }
            let rows: Vec<(String, i64)> = with_conn!(self, |conn| {
                let mut query = sqlx::query_as(&sql);
                if postgres {
                    query = query.bind(AUDIT_BARRIER);
                }
                for event in batch {
                    query = bind_event!(query, event);
                }
                query.fetch_all(conn).await
            })
            .ctx("insert audit events")?;
            // RETURNING promises no order: match the seqs back by id.
            let by_id: std::collections::HashMap<String, i64> = rows.into_iter().collect();
            for event in batch {
                let seq = by_id.get(&event.id).copied().ok_or_else(|| {
                    StoreError::Internal("an inserted audit event returned no seq".to_owned())
                })?;
                seqs.push(seq);
            }
        }
        Ok(seqs)
    }

    /// Up to `limit` unsealed events after `after_seq`, in `seq` order, none of which can
    /// be preceded later by an event committed after this read.
    ///
    /// On PostgreSQL this waits for every transaction inserting audit events to finish and
    /// holds new ones back until this transaction ends: read in a short transaction of its
    /// own (commit, then hash), and seal in another.
    pub async fn unsealed_events(
        &mut self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        if let TxInner::Postgres(tx) = &mut self.inner {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_BARRIER)
                .execute(&mut **tx)
                .await
                .ctx("wait for audit writers")?;
        }
        if let TxInner::Sqlite(tx) = &mut self.inner {
            let select = "SELECT * FROM audit_events WHERE hash IS NULL AND seq > $1
                          ORDER BY seq LIMIT $2";
            return sqlite_page(tx, select, &[Param::Int(after_seq), Param::Int(limit)]).await;
        }
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM audit_events WHERE hash IS NULL AND seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after_seq)
            .bind(limit)
            .fetch_all(conn)
            .await
        })
        .ctx("read unsealed audit events")
    }

    /// Take the sealer's lock for the rest of this transaction, so two sealers never link
    /// events from the same tip. On SQLite every write transaction already excludes the
    /// others (`BEGIN IMMEDIATE`).
    pub async fn lock_sealer(&mut self) -> Result<(), StoreError> {
        if let TxInner::Postgres(tx) = &mut self.inner {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SEALER_LOCK)
                .execute(&mut **tx)
                .await
                .ctx("take the audit sealer lock")?;
        }
        Ok(())
    }

    /// The chain tip: the sealed event with the highest `seq` and its hash.
    pub async fn last_sealed(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT seq, hash FROM audit_events WHERE hash IS NOT NULL
                 ORDER BY seq DESC LIMIT 1",
            )
            .fetch_optional(conn)
            .await
        })
        .ctx("read the audit chain tip")
    }

    /// Seals events with their chain hashes: each (seq, prev_hash, hash), many per
    /// statement. `Conflict` if one of them is sealed already or missing (another sealer
    /// got there first): roll back and start over.
    pub async fn seal_events(&mut self, seals: &[(i64, &[u8], &[u8])]) -> Result<(), StoreError> {
        for batch in seals.chunks(BATCH_ROWS) {
            let sql = format!(
                "UPDATE audit_events SET prev_hash = v.column2, hash = v.column3
                 FROM (VALUES {}) AS v
                 WHERE audit_events.seq = v.column1 AND audit_events.hash IS NULL",
                self.row_list(1, batch.len(), 3)
            );
            let updated = with_conn!(self, |conn| {
                let mut query = sqlx::query(&sql);
                for (seq, prev, hash) in batch {
                    query = query.bind(*seq).bind(*prev).bind(*hash);
                }
                query.execute(conn).await.map(|done| done.rows_affected())
            })
            .ctx("seal audit events")?;
            if updated != batch.len() as u64 {
                return Err(StoreError::Conflict(
                    "audit events were sealed by another sealer".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// Seals event `seq` with its chain hashes. `Conflict` if it is sealed already (another
    /// sealer got there first), `NotFound` if there is no such event.
    pub async fn seal_event(
        &mut self,
        seq: i64,
        prev_hash: Option<&[u8]>,
        hash: &[u8],
    ) -> Result<(), StoreError> {
        let updated = with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE audit_events SET prev_hash = $2, hash = $3 WHERE seq = $1 AND hash IS NULL",
            )
            .bind(seq)
            .bind(prev_hash)
            .bind(hash)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("seal audit event")?;
        if updated == 1 {
            return Ok(());
        }
        let exists: Option<i64> = with_conn!(self, |conn| {
            sqlx::query_scalar("SELECT seq FROM audit_events WHERE seq = $1")
                .bind(seq)
                .fetch_optional(conn)
                .await
        })
        .ctx("seal audit event")?;
        match exists {
            None => Err(StoreError::NotFound(format!("audit event {seq}"))),
            Some(_) => Err(StoreError::Conflict(format!(
                "audit event {seq} is sealed already"
            ))),
        }
    }

    /// Up to `limit` events from `from_seq` on (inclusive), sealed or not, in `seq` order:
    /// for verification and export.
    pub async fn audit_events(
        &mut self,
        from_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        if let TxInner::Sqlite(tx) = &mut self.inner {
            let select = "SELECT * FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2";
            return sqlite_page(tx, select, &[Param::Int(from_seq), Param::Int(limit)]).await;
        }
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM audit_events WHERE seq >= $1 ORDER BY seq LIMIT $2"
            ))
            .bind(from_seq)
            .bind(limit)
            .fetch_all(conn)
            .await
        })
        .ctx("read audit events")
    }

    /// Up to `limit` events matching `filter`, in `seq` order.
    pub async fn query_audit(
        &mut self,
        filter: &AuditFilter,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let (mut sql, mut params) =
            filtered(concat!("SELECT ", columns!(), " FROM audit_events"), filter);
        params.push(Param::Int(limit));
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", params.len()));
        if let TxInner::Sqlite(tx) = &mut self.inner {
            let select = sql.replacen(concat!("SELECT ", columns!()), "SELECT *", 1);
            return sqlite_page(tx, &select, &params).await;
        }
        with_conn!(self, |conn| {
            let mut query = sqlx::query_as(&sql);
            for param in &params {
                query = match param {
                    Param::Text(value) => query.bind(*value),
                    Param::Owned(value) => query.bind(value.as_str()),
                    Param::Int(value) => query.bind(*value),
                };
            }
            query.fetch_all(conn).await
        })
        .ctx("query audit events")
    }

    /// How many events match `filter` (its `after_seq` included).
    pub async fn count_audit(&mut self, filter: &AuditFilter) -> Result<i64, StoreError> {
        let (sql, params) = filtered("SELECT COUNT(*) FROM audit_events", filter);
        with_conn!(self, |conn| {
            let mut query = sqlx::query_scalar(&sql);
            for param in &params {
                query = match param {
                    Param::Text(value) => query.bind(*value),
                    Param::Owned(value) => query.bind(value.as_str()),
                    Param::Int(value) => query.bind(*value),
                };
            }
            query.fetch_one(conn).await
        })
        .ctx("count audit events")
    }

    /// Stores a signed checkpoint. `Conflict` if one exists at that `seq`.
    pub async fn insert_checkpoint(
        &mut self,
        checkpoint: &CheckpointRow,
    ) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "INSERT INTO audit_checkpoints (seq, hash, signature, key_id, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(checkpoint.seq)
            .bind(&checkpoint.hash)
            .bind(&checkpoint.signature)
            .bind(&checkpoint.key_id)
            .bind(checkpoint.created_at)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("insert audit checkpoint")?;
        Ok(())
    }

    /// The checkpoint with the highest `seq`, if any.
    pub async fn last_checkpoint(&mut self) -> Result<Option<CheckpointRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT seq, hash, signature, key_id, created_at FROM audit_checkpoints
                 ORDER BY seq DESC LIMIT 1",
            )
            .fetch_optional(conn)
            .await
        })
        .ctx("read the last audit checkpoint")
    }

    /// The checkpoints with `from_seq <= seq <= to_seq`, in `seq` order.
    pub async fn checkpoints_between(
        &mut self,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT seq, hash, signature, key_id, created_at FROM audit_checkpoints
                 WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
            )
            .bind(from_seq)
            .bind(to_seq)
            .fetch_all(conn)
            .await
        })
        .ctx("read audit checkpoints")
    }

    /// Every checkpoint, in `seq` order.
    pub async fn checkpoints(&mut self) -> Result<Vec<CheckpointRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT seq, hash, signature, key_id, created_at FROM audit_checkpoints
                 ORDER BY seq",
            )
            .fetch_all(conn)
            .await
        })
        .ctx("read audit checkpoints")
    }
}
