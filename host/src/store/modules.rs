//! Modules: uploaded WASM components, stored by SHA-256 digest and immutable once stored.

use super::backend::with_conn;
use super::error::Context;
use super::{StoreError, Tx};

macro_rules! columns {
    () => {
        "digest, namespace, name, version, bytes, size, uploader, signature, created_at"
    };
}

/// A module as stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ModuleRow {
    /// Hex SHA-256 of `bytes`; the primary key, so identical bytes are stored once.
    pub digest: String,
    /// The owning namespace.
    pub namespace: String,
    /// The module's name within the namespace.
    pub name: String,
    /// Its semver version.
    pub version: String,
    /// The component's bytes.
    pub bytes: Vec<u8>,
    /// `bytes.len()`, kept so listings need not load the bytes.
    pub size: i64,
    /// Who uploaded it.
    pub uploader: String,
    /// An Ed25519 signature over the digest, if the upload was signed.
    pub signature: Option<Vec<u8>>,
    /// When it was uploaded, unix ms.
    pub created_at: i64,
}

impl std::fmt::Debug for ModuleRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes are large and unreadable; show their size instead.
        f.debug_struct("ModuleRow")
            .field("digest", &self.digest)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("size", &self.size)
            .field("uploader", &self.uploader)
            .field("signed", &self.signature.is_some())
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl Tx<'_> {
    /// Stores a module. `Conflict` if its digest or its `namespace/name@version` is taken:
    /// modules are immutable. `NotFound` if the namespace does not exist.
    pub async fn insert_module(&mut self, module: &ModuleRow) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "INSERT INTO modules (digest, namespace, name, version, bytes, size, uploader,
                                      signature, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&module.digest)
            .bind(&module.namespace)
            .bind(&module.name)
            .bind(&module.version)
            .bind(&module.bytes)
            .bind(module.size)
            .bind(&module.uploader)
            .bind(&module.signature)
            .bind(module.created_at)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("insert module")?;
        Ok(())
    }

    /// The module `namespace/name@version`, if any.
    pub async fn get_module(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleRow>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM modules WHERE namespace = $1 AND name = $2 AND version = $3"
        );
        with_conn!(self, |conn| {
            sqlx::query_as(SQL)
                .bind(namespace)
                .bind(name)
                .bind(version)
                .fetch_optional(conn)
                .await
        })
        .ctx("get module")
    }

    /// The module whose bytes hash to `digest`, if any.
    pub async fn get_module_by_digest(
        &mut self,
        digest: &str,
    ) -> Result<Option<ModuleRow>, StoreError> {
        const SQL: &str = concat!("SELECT ", columns!(), " FROM modules WHERE digest = $1");
        with_conn!(self, |conn| {
            sqlx::query_as(SQL).bind(digest).fetch_optional(conn).await
        })
        .ctx("get module by digest")
    }
}
