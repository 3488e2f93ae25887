//! `stepbox audit verify|query|export|public-key`, straight against the database: for
//! auditors and operators with access to the installation. Every read of the trail made
//! here is itself recorded on it, as `system:cli`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::json;

use super::CliError;
use super::ops::{DataArgs, print};
use crate::audit::{
    self, AuditSigner, CheckpointKeys, ExportFormat, NewEvent, Verification, event_view,
    parse_rfc3339,
};
use crate::engine::{Clock, SystemClock};
use crate::store::{AuditFilter, Store};

/// `stepbox audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the chain and its signed checkpoints in the database, or (`--export`) an
    /// export file offline with only the public key; exit 1 naming the first bad
    /// sequence number and what is wrong there.
    Verify(VerifyArgs),
    /// Print matching events as JSON, oldest first.
    Query(QueryArgs),
    /// Stream matching events (all of them by default) as JSON Lines or CSV, with
    /// progress on stderr.
    Export(ExportArgs),
    /// Print the public key that verifies the checkpoints (SPKI PEM).
    PublicKey(DataArgs),
}

/// `stepbox audit verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Where the data and keys live.
    #[command(flatten)]
    pub data: DataArgs,
    /// A JSON Lines export to verify instead of the database.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// The checkpoint public key (PEM); by default the installation's signing key.
    #[arg(long)]
    pub public_key: Option<PathBuf>,
}

/// Which events: every filter given must match.
#[derive(Debug, Args)]
pub struct TrailArgs {
    /// Events by this user (`user:<id>` actors).
    #[arg(long)]
    pub user_id: Option<String>,
    /// This action, e.g. `task.created`.
    #[arg(long)]
    pub action: Option<String>,
    /// This resource, e.g. `task/task_01…`.
    #[arg(long)]
    pub resource: Option<String>,
    /// This namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// This outcome: success, denied, failure.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Everything about this task and its steps.
    #[arg(long)]
    pub task_id: Option<String>,
    /// From this time on (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
}

impl TrailArgs {
    fn filter(&self) -> Result<AuditFilter, CliError> {
        let time = |flag: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| {
                    parse_rfc3339(v).ok_or_else(|| {
                        CliError::Usage(format!("--{flag}: not an RFC 3339 time: {v}"))
                    })
                })
                .transpose()
        };
        Ok(AuditFilter {
            actor: self.user_id.as_ref().map(|u| format!("user:{u}")),
            action: self.action.clone(),
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            outcome: self.outcome.clone(),
            task: self.task_id.clone(),
            from_ts: time("from", &self.from)?,
            until_ts: time("to", &self.to)?,
            ..AuditFilter::default()
        })
    }
}

/// `stepbox audit query`
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Where the data and keys live.
    #[command(flatten)]
    pub data: DataArgs,
    /// Which events.
    #[command(flatten)]
    pub trail: TrailArgs,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

/// `stepbox audit export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where the data and keys live.
    #[command(flatten)]
    pub data: DataArgs,
    /// Which events (all by default: a verifiable export of the whole chain).
    #[command(flatten)]
    pub trail: TrailArgs,
    /// `jsonl` or `csv`.
    #[arg(long, default_value = "jsonl")]
    pub format: String,
    /// Write here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

fn failed(what: &str) -> impl FnOnce(audit::AuditError) -> CliError + '_ {
    move |e| CliError::Usage(format!("{what}: {e}"))
}

/// Record that the CLI read the trail.
async fn record_read(
    store: &Store,
    action: &str,
    details: serde_json::Value,
) -> Result<(), CliError> {
    let event = NewEvent {
        actor: "system:cli".into(),
        action: action.into(),
        resource: "audit/trail".into(),
        outcome: "success".into(),
        details,
        ..NewEvent::default()
    };
    let mut tx = store
        .begin()
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    audit::record(&mut tx, &event, SystemClock.now_ms())
        .await
        .map_err(failed("record the read"))?;
    tx.commit()
        .await
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// The verdict, and exit 1 naming the break if there is one.
fn verdict(report: &Verification) -> ExitCode {
    print(report);
    match &report.broken {
        None => ExitCode::SUCCESS,
        Some(broken) => {
            eprintln!(
                "audit chain broken at sequence {}: {}",
                broken.seq,
                serde_json::to_value(broken.problem)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            );
            ExitCode::from(1)
        }
    }
}

/// The installation's signing key, if it has one.
fn signer(data: &DataArgs) -> Result<Option<AuditSigner>, CliError> {
    let path = data.audit_key_file();
    if !path.exists() {
        return Ok(None);
    }
    AuditSigner::load_or_create(&path)
        .map(Some)
        .map_err(|e| CliError::Usage(e.to_string()))
}

pub(super) async fn run(command: AuditCommand) -> Result<ExitCode, CliError> {
    match command {
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Query(args) => {
            let store = args.data.store().await?;
            let filter = args.trail.filter()?;
            let limit = args.limit.clamp(1, 10_000);
            let mut tx = store
                .begin_read()
                .await
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let rows = tx
                .query_audit(&filter, limit)
                .await
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let total = tx
                .count_audit(&filter)
                .await
                .map_err(|e| CliError::Usage(e.to_string()))?;
            tx.commit()
                .await
                .map_err(|e| CliError::Usage(e.to_string()))?;
            record_read(
                &store,
                "audit.queried",
                json!({ "returned": rows.len(), "total": total }),
            )
            .await?;
            let items: Vec<_> = rows.iter().map(event_view).collect();
            print(&json!({ "items": items, "total": total }));
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export(args) => export(args).await,
        AuditCommand::PublicKey(data) => {
            let signer = signer(&data)?.ok_or_else(|| {
                CliError::Usage(format!(
                    "no audit signing key at {}",
                    data.audit_key_file().display()
                ))
            })?;
            print!("{}", signer.public_pem());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn verify(args: VerifyArgs) -> Result<ExitCode, CliError> {
    let keys = match &args.public_key {
        Some(path) => Some(CheckpointKeys::load(path).map_err(|e| CliError::Usage(e.to_string()))?),
        None => signer(&args.data)?.map(|s| s.verifying()),
    };
    if let Some(path) = &args.export {
        let file = std::fs::File::open(path).map_err(|source| CliError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let keys = keys.ok_or_else(|| {
            CliError::Usage("verifying an export needs --public-key (the checkpoint key)".into())
        })?;
        let report = audit::verify_export(std::io::BufReader::new(file), &keys)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        return Ok(verdict(&report));
    }
    let store = args.data.store().await?;
    audit::seal_pending(&store).await.map_err(failed("seal"))?;
    let report = match &keys {
        Some(keys) => audit::verify_signed(&store, keys).await,
        None => audit::verify(&store).await,
    }
    .map_err(failed("verify"))?;
    record_read(
        &store,
        "audit.verified",
        json!({ "intact": report.is_intact(), "checked": report.checked }),
    )
    .await?;
    Ok(verdict(&report))
}

async fn export(args: ExportArgs) -> Result<ExitCode, CliError> {
    let format = match args.format.as_str() {
        "jsonl" => ExportFormat::JsonLines,
        "csv" => ExportFormat::Csv,
        other => {
            return Err(CliError::Usage(format!(
                "--format: `jsonl` or `csv`, not `{other}`"
            )));
        }
    };
    let store = args.data.store().await?;
    let mut filter = args.trail.filter()?;
    audit::seal_pending(&store).await.map_err(failed("seal"))?;
    if let Some(signer) = signer(&args.data)? {
        // Sign the tip, so the whole export verifies with the public key alone.
        audit::checkpoint(&store, &signer, SystemClock.now_ms(), 0)
            .await
            .map_err(failed("sign a checkpoint"))?;
    }
    let mut tx = store
        .begin_read()
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let tip = tx
        .last_sealed()
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let total = tx
        .count_audit(&AuditFilter {
            through_seq: tip.as_ref().map(|(seq, _)| *seq),
            ..filter.clone()
        })
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    tx.commit()
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    filter.through_seq = Some(tip.map_or(0, |(seq, _)| seq));
    record_read(
        &store,
        "audit.exported",
        json!({ "format": args.format, "events": total, "through_seq": filter.through_seq }),
    )
    .await?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| CliError::Read {
                path: path.display().to_string(),
                source,
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let write_failed = |e: std::io::Error| CliError::Usage(format!("writing the export: {e}"));
    let mut stream = std::pin::pin!(audit::export(store, filter, format));
    let mut lines: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(failed("export"))?;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        out.write_all(&chunk).map_err(write_failed)?;
        eprint!(
            "\rexported {} of {total} events",
            lines.saturating_sub(1).min(total as u64)
        );
    }
    out.flush().map_err(write_failed)?;
    eprintln!("\rexported {total} events{}", " ".repeat(20));
    Ok(ExitCode::SUCCESS)
}
