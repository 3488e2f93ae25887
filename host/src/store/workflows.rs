//! Workflow definitions: immutable per `namespace.name@version`.

use super::backend::with_conn;
use super::error::Context;
use super::{StoreError, Tx};

macro_rules! columns {
    () => {
        "namespace, name, version, definition, created_by, created_at"
    };
}

/// A workflow definition as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkflowRow {
    /// The owning namespace.
    pub namespace: String,
    /// The workflow's name within the namespace.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The validated definition, JSON text (parsed by `engine`, stored verbatim).
    pub definition: String,
    /// Who registered it.
    pub created_by: String,
    /// When it was registered, unix ms.
    pub created_at: i64,
}

impl Tx<'_> {
    /// Stores a workflow version. `Conflict` if that version exists (versions are
    /// immutable); `NotFound` if the namespace does not.
    pub async fn insert_workflow(&mut self, workflow: &WorkflowRow) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            sqlx::query(concat!(
                "INSERT INTO workflows (",
                columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6)"
            ))
            .bind(&workflow.namespace)
            .bind(&workflow.name)
            .bind(&workflow.version)
            .bind(&workflow.definition)
            .bind(&workflow.created_by)
            .bind(workflow.created_at)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
        })
        .ctx("insert workflow")?;
        Ok(())
    }

    /// The workflow `namespace.name@version`, if any.
    pub async fn get_workflow(
        &mut self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<WorkflowRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM workflows WHERE namespace = $1 AND name = $2 AND version = $3"
            ))
            .bind(namespace)
            .bind(name)
            .bind(version)
            .fetch_optional(conn)
            .await
        })
        .ctx("get workflow")
    }

    /// The most recently registered version of `namespace.name`, if any (ties broken by
    /// the version text).
    pub async fn latest_workflow(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<WorkflowRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM workflows WHERE namespace = $1 AND name = $2
                  ORDER BY created_at DESC, version DESC LIMIT 1"
            ))
            .bind(namespace)
            .bind(name)
            .fetch_optional(conn)
            .await
        })
        .ctx("get latest workflow")
    }

    /// The version [`Tx::latest_workflow`] would return, without its definition.
    pub async fn latest_workflow_version(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_scalar(
                "SELECT version FROM workflows WHERE namespace = $1 AND name = $2
                 ORDER BY created_at DESC, version DESC LIMIT 1",
            )
            .bind(namespace)
            .bind(name)
            .fetch_optional(conn)
            .await
        })
        .ctx("get latest workflow version")
    }

    /// Every workflow version in `namespace`, by name then registration time.
    pub async fn list_workflows(
        &mut self,
        namespace: &str,
    ) -> Result<Vec<WorkflowRow>, StoreError> {
        with_conn!(self, |conn| {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM workflows WHERE namespace = $1 ORDER BY name, created_at"
            ))
            .bind(namespace)
            .fetch_all(conn)
            .await
        })
        .ctx("list workflows")
    }
}
