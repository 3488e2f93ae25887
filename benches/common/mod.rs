//! What the benchmarks share: the refund workflow (its last step `noop` where
//! `notify_customer` would call out), the engine it runs on, and the task requests.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use sqlx::Connection;
use stepbox::crypto::KeyRing;
use stepbox::engine::{CreateTask, Engine, SystemClock};
use stepbox::example::{Notify, refund_workflow};
use stepbox::policy::{NamespacePolicy, Principal};
use stepbox::sandbox::Sandbox;
use stepbox::store::{DatabaseUrl, Store};

pub const NS: &str = "customer_success";
pub const PERMISSION: &str = "customer_success.process_refund:execute";

/// Distinct customers among the tasks: most tasks reuse a subject key, some create one.
const CUSTOMERS: usize = 500;

pub fn component(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../example-steps/target/wasm32-wasip2/release/{name}.wasm"
    ));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run ./dev build-steps first)", path.display()))
}

/// The refund workflow, `noop` where `notify_customer` would call out.
pub fn definition() -> String {
    refund_workflow(&Notify::Noop)
}

pub fn request(n: usize) -> CreateTask {
    let customer = n % CUSTOMERS;
    CreateTask {
        namespace: NS.into(),
        workflow: "process_refund".into(),
        version: None,
        context: json!({
            "customer_id": format!("cus_{customer}"),
            "customer_email": format!("customer{customer}@example.com"),
            "order_id": format!("ord_{n}"), "refund_amount": 20.0 + (n % 400) as f64,
            "currency": "EUR", "reason": "item arrived damaged"
        }),
        reason: Some("benchmark".into()),
        tags: vec![],
        correlation_id: None,
        request: None,
    }
}

/// What an engine of the benchmarks protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Everything, as shipped: task data encrypted, every change audited.
    Full,
    /// Task data encrypted, no task or step audit events: what encryption alone costs.
    EncryptionOnly,
    /// Neither: the baseline.
    None,
}

/// An engine on `store` with the refund workflow loaded, protecting what `protection`
/// says.
pub async fn refund_engine(
    store: &Store,
    sandbox: &Sandbox,
    protection: Protection,
    policy: &NamespacePolicy,
) -> Engine {
    let keys = Arc::new(KeyRing::generate().unwrap());
    let vault_dir = tempfile::tempdir().unwrap().keep();
    let vault = stepbox::crypto::SubjectVault::open(&vault_dir.join("subject-vault.db"))
        .await
        .unwrap();
    let engine = Engine::new(store.clone(), keys, sandbox.clone(), Arc::new(SystemClock))
        .with_subject_vault(Arc::new(vault));
    let engine = match protection {
        Protection::Full => engine,
        Protection::EncryptionOnly => engine.without_audit(),
        Protection::None => engine.unprotected_baseline(),
    };
    engine.set_policy(NS, policy, "user:admin").await.unwrap();
    for name in [
        "validate_refund_request",
        "get_manager_approval",
        "execute_refund",
        "noop",
    ] {
        engine
            .register_module(NS, name, "0.1.0", &component(name), "user:team_lead")
            .await
            .unwrap();
    }
    engine
        .apply_workflow(&definition(), "user:team_lead")
        .await
        .unwrap();
    engine
}

/// The refund agent of the seed story.
pub fn agent() -> Principal {
    Principal {
        subject: "user_123".into(),
        roles: ["customer_success_agent".to_owned()].into(),
        permissions: [PERMISSION.to_owned()].into(),
    }
}

/// How many tasks of the namespace are not finished.
pub async fn unfinished(store: &Store) -> bool {
    store
        .begin_read()
        .await
        .unwrap()
        .any_unfinished_task(NS)
        .await
        .unwrap()
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The PostgreSQL server every machine runs, as its superuser.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh PostgreSQL database and its name.
pub async fn postgres_db() -> (DatabaseUrl, String) {
    let mut admin = sqlx::PgConnection::connect(ADMIN_URL).await.unwrap();
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("stepbox_bench_{}", hex::encode(bytes));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = DatabaseUrl::Postgres(format!("postgres://postgres@127.0.0.1:5432/{name}"));
    (url, name)
}

pub async fn drop_postgres_db(name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(ADMIN_URL).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}
