//! SQLite's hot write path: the engine's claims and step commits as one synchronous
//! transaction each, its statements run on the caller's thread.
//!
//! sqlx runs every SQLite statement on a thread of its own: each statement is a message
//! there and back, and each row returned another. Under load each such hop waited for a
//! thread to be scheduled, and since a hop happens while the transaction holds SQLite's
//! single write lock, the lock was held several times longer than its statements ran —
//! it bounded the whole engine's throughput. [`Store::write_now`] runs a whole transaction
//! through rusqlite on a connection of its own, in one go on the caller's thread: no hop
//! at all, the write lock held only while statements run, and prepared statements kept
//! between transactions. It takes the same write turn as every other write of this
//! process (so it never waits on SQLite's lock behind one of them), with the same pragmas
//! and busy timeout.
//!
//! The statements mirror `claim`, `steps`, `tasks`, `keys`, `subjects`, `workflows` and
//! `audit` (see [`HotWrites`], which both paths implement, so the engine's creation and
//! commit logic is written once).

use std::future::Future;

use rusqlite::types::ToSql;
use rusqlite::{Connection, ErrorCode};

use super::backend::Pool;
use super::claim::{ClaimRecord, SQLITE_CLAIM_EXPIRED, SQLITE_CLAIM_RUNNABLE, take_released_sql};
use super::error::internal;
use super::keys::key_columns;
use super::steps::{STEP_COLUMNS, distinct, step_columns};
use super::tasks::task_columns;
use super::{
    AttemptRow, AuditRow, ClaimedStep, Completion, DataKeyRow, NewAuditRow, StepRow, Store,
    StoreError, SubjectRow, TaskRow, TaskStatus, Tx,
};

/// Most rows one statement carries here: the widest row (a task's) binds 18 parameters,
/// and SQLite takes at most 32,766 in a statement.
const LITE_ROWS: usize = 256;

/// Prepared statements kept between transactions: each multi-row statement in each of its
/// [`sized`] row counts.
const STATEMENT_CACHE: usize = 256;

/// How long `write_now` waits before trying again for a write lock another process holds.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

/// The page cache of the connections [`open_connection`] opens (the hot path's and the
/// checkpointer's), in KiB: 16 MiB, some 4,000 pages of 4 KiB, enough for what the hot
/// transactions touch again and again (the tails of the audit trail and of the indexes,
/// the steps of the tasks in flight, the claim indexes).
///
/// Not more, because a commit can cost time in proportion to the pages cached. When a
/// B-tree page splits into new pages that are not in ascending order, SQLite (3.46,
/// `balance_nonroot`) renumbers them, passing one through the page number of the
/// pending-byte page (262,145) as a temporary name. That leaves the cache's largest page
/// number there, and the next commit, which drops cached pages beyond the end of the
/// database, then walks the whole cache instead of its last few entries. Such splits
/// come in nearly every commit (327 walks in a 1,000-task run), so with 64 MiB (the sqlx
/// connections' setting) each commit's walk grew with the database, up to 16,384 pages:
/// on 16,000 tasks the engine benchmark ran up to a fifth slower and its process used
/// 5–22 % more CPU than with this cache. Between 2 and 16 MiB the throughput did not
/// separate.
const HOT_CACHE_KIB: i64 = 16 * 1024;

/// Hot-path commits between two checkpoints. A busy commit writes some thirty pages, so
/// the WAL grows to several thousand (tens of MiB) between them. A checkpoint copies each
/// page once however often the WAL holds it, and the hot pages (the tails of the audit
/// trail and of the indexes, the steps of the tasks in flight) are in nearly every
/// commit, so fewer checkpoints copy far fewer pages. On 2 cores, 16 came out no faster
/// than 256 and 1,024 no faster either; with 256 the engine benchmark ran some 10–15 %
/// faster than with SQLite's own checkpoints.
const CHECKPOINT_EVERY: u32 = 256;
/// How long the checkpointer waits for that many commits before it checkpoints the
/// fewer that came meanwhile, or what sqlx's connections wrote (they never checkpoint
/// either).
const CHECKPOINT_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A write transaction on SQLite's writer connection, open while [`Store::write_now`]'s
/// work runs.
pub(crate) struct LiteTx<'c> {
    conn: &'c Connection,
}

/// Turns a rusqlite error into a [`StoreError`], as `error::classify` does for sqlx's.
fn lite_err(err: rusqlite::Error, what: &'static str) -> StoreError {
    match &err {
        rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound(what.to_owned()),
        rusqlite::Error::SqliteFailure(e, _) => match (e.code, e.extended_code) {
            // SQLITE_BUSY_SNAPSHOT: a read snapshot went stale before the write.
            (_, 517) => {
                StoreError::Conflict(format!("{what}: lost a race with a concurrent transaction"))
            }
            // SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE.
            (ErrorCode::ConstraintViolation, 1555 | 2067) => {
                StoreError::Conflict(format!("{what}: already exists"))
            }
            // SQLITE_CONSTRAINT_FOREIGNKEY.
            (ErrorCode::ConstraintViolation, 787) => {
                StoreError::NotFound(format!("{what}: a row it refers to does not exist"))
            }
            (
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen,
                _,
            ) => StoreError::Unavailable(format!("{what}: the database is busy or down")),
            _ => internal(err, what),
        },
        _ => internal(err, what),
    }
}

trait LiteContext<T> {
    fn lite(self, what: &'static str) -> Result<T, StoreError>;
}

impl<T> LiteContext<T> for Result<T, rusqlite::Error> {
    fn lite(self, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|err| lite_err(err, what))
    }
}

/// `rows` cut into slices whose lengths are powers of two, longest first (at most
/// [`LITE_ROWS`]): a multi-row statement then comes in a few shapes only, each parsed once
/// and kept prepared. Parsing a statement for every batch size seen cost more than the
/// statements saved by one statement per batch.
fn sized<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = 1 << rest.len().min(LITE_ROWS).ilog2();
        let (chunk, after) = rest.split_at(len);
        rest = after;
        Some(chunk)
    })
}

/// `?, ?, …`: `n` positional parameters.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `(?, …), (?, …), …`: `rows` tuples of `width` positional parameters.
fn tuples(rows: usize, width: usize) -> String {
    vec![format!("({})", marks(width)); rows].join(", ")
}

/// Rolls back a transaction its work left open (an error, or a panic), so the connection
/// goes back to sqlx in autocommit.
struct OpenTx<'c>(&'c Connection);

impl Drop for OpenTx<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
}

/// Opens the hot path's own connection to the SQLite file at `path`, with the pragmas of
/// sqlx's connections (`backend::open_sqlite`) but a smaller page cache
/// ([`HOT_CACHE_KIB`]).
pub(crate) fn open_connection(path: &std::path::Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).lite("open the SQLite database")?;
    // No busy wait inside SQLite: it would block this thread. `write_now` waits for
    // another process's write lock asynchronously instead.
    conn.busy_timeout(std::time::Duration::ZERO)
        .lite("open the SQLite database")?;
    // And no checkpoint in its commits: the `Checkpointer` does them. A WAL that a burst
    // grew past 64 MiB is cut back when it starts over.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = FAST; PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;",
    )
    .lite("open the SQLite database")?;
    conn.pragma_update(None, "cache_size", -HOT_CACHE_KIB)
        .lite("open the SQLite database")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Copies the WAL's pages into the database file for the hot path, on a thread and a
/// connection of its own.
///
/// SQLite checkpoints in the commit that grows the WAL past its threshold, on the
/// committing thread: copying the pages back and two fsyncs, some ten milliseconds in
/// which the hot path's thread — the one every step's commit waits on — did nothing
/// else. In WAL mode a checkpoint needs no write lock, so here it runs beside the
/// writers instead (`PASSIVE`: it copies what is committed and never waits for a
/// reader), and the hot connection never checkpoints.
///
/// Under steady load that alone would let the WAL grow without end: SQLite starts it
/// over only at a write that begins once every frame is back in the file, and writers
/// append while a checkpoint runs. So a second pass copies what came meanwhile while it
/// holds this process's write turn (the writers wait for it without blocking a thread),
/// and the next write starts the WAL over.
pub(crate) struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
    commits: std::sync::atomic::AtomicU32,
}

impl Checkpointer {
    /// Start checkpointing the SQLite file at `path`; it stops once this is dropped.
    pub(crate) fn start(
        path: &std::path::Path,
        write_turns: std::sync::Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Self, StoreError> {
        use std::sync::mpsc::RecvTimeoutError;
        let conn = open_connection(path)?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let commits = std::sync::atomic::AtomicU32::new(0);
        std::thread::Builder::new()
            .name("stepbox-checkpoint".into())
            .spawn(move || {
                // The WAL as the last pass under the turn left it.
                let mut left = None;
                loop {
                    match woken.recv_timeout(CHECKPOINT_IDLE) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    // Beside the writers: the bulk of the pages. Nothing new since the
                    // last pass (an idle store): nothing more to do.
                    let Some(wal) = checkpoint(&conn) else {
                        continue;
                    };
                    if Some(wal) == left {
                        continue;
                    }
                    // Under the turn: what came meanwhile, so the next write starts the
                    // WAL over.
                    let _turn = write_turns.blocking_lock();
                    left = checkpoint(&conn);
                }
            })
            .map_err(|e| StoreError::Internal(format!("start the SQLite checkpointer: {e}")))?;
        Ok(Self { wake, commits })
    }

    /// A hot-path transaction committed: checkpoint after every few.
    fn committed(&self) {
        let n = self
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 {
            // Full: a checkpoint is already due.
            let _ = self.wake.try_send(());
        }
    }
}

/// Checkpoint what is committed: the WAL's frames and how many of them are back in the
/// database file (`None`: it failed, or another connection was checkpointing).
fn checkpoint(conn: &Connection) -> Option<(i64, i64)> {
    let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    });
    match passive {
        Ok((0, frames, copied)) => Some((frames, copied)),
        Ok(_busy) => None,
        Err(e) => {
            tracing::warn!(error = %lite_err(e, "checkpoint"), "checkpointing the SQLite WAL failed");
            None
        }
    }
}

/// The hot connection, in a transaction holding SQLite's write lock.
fn begin_immediate(
    hot: &std::sync::Mutex<Connection>,
) -> Result<std::sync::MutexGuard<'_, Connection>, rusqlite::Error> {
    let conn = hot.lock().unwrap_or_else(|e| e.into_inner());
    conn.execute_batch("BEGIN IMMEDIATE")?;
    Ok(conn)
}

impl Store {
    /// Run `work` as one write transaction on SQLite, every statement on this thread; it
    /// commits if `work` returns `Ok`, and rolls back otherwise. SQLite only (`Internal`
    /// on PostgreSQL, whose path is [`Store::begin`]).
    pub(crate) async fn write_now<T, E>(
        &self,
        work: impl FnOnce(&mut LiteTx<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let Pool::Sqlite(pools) = &self.pool else {
            return Err(StoreError::Internal("write_now is SQLite's".to_owned()).into());
        };
        let timer = std::time::Instant::now();
        // This process's writers take turns; the connection's lock is then free at once.
        let _turn = self.write_turn().await?;
        let turn = timer.elapsed();
        // Another process may hold SQLite's write lock: wait for it without blocking this
        // thread, for as long as sqlx's connections would.
        let deadline = std::time::Instant::now() + super::SQLITE_BUSY_TIMEOUT;
        let conn = loop {
            match begin_immediate(&pools.hot) {
                Ok(conn) => break conn,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline => {}
                Err(e) => return Err(lite_err(e, "begin").into()),
            }
            tokio::time::sleep(BUSY_RETRY).await;
        };
        let outcome = {
            let _open = OpenTx(&conn);
            let mut tx = LiteTx { conn: &conn };
            let outcome = work(&mut tx);
            if outcome.is_ok() {
                conn.execute_batch("COMMIT").lite("commit")?;
                pools.checkpointer.committed();
            }
            outcome
        };
        drop(conn);
        tracing::trace!(
            turn_us = turn.as_micros() as u64,
            work_us = (timer.elapsed() - turn).as_micros() as u64,
            "wrote"
        );
        outcome
    }
}

/// Connections for reads on the caller's thread ([`Store::read_now`]), opened as they are
/// needed and kept while idle, read-only.
pub(crate) struct LiteReaders {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<Connection>>,
}

/// Idle read connections kept: one per core serves every thread that reads at once.
const IDLE_READERS: usize = 4;

impl LiteReaders {
    pub(crate) fn new(path: &std::path::Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = open_connection(&self.path)?;
                conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -8192;")
                    .lite("open the SQLite database")?;
                Ok(conn)
            }
        }
    }

    fn give(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }
}

impl Store {
    /// Run `work` as one read transaction on SQLite, on this thread: what an API read
    /// needs (a task, its namespace's policy, its data key) costs a few tens of
    /// microseconds here against a round trip to sqlx's thread per statement. A reader
    /// never waits in WAL mode, so nothing here blocks the thread; should SQLite answer
    /// busy all the same (a checkpoint restarting the WAL) the answer is `Unavailable`,
    /// and the caller reads through sqlx instead. `None` on PostgreSQL.
    pub(crate) fn read_now<T>(
        &self,
        work: impl FnOnce(&mut LiteTx<'_>) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let Pool::Sqlite(pools) = &self.pool else {
            return None;
        };
        let read = || {
            let conn = pools.lite_readers.take()?;
            let outcome = {
                let _open = OpenTx(&conn);
                conn.execute_batch("BEGIN").lite("begin")?;
                let outcome = work(&mut LiteTx { conn: &conn });
                conn.execute_batch("COMMIT").lite("commit")?;
                outcome
            };
            pools.lite_readers.give(conn);
            outcome
        };
        Some(read())
    }
}

impl LiteTx<'_> {
    /// Task `id`, if there is one.
    pub(crate) fn get_task(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        Ok(self
            .select_by_ids(
                "SELECT id, namespace, workflow_name, workflow_version, status, context,
                        data_key_id, subject, classification, contains_pii, created_by,
                        principal, reason, tags, error_step, created_at, updated_at,
                        finished_at
                 FROM tasks WHERE id IN ({})",
                &[id],
                "get task",
                task_row,
            )?
            .pop())
    }
}

/// What a claim batch reads besides its claims, in the claim's transaction: each task
/// once, their data keys, their complete steps' results, and their namespaces' policies.
#[derive(Default)]
pub(crate) struct ClaimReads {
    pub(crate) tasks: Vec<TaskRow>,
    pub(crate) keys: Vec<DataKeyRow>,
    pub(crate) results: Vec<(String, String, Vec<u8>)>,
    /// (namespace, policy JSON).
    pub(crate) policies: Vec<(String, String)>,
}

fn task_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    let status: String = row.get(4)?;
    Ok(TaskRow {
        id: row.get(0)?,
        namespace: row.get(1)?,
        workflow_name: row.get(2)?,
        workflow_version: row.get(3)?,
        status: status.parse().map_err(|e: StoreError| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                e.to_string().into(),
            )
        })?,
        context: row.get(5)?,
        data_key_id: row.get(6)?,
        subject: row.get(7)?,
        classification: row.get(8)?,
        contains_pii: row.get(9)?,
        created_by: row.get(10)?,
        principal: row.get(11)?,
        reason: row.get(12)?,
        tags: row.get(13)?,
        error_step: row.get(14)?,
        created_at: row.get(15)?,
        updated_at: row.get(16)?,
        finished_at: row.get(17)?,
    })
}

/// A claim statement's row: task, step, attempt, attempt base, lease end.
fn claim_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<ClaimRecord> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn data_key_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DataKeyRow> {
    Ok(DataKeyRow {
        id: row.get(0)?,
        kek_id: row.get(1)?,
        wrapped: row.get(2)?,
        subject: row.get(3)?,
        created_at: row.get(4)?,
        destroyed_at: row.get(5)?,
        pad: row.get(6)?,
    })
}

impl LiteTx<'_> {
    /// The rows `template` (one `{}` for the inside of an `IN (…)` list) selects for
    /// `ids`, in chunks.
    fn select_by_ids<T>(
        &self,
        template: &str,
        ids: &[&str],
        what: &'static str,
        read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for batch in sized(ids) {
            let sql = template.replacen("{}", &marks(batch.len()), 1);
            let mut statement = self.conn.prepare_cached(&sql).lite(what)?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(batch), &read)
                .lite(what)?;
            for row in rows {
                found.push(row.lite(what)?);
            }
        }
        Ok(found)
    }

    /// What the steps of `claims` need to run ([`ClaimReads`]); data keys only if `keys`.
    pub(crate) fn claim_reads(
        &mut self,
        claims: &[ClaimedStep],
        keys: bool,
    ) -> Result<ClaimReads, StoreError> {
        let mut task_ids: Vec<&str> = claims.iter().map(|c| c.task_id.as_str()).collect();
        task_ids.sort_unstable();
        task_ids.dedup();
        let tasks = self.select_by_ids(
            "SELECT id, namespace, workflow_name, workflow_version, status, context,
                    data_key_id, subject, classification, contains_pii, created_by, principal,
                    reason, tags, error_step, created_at, updated_at, finished_at
             FROM tasks WHERE id IN ({})",
            &task_ids,
            "get tasks",
            task_row,
        )?;
        let mut key_ids: Vec<&str> = tasks.iter().map(|t| t.data_key_id.as_str()).collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        let keys = if keys {
            self.select_by_ids(
                concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM data_keys WHERE id IN ({})"
                ),
                &key_ids,
                "get data keys",
                data_key_row,
            )?
        } else {
            Vec::new()
        };
        let results = self.select_by_ids(
            "SELECT task_id, name, result FROM steps
             WHERE task_id IN ({}) AND status = 'complete' AND result IS NOT NULL",
            &task_ids,
            "get step results",
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let mut namespaces: Vec<&str> = tasks.iter().map(|t| t.namespace.as_str()).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let policies = self.select_by_ids(
            "SELECT name, policy FROM namespaces WHERE name IN ({})",
            &namespaces,
            "get namespace",
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(ClaimReads {
            tasks,
            keys,
            results,
            policies,
        })
    }

    /// The sealer's write ([`Tx::seal_events`]), if the chain's tip is still `tip_seq`:
    /// `Conflict` if it moved or an event was sealed meanwhile (and the caller's
    /// transaction must then roll back).
    pub(crate) fn seal_from(
        &mut self,
        tip_seq: Option<i64>,
        seals: &[(i64, &[u8], &[u8])],
    ) -> Result<(), StoreError> {
        if self.last_sealed()?.map(|(seq, _)| seq) != tip_seq {
            return Err(StoreError::Conflict("the chain's tip moved".to_owned()));
        }
        self.seal_events(seals)
    }

    /// The chain's tip: the last sealed event's seq and hash ([`Tx::last_sealed`]).
    pub(crate) fn last_sealed(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT seq, hash FROM audit_events WHERE hash IS NOT NULL
                 ORDER BY seq DESC LIMIT 1",
            )
            .lite("read the audit chain tip")?;
        let mut rows = statement.query([]).lite("read the audit chain tip")?;
        match rows.next().lite("read the audit chain tip")? {
            Some(row) => Ok(Some((
                row.get(0).lite("read the audit chain tip")?,
                row.get(1).lite("read the audit chain tip")?,
            ))),
            None => Ok(None),
        }
    }

    /// Up to `limit` unsealed events after `after_seq`, in order
    /// ([`Tx::unsealed_events`]).
    pub(crate) fn unsealed_events(
        &mut self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT seq, id, ts, actor, action, resource, namespace, outcome,
                        classification, contains_pii, correlation_id, details, prev_hash, hash
                 FROM audit_events WHERE hash IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            )
            .lite("read unsealed audit events")?;
        let rows = statement
            .query_map([after_seq, limit], |row| {
                Ok(AuditRow {
                    seq: row.get(0)?,
                    id: row.get(1)?,
                    ts: row.get(2)?,
                    actor: row.get(3)?,
                    action: row.get(4)?,
                    resource: row.get(5)?,
                    namespace: row.get(6)?,
                    outcome: row.get(7)?,
                    classification: row.get(8)?,
                    contains_pii: row.get(9)?,
                    correlation_id: row.get(10)?,
                    details: row.get(11)?,
                    prev_hash: row.get(12)?,
                    hash: row.get(13)?,
                })
            })
            .lite("read unsealed audit events")?;
        rows.map(|row| row.lite("read unsealed audit events"))
            .collect()
    }

    /// Seals events with their chain hashes ([`Tx::seal_events`]): `Conflict` if one of
    /// them is sealed already or missing.
    pub(crate) fn seal_events(&mut self, seals: &[(i64, &[u8], &[u8])]) -> Result<(), StoreError> {
        for batch in sized(seals) {
            let sql = format!(
                "UPDATE audit_events SET prev_hash = v.column2, hash = v.column3
                 FROM (VALUES {}) AS v
                 WHERE audit_events.seq = v.column1 AND audit_events.hash IS NULL",
                tuples(batch.len(), 3)
            );
            let params: Vec<&dyn ToSql> = batch
                .iter()
                .flat_map(|(seq, prev, hash)| [seq as &dyn ToSql, prev, hash])
                .collect();
            if self.execute(&sql, &params, "seal audit events")? != batch.len() {
                return Err(StoreError::Conflict(
                    "audit events were sealed by another sealer".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The seq the next audit event gets: past every seq ever given, deleted or not
    /// (`AUTOINCREMENT` keeps the highest in `sqlite_sequence`), so that no event ever
    /// takes a removed one's place in the chain.
    pub(crate) fn next_audit_seq(&mut self) -> Result<i64, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence
                                      WHERE name = 'audit_events'), 0),
                            COALESCE((SELECT max(seq) FROM audit_events), 0))",
            )
            .lite("read the next audit seq")?;
        let last: i64 = statement
            .query_row([], |row| row.get(0))
            .lite("read the next audit seq")?;
        Ok(last + 1)
    }

    /// Stores events already chained: each row's `seq`, `prev_hash` and `hash` as given.
    pub(crate) fn insert_sealed_audit_events(
        &mut self,
        rows: &[AuditRow],
    ) -> Result<(), StoreError> {
        for batch in sized(rows) {
            let sql = format!(
                "INSERT INTO audit_events (seq, id, ts, actor, action, resource, namespace,
                                           outcome, classification, contains_pii,
                                           correlation_id, details, prev_hash, hash)
                 VALUES {}",
                tuples(batch.len(), 14)
            );
            let params: Vec<&dyn ToSql> = batch
                .iter()
                .flat_map(|e| {
                    [
                        &e.seq as &dyn ToSql,
                        &e.id,
                        &e.ts,
                        &e.actor,
                        &e.action,
                        &e.resource,
                        &e.namespace,
                        &e.outcome,
                        &e.classification,
                        &e.contains_pii,
                        &e.correlation_id,
                        &e.details,
                        &e.prev_hash,
                        &e.hash,
                    ]
                })
                .collect();
            self.execute(&sql, &params, "insert audit events")?;
        }
        Ok(())
    }

    fn execute(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        what: &'static str,
    ) -> Result<usize, StoreError> {
        let mut statement = self.conn.prepare_cached(sql).lite(what)?;
        statement.execute(params).lite(what)
    }

    /// The claim of [`Tx::claim_ready_steps`]: expired leases first, then due steps, and
    /// their pending tasks started.
    pub(crate) fn claim_ready_steps(
        &mut self,
        worker: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<ClaimedStep>, StoreError> {
        let lease_expires_at = now.saturating_add(lease_ms);
        let mut claimed: Vec<ClaimRecord> = Vec::new();
        for sql in [SQLITE_CLAIM_EXPIRED, SQLITE_CLAIM_RUNNABLE] {
            let wanted = limit.saturating_sub(claimed.len());
            if wanted == 0 {
                break;
            }
            let wanted = i64::try_from(wanted).unwrap_or(i64::MAX);
            let mut statement = self.conn.prepare_cached(sql).lite("claim steps")?;
            let rows = statement
                .query_map(
                    &[
                        ("$1", &now as &dyn ToSql),
                        ("$2", &worker),
                        ("$3", &lease_expires_at),
                        ("$4", &wanted),
                    ][..],
                    claim_record,
                )
                .lite("claim steps")?;
            for row in rows {
                claimed.push(row.lite("claim steps")?);
            }
        }
        let mut task_ids: Vec<&str> = claimed.iter().map(|c| c.0.as_str()).collect();
        task_ids.sort_unstable();
        task_ids.dedup();
        for batch in sized(&task_ids) {
            // `+status`: look the tasks up by id, not through the status index.
            let sql = format!(
                "UPDATE tasks SET status = 'in_progress', updated_at = ?
                 WHERE +status = 'pending' AND id IN ({})",
                marks(batch.len())
            );
            let mut params: Vec<&dyn ToSql> = vec![&now];
            params.extend(batch.iter().map(|id| id as &dyn ToSql));
            self.execute(&sql, &params, "start tasks")?;
        }
        Ok(claimed.into_iter().map(ClaimedStep::from).collect())
    }

    fn complete_steps(
        &mut self,
        done: &[Completion<'_>],
        now: i64,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let mut committed = Vec::with_capacity(done.len());
        for batch in sized(done) {
            let sql = format!(
                "UPDATE steps SET status = 'complete', result = v.column5, error = NULL,
                                  lease_expires_at = NULL, finished_at = ?
                 FROM (VALUES {}) AS v
                 WHERE steps.task_id = v.column1 AND steps.name = v.column2
                   AND steps.lease_owner = v.column3 AND steps.attempts = v.column4
                   AND steps.status = 'in_progress'
                 RETURNING steps.task_id, steps.name, steps.attempts",
                tuples(batch.len(), 5)
            );
            let mut params: Vec<&dyn ToSql> = vec![&now];
            for c in batch {
                params.extend([
                    &c.task_id as &dyn ToSql,
                    &c.step,
                    &c.worker,
                    &c.attempt,
                    &c.result,
                ]);
            }
            let mut statement = self.conn.prepare_cached(&sql).lite("complete steps")?;
            let rows = statement
                .query_map(&params[..], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .lite("complete steps")?;
            for row in rows {
                committed.push(row.lite("complete steps")?);
            }
        }
        Ok(committed)
    }

    fn take_released(
        &mut self,
        steps: &[(&str, &str)],
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedStep>, StoreError> {
        let lease_expires_at = now.saturating_add(lease_ms);
        let mut taken = Vec::with_capacity(steps.len());
        for batch in sized(steps) {
            let sql = take_released_sql("?", "?", "?", &tuples(batch.len(), 2), "?");
            let mut params: Vec<&dyn ToSql> = vec![&worker, &lease_expires_at, &now];
            for (task_id, step) in batch {
                params.extend([task_id as &dyn ToSql, step]);
            }
            params.push(&now);
            let mut statement = self.conn.prepare_cached(&sql).lite("take released steps")?;
            let rows = statement
                .query_map(&params[..], claim_record)
                .lite("take released steps")?;
            for row in rows {
                taken.push(ClaimedStep::from(row.lite("take released steps")?));
            }
        }
        Ok(taken)
    }

    pub(crate) fn namespace_policy(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT policy FROM namespaces WHERE name = ?")
            .lite("get namespace")?;
        let mut rows = statement.query([name]).lite("get namespace")?;
        match rows.next().lite("get namespace")? {
            Some(row) => Ok(Some(row.get(0).lite("get namespace")?)),
            None => Ok(None),
        }
    }

    fn release_steps(&mut self, released: &[(&str, &str, i64)]) -> Result<(), StoreError> {
        for batch in sized(released) {
            let sql = format!(
                "UPDATE steps SET waiting_on = steps.waiting_on - v.column3
                 FROM (VALUES {}) AS v
                 WHERE steps.task_id = v.column1 AND steps.name = v.column2",
                tuples(batch.len(), 3)
            );
            let params: Vec<&dyn ToSql> = batch
                .iter()
                .flat_map(|(task, step, n)| [task as &dyn ToSql, step, n])
                .collect();
            self.execute(&sql, &params, "release dependent steps")?;
        }
        Ok(())
    }

    /// Whether the step exists: what tells a lost lease (`Conflict`) from a step that
    /// is not there (`NotFound`).
    fn fenced(
        &self,
        updated: usize,
        task_id: &str,
        step: &str,
        worker: &str,
        attempt: i64,
    ) -> Result<(), StoreError> {
        if updated == 1 {
            return Ok(());
        }
        let mut statement = self
            .conn
            .prepare_cached("SELECT 1 FROM steps WHERE task_id = ? AND name = ?")
            .lite("get step")?;
        if !statement.exists([task_id, step]).lite("get step")? {
            return Err(StoreError::NotFound(format!("step {task_id}/{step}")));
        }
        Err(StoreError::Conflict(format!(
            "step {task_id}/{step} attempt {attempt} is no longer leased to {worker}"
        )))
    }

    #[allow(clippy::too_many_arguments)] // as Tx::fail_step
    fn fail_step(
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
        let updated = self.execute(
            "UPDATE steps SET status = ?, error = ?, next_run_at = COALESCE(?, next_run_at),
                              lease_expires_at = NULL, finished_at = ?
             WHERE task_id = ? AND name = ? AND lease_owner = ? AND attempts = ?
               AND status = 'in_progress'",
            &[
                &status,
                &error_json,
                &retry_at,
                &finished_at,
                &task_id,
                &step,
                &worker,
                &attempt,
            ],
            "fail step",
        )?;
        self.fenced(updated, task_id, step, worker, attempt)
    }

    fn cancel_pending_steps(&mut self, task_id: &str, now: i64) -> Result<u64, StoreError> {
        let cancelled = self.execute(
            "UPDATE steps SET status = 'cancelled', finished_at = ?
             WHERE task_id = ? AND status IN ('pending', 'waiting_for_retry')",
            &[&now, &task_id],
            "cancel steps",
        )?;
        Ok(cancelled as u64)
    }

    fn insert_attempts(&mut self, attempts: &[AttemptRow]) -> Result<(), StoreError> {
        for batch in sized(attempts) {
            let sql = format!(
                "INSERT INTO step_attempts (task_id, step, attempt, worker, outcome, record,
                                            started_at, duration_ms)
                 VALUES {}",
                tuples(batch.len(), 8)
            );
            let params: Vec<&dyn ToSql> = batch
                .iter()
                .flat_map(|a| {
                    [
                        &a.task_id as &dyn ToSql,
                        &a.step,
                        &a.attempt,
                        &a.worker,
                        &a.outcome,
                        &a.record,
                        &a.started_at,
                        &a.duration_ms,
                    ]
                })
                .collect();
            self.execute(&sql, &params, "insert attempt")?;
        }
        Ok(())
    }

    fn set_task_status(
        &mut self,
        id: &str,
        status: TaskStatus,
        error_step: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let updated = self.execute(
            "UPDATE tasks SET status = ?, error_step = ?, updated_at = ?,
                              finished_at = COALESCE(?, finished_at)
             WHERE id = ? AND status NOT IN ('complete', 'error', 'cancelled')",
            &[
                &status.as_str(),
                &error_step,
                &now,
                &status.is_terminal().then_some(now),
                &id,
            ],
            "set task status",
        )?;
        if updated == 1 {
            return Ok(());
        }
        let mut statement = self
            .conn
            .prepare_cached("SELECT status FROM tasks WHERE id = ?")
            .lite("get task")?;
        let mut rows = statement.query([id]).lite("get task")?;
        match rows.next().lite("get task")? {
            None => Err(StoreError::NotFound(format!("task {id}"))),
            Some(row) => {
                let status: String = row.get(0).lite("get task")?;
                Err(StoreError::Conflict(format!(
                    "task {id} already finished as {status}"
                )))
            }
        }
    }

    fn complete_finished_tasks(
        &mut self,
        ids: &[&str],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut completed = Vec::new();
        for batch in sized(ids) {
            // `+status`: look the tasks up by id (see Tx::complete_finished_tasks).
            let sql = format!(
                "UPDATE tasks SET status = 'complete', error_step = NULL, updated_at = ?,
                                  finished_at = ?
                 WHERE id IN ({}) AND +status IN ('pending', 'in_progress')
                   AND NOT EXISTS (SELECT 1 FROM steps s
                                   WHERE s.task_id = tasks.id AND s.status <> 'complete')
                 RETURNING id",
                marks(batch.len())
            );
            let mut params: Vec<&dyn ToSql> = vec![&now, &now];
            params.extend(batch.iter().map(|id| id as &dyn ToSql));
            let mut statement = self.conn.prepare_cached(&sql).lite("complete tasks")?;
            let rows = statement
                .query_map(&params[..], |row| row.get(0))
                .lite("complete tasks")?;
            for row in rows {
                completed.push(row.lite("complete tasks")?);
            }
        }
        Ok(completed)
    }

    fn insert_audit_events(&mut self, events: &[NewAuditRow]) -> Result<Vec<i64>, StoreError> {
        let mut seqs = Vec::with_capacity(events.len());
        for batch in sized(events) {
            let sql = format!(
                "INSERT INTO audit_events (id, ts, actor, action, resource, namespace, outcome,
                                           classification, contains_pii, correlation_id,
                                           details)
                 VALUES {}",
                tuples(batch.len(), 11)
            );
            let params: Vec<&dyn ToSql> = batch
                .iter()
                .flat_map(|e| {
                    [
                        &e.id as &dyn ToSql,
                        &e.ts,
                        &e.actor,
                        &e.action,
                        &e.resource,
                        &e.namespace,
                        &e.outcome,
                        &e.classification,
                        &e.contains_pii,
                        &e.correlation_id,
                        &e.details,
                    ]
                })
                .collect();
            let inserted = self.execute(&sql, &params, "insert audit events")?;
            if inserted != batch.len() {
                return Err(StoreError::Internal(
                    "inserted audit events were not all stored".to_owned(),
                ));
            }
            // One writer, and a multi-row INSERT gives its rows consecutive rowids in the
            // order of its VALUES: the last one gives them all.
            let last = self.conn.last_insert_rowid();
            seqs.extend(last - batch.len() as i64 + 1..=last);
        }
        Ok(seqs)
    }

    fn latest_workflow_version(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT version FROM workflows WHERE namespace = ? AND name = ?
                 ORDER BY created_at DESC, version DESC LIMIT 1",
            )
            .lite("get latest workflow version")?;
        let mut rows = statement
            .query([namespace, name])
            .lite("get latest workflow version")?;
        match rows.next().lite("get latest workflow version")? {
            Some(row) => Ok(Some(row.get(0).lite("get latest workflow version")?)),
            None => Ok(None),
        }
    }

    fn subject_keys(&mut self, blind_indexes: &[&str]) -> Result<Vec<DataKeyRow>, StoreError> {
        self.select_by_ids(
            concat!(
                "SELECT ",
                key_columns!(),
                " FROM data_keys WHERE id IN
                   (SELECT data_key_id FROM subjects WHERE blind_index IN ({}))"
            ),
            blind_indexes,
            "get subject keys",
            data_key_row,
        )
    }

    pub(crate) fn get_data_key(&mut self, id: &str) -> Result<Option<DataKeyRow>, StoreError> {
        Ok(self
            .select_by_ids(
                concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM data_keys WHERE id IN ({})"
                ),
                &[id],
                "get data key",
                data_key_row,
            )?
            .pop())
    }

    fn insert_data_key(&mut self, key: &DataKeyRow) -> Result<(), StoreError> {
        self.execute(
            concat!(
                "INSERT INTO data_keys (",
                key_columns!(),
                ") VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            &[
                &key.id,
                &key.kek_id,
                &key.wrapped,
                &key.subject,
                &key.created_at,
                &key.destroyed_at,
                &key.pad,
            ],
            "insert data key",
        )?;
        Ok(())
    }

    fn get_or_insert_subject(
        &mut self,
        blind_index: &str,
        data_key_id: &str,
        now: i64,
    ) -> Result<SubjectRow, StoreError> {
        self.execute(
            "INSERT INTO subjects (blind_index, data_key_id, created_at) VALUES (?, ?, ?)
             ON CONFLICT (blind_index) DO NOTHING",
            &[&blind_index, &data_key_id, &now],
            "insert subject",
        )?;
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT blind_index, data_key_id, created_at FROM subjects WHERE blind_index = ?",
            )
            .lite("get subject")?;
        statement
            .query_row([blind_index], |row| {
                Ok(SubjectRow {
                    blind_index: row.get(0)?,
                    data_key_id: row.get(1)?,
                    created_at: row.get(2)?,
                })
            })
            .lite("get subject")
    }

    fn insert_tasks(&mut self, tasks: &[TaskRow]) -> Result<(), StoreError> {
        for batch in sized(tasks) {
            let sql = format!(
                concat!("INSERT INTO tasks (", task_columns!(), ") VALUES {}"),
                tuples(batch.len(), 18)
            );
            let statuses: Vec<&str> = batch.iter().map(|t| t.status.as_str()).collect();
            let params: Vec<&dyn ToSql> = batch
                .iter()
                .zip(&statuses)
                .flat_map(|(t, status)| {
                    [
                        &t.id as &dyn ToSql,
                        &t.namespace,
                        &t.workflow_name,
                        &t.workflow_version,
                        status,
                        &t.context,
                        &t.data_key_id,
                        &t.subject,
                        &t.classification,
                        &t.contains_pii,
                        &t.created_by,
                        &t.principal,
                        &t.reason,
                        &t.tags,
                        &t.error_step,
                        &t.created_at,
                        &t.updated_at,
                        &t.finished_at,
                    ]
                })
                .collect();
            self.execute(&sql, &params, "insert task")?;
        }
        Ok(())
    }

    fn insert_steps(&mut self, steps: &[StepRow]) -> Result<(), StoreError> {
        for batch in sized(steps) {
            let sql = format!(
                concat!(
                    "INSERT INTO steps (",
                    step_columns!(),
                    ", waiting_on) VALUES {}"
                ),
                tuples(batch.len(), STEP_COLUMNS)
            );
            let derived = batch
                .iter()
                .map(|step| {
                    let depends_on = serde_json::to_string(&step.depends_on)
                        .map_err(|err| internal(err, "encode a step's dependencies"))?;
                    Ok((step.status.as_str(), depends_on, distinct(&step.depends_on)))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let params: Vec<&dyn ToSql> = batch
                .iter()
                .zip(&derived)
                .flat_map(|(step, (status, depends_on, waiting_on))| {
                    [
                        &step.task_id as &dyn ToSql,
                        &step.name,
                        status,
                        depends_on,
                        &step.attempts,
                        &step.attempt_base,
                        &step.next_run_at,
                        &step.lease_owner,
                        &step.lease_expires_at,
                        &step.result,
                        &step.error,
                        &step.started_at,
                        &step.finished_at,
                        waiting_on,
                    ]
                })
                .collect();
            self.execute(&sql, &params, "insert steps")?;
        }
        Ok(())
    }

    fn insert_subject_aliases(
        &mut self,
        aliases: &[(String, String)],
        now: i64,
    ) -> Result<(), StoreError> {
        for batch in sized(aliases) {
            let sql = format!(
                "INSERT INTO subject_aliases (alias, subject, created_at) VALUES {}
                 ON CONFLICT (alias, subject) DO NOTHING",
                tuples(batch.len(), 3)
            );
            let params: Vec<&dyn ToSql> = batch
                .iter()
                .flat_map(|(alias, subject)| [alias as &dyn ToSql, subject, &now])
                .collect();
            self.execute(&sql, &params, "insert subject aliases")?;
        }
        Ok(())
    }
}

/// Runs a future written over [`HotWrites`] with a [`LiteTx`] to its end, here and now:
/// its writes never wait, so it is ready when first polled. (If it ever were not, the
/// transaction fails rather than block.)
pub(crate) fn ready<T, E: From<StoreError>>(
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    futures_util::FutureExt::now_or_never(work).unwrap_or_else(|| {
        Err(StoreError::Internal("a SQLite hot-path write waited on something".into()).into())
    })
}

/// The writes of a task creation and of a step commit, on either path: [`Tx`] (sqlx, either backend) and
/// [`LiteTx`] (SQLite, synchronous: its futures are ready when first polled). The engine
/// writes its commit once, generic over this.
pub(crate) trait HotWrites {
    /// The SQLite hot path's transaction, if this is one: what may chain audit events as
    /// it writes them (see `audit::trail`).
    fn hot_path(&mut self) -> Option<LiteTx<'_>> {
        None
    }
    fn complete_steps(
        &mut self,
        done: &[Completion<'_>],
        now: i64,
    ) -> impl Future<Output = Result<Vec<(String, String, i64)>, StoreError>>;
    fn release_steps(
        &mut self,
        released: &[(&str, &str, i64)],
    ) -> impl Future<Output = Result<(), StoreError>>;
    fn take_released(
        &mut self,
        steps: &[(&str, &str)],
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> impl Future<Output = Result<Vec<ClaimedStep>, StoreError>>;
    /// A namespace's stored policy (JSON), as it is in this transaction.
    fn namespace_policy(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>>;
    #[allow(clippy::too_many_arguments)] // as Tx::fail_step
    fn fail_step(
        &mut self,
        task_id: &str,
        step: &str,
        worker: &str,
        attempt: i64,
        error_json: &str,
        retry_at: Option<i64>,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>>;
    fn cancel_pending_steps(
        &mut self,
        task_id: &str,
        now: i64,
    ) -> impl Future<Output = Result<u64, StoreError>>;
    fn insert_attempts(
        &mut self,
        attempts: &[AttemptRow],
    ) -> impl Future<Output = Result<(), StoreError>>;
    fn set_task_status(
        &mut self,
        id: &str,
        status: TaskStatus,
        error_step: Option<&str>,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>>;
    fn complete_finished_tasks(
        &mut self,
        ids: &[&str],
        now: i64,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>>;
    fn insert_audit_events(
        &mut self,
        events: &[NewAuditRow],
    ) -> impl Future<Output = Result<Vec<i64>, StoreError>>;
    // A task creation's reads and writes.
    fn latest_workflow_version(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>>;
    fn subject_keys(
        &mut self,
        blind_indexes: &[&str],
    ) -> impl Future<Output = Result<Vec<DataKeyRow>, StoreError>>;
    fn get_data_key(
        &mut self,
        id: &str,
    ) -> impl Future<Output = Result<Option<DataKeyRow>, StoreError>>;
    fn insert_data_key(&mut self, key: &DataKeyRow)
    -> impl Future<Output = Result<(), StoreError>>;
    fn get_or_insert_subject(
        &mut self,
        blind_index: &str,
        data_key_id: &str,
        now: i64,
    ) -> impl Future<Output = Result<SubjectRow, StoreError>>;
    fn insert_tasks(&mut self, tasks: &[TaskRow]) -> impl Future<Output = Result<(), StoreError>>;
    fn insert_steps(&mut self, steps: &[StepRow]) -> impl Future<Output = Result<(), StoreError>>;
    fn insert_subject_aliases(
        &mut self,
        aliases: &[(String, String)],
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>>;
}

/// Delegates each write to its `Tx` method of the same name.
macro_rules! delegate {
    ($ty:ty, $call:ident $(, $extra:item)*) => {
        impl HotWrites for $ty {
            $($extra)*
            async fn complete_steps(
                &mut self,
                done: &[Completion<'_>],
                now: i64,
            ) -> Result<Vec<(String, String, i64)>, StoreError> {
                $call!(self.complete_steps(done, now))
            }
            async fn release_steps(
                &mut self,
                released: &[(&str, &str, i64)],
            ) -> Result<(), StoreError> {
                $call!(self.release_steps(released))
            }
            async fn take_released(
                &mut self,
                steps: &[(&str, &str)],
                worker: &str,
                now: i64,
                lease_ms: i64,
            ) -> Result<Vec<ClaimedStep>, StoreError> {
                $call!(self.take_released(steps, worker, now, lease_ms))
            }
            async fn namespace_policy(&mut self, name: &str) -> Result<Option<String>, StoreError> {
                $call!(self.namespace_policy(name))
            }
            async fn fail_step(
                &mut self,
                task_id: &str,
                step: &str,
                worker: &str,
                attempt: i64,
                error_json: &str,
                retry_at: Option<i64>,
                now: i64,
            ) -> Result<(), StoreError> {
                $call!(self.fail_step(task_id, step, worker, attempt, error_json, retry_at, now))
            }
            async fn cancel_pending_steps(
                &mut self,
                task_id: &str,
                now: i64,
            ) -> Result<u64, StoreError> {
                $call!(self.cancel_pending_steps(task_id, now))
            }
            async fn insert_attempts(&mut self, attempts: &[AttemptRow]) -> Result<(), StoreError> {
                $call!(self.insert_attempts(attempts))
            }
            async fn set_task_status(
                &mut self,
                id: &str,
                status: TaskStatus,
                error_step: Option<&str>,
                now: i64,
            ) -> Result<(), StoreError> {
                $call!(self.set_task_status(id, status, error_step, now))
            }
            async fn complete_finished_tasks(
                &mut self,
                ids: &[&str],
                now: i64,
            ) -> Result<Vec<String>, StoreError> {
                $call!(self.complete_finished_tasks(ids, now))
            }
            async fn insert_audit_events(
                &mut self,
                events: &[NewAuditRow],
            ) -> Result<Vec<i64>, StoreError> {
                $call!(self.insert_audit_events(events))
            }
            async fn latest_workflow_version(
                &mut self,
                namespace: &str,
                name: &str,
            ) -> Result<Option<String>, StoreError> {
                $call!(self.latest_workflow_version(namespace, name))
            }
            async fn subject_keys(
                &mut self,
                blind_indexes: &[&str],
            ) -> Result<Vec<DataKeyRow>, StoreError> {
                $call!(self.subject_keys(blind_indexes))
            }
            async fn get_data_key(&mut self, id: &str) -> Result<Option<DataKeyRow>, StoreError> {
                $call!(self.get_data_key(id))
            }
            async fn insert_data_key(&mut self, key: &DataKeyRow) -> Result<(), StoreError> {
                $call!(self.insert_data_key(key))
            }
            async fn get_or_insert_subject(
                &mut self,
                blind_index: &str,
                data_key_id: &str,
                now: i64,
            ) -> Result<SubjectRow, StoreError> {
                $call!(self.get_or_insert_subject(blind_index, data_key_id, now))
            }
            async fn insert_tasks(&mut self, tasks: &[TaskRow]) -> Result<(), StoreError> {
                $call!(self.insert_tasks(tasks))
            }
            async fn insert_steps(&mut self, steps: &[StepRow]) -> Result<(), StoreError> {
                $call!(self.insert_steps(steps))
            }
            async fn insert_subject_aliases(
                &mut self,
                aliases: &[(String, String)],
                now: i64,
            ) -> Result<(), StoreError> {
                $call!(self.insert_subject_aliases(aliases, now))
            }
        }
    };
}

/// `Tx`'s methods are async: await them.
macro_rules! awaited {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        Tx::$method($self, $($arg),*).await
    };
}

/// `LiteTx`'s methods are synchronous: call them.
macro_rules! called {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        LiteTx::$method($self, $($arg),*)
    };
}

delegate!(Tx<'_>, awaited);
delegate!(
    LiteTx<'_>,
    called,
    fn hot_path(&mut self) -> Option<LiteTx<'_>> {
        Some(LiteTx { conn: self.conn })
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DatabaseUrl;

    /// Wait until the database file at `path` holds at least `len` bytes.
    async fn file_reaches(path: &std::path::Path, len: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::metadata(path).unwrap().len() < len {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file never received the committed pages"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn hot_commits_leave_checkpoints_to_the_checkpointer_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stepbox.db");
        let store = Store::open(&DatabaseUrl::Sqlite(path.clone()))
            .await
            .unwrap();
        let Pool::Sqlite(pools) = &store.pool else {
            unreachable!()
        };
        let hot_pragma = |name: &str| -> i64 {
            let hot = pools.hot.lock().unwrap();
            hot.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
                .unwrap()
        };
        assert_eq!(
            hot_pragma("wal_autocheckpoint"),
            0,
            "a hot commit never checkpoints"
        );
        // And its page cache stays small enough that a commit's walk over it (see
        // `HOT_CACHE_KIB`) does not grow with the database.
        assert_eq!(hot_pragma("cache_size"), -HOT_CACHE_KIB);

        // Commits one after the other, each adding a page of its own, so the
        // checkpointer runs while they are written.
        let rounds = 32;
        let commits = CHECKPOINT_EVERY * rounds;
        for n in 0..commits {
            store
                .write_now(|tx| {
                    if n == 0 {
                        tx.execute("CREATE TABLE filler (b BLOB)", &[], "create")?;
                    }
                    tx.execute("INSERT INTO filler VALUES (zeroblob(4000))", &[], "insert")?;
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
        }
        let written = 4096 * u64::from(commits);

        // Nothing else writes: only the checkpointer can have filled the file.
        file_reaches(&path, written).await;
        // And the WAL started over after checkpoints instead of growing with the data.
        // Each commit writes three frames, so a WAL that never started over would hold
        // three times `written`. The file keeps its high-water mark, which depends on how
        // far the checkpointer fell behind the writers: on a loaded machine (CI runs the
        // suite in parallel) it reached ~half of `written`, so the bound is `written`
        // itself, a third of what a WAL that never restarted would hold.
        let wal = std::fs::metadata(dir.path().join("stepbox.db-wal"))
            .unwrap()
            .len();
        assert!(
            wal < written,
            "the WAL holds {wal} bytes after {written} bytes were written"
        );
    }

    #[test]
    fn batches_are_cut_into_few_shapes_in_order() {
        for len in [0usize, 1, 2, 3, 7, 8, 255, 256, 257, 1000] {
            let rows: Vec<usize> = (0..len).collect();
            let chunks: Vec<&[usize]> = sized(&rows).collect();
            assert_eq!(chunks.concat(), rows, "{len} rows, in order, each once");
            for chunk in &chunks {
                assert!(chunk.len().is_power_of_two() && chunk.len() <= LITE_ROWS);
            }
            assert!(chunks.windows(2).all(|w| w[0].len() >= w[1].len()));
        }
        assert_eq!(
            sized(&[0u8; 7]).map(<[u8]>::len).collect::<Vec<_>>(),
            [4, 2, 1]
        );
    }
}
