//! Durable storage: namespaces, modules, workflows, tasks, step runs and their attempts,
//! wrapped data keys and the subject blind index, sealed secrets, and the audit log, on
//! SQLite (one file, the embedded default) or PostgreSQL (several hosts sharing the work).
//!
//! One face, [`Store`] and its transaction [`Tx`], with one file per resource; each query is
//! written once and runs on both backends (see `backend`). Migrations live in
//! `host/migrations/{sqlite,postgres}`, mirrored file for file, and run on [`Store::open`].
//!
//! This module stores and fetches bytes and rows; it must never decide policy, never see
//! plaintext task data or secret values (contexts, results, attempt records and secrets
//! arrive as ciphertext), never compute the audit chain, and never let SQL text or a
//! credential reach its caller. Time is always passed in (`now`, unix milliseconds) so
//! callers can inject a clock.

mod audit;
mod backend;
mod claim;
mod control;
mod error;
mod keys;
mod lite;
mod modules;
mod namespaces;
mod report;
mod retention;
mod secrets;
mod steps;
mod subjects;
mod tasks;
mod url;
mod workflows;

#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use audit::{AuditFilter, AuditRow, CheckpointRow, NewAuditRow};
pub use backend::{SQLITE_BUSY_TIMEOUT, Tx};
pub use claim::{ClaimedStep, Completion};
pub use error::StoreError;
pub use keys::{DataKeyRow, SubjectRow};
pub(crate) use lite::{ClaimReads, HotWrites, LiteTx, ready};
pub use modules::{ModuleInfo, ModuleRow};
pub use namespaces::NamespaceRow;
pub use report::{Coverage, TaskCount};
pub use retention::{AuditCutoff, DueTask};
pub use secrets::SecretRow;
pub use steps::{AttemptRow, StepRow, StepStatus};
pub use tasks::{TaskCursor, TaskFilter, TaskRow, TaskStatus};
pub use url::{DEFAULT_SQLITE_FILE, DatabaseUrl};
pub use workflows::WorkflowRow;

use backend::{Pool, TxInner, with_pool};
use error::Context;

/// How long to wait for a pooled connection (and, at open, for the database to answer)
/// before reporting `Unavailable`: long enough to ride out a PostgreSQL restart, short
/// enough that a wrong URL fails start-up visibly.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections per pool. Workers hold one only while a transaction runs; sixteen covers a
/// host's workers plus the API without crowding PostgreSQL's default of 100 connections
/// when several hosts share one server.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// Which database a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Tuning for [`Store::open_with`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a connection before `Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        }
    }
}

/// The storage handle: a connection pool for either backend. Cloning is cheap and shares
/// the pool.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    url: Arc<DatabaseUrl>,
    /// SQLite has one writer at a time. Left to itself, SQLite makes waiting writers poll
    /// with growing sleeps (its busy handler): unfair, and slow under load. So this
    /// process's writers take turns here first, first come first served, and only
    /// writers of other processes meet the busy handler.
    write_turns: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens the database with default options: creates a SQLite file (and its
    /// directories) if absent, connects to PostgreSQL, and applies pending migrations.
    pub async fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        Self::open_with(url, &StoreOptions::default()).await
    }

    /// [`Store::open`] with explicit pool options.
    pub async fn open_with(url: &DatabaseUrl, options: &StoreOptions) -> Result<Store, StoreError> {
        let write_turns = Arc::new(tokio::sync::Mutex::new(()));
        let pool = match url {
            DatabaseUrl::Sqlite(path) => {
                backend::open_sqlite(path, options, write_turns.clone()).await?
            }
            DatabaseUrl::Postgres(text) => backend::open_postgres(text, options).await?,
        };
        tracing::debug!(database = %url, "store opened");
        Ok(Store {
            pool,
            url: Arc::new(url.clone()),
            write_turns,
        })
    }

    /// Which backend this store runs on.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Where the data lives (prints without a password).
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Starts a read-write transaction.
    ///
    /// On SQLite this is `BEGIN IMMEDIATE`: it takes the database's single write lock at
    /// once (waiting up to [`SQLITE_BUSY_TIMEOUT`]). A plain `BEGIN` would read first and
    /// try to upgrade to a writer later, and SQLite fails that upgrade at once
    /// (`SQLITE_BUSY_SNAPSHOT`, no waiting) whenever another writer committed in between;
    /// taking the lock up front makes writers queue instead of fail, and makes
    /// read-then-write sequences such as claiming a step atomic.
    pub async fn begin(&self) -> Result<Tx<'_>, StoreError> {
        let turn = self.write_turn().await?;
        let inner = match &self.pool {
            Pool::Sqlite(pools) => TxInner::Sqlite(
                pools
                    .writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .ctx("begin")?,
            ),
            Pool::Postgres(pool) => TxInner::Postgres(pool.begin().await.ctx("begin")?),
        };
        Ok(Tx::new(inner, turn))
    }

    /// On SQLite, wait for this process's turn to write (see `write_turns`); as long as
    /// SQLite's own busy timeout at most, then `Unavailable`.
    async fn write_turn(&self) -> Result<Option<backend::WriteTurn>, StoreError> {
        if let Pool::Postgres(_) = self.pool {
            return Ok(None);
        }
        tokio::time::timeout(SQLITE_BUSY_TIMEOUT, self.write_turns.clone().lock_owned())
            .await
            .map(Some)
            .map_err(|_| StoreError::Unavailable("begin: the database is busy or down".to_owned()))
    }

    /// Starts a transaction for reading only. On SQLite it does not take the write lock,
    /// so readers run alongside the writer; a write through it fails on PostgreSQL
    /// (`READ ONLY`) and may fail on SQLite.
    pub async fn begin_read(&self) -> Result<Tx<'_>, StoreError> {
        let inner = match &self.pool {
            Pool::Sqlite(pools) => TxInner::Sqlite(pools.readers.begin().await.ctx("begin")?),
            Pool::Postgres(pool) => {
                TxInner::Postgres(pool.begin_with("BEGIN READ ONLY").await.ctx("begin")?)
            }
        };
        Ok(Tx::new(inner, None))
    }

    /// Claims one ready step for `worker` in a transaction of its own; see
    /// [`Tx::claim_ready_step`] for what "ready" means. Use the `Tx` form to record the
    /// claim's audit event in the same transaction.
    pub async fn claim_ready_step(
        &self,
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedStep>, StoreError> {
        let mut tx = self.begin().await?;
        let claimed = tx.claim_ready_step(worker, now, lease_ms).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Extends `worker`'s lease on a step to `now + lease_ms`. `Conflict` if the step is
    /// no longer in progress under `worker` (it finished, or its lease expired and another
    /// worker reclaimed it): the caller must stop working on it. A lease that expired but
    /// was not yet reclaimed is still ours, so renewing it succeeds.
    pub async fn renew_lease(
        &self,
        task_id: &str,
        step: &str,
        worker: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        let turn = self.write_turn().await?;
        let updated = with_pool!(&self.pool, |pool| {
            sqlx::query(
                "UPDATE steps SET lease_expires_at = $4
                 WHERE task_id = $1 AND name = $2 AND lease_owner = $3 AND status = 'in_progress'",
            )
            .bind(task_id)
            .bind(step)
            .bind(worker)
            .bind(now.saturating_add(lease_ms))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("renew lease")?;
        drop(turn);
        if updated == 1 {
            return Ok(());
        }
        let mut tx = self.begin_read().await?;
        tx.step_exists(task_id, step).await?;
        Err(StoreError::Conflict(format!(
            "step {task_id}/{step} is no longer leased to {worker}"
        )))
    }

    /// Removes what erased data left behind in the database files after data keys were
    /// destroyed. SQLite: checkpoints the WAL and truncates it, so no older page image
    /// holding a wrapped key survives in `-wal` (the main file's pages were zeroed by
    /// `secure_delete`). PostgreSQL: `VACUUM FULL data_keys` rewrites the (small) key table
    /// without dead row versions. Neither reaches backups or PostgreSQL's WAL archive;
    /// that is the operator's retention. `Unavailable` if readers kept SQLite from
    /// finishing: retry later.
    pub async fn purge_erased(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(pools) => {
                // A few tries: the checkpointer's own pass (`lite::Checkpointer`) takes
                // a few milliseconds, and finds this one busy as this one finds it.
                let mut tries = 0;
                loop {
                    let (busy,): (i64,) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                        .fetch_one(&pools.writer)
                        .await
                        .ctx("checkpoint the WAL")?;
                    if busy == 0 {
                        break;
                    }
                    tries += 1;
                    if tries == 5 {
                        return Err(StoreError::Unavailable(
                            "checkpoint the WAL: readers are active; retry".to_owned(),
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            Pool::Postgres(pool) => {
                sqlx::query("VACUUM FULL data_keys")
                    .execute(pool)
                    .await
                    .ctx("vacuum data keys")?;
            }
        }
        Ok(())
    }

    /// Closes every pooled connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pools) => {
                pools.writer.close().await;
                pools.readers.close().await;
            }
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}
