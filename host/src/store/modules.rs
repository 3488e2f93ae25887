//! Modules: uploaded WASM components, one per `namespace/name@version`, immutable once
//! stored; each keeps the SHA-256 digest of its bytes.

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
    /// Hex SHA-256 of `bytes`.
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

/// A module without its bytes: what listings show.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ModuleInfo {
    /// Hex SHA-256 of the component.
    pub digest: String,
    /// The owning namespace.
    pub namespace: String,
    /// The module's name within the namespace.
    pub name: String,
    /// Its semver version.
    pub version: String,
    /// The component's size in bytes.
    pub size: i64,
    /// Who uploaded it.
    pub uploader: String,
    /// Whether the upload carried a signature a trusted key verified.
    pub signed: bool,
    /// When it was uploaded, unix ms.
    pub created_at: i64,
}

impl From<&ModuleRow> for ModuleInfo {
    fn from(module: &ModuleRow) -> Self {
        Self {
            digest: module.digest.clone(),
            namespace: module.namespace.clone(),
            name: module.name.clone(),
            version: module.version.clone(),
            size: module.size,
            uploader: module.uploader.clone(),
            signed: module.signature.is_some(),
            created_at: module.created_at,
        }
    }
}

impl Tx<'_> {
    /// Stores a module. `Conflict` if its `namespace/name@version` is taken:
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

    /// Every module of `namespace` without its bytes, by name then upload time.
    pub async fn list_modules(&mut self, namespace: &str) -> Result<Vec<ModuleInfo>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(
                "SELECT digest, namespace, name, version, size, uploader,
                        signature IS NOT NULL AS signed, created_at
                 FROM modules WHERE namespace = $1 ORDER BY name, created_at",
            )
            .bind(namespace)
            .fetch_all(conn)
            .await
        })
        .ctx("list modules")
    }
}
