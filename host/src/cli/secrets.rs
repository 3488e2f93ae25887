//! `stepbox secrets set`: seal a secret value into the database for a namespace's steps.
//! The value comes from standard input or a named environment variable, never from a
//! flag's value (which `ps` would show to every user of the machine), and is never printed.

use std::io::Read;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::CliError;
use super::ops::{DataArgs, print};
use crate::engine::{Clock, MAX_SECRET_BYTES, SystemClock, set_secret};
use crate::sandbox::SecretValue;

/// `stepbox secrets …`
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set (or replace) a secret: one line read from standard input, its trailing newline
    /// stripped, or the value of `--from-env VAR`. The name must be in the namespace
    /// policy's `secrets`.
    Set(SecretSetArgs),
}

/// `stepbox secrets set`
#[derive(Debug, Args)]
pub struct SecretSetArgs {
    /// The namespace whose steps may be granted the secret.
    pub namespace: String,
    /// The secret's name (`NOTIFY_API_KEY`).
    pub name: String,
    /// Read the value from this environment variable instead of standard input.
    #[arg(long, value_name = "VAR")]
    pub from_env: Option<String>,
    /// Where the data and keys live.
    #[command(flatten)]
    pub data: DataArgs,
}

pub(super) async fn run(command: SecretsCommand) -> Result<ExitCode, CliError> {
    let SecretsCommand::Set(args) = command;
    let value = match &args.from_env {
        Some(var) => std::env::var(var).map_err(|_| {
            CliError::Usage(format!(
                "environment variable {var} is not set (or not UTF-8)"
            ))
        })?,
        None => read_line(std::io::stdin().lock())?,
    };
    let store = args.data.store().await?;
    let ring = args.data.ring()?;
    set_secret(
        &store,
        &ring,
        &args.namespace,
        &args.name,
        &SecretValue::new(value),
        "system:cli",
        SystemClock.now_ms(),
    )
    .await
    .map_err(|e| CliError::Usage(format!("secrets set: {e}")))?;
    store.close().await;
    print(&serde_json::json!({ "namespace": args.namespace, "name": args.name }));
    Ok(ExitCode::SUCCESS)
}

/// One line of `input` without its line ending. Refuses a second line rather than keep
/// half of a multi-line value; reads at most a little past [`MAX_SECRET_BYTES`].
fn read_line(input: impl Read) -> Result<String, CliError> {
    // Allocated once so no reallocation leaves a partial copy of the value behind.
    let mut bytes = Vec::with_capacity(MAX_SECRET_BYTES + 3);
    input
        .take(MAX_SECRET_BYTES as u64 + 3)
        .read_to_end(&mut bytes)
        .map_err(|source| CliError::Read {
            path: "standard input".into(),
            source,
        })?;
    let line = bytes
        .strip_suffix(b"\n")
        .map(|rest| rest.strip_suffix(b"\r").unwrap_or(rest))
        .unwrap_or(&bytes);
    if line.contains(&b'\n') {
        return Err(CliError::Usage(
            "the value must be one line on standard input".into(),
        ));
    }
    let len = line.len();
    bytes.truncate(len);
    String::from_utf8(bytes).map_err(|_| CliError::Usage("the value is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_is_read_without_its_line_ending() {
        assert_eq!(read_line(&b"nk_live_1\n"[..]).unwrap(), "nk_live_1");
        assert_eq!(read_line(&b"nk_live_1\r\n"[..]).unwrap(), "nk_live_1");
        assert_eq!(read_line(&b"nk_live_1"[..]).unwrap(), "nk_live_1");
        assert_eq!(read_line(&b"a b\tc\n"[..]).unwrap(), "a b\tc");
        assert!(read_line(&b"first\nsecond\n"[..]).is_err());
        assert!(read_line(&[0xff, 0xfe][..]).is_err());
    }
}
