//! The commands that talk to a running server over its HTTP API: `module push`,
//! `workflow apply`, `task submit|get|list|wait`. Each sends the bearer token from
//! `--token` or `STEPBOX_TOKEN`, prints the server's JSON answer on stdout, and on a
//! problem answer prints its status, code and detail on stderr and exits 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::CliError;

/// Where the API is and who is calling.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The API's base URL.
    #[arg(long, env = "STEPBOX_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// A bearer token (e.g. from `stepbox token`).
    #[arg(long, env = "STEPBOX_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// `stepbox module …`
#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// Upload a component into a namespace (needs the namespace's manage permission).
    Push(ModulePushArgs),
}

/// `stepbox module push`
#[derive(Debug, Args)]
pub struct ModulePushArgs {
    /// The component (`.wasm`, built for wasm32-wasip2).
    pub file: PathBuf,
    /// The namespace to upload into.
    #[arg(long)]
    pub namespace: String,
    /// The module's name (default: the file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Its version, MAJOR.MINOR.PATCH.
    #[arg(long)]
    pub version: String,
    /// An Ed25519 private key (PKCS#8 PEM, e.g. `openssl genpkey -algorithm ed25519`) to
    /// sign the component's SHA-256 digest with; its public key must be one of the
    /// namespace's `trusted_keys`.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `stepbox workflow …`
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Apply a workflow definition (YAML or JSON; needs the namespace's manage permission).
    Apply(WorkflowApplyArgs),
}

/// `stepbox workflow apply`
#[derive(Debug, Args)]
pub struct WorkflowApplyArgs {
    /// The definition: `.yaml`/`.yml` is sent as YAML, anything else as JSON.
    pub file: PathBuf,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `stepbox task …`
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task and print it (its context redacted for you).
    Submit(TaskSubmitArgs),
    /// Print a task.
    Get(TaskIdArgs),
    /// List a namespace's tasks, newest first.
    List(TaskListArgs),
    /// Follow a task step by step until it finishes; exit 0 if it completed.
    Wait(TaskWaitArgs),
}

/// `stepbox task submit`
#[derive(Debug, Args)]
pub struct TaskSubmitArgs {
    /// The namespace.
    #[arg(long)]
    pub namespace: String,
    /// The workflow's name.
    #[arg(long)]
    pub workflow: String,
    /// Its version (default: the latest).
    #[arg(long)]
    pub version: Option<String>,
    /// The context: inline JSON, or `@FILE`.
    #[arg(long)]
    pub context: String,
    /// Why the task is created (kept with it and in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
    /// Labels, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Then follow it as `task wait` does.
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `stepbox task get`
#[derive(Debug, Args)]
pub struct TaskIdArgs {
    /// The task's id (`task_…`).
    pub id: String,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `stepbox task list`
#[derive(Debug, Args)]
pub struct TaskListArgs {
    /// The namespace.
    #[arg(long)]
    pub namespace: String,
    /// Only tasks in this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only tasks of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only tasks this subject created.
    #[arg(long)]
    pub created_by: Option<String>,
    /// At most this many tasks.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `stepbox task wait`
#[derive(Debug, Args)]
pub struct TaskWaitArgs {
    /// The task's id.
    pub id: String,
    /// Give up after this many seconds (exit 2).
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Server and token.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How long each of `wait`'s reads waits on the server for the task to end: how often
/// the steps' progress is shown.
const POLL: Duration = Duration::from_millis(200);

/// A connection to the API.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// What the server answered: JSON, or a problem (already printed).
enum Answer {
    Ok(Value),
    Problem,
}

impl Api {
    fn new(args: &ClientArgs) -> Result<Self, CliError> {
        let base = args.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(
                "--server must be an http:// or https:// URL".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| CliError::Http(e.to_string()))?;
        Ok(Self {
            http,
            base,
            token: args.token.trim().to_owned(),
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, CliError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CliError::Http(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CliError::Http(e.to_string()))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Answer::Ok(body));
        }
        eprintln!(
            "error: {} {}: {}",
            status.as_u16(),
            body["code"].as_str().unwrap_or("unknown"),
            body["detail"]
                .as_str()
                .unwrap_or("the server gave no detail"),
        );
        Ok(Answer::Problem)
    }

    async fn get(&self, path: &str) -> Result<Answer, CliError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn print(value: &Value) -> ExitCode {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

fn printed(answer: Answer) -> ExitCode {
    match answer {
        Answer::Ok(value) => print(&value),
        Answer::Problem => ExitCode::FAILURE,
    }
}

/// `stepbox module push`
pub async fn module(command: ModuleCommand) -> Result<ExitCode, CliError> {
    let ModuleCommand::Push(args) = command;
    let api = Api::new(&args.client)?;
    let wasm = read(&args.file)?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| CliError::Usage("give the module a --name".into()))?
            .to_owned(),
    };
    let mut request = api
        .http
        .put(format!(
            "{}/v1/modules/{}/{}/{}",
            api.base, args.namespace, name, args.version
        ))
        .header("content-type", "application/wasm");
    if let Some(path) = &args.signing_key {
        use ed25519_dalek::Signer;
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        use sha2::Digest;
        let pem = String::from_utf8(read(path)?)
            .map_err(|_| CliError::Usage("the signing key is not a PEM file".into()))?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
            CliError::Usage("the signing key is not an Ed25519 PKCS#8 PEM private key".into())
        })?;
        let signature = key.sign(&sha2::Sha256::digest(&wasm));
        request = request.header(
            crate::api::SIGNATURE_HEADER,
            hex::encode(signature.to_bytes()),
        );
    }
    Ok(printed(api.send(request.body(wasm)).await?))
}

/// `stepbox workflow apply`
pub async fn workflow(command: WorkflowCommand) -> Result<ExitCode, CliError> {
    let WorkflowCommand::Apply(args) = command;
    let api = Api::new(&args.client)?;
    let text = read(&args.file)?;
    let yaml = args
        .file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    let media = if yaml {
        "application/yaml"
    } else {
        "application/json"
    };
    let request = api
        .http
        .post(format!("{}/v1/workflows", api.base))
        .header("content-type", media)
        .body(text);
    Ok(printed(api.send(request).await?))
}

/// `stepbox task …`
pub async fn task(command: TaskCommand) -> Result<ExitCode, CliError> {
    match command {
        TaskCommand::Submit(args) => submit(args).await,
        TaskCommand::Get(args) => {
            let api = Api::new(&args.client)?;
            Ok(printed(api.get(&format!("/v1/tasks/{}", args.id)).await?))
        }
        TaskCommand::List(args) => list(args).await,
        TaskCommand::Wait(args) => {
            let api = Api::new(&args.client)?;
            wait(&api, &args.id, Duration::from_secs(args.timeout_secs)).await
        }
    }
}

async fn submit(args: TaskSubmitArgs) -> Result<ExitCode, CliError> {
    let api = Api::new(&args.client)?;
    let context_text = match args.context.strip_prefix('@') {
        Some(path) => String::from_utf8(read(Path::new(path))?)
            .map_err(|_| CliError::Usage("the context file is not UTF-8".into()))?,
        None => args.context.clone(),
    };
    // The context may hold PII: a parse error names only where, never what.
    let context: Value = serde_json::from_str(&context_text).map_err(|e| {
        CliError::Usage(format!(
            "--context is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let body = json!({
        "namespace": args.namespace,
        "name": args.workflow,
        "version": args.version,
        "context": context,
        "reason": args.reason,
        "tags": args.tags,
    });
    let request = api
        .http
        .post(format!("{}/v1/tasks", api.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    let Answer::Ok(task) = api.send(request).await? else {
        return Ok(ExitCode::FAILURE);
    };
    print(&task);
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let id = task["id"].as_str().unwrap_or_default().to_owned();
    wait(&api, &id, Duration::from_secs(args.timeout_secs)).await
}

async fn list(args: TaskListArgs) -> Result<ExitCode, CliError> {
    let api = Api::new(&args.client)?;
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    while items.len() < args.limit {
        let page = (args.limit - items.len()).min(100);
        let mut query = vec![
            ("namespace", args.namespace.clone()),
            ("limit", page.to_string()),
        ];
        for (key, value) in [
            ("status", &args.status),
            ("workflow", &args.workflow),
            ("created_by", &args.created_by),
            ("cursor", &cursor),
        ] {
            if let Some(value) = value {
                query.push((key, value.clone()));
            }
        }
        let request = api.http.get(format!("{}/v1/tasks", api.base)).query(&query);
        let Answer::Ok(answer) = api.send(request).await? else {
            return Ok(ExitCode::FAILURE);
        };
        if let Some(page) = answer["items"].as_array() {
            items.extend(page.iter().cloned());
        }
        match answer["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(print(&json!({ "items": items })))
}

/// Follow task `id`: one line on stderr per step change, the final task on stdout.
/// Exit 0 complete, 1 error or cancelled (or a problem answer), 2 out of time.
async fn wait(api: &Api, id: &str, timeout: Duration) -> Result<ExitCode, CliError> {
    let deadline = Instant::now() + timeout;
    let mut shown: Vec<(String, String, i64)> = Vec::new();
    loop {
        // The task before its steps: once it is seen finished, the steps read after it
        // are final, so the last lines printed are the steps' last states.
        // The server answers as soon as the task ends, or after a poll's length with
        // the task unfinished: the steps are shown as they go, the end without delay.
        let left = deadline.saturating_duration_since(Instant::now()).min(POLL);
        let path = format!("/v1/tasks/{id}?wait_ms={}", left.as_millis());
        let Answer::Ok(task) = api.get(&path).await? else {
            return Ok(ExitCode::FAILURE);
        };
        let Answer::Ok(steps) = api.get(&format!("/v1/tasks/{id}/steps")).await? else {
            return Ok(ExitCode::FAILURE);
        };
        for step in steps["steps"].as_array().into_iter().flatten() {
            let name = step["name"].as_str().unwrap_or_default().to_owned();
            let status = step["status"].as_str().unwrap_or_default().to_owned();
            let attempts = step["attempts"].as_i64().unwrap_or(0);
            let now = (name.clone(), status.clone(), attempts);
            if shown.contains(&now) {
                continue;
            }
            shown.retain(|(n, _, _)| *n != name);
            shown.push(now);
            let error = step["error"]["code"]
                .as_str()
                .map(|code| format!(", error {code}"))
                .unwrap_or_default();
            eprintln!("  {name}: {status} (attempt {attempts}{error})");
        }
        match task["status"].as_str() {
            Some("complete") => return Ok(print(&task)),
            Some("error" | "cancelled") => {
                print(&task);
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            eprintln!("error: task {id} did not finish within {timeout:?}");
            return Ok(ExitCode::from(2));
        }
    }
}
