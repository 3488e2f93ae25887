//! `stepbox serve`: the HTTP API and workers in one process.
//!
//! On a fresh data directory it sets up a development installation: a key file (0600),
//! the development token key (`stepbox token` mints with it), a development access policy
//! with the seed roles, and the example steps with the refund workflow in
//! `customer_success` (marked sensitive). Nothing of this is ever written into the
//! repository, and an existing installation is left as it is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::CliError;
use super::config::ServeConfig;
use super::ops::DataArgs;
use crate::api::{self, ApiState};
use crate::audit::AuditSigner;
use crate::auth::DevKey;
use crate::crypto::KeyRing;
use crate::engine::{Engine, SystemClock, WorkerPool};
use crate::policy::{AccessPolicy, NamespacePolicy};
use crate::sandbox::{Sandbox, SandboxConfig};

/// The namespace the example workflow is loaded into.
const DEMO_NS: &str = "customer_success";
/// The example steps, built by `./dev build-steps`.
const DEMO_STEPS: [&str; 4] = [
    "validate_refund_request",
    "get_manager_approval",
    "execute_refund",
    "notify_customer",
];
/// How long an idle worker waits before looking for work again.
const IDLE: Duration = Duration::from_millis(20);
/// How often committed audit events are sealed into the chain.
const SEAL_EVERY: Duration = Duration::from_millis(500);
/// How often retention purges what is due.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// `stepbox serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the data and keys live.
    #[command(flatten)]
    pub data: DataArgs,
    /// Address to listen on. Without `--tls-cert` and `--tls-key` it must be a loopback
    /// address, unless `--allow-plain-http` says a TLS-terminating proxy is in front.
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "STEPBOX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM, leaf first): serve HTTPS.
    #[arg(long, env = "STEPBOX_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "STEPBOX_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long)]
    pub allow_plain_http: bool,
    /// Requests per second each client address may make, bursts of twice that
    /// [default: 1000].
    #[arg(long, env = "STEPBOX_RATE_LIMIT_IP")]
    pub rate_limit_ip: Option<std::num::NonZeroU32>,
    /// Requests per second each principal may make, bursts of twice that [default: 200].
    #[arg(long, env = "STEPBOX_RATE_LIMIT_PRINCIPAL")]
    pub rate_limit_principal: Option<std::num::NonZeroU32>,
    /// Concurrent workers in this process [default: 4].
    #[arg(long, env = "STEPBOX_WORKERS")]
    pub workers: Option<usize>,
    /// A YAML file of settings (listen, tls, database, keys, policy, workers,
    /// rate_limits, jwt); flags and environment variables override it.
    #[arg(long, env = "STEPBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Access policy (JSON: roles and the permissions they grant); the data directory's
    /// `policy.json` by default, written with the development roles on first start.
    #[arg(long, env = "STEPBOX_POLICY_FILE")]
    pub policy: Option<PathBuf>,
    /// Where the example step components are, for the first start's example workflow.
    #[arg(long, default_value = "example-steps/target/wasm32-wasip2/release")]
    pub steps_dir: PathBuf,
    /// The notification service the example workflow's last step calls.
    #[arg(long, default_value = "http://127.0.0.1:18741/v1/messages")]
    pub notify_endpoint: String,
}

/// The development access policy: the seed documents' roles.
fn development_policy() -> AccessPolicy {
    let roles = json!({
        "customer_success_agent": ["customer_success:read", "customer_success.process_refund:execute"],
        "payments_agent": ["payments:read", "payments:execute"],
        "team_lead": ["customer_success:read", "customer_success:execute", "customer_success:manage",
                      "customer_success.process_refund:execute"],
        "admin": ["customer_success:read", "customer_success:execute", "customer_success:manage",
                  "customer_success:pii:read", "customer_success.process_refund:execute",
                  "payments:read", "payments:execute", "payments:manage", "payments:pii:read",
                  "metrics:read"],
        "auditor": ["customer_success:read", "payments:read", "audit:read"],
        "compliance_officer": ["customer_success:read", "payments:read", "audit:read", "compliance:read",
                               "gdpr:manage"]
    });
    serde_json::from_value(json!({ "roles": roles })).unwrap_or_default()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// The policy file: roles and the permissions they grant, and the policies of the
/// namespaces it lists (applied at every start: for those, the file is the source of
/// truth; namespaces it does not list keep their stored policy).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    roles: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    #[serde(default)]
    namespaces: std::collections::BTreeMap<String, NamespacePolicy>,
}

/// The policy file's contents, writing the development one if there is none.
fn read_policy_file(given: Option<&Path>, data_dir: &Path) -> Result<PolicyFile, CliError> {
    let path = given.map_or_else(|| data_dir.join("policy.json"), Path::to_path_buf);
    if given.is_none() && !path.exists() {
        let text = serde_json::to_string_pretty(&development_policy()).unwrap_or_default();
        std::fs::write(&path, text).map_err(io(&path))?;
        eprintln!("wrote the development access policy to {}", path.display());
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let file: PolicyFile = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not a policy file: {e}", path.display())))?;
    for (name, policy) in &file.namespaces {
        if !crate::engine::valid_name(name) {
            return Err(CliError::Usage(format!(
                "{}: namespaces: `{name}` is not a namespace name",
                path.display()
            )));
        }
        policy
            .validate()
            .map_err(|e| CliError::Usage(format!("{}: namespaces.{name}: {e}", path.display())))?;
    }
    Ok(file)
}

/// Apply the file's namespace policies where the stored ones differ (each change audited
/// as `namespace.policy_set` by `system:policy-file`).
async fn apply_namespaces(engine: &Engine, file: &PolicyFile) -> Result<(), CliError> {
    for (name, policy) in &file.namespaces {
        let stored = match engine.namespace_policy(name).await {
            Ok(stored) => Some(stored),
            Err(crate::engine::EngineError::NotFound(_)) => None,
            Err(e) => return Err(CliError::Usage(format!("namespace {name}: {e}"))),
        };
        if stored.as_ref() != Some(policy) {
            engine
                .set_policy(name, policy, "system:policy-file")
                .await
                .map_err(|e| CliError::Usage(format!("namespace {name}: {e}")))?;
            eprintln!("applied the policy file's policy of namespace {name}");
        }
    }
    Ok(())
}

/// The key ring, made on first start when the data directory holds none.
fn key_ring(data: &DataArgs) -> Result<KeyRing, CliError> {
    let path = data
        .keys
        .clone()
        .unwrap_or_else(|| data.data_dir.join("keys.json"));
    if data.keys.is_none() && !path.exists() {
        super::ops::new_key_file(&path)?;
        eprintln!("made a key-encryption key in {}", path.display());
    }
    data.ring()
}

/// Load the example steps and the refund workflow into `customer_success`, unless a
/// refund workflow is there already.
async fn load_example(engine: &Engine, args: &ServeArgs) -> Result<(), CliError> {
    let mut tx = engine
        .store()
        .begin_read()
        .await
        .map_err(|e| CliError::Usage(format!("database: {e}")))?;
    let present = tx
        .latest_workflow(DEMO_NS, "process_refund")
        .await
        .map_err(|e| CliError::Usage(format!("database: {e}")))?
        .is_some();
    tx.commit()
        .await
        .map_err(|e| CliError::Usage(format!("database: {e}")))?;
    if present {
        return Ok(());
    }
    let origin = crate::sandbox::Origin::parse(&args.notify_endpoint)
        .map_err(|e| CliError::Usage(format!("--notify-endpoint: {e}")))?
        .to_string();
    let policy = NamespacePolicy {
        hosts: [origin.clone()].into(),
        secrets: ["NOTIFY_API_KEY".to_owned()].into(),
        sensitive_workflows: ["process_refund".to_owned()].into(),
        legal_basis: Some("contract".to_owned()),
        // The seeds' schedule: PII task data 3 years, other task data 5, audit events 7.
        retention: crate::policy::Retention {
            pii_task_days: Some(3 * 365),
            task_days: Some(5 * 365),
            audit_days: Some(7 * 365),
            ..crate::policy::Retention::default()
        },
        ..NamespacePolicy::default()
    };
    let fail = |e: crate::engine::EngineError| CliError::Usage(format!("example workflow: {e}"));
    engine
        .set_policy(DEMO_NS, &policy, "system:serve")
        .await
        .map_err(fail)?;
    for name in DEMO_STEPS {
        let path = args.steps_dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        engine
            .register_module(DEMO_NS, name, "0.1.0", &bytes, "system:serve")
            .await
            .map_err(fail)?;
    }
    engine
        .apply_workflow(
            &crate::example::refund_workflow(&crate::example::Notify::Http {
                endpoint: &args.notify_endpoint,
                origin: &origin,
                max_attempts: 3,
                initial_backoff_ms: 500,
            }),
            "system:serve",
        )
        .await
        .map_err(fail)?;
    eprintln!(
        "loaded the example steps and {DEMO_NS}.process_refund@1.0.0 (sensitive); seal the \
         notification key with `stepbox secrets set {DEMO_NS} NOTIFY_API_KEY`"
    );
    Ok(())
}

pub(super) async fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    let config = ServeConfig::load(args.config.as_deref())?;
    let listen = args
        .listen
        .or(config.listen)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let (tls_cert, tls_key) = match (&args.tls_cert, &config.tls) {
        (Some(_), _) => (args.tls_cert.clone(), args.tls_key.clone()),
        (None, Some(files)) => (Some(files.cert.clone()), Some(files.key.clone())),
        (None, None) => (None, None),
    };
    let allow_plain_http = args.allow_plain_http || config.allow_plain_http;
    let workers = args.workers.or(config.workers).unwrap_or(4);
    let limits = api::RateLimits {
        per_ip: args
            .rate_limit_ip
            .or(config.rate_limits.per_ip)
            .unwrap_or(api::RateLimits::default().per_ip),
        per_principal: args
            .rate_limit_principal
            .or(config.rate_limits.per_principal)
            .unwrap_or(api::RateLimits::default().per_principal),
    };
    let data = DataArgs {
        data_dir: args.data.data_dir.clone(),
        database: args.data.database.clone().or(config.database.clone()),
        keys: args.data.keys.clone().or(config.keys.clone()),
        audit_key: args.data.audit_key.clone().or(config.audit_key.clone()),
        subject_vault: args
            .data
            .subject_vault
            .clone()
            .or(config.subject_vault.clone()),
    };
    let policy_file = args.policy.clone().or(config.policy.clone());

    // Transport first: a server that would be reachable in the clear is refused before
    // anything is made.
    let tls = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => {
            Some(api::Tls::from_pem_files(cert, key).map_err(|e| CliError::Usage(e.to_string()))?)
        }
        _ if !listen.ip().is_loopback() && !allow_plain_http => {
            return Err(CliError::Usage(format!(
                "refusing to serve plain HTTP on {}: give --tls-cert and --tls-key, or \
                 --allow-plain-http if a TLS-terminating proxy is in front",
                listen
            )));
        }
        _ => None,
    };
    let dir = &data.data_dir;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ring = key_ring(&data)?;
    let policies = read_policy_file(policy_file.as_deref(), dir)?;
    let access = AccessPolicy {
        roles: policies.roles.clone(),
    };
    let dev_key = DevKey::load_or_create(dir).map_err(|e| CliError::Usage(e.to_string()))?;
    let store = data.store().await?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let audit_key = data.audit_key_file();
    let signer =
        AuditSigner::load_or_create(&audit_key).map_err(|e| CliError::Usage(e.to_string()))?;
    let engine = Engine::new(
        store.clone(),
        Arc::new(ring),
        sandbox,
        Arc::new(SystemClock),
    )
    .with_audit_signer(Arc::new(signer))
    .with_subject_vault(Arc::new(data.vault(true).await?));
    load_example(&engine, &args).await?;
    apply_namespaces(&engine, &policies).await?;

    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| CliError::Usage(format!("cannot listen on {listen}: {e}")))?;
    let local = listener.local_addr().unwrap_or(listen);
    let verifier = super::config::verifier(config.jwt.as_ref(), &dev_key)?;
    let state = ApiState::new(engine.clone(), verifier)
        .with_access(access)
        .with_rate_limits(limits);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let pool = WorkerPool {
        workers,
        name: format!("serve-{}", std::process::id()),
        idle: IDLE,
        seal_every: SEAL_EVERY,
    };
    let working = {
        let engine = engine.clone();
        let stop = stop.clone();
        tokio::spawn(async move { engine.work(&pool, stop).await })
    };
    // Retention at start and then every hour; a failed run is logged and tried again.
    {
        let engine = engine.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = engine.run_retention("system:retention").await {
                    tracing::warn!(error = %e, "a retention run failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(RETENTION_EVERY) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    eprintln!(
        "stepbox serving {}://{local} ({} workers, {}); mint a token with: stepbox token \
         --data-dir {} --sub user_123 --roles customer_success_agent --mfa",
        if tls.is_some() { "https" } else { "http" },
        workers,
        store.url(),
        dir.display()
    );
    let mut shutdown = stop.clone();
    let shutdown = async move {
        let _ = shutdown.changed().await;
    };
    let server = async move {
        match tls {
            Some(tls) => api::serve_tls(listener, state, tls, shutdown).await,
            None => {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                api::serve(listener, state, shutdown).await
            }
        }
    };
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    let served = server.await;
    let _ = working.await;
    served.map_err(|e| CliError::Usage(format!("server: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
