//! The command line: argument types (clap) and the commands they run. Commands talk to
//! the library's faces (`sandbox`, `engine`, `audit`, `crypto`, `store`); they never print
//! secrets, key material or unredacted guest output.

mod audit;
mod client;
mod config;
mod ops;
mod secrets;
mod serve;
mod step_run;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use audit::{AuditCommand, ExportArgs, QueryArgs, TrailArgs, VerifyArgs};
pub use client::{
    ClientArgs, ModuleCommand, ModulePushArgs, TaskCommand, TaskIdArgs, TaskListArgs,
    TaskSubmitArgs, TaskWaitArgs, WorkflowApplyArgs, WorkflowCommand,
};
pub use config::{JwtConfig, ServeConfig};
pub use ops::{DataArgs, KeysCommand, WorkerArgs};
pub use secrets::{SecretSetArgs, SecretsCommand};
pub use serve::ServeArgs;
pub use step_run::StepRunArgs;
pub use token::TokenArgs;

/// stepbox: WebAssembly workflow steps with policy, audit and encryption.
#[derive(Debug, Parser)]
#[command(name = "stepbox", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and run workers (SQLite in the data directory by default; on
    /// first start, development keys, policy and the example refund workflow).
    Serve(ServeArgs),
    /// Work with a single step component.
    #[command(subcommand)]
    Step(StepCommand),
    /// Run workers (and the audit sealer) against a database until interrupted.
    Worker(WorkerArgs),
    /// Manage key-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify, query and export the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Purge what retention policies say is due.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Manage the secrets steps may be granted (sealed in the database).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Mint a development token with the data directory's key (the last line printed).
    Token(TokenArgs),
    /// Upload components to a running server.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Apply workflow definitions on a running server.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Submit, read, list and follow tasks on a running server.
    #[command(subcommand)]
    Task(TaskCommand),
}

/// `stepbox retention …`
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Delete every finished task and audit-trail prefix past its namespace's retention
    /// now, print what went, and audit it.
    Run(DataArgs),
}

/// `stepbox step …`
#[derive(Debug, Subcommand)]
pub enum StepCommand {
    /// Run one step in the real sandbox and print its outcome and host-call record as JSON.
    Run(StepRunArgs),
}

/// Why a command failed before it could report an outcome.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag's value is malformed.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component was refused.
    #[error("component refused: {0}")]
    Load(#[from] crate::sandbox::LoadError),
    /// The server could not be reached, or its answer not read.
    #[error("{0}")]
    Http(String),
    /// The sandbox could not start.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

impl Cli {
    /// Run the parsed command.
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self.command {
            Command::Step(StepCommand::Run(args)) => step_run::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Worker(args) => ops::worker(args).await,
            Command::Keys(command) => ops::keys(command).await,
            Command::Audit(command) => audit::run(command).await,
            Command::Retention(RetentionCommand::Run(data)) => ops::retention(data).await,
            Command::Secrets(command) => secrets::run(command).await,
            Command::Token(args) => token::run(args),
            Command::Module(command) => client::module(command).await,
            Command::Workflow(command) => client::workflow(command).await,
            Command::Task(command) => client::task(command).await,
        }
    }
}
