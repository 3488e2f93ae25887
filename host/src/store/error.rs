//! Storage errors, sorted by what the caller can do about them, and the one place where
//! sqlx errors are turned into them. Database messages are logged here and never returned:
//! they can hold SQL fragments, and a connection error can hold a URL.

use sqlx::error::ErrorKind;

/// What went wrong in storage, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for (or a row it refers to) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The write lost: a unique key is taken, a concurrent writer won, or a lease is stale.
    /// Re-read and decide again; retrying the same write blindly will fail the same way.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached or is overloaded (connect, I/O, pool timeout,
    /// busy). Retryable after a pause.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else. The message is ours: never SQL text, never a URL with credentials.
    #[error("storage error: {0}")]
    Internal(String),
}

/// Attaches what we were doing to a sqlx result and sorts its error.
pub(crate) trait Context<T> {
    /// Maps the error with [`classify`], naming the operation `what`.
    fn ctx(self, what: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn ctx(self, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|err| classify(err, what))
    }
}

/// Sorts a sqlx error by what the caller can do. `what` names the operation ("insert
/// module") and is the only part of the message that reaches the caller.
pub(crate) fn classify(err: sqlx::Error, what: &'static str) -> StoreError {
    match &err {
        sqlx::Error::RowNotFound => StoreError::NotFound(what.to_owned()),
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable(format!("{what}: timed out waiting for a connection"))
        }
        sqlx::Error::PoolClosed => {
            StoreError::Unavailable(format!("{what}: the connection pool is closed"))
        }
        sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable(format!("{what}: the database connection crashed"))
        }
        sqlx::Error::Io(io) => StoreError::Unavailable(format!("{what}: {}", io.kind())),
        sqlx::Error::Tls(_) => StoreError::Unavailable(format!("{what}: TLS failed")),
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation => StoreError::Conflict(format!("{what}: already exists")),
            ErrorKind::ForeignKeyViolation => {
                StoreError::NotFound(format!("{what}: a row it refers to does not exist"))
            }
            _ => match db.code().as_deref().map(code_class) {
                Some(CodeClass::LostRace) => StoreError::Conflict(format!(
                    "{what}: lost a race with a concurrent transaction"
                )),
                Some(CodeClass::Unavailable) => {
                    StoreError::Unavailable(format!("{what}: the database is busy or down"))
                }
                _ => internal(err, what),
            },
        },
        _ => internal(err, what),
    }
}

/// Logs the detail (for operators) and returns a fixed message (for callers).
pub(crate) fn internal(err: impl std::fmt::Display, what: &'static str) -> StoreError {
    tracing::error!(operation = what, error = %err, "storage error");
    StoreError::Internal(format!("{what} failed"))
}

enum CodeClass {
    LostRace,
    Unavailable,
    Other,
}

/// Sorts a database error code. SQLite codes are numbers (extended result codes),
/// PostgreSQL codes are five-character SQLSTATEs, so one function serves both.
fn code_class(code: &str) -> CodeClass {
    if let Ok(extended) = code.parse::<i32>() {
        // SQLite: the primary code is the low byte of the extended one.
        return match (extended, extended & 0xff) {
            // SQLITE_BUSY_SNAPSHOT: a read snapshot went stale before the write.
            (517, _) => CodeClass::LostRace,
            // SQLITE_BUSY, SQLITE_LOCKED (after busy_timeout), SQLITE_IOERR, SQLITE_FULL,
            // SQLITE_CANTOPEN.
            (_, 5 | 6 | 10 | 13 | 14) => CodeClass::Unavailable,
            _ => CodeClass::Other,
        };
    }
    match code {
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => CodeClass::LostRace,
        // admin_shutdown, crash_shutdown, cannot_connect_now
        "57P01" | "57P02" | "57P03" => CodeClass::Unavailable,
        // connection exceptions, insufficient resources (too many connections, disk full)
        _ if code.starts_with("08") || code.starts_with("53") => CodeClass::Unavailable,
        _ => CodeClass::Other,
    }
}
