//! Secret values granted to a namespace's steps, sealed: this module stores and fetches
//! ciphertext and the id of the data key that sealed it, never a value in the clear.

use super::backend::{TxInner, with_conn};
use super::error::Context;
use super::{StoreError, Tx};

macro_rules! columns {
    () => {
        "namespace, name, data_key_id, value, created_by, created_at, updated_at"
    };
}

/// A secret as stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SecretRow {
    /// The namespace whose steps may be granted it.
    pub namespace: String,
    /// Its name (`NOTIFY_API_KEY`).
    pub name: String,
    /// The data key that sealed `value` (one per value).
    pub data_key_id: String,
    /// The value, ciphertext.
    pub value: Vec<u8>,
    /// Who first set it.
    pub created_by: String,
    /// When it was first set, unix ms.
    pub created_at: i64,
    /// When its value last changed, unix ms.
    pub updated_at: i64,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("data_key_id", &self.data_key_id)
            .field("value_len", &self.value.len())
            .field("created_by", &self.created_by)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

impl Tx<'_> {
    /// Stores a secret, replacing the value (and data key) of an existing one while
    /// keeping its `created_by` and `created_at`. Returns the data key id the replaced
    /// value was sealed under, for the caller to destroy. `NotFound` if the namespace or
    /// the data key does not exist; `Conflict` if another writer created the same secret
    /// concurrently (PostgreSQL; SQLite has one writer at a time).
    pub async fn put_secret(&mut self, secret: &SecretRow) -> Result<Option<String>, StoreError> {
        // PostgreSQL: lock the row, so a concurrent replacement waits and sees our key as
        // the one it replaces (and destroys), instead of both replacing the same old one.
        let select = match self.inner {
            TxInner::Sqlite(_) => {
                "SELECT data_key_id FROM secrets WHERE namespace = $1 AND name = $2"
            }
            TxInner::Postgres(_) => {
                "SELECT data_key_id FROM secrets WHERE namespace = $1 AND name = $2 FOR UPDATE"
            }
        };
        let previous: Option<String> = with_conn!(self, |conn| {
            sqlx::query_scalar(select)
                .bind(&secret.namespace)
                .bind(&secret.name)
                .fetch_optional(conn)
                .await
        })
        .ctx("get secret")?;
        match &previous {
            Some(_) => with_conn!(self, |conn| {
                sqlx::query(
                    "UPDATE secrets SET data_key_id = $3, value = $4, updated_at = $5
                     WHERE namespace = $1 AND name = $2",
                )
                .bind(&secret.namespace)
                .bind(&secret.name)
                .bind(&secret.data_key_id)
                .bind(&secret.value)
                .bind(secret.updated_at)
                .execute(conn)
                .await
                .map(|done| done.rows_affected())
            })
            .ctx("replace secret")?,
            None => with_conn!(self, |conn| {
                sqlx::query(concat!(
                    "INSERT INTO secrets (",
                    columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(&secret.namespace)
                .bind(&secret.name)
                .bind(&secret.data_key_id)
                .bind(&secret.value)
                .bind(&secret.created_by)
                .bind(secret.created_at)
                .bind(secret.updated_at)
                .execute(conn)
                .await
                .map(|done| done.rows_affected())
            })
            .ctx("insert secret")?,
        };
        Ok(previous)
    }

    /// The secret `namespace`/`name`, if any.
    pub async fn get_secret(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM secrets WHERE namespace = $1 AND name = $2"
            ))
            .bind(namespace)
            .bind(name)
            .fetch_optional(conn)
            .await
        })
        .ctx("get secret")
    }
}
