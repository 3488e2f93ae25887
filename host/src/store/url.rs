//! Where the data lives: a SQLite file or a PostgreSQL URL, parsed once at the edge.
//! Printing one (`Display` or `Debug`) never shows a password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::StoreError;

/// The SQLite file a data directory holds when no URL is given.
pub const DEFAULT_SQLITE_FILE: &str = "stepbox.db";

/// What a printed URL shows instead of a password.
const HIDDEN: &str = "***";

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite database file (created, with its directories, if absent).
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` connection URL, credentials included.
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, a plain path ending in `.db`, or
    /// `postgres://…` / `postgresql://…`. The error never repeats the input, which may hold
    /// a password.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        let unsupported = || {
            StoreError::Internal(
                "unsupported database URL: expected sqlite://PATH, PATH.db or postgres://…"
                    .to_owned(),
            )
        };
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            // An in-memory database would be a different, empty one per pooled connection.
            if path.is_empty() || path.starts_with(":memory:") || path.contains('?') {
                return Err(unsupported());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            url::Url::parse(text).map_err(|_| {
                StoreError::Internal("malformed PostgreSQL URL (not shown)".to_owned())
            })?;
            return Ok(Self::Postgres(text.to_owned()));
        }
        if text.ends_with(".db") && !text.contains("://") {
            return Ok(Self::Sqlite(PathBuf::from(text)));
        }
        Err(unsupported())
    }

    /// The default SQLite database inside a data directory.
    pub fn in_data_dir(dir: &Path) -> Self {
        Self::Sqlite(dir.join(DEFAULT_SQLITE_FILE))
    }
}

impl FromStr for DatabaseUrl {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        Self::parse(text)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_postgres(url)),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The URL with its password (in the authority or as a `password=` query parameter)
/// replaced. A URL that does not parse is not printed at all.
fn redact_postgres(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return "postgres://(unprintable URL)".to_owned();
    };
    if url.password().is_some() && url.set_password(Some(HIDDEN)).is_err() {
        return "postgres://(unprintable URL)".to_owned();
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key.eq_ignore_ascii_case("password") {
                    HIDDEN.to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}
