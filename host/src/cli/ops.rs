//! Operator commands over a database and a key file: `keys init|rotate` and `worker`
//! (`secrets set` lives in `secrets`, `audit …` in `audit`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::CliError;
use crate::audit;
use crate::crypto::KeyRing;
use crate::engine::{Clock, Engine, SystemClock, WorkerPool, rewrap_all};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::{DatabaseUrl, Store};

/// Where the data and keys live.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Data directory: SQLite database `stepbox.db` and key file `keys.json` by default.
    #[arg(long, env = "STEPBOX_DATA_DIR", default_value = "stepbox-data")]
    pub data_dir: PathBuf,
    /// Database URL (`postgres://…` or a SQLite path); overrides the data directory's.
    #[arg(long, env = "STEPBOX_DATABASE_URL")]
    pub database: Option<String>,
    /// Key file; overrides the data directory's. Keep it apart from the database.
    #[arg(long, env = "STEPBOX_KEYS_FILE")]
    pub keys: Option<PathBuf>,
    /// The audit checkpoint signing key (Ed25519, PKCS#8 PEM), apart from the data keys;
    /// `audit-signing.pem` in the data directory by default.
    #[arg(long, env = "STEPBOX_AUDIT_KEY_FILE")]
    pub audit_key: Option<PathBuf>,
    /// The subject vault (the pads that mask data subjects' keys; erasing one shreds the
    /// subject's data in database backups too). Keep it with the key file, out of the
    /// database's backups; `subject-vault.db` in the data directory by default.
    #[arg(long, env = "STEPBOX_SUBJECT_VAULT")]
    pub subject_vault: Option<PathBuf>,
}

impl DataArgs {
    fn database_url(&self) -> Result<DatabaseUrl, CliError> {
        match &self.database {
            Some(url) => {
                DatabaseUrl::parse(url).map_err(|e| CliError::Usage(format!("--database: {e}")))
            }
            None => Ok(DatabaseUrl::in_data_dir(&self.data_dir)),
        }
    }

    fn key_file(&self) -> PathBuf {
        self.keys
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys.json"))
    }

    pub(super) fn audit_key_file(&self) -> PathBuf {
        self.audit_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-signing.pem"))
    }

    /// The subject vault: made if `create` (first start of `serve`), else it must exist.
    pub(super) async fn vault(
        &self,
        create: bool,
    ) -> Result<crate::crypto::SubjectVault, CliError> {
        let path = self
            .subject_vault
            .clone()
            .unwrap_or_else(|| self.data_dir.join("subject-vault.db"));
        let opened = if create {
            crate::crypto::SubjectVault::open(&path).await
        } else {
            crate::crypto::SubjectVault::open_existing(&path).await
        };
        opened.map_err(|e| CliError::Usage(e.to_string()))
    }

    pub(super) fn ring(&self) -> Result<KeyRing, CliError> {
        KeyRing::load_file(&self.key_file()).map_err(|e| CliError::Usage(e.to_string()))
    }

    pub(super) async fn store(&self) -> Result<Store, CliError> {
        Store::open(&self.database_url()?)
            .await
            .map_err(|e| CliError::Usage(format!("database: {e}")))
    }
}

/// `stepbox keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key file with a fresh key-encryption key (refuses to overwrite one).
    Init(DataArgs),
    /// Introduce a new key-encryption key and re-wrap every data key under it.
    Rotate {
        /// Where the data and keys live.
        #[command(flatten)]
        data: DataArgs,
        /// After re-wrapping, drop the old keys from the key file.
        #[arg(long)]
        retire_old: bool,
    },
}

/// `stepbox worker`
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Where the data and keys live.
    #[command(flatten)]
    pub data: DataArgs,
    /// Concurrent workers in this process.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Name prefix of this process's workers (defaults to `worker-<pid>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Step lease, milliseconds: how long a crashed worker's step waits before another
    /// worker takes it over. Renewed every third of it while the step runs.
    #[arg(long, default_value_t = crate::engine::DEFAULT_LEASE_MS)]
    pub lease_ms: i64,
}

/// How long an idle worker waits before looking for work again.
const IDLE: Duration = Duration::from_millis(50);
/// How often a worker process seals committed audit events into the chain.
const SEAL_EVERY: Duration = Duration::from_millis(500);

pub(super) fn print(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// A key file at `path` (0600) with a fresh key-encryption key, its directory made if
/// need be; the caller has checked that none is there.
pub(super) fn new_key_file(path: &std::path::Path) -> Result<KeyRing, CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CliError::Read {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let ring = KeyRing::generate().map_err(|e| CliError::Usage(e.to_string()))?;
    ring.save_file(path)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(ring)
}

pub(super) async fn keys(command: KeysCommand) -> Result<ExitCode, CliError> {
    match command {
        KeysCommand::Init(data) => {
            let path = data.key_file();
            if path.exists() {
                return Err(CliError::Usage(format!(
                    "{} exists; refusing to overwrite keys",
                    path.display()
                )));
            }
            let ring = new_key_file(&path)?;
            print(&serde_json::json!({ "key_file": path, "active": ring.active_id() }));
        }
        KeysCommand::Rotate { data, retire_old } => {
            let path = data.key_file();
            let mut ring = data.ring()?;
            let old = ring.ids();
            ring.rotate().map_err(|e| CliError::Usage(e.to_string()))?;
            // Save first: if the re-wrap is interrupted, the new key is already kept.
            ring.save_file(&path)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let store = data.store().await?;
            let rotation = rewrap_all(&store, &ring, "system:cli", SystemClock.now_ms())
                .await
                .map_err(|e| CliError::Usage(format!("re-wrap: {e}")))?;
            if retire_old {
                for id in &old {
                    ring.retire(id)
                        .map_err(|e| CliError::Usage(e.to_string()))?;
                }
                ring.save_file(&path)
                    .map_err(|e| CliError::Usage(e.to_string()))?;
            }
            print(&rotation);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn retention(data: DataArgs) -> Result<ExitCode, CliError> {
    let store = data.store().await?;
    let engine = Engine::new(
        store,
        Arc::new(data.ring()?),
        Sandbox::new(SandboxConfig::default())?,
        Arc::new(SystemClock),
    )
    .with_subject_vault(Arc::new(data.vault(false).await?));
    let run = engine
        .run_retention("system:retention")
        .await
        .map_err(|e| CliError::Usage(format!("retention: {e}")))?;
    print(&run);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn worker(args: WorkerArgs) -> Result<ExitCode, CliError> {
    let store = args.data.store().await?;
    let ring = args.data.ring()?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let engine = Engine::new(
        store.clone(),
        Arc::new(ring),
        sandbox,
        Arc::new(SystemClock),
    )
    .with_lease_ms(args.lease_ms)
    .with_subject_vault(Arc::new(args.data.vault(false).await?));
    // Sign checkpoints if this process has the key; on a shared database another may.
    let audit_key = args.data.audit_key_file();
    let engine = if audit_key.exists() {
        let signer = audit::AuditSigner::load_or_create(&audit_key)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        engine.with_audit_signer(Arc::new(signer))
    } else {
        eprintln!(
            "no audit signing key at {}: this process signs no checkpoints",
            audit_key.display()
        );
        engine
    };
    let name = args
        .name
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    eprintln!(
        "stepbox worker {name}: {} workers on {}",
        args.workers,
        store.url()
    );
    let pool = WorkerPool {
        workers: args.workers,
        name,
        idle: IDLE,
        seal_every: SEAL_EVERY,
    };
    engine.work(&pool, stop).await;
    Ok(ExitCode::SUCCESS)
}
