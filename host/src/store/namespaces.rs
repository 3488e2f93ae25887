//! Namespaces: a team's boundary and its policy (JSON, parsed by `policy`, stored verbatim).

use super::backend::with_conn;
use super::error::Context;
use super::{StoreError, Tx};

/// A namespace as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct NamespaceRow {
    /// The namespace's name (`payments`).
    pub name: String,
    /// Its policy document, JSON text.
    pub policy: String,
    /// When it was first created, unix ms.
    pub created_at: i64,
}

impl Tx<'_> {
    /// Creates a namespace or replaces its policy; `created_at` is kept from the first
    /// creation.
    pub async fn upsert_namespace(
        &mut self,
        name: &str,
        policy_json: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(
                "INSERT INTO namespaces (name, policy, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET policy = excluded.policy",
            )
            .bind(name)
            .bind(policy_json)
            .bind(now)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("upsert namespace")?;
        Ok(())
    }

    /// The namespace called `name`, if any.
    pub async fn get_namespace(&mut self, name: &str) -> Result<Option<NamespaceRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as("SELECT name, policy, created_at FROM namespaces WHERE name = $1")
                .bind(name)
                .fetch_optional(conn)
                .await
        })
        .ctx("get namespace")
    }

    /// Every namespace, by name.
    pub async fn list_namespaces(&mut self) -> Result<Vec<NamespaceRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as("SELECT name, policy, created_at FROM namespaces ORDER BY name")
                .fetch_all(conn)
                .await
        })
        .ctx("list namespaces")
    }
}
