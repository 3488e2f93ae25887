//! Wrapped data keys and the subject blind index. Keys arrive wrapped by a key-encryption
//! key that is never stored here; destroying a key (crypto-shredding) overwrites its
//! wrapped bytes so nothing it encrypted can be read again.

use super::backend::with_conn;
use super::error::Context;
use super::{StoreError, Tx};

macro_rules! columns {
    () => {
        "id, kek_id, wrapped, subject, created_at, destroyed_at, pad"
    };
}
/// The column list, for the SQLite hot path's statements (`store::lite`).
pub(super) use columns as key_columns;

/// A data key as stored: wrapped, never in the clear.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DataKeyRow {
    /// The key's id, referenced by the rows it encrypts.
    pub id: String,
    /// Which key-encryption key wrapped it.
    pub kek_id: String,
    /// The wrapped key; empty once destroyed.
    pub wrapped: Vec<u8>,
    /// The blind index of the data subject this key belongs to, if any.
    pub subject: Option<String>,
    /// When it was created, unix ms.
    pub created_at: i64,
    /// When it was destroyed, unix ms.
    pub destroyed_at: Option<i64>,
    /// The id of the subject vault's pad that masks it, if it is a subject's key and its
    /// pad has an id (`None` for a subject's key: the pad is filed under `subject`).
    pub pad: Option<String>,
}

impl DataKeyRow {
    /// Under which key the subject vault files the pad that masks this key, if any.
    pub fn pad_key(&self) -> Option<&str> {
        self.subject.as_ref()?;
        self.pad.as_deref().or(self.subject.as_deref())
    }
}

impl std::fmt::Debug for DataKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyRow")
            .field("id", &self.id)
            .field("kek_id", &self.kek_id)
            .field("wrapped_len", &self.wrapped.len())
            .field("subject", &self.subject)
            .field("created_at", &self.created_at)
            .field("destroyed_at", &self.destroyed_at)
            .field("pad", &self.pad)
            .finish()
    }
}

/// A data subject's entry in the blind index: which key encrypts data about them.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SubjectRow {
    /// Keyed hash (HMAC) of the subject's identifier; never the identifier itself.
    pub blind_index: String,
    /// The subject's data key.
    pub data_key_id: String,
    /// When the subject was first seen, unix ms.
    pub created_at: i64,
}

impl Tx<'_> {
    /// Stores a wrapped data key. `Conflict` if the id is taken.
    pub async fn insert_data_key(&mut self, key: &DataKeyRow) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(concat!(
                "INSERT INTO data_keys (",
                columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(&key.id)
            .bind(&key.kek_id)
            .bind(&key.wrapped)
            .bind(&key.subject)
            .bind(key.created_at)
            .bind(key.destroyed_at)
            .bind(&key.pad)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("insert data key")?;
        Ok(())
    }

    /// The data key `id`, destroyed or not, if it exists.
    pub async fn get_data_key(&mut self, id: &str) -> Result<Option<DataKeyRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM data_keys WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(conn)
            .await
        })
        .ctx("get data key")
    }

    /// The data keys among `ids` that exist, in no particular order.
    pub async fn get_data_keys(&mut self, ids: &[&str]) -> Result<Vec<DataKeyRow>, StoreError> {
        self.fetch_by_ids(
            concat!("SELECT ", columns!(), " FROM data_keys WHERE id IN ({})"),
            ids,
            "get data keys",
        )
        .await
    }

    /// The data keys of the subjects among `blind_indexes` that have one, destroyed or
    /// not, in no particular order; each row's `subject` says whose it is.
    pub async fn subject_keys(
        &mut self,
        blind_indexes: &[&str],
    ) -> Result<Vec<DataKeyRow>, StoreError> {
        self.fetch_by_ids(
            concat!(
                "SELECT ",
                columns!(),
                " FROM data_keys WHERE id IN
                   (SELECT data_key_id FROM subjects WHERE blind_index IN ({}))"
            ),
            blind_indexes,
            "get subject keys",
        )
        .await
    }

    /// One page of the data keys that are not destroyed, by id, starting after `after_id`
    /// (`None` for the first page). Rotation walks every page and re-wraps each key.
    pub async fn list_data_keys(
        &mut self,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DataKeyRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM data_keys WHERE destroyed_at IS NULL AND id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after_id.unwrap_or(""))
            .bind(limit)
            .fetch_all(conn)
            .await
        })
        .ctx("list data keys")
    }

    /// Replaces a key's wrapping (after rotation to `kek_id`). `NotFound` if the key does
    /// not exist, `Conflict` if it was destroyed: a destroyed key stays destroyed.
    pub async fn update_wrapped(
        &mut self,
        id: &str,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<(), StoreError> {
        let updated = with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE data_keys SET kek_id = $2, wrapped = $3
                 WHERE id = $1 AND destroyed_at IS NULL",
            )
            .bind(id)
            .bind(kek_id)
            .bind(wrapped)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("re-wrap data key")?;
        if updated == 1 {
            return Ok(());
        }
        match self.get_data_key(id).await? {
            None => Err(StoreError::NotFound(format!("data key {id}"))),
            Some(_) => Err(StoreError::Conflict(format!("data key {id} is destroyed"))),
        }
    }

    /// Destroys a data key: its wrapped bytes are overwritten with nothing and
    /// `destroyed_at` set (kept from the first time if destroyed twice). Everything it
    /// encrypted becomes unreadable. `NotFound` if there is no such key. Call
    /// [`Store::purge_erased`](super::Store::purge_erased) afterwards to scrub old copies
    /// from the database files.
    pub async fn destroy_data_key(&mut self, id: &str, now: i64) -> Result<(), StoreError> {
        let updated = with_conn!(self, |conn| {
            sqlx::query(
                "UPDATE data_keys SET wrapped = $2, destroyed_at = COALESCE(destroyed_at, $3)
                 WHERE id = $1",
            )
            .bind(id)
            .bind(Vec::<u8>::new())
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("destroy data key")?;
        if updated == 0 {
            return Err(StoreError::NotFound(format!("data key {id}")));
        }
        Ok(())
    }

    /// Records which data key encrypts data about the subject `blind_index`. `Conflict`
    /// if the subject already has one (two writers raced: re-read with [`Tx::get_subject`]);
    /// `NotFound` if the key does not exist.
    pub async fn insert_subject(
        &mut self,
        blind_index: &str,
        data_key_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "INSERT INTO subjects (blind_index, data_key_id, created_at) VALUES ($1, $2, $3)",
            )
            .bind(blind_index)
            .bind(data_key_id)
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("insert subject")?;
        Ok(())
    }

    /// The subject's entry, creating it with `data_key_id` if absent. When two writers
    /// race, both get the winner's row; the loser compares `data_key_id` with its own and
    /// uses the winner's key. Unlike [`Tx::insert_subject`] this never fails the
    /// transaction (a unique violation would abort a PostgreSQL transaction).
    pub async fn get_or_insert_subject(
        &mut self,
        blind_index: &str,
        data_key_id: &str,
        now: i64,
    ) -> Result<SubjectRow, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "INSERT INTO subjects (blind_index, data_key_id, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (blind_index) DO NOTHING",
            )
            .bind(blind_index)
            .bind(data_key_id)
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("insert subject")?;
        self.get_subject(blind_index)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("subject {blind_index}")))
    }

    /// The subject `blind_index`'s entry, if any.
    pub async fn get_subject(
        &mut self,
        blind_index: &str,
    ) -> Result<Option<SubjectRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT blind_index, data_key_id, created_at FROM subjects WHERE blind_index = $1",
            )
            .bind(blind_index)
            .fetch_optional(conn)
            .await
        })
        .ctx("get subject")
    }
}
