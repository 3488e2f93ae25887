//! `stepbox step run`: one step in the real sandbox, for step authors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::CliError;
use crate::classify::{Classification, FieldClasses, classify_context};
use crate::sandbox::{
    Attempt, Grants, Limits, Origin, Outcome, Sandbox, SandboxConfig, SecretValue, TaskData,
};

/// Exit status when the step returned its own error.
const EXIT_STEP_ERROR: u8 = 1;
/// Exit status when the sandbox contained the step.
const EXIT_CONTAINED: u8 = 2;

/// Flags of `stepbox step run`.
#[derive(Debug, Args)]
pub struct StepRunArgs {
    /// The component (`.wasm`) to run.
    pub component: PathBuf,
    /// The step's config, as JSON text.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// The task context: a JSON file holding one object.
    #[arg(long)]
    pub context: Option<PathBuf>,
    /// A JSON Schema file whose properties carry `x-data-classification`.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Context fields the step may read, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub reads: Vec<String>,
    /// The highest classification the step sees in clear (public, internal, confidential, restricted).
    #[arg(long, default_value = "internal")]
    pub clearance: Classification,
    /// A granted secret, NAME=value (repeatable). Prefer NAME=@file or NAME=env:VAR to keep values out of shell history.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// An origin the step may call, e.g. https://notify.example.com (repeatable).
    #[arg(long = "allow-host")]
    pub allow_hosts: Vec<String>,
    /// An upstream step's result, NAME=JSON (repeatable).
    #[arg(long = "upstream")]
    pub upstream: Vec<String>,
    /// Limits as JSON, e.g. '{"cpu": 500, "memory_bytes": 33554432}' (cpu and wall_time in ms).
    #[arg(long)]
    pub limits: Option<String>,
    /// Task id handed to the step.
    #[arg(long, default_value = "task_local")]
    pub task_id: String,
    /// Step name handed to the step (defaults to the file stem).
    #[arg(long)]
    pub step_name: Option<String>,
    /// Attempt number handed to the step.
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
}

fn read(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn json_object(
    text: &str,
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, CliError> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(CliError::Usage(format!("{what} must be a JSON object"))),
        Err(e) => Err(CliError::Usage(format!("{what} is not valid JSON: {e}"))),
    }
}

fn secret_value(spec: &str) -> Result<(String, SecretValue), CliError> {
    // Never echo the spec: without `=` it may be the value itself.
    let (name, value) = spec.split_once('=').ok_or_else(|| {
        CliError::Usage("--secret expects NAME=value, NAME=@file or NAME=env:VAR".into())
    })?;
    let value = if let Some(path) = value.strip_prefix('@') {
        read(&PathBuf::from(path))?.trim_end().to_owned()
    } else if let Some(var) = value.strip_prefix("env:") {
        std::env::var(var)
            .map_err(|_| CliError::Usage(format!("environment variable {var} is not set")))?
    } else {
        value.to_owned()
    };
    Ok((name.to_owned(), SecretValue::new(value)))
}

impl StepRunArgs {
    fn attempt(&self) -> Result<Attempt, CliError> {
        let config: serde_json::Value = serde_json::from_str(&self.input)
            .map_err(|e| CliError::Usage(format!("--input is not valid JSON: {e}")))?;
        let context = match &self.context {
            Some(path) => json_object(&read(path)?, "--context")?,
            None => serde_json::Map::new(),
        };
        let classes = match &self.schema {
            Some(path) => {
                let schema: serde_json::Value = serde_json::from_str(&read(path)?)
                    .map_err(|e| CliError::Usage(format!("--schema is not valid JSON: {e}")))?;
                FieldClasses::from_schema(&schema).map_err(|e| CliError::Usage(e.to_string()))?
            }
            None => FieldClasses::default(),
        };
        let mut upstream = BTreeMap::new();
        for spec in &self.upstream {
            let (name, json) = spec
                .split_once('=')
                .ok_or_else(|| CliError::Usage("--upstream expects NAME=JSON".into()))?;
            let value = serde_json::from_str(json)
                .map_err(|e| CliError::Usage(format!("--upstream {name}: not valid JSON: {e}")))?;
            upstream.insert(name.to_owned(), value);
        }
        let origins = self
            .allow_hosts
            .iter()
            .map(|h| Origin::parse(h).map_err(|e| CliError::Usage(format!("--allow-host: {e}"))))
            .collect::<Result<_, _>>()?;
        let secrets = self
            .secrets
            .iter()
            .map(|s| secret_value(s))
            .collect::<Result<_, _>>()?;
        let limits: Limits = match &self.limits {
            Some(text) => {
                serde_json::from_str(text).map_err(|e| CliError::Usage(format!("--limits: {e}")))?
            }
            None => Limits::default(),
        };
        limits
            .validate()
            .map_err(|e| CliError::Usage(format!("--limits: {e}")))?;

        let classification = classify_context(&classes, &context);
        let grants = Grants {
            reads: self.reads.iter().cloned().collect(),
            upstream: upstream.keys().cloned().collect(),
            clearance: self.clearance,
            secrets,
            origins,
        };
        let step_name = self.step_name.clone().unwrap_or_else(|| {
            self.component
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(Attempt {
            task_id: self.task_id.clone(),
            step_name,
            attempt: self.attempt,
            config,
            grants,
            data: Arc::new(TaskData {
                context,
                classification,
                upstream,
            }),
            limits,
        })
    }
}

/// Run the step, print the report, map the outcome to an exit status.
pub(super) async fn run(args: StepRunArgs) -> Result<ExitCode, CliError> {
    let attempt = args.attempt()?;
    let wasm = std::fs::read(&args.component).map_err(|source| CliError::Read {
        path: args.component.display().to_string(),
        source,
    })?;
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_attempts: 1,
        pooling: true,
    })?;
    let module = sandbox.load(&wasm)?;
    let report = sandbox.run(&module, attempt).await;
    let json = serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into());
    println!("{json}");
    Ok(match &report.outcome {
        Outcome::Success { .. } => ExitCode::SUCCESS,
        Outcome::StepError {
            kind,
            code,
            message,
            ..
        } => {
            eprintln!("step failed ({kind:?}): {code}: {message}");
            ExitCode::from(EXIT_STEP_ERROR)
        }
        Outcome::Contained {
            containment,
            detail,
        } => {
            eprintln!("step contained ({containment:?}): {detail}");
            ExitCode::from(EXIT_CONTAINED)
        }
    })
}
