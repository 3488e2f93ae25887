//! The two backends behind one face: connecting, migrating, and the transaction type.
//!
//! Every query is written once. Both backends accept `$1`-style placeholders (SQLite reads
//! `$NNN` as parameter NNN), timestamps are integers and JSON is text on both, so the same
//! SQL and the same Rust run on either; [`with_conn!`] expands one body into one `match` arm
//! per backend so each is type-checked against its own driver. Only what genuinely differs
//! (claiming with `SKIP LOCKED`, the audit barrier, JSON functions) is written twice.

use std::marker::PhantomData;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite, Transaction};

use super::error::{Context, internal};
use super::{Backend, Store, StoreError, StoreOptions};

/// How long a SQLite connection waits for the single write lock before giving up with
/// `Unavailable`. Writers queue rather than fail; five seconds is far beyond any one
/// transaction of ours, so hitting it means the database is wedged, not busy.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows sqlx's SQLite worker may hand over before the caller takes them: more than any
/// batched statement of ours returns ([`BATCH_ROWS`]), so a batch flows without stalls.
const SQLITE_ROW_BUFFER: usize = 1024;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// A connection pool for one backend; cloning shares it.
#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePools),
    Postgres(PgPool),
}

/// SQLite's connections: one writer and a pool of readers. SQLite runs one writer at a
/// time anyway; giving writes a connection of their own keeps its page cache warm (a
/// connection drops its cache whenever another one wrote), and leaves the readers to
/// reads.
#[derive(Clone)]
pub(crate) struct SqlitePools {
    pub(crate) writer: SqlitePool,
    pub(crate) readers: SqlitePool,
    /// The hot write path's connection (see `lite`).
    pub(crate) hot: std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>,
    /// Checkpoints the WAL for the hot path, on a thread of its own (see `lite`).
    pub(crate) checkpointer: std::sync::Arc<super::lite::Checkpointer>,
    /// Connections for reads on the caller's thread (see `Store::read_now`).
    pub(crate) lite_readers: std::sync::Arc<super::lite::LiteReaders>,
}

/// An open transaction on one backend.
pub(crate) enum TxInner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs one body against a transaction's connection, whichever the backend:
/// `with_conn!(tx, |conn| sqlx::query(SQL).bind(x).execute(conn).await)`.
macro_rules! with_conn {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match &mut $tx.inner {
            $crate::store::backend::TxInner::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::store::backend::TxInner::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

/// Runs one body against a pool, whichever the backend (for single autocommit statements).
macro_rules! with_pool {
    ($pool:expr, |$conn:ident| $body:expr) => {
        match $pool {
            $crate::store::backend::Pool::Sqlite(pools) => {
                let $conn = &pools.writer;
                $body
            }
            $crate::store::backend::Pool::Postgres($conn) => $body,
        }
    };
}

pub(crate) use {with_conn, with_pool};

/// Most rows one batched statement carries. The widest batched row binds 14 parameters,
/// so a batch stays far inside SQLite's (32,766) and PostgreSQL's (65,535) limits.
pub(crate) const BATCH_ROWS: usize = 500;

/// A database transaction. Every write happens inside one; dropping it without
/// [`Tx::commit`] rolls it back.
pub struct Tx<'a> {
    pub(crate) inner: TxInner,
    /// This process's SQLite write turn, held until the transaction ends (declared after
    /// `inner`, so it is released only after the transaction is).
    _turn: Option<WriteTurn>,
    _store: PhantomData<&'a Store>,
}

/// The right to write to a SQLite database in this process, one transaction at a time.
pub(crate) type WriteTurn = tokio::sync::OwnedMutexGuard<()>;

impl Tx<'_> {
    pub(crate) fn new(inner: TxInner, turn: Option<WriteTurn>) -> Self {
        Self {
            inner,
            _turn: turn,
            _store: PhantomData,
        }
    }

    /// Placeholders for `count` parameters numbered from `first`: the inside of an
    /// `IN (…)` list.
    ///
    /// On SQLite they are plain `?`, bound in the order they appear in the statement's
    /// text: a statement built with these must use them for every parameter (sqlx counts
    /// `?`s apart from `$N`s), each appearing once, in parameter order. (`$N` would be
    /// simpler, but SQLite looks a named parameter up by a linear scan, so binding a
    /// statement of many `$N`s costs time quadratic in their number.)
    pub(crate) fn param_list(&self, first: usize, count: usize) -> String {
        match self.inner {
            TxInner::Sqlite(_) => vec!["?"; count].join(", "),
            TxInner::Postgres(_) => (first..first + count)
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The rows `template` selects for `ids`, in chunks of [`BATCH_ROWS`]: `template` is a
    /// query whose one `{}` is the inside of an `IN (…)` list (its only parameters).
    pub(crate) async fn fetch_by_ids<T>(
        &mut self,
        template: &str,
        ids: &[&str],
        what: &'static str,
    ) -> Result<Vec<T>, StoreError>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let mut found = Vec::with_capacity(ids.len());
        for batch in ids.chunks(BATCH_ROWS) {
            let sql = template.replacen("{}", &self.param_list(1, batch.len()), 1);
            let rows: Vec<T> = with_conn!(self, |conn| {
                let mut query = sqlx::query_as(&sql);
                for id in batch {
                    query = query.bind(*id);
                }
                query.fetch_all(conn).await
            })
            .ctx(what)?;
            found.extend(rows);
        }
        Ok(found)
    }

    /// `(…), (…), …`: `rows` tuples of `width` placeholders numbered from `first`, for a
    /// multi-row `VALUES`; see [`Tx::param_list`].
    pub(crate) fn row_list(&self, first: usize, rows: usize, width: usize) -> String {
        (0..rows)
            .map(|row| format!("({})", self.param_list(first + row * width, width)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Which backend this transaction runs on.
    pub fn backend(&self) -> Backend {
        match self.inner {
            TxInner::Sqlite(_) => Backend::Sqlite,
            TxInner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Makes every write of this transaction durable.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Sqlite(tx) => tx.commit().await,
            TxInner::Postgres(tx) => tx.commit().await,
        }
        .ctx("commit")
    }

    /// Discards every write of this transaction.
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Sqlite(tx) => tx.rollback().await,
            TxInner::Postgres(tx) => tx.rollback().await,
        }
        .ctx("rollback")
    }
}

/// Opens (creating if absent) a SQLite file and brings its schema up to date.
pub(crate) async fn open_sqlite(
    path: &Path,
    options: &StoreOptions,
    write_turns: std::sync::Arc<tokio::sync::Mutex<()>>,
) -> Result<Pool, StoreError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|err| {
            StoreError::Unavailable(format!("create the database directory: {}", err.kind()))
        })?;
    }
    let connect = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // WAL: readers never block the writer nor each other.
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL is durable across process crashes in WAL mode; only an OS crash or power
        // loss can drop the last commits, never corrupt the file.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        // Crypto-shredding: content a write frees (a destroyed key's wrapped bytes) is
        // zeroed in the pages being written anyway, at no extra I/O. See `Store::purge_erased`.
        .pragma("secure_delete", "FAST")
        // A working set of pages in memory (64 MiB per connection, allocated as used): the
        // default 2 MiB made the writer re-read index pages it had just written.
        .pragma("cache_size", "-65536")
        // Statement journals (kept while a multi-row statement runs inside a transaction)
        // in memory rather than in temporary files.
        .pragma("temp_store", "MEMORY")
        // Checkpoints run on a thread of their own (`lite::Checkpointer`), never in a
        // commit.
        .pragma("wal_autocheckpoint", "0")
        // sqlx's worker thread hands rows over one by one through a channel of this many;
        // with its default of 50 a claim or commit returning a batch of rows ping-ponged
        // between the threads once it filled.
        .row_buffer_size(SQLITE_ROW_BUFFER);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect.clone())
        .await
        .ctx("open the SQLite database")?;
    migrate(&SQLITE_MIGRATIONS, &writer).await?;
    let readers = SqlitePoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .ctx("open the SQLite database")?;
    let hot = super::lite::open_connection(path)?;
    let checkpointer = super::lite::Checkpointer::start(path, write_turns)?;
    Ok(Pool::Sqlite(SqlitePools {
        writer,
        readers,
        hot: std::sync::Arc::new(std::sync::Mutex::new(hot)),
        checkpointer: std::sync::Arc::new(checkpointer),
        lite_readers: std::sync::Arc::new(super::lite::LiteReaders::new(path)),
    }))
}

/// Connects to PostgreSQL and brings its schema up to date.
pub(crate) async fn open_postgres(url: &str, options: &StoreOptions) -> Result<Pool, StoreError> {
    let connect = PgConnectOptions::from_str(url)
        .map_err(|err| internal(err, "parse the PostgreSQL URL"))?
        .application_name("stepbox");
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .ctx("connect to PostgreSQL")?;
    migrate(&POSTGRES_MIGRATIONS, &pool).await?;
    Ok(Pool::Postgres(pool))
}

/// Applies the migrations not yet recorded in `_sqlx_migrations`. On PostgreSQL sqlx holds
/// an advisory lock meanwhile, so processes starting together migrate once.
async fn migrate<'c, A>(migrator: &Migrator, pool: A) -> Result<(), StoreError>
where
    A: sqlx::Acquire<'c>,
    <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
{
    migrator.run(pool).await.map_err(|err| match err {
        MigrateError::Execute(err) | MigrateError::ExecuteMigration(err, _) => {
            super::error::classify(err, "migrate the database")
        }
        MigrateError::VersionMissing(_) => StoreError::Internal(
            "the database schema is newer than this stepbox; upgrade stepbox".to_owned(),
        ),
        MigrateError::VersionMismatch(_) => StoreError::Internal(
            "an applied migration differs from this stepbox's copy; refusing to start".to_owned(),
        ),
        other => internal(other, "migrate the database"),
    })
}
