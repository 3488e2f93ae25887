//! Shared fixtures: the example components (built once per test run), one shared sandbox,
//! refund task data, and a recording HTTP server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use stepbox::classify::{Classification, FieldClasses, classify_context};
use stepbox::sandbox::{
    Attempt, AttemptReport, Grants, Limits, Sandbox, SandboxConfig, StepModule, TaskData,
};

pub const CUSTOMER_EMAIL: &str = "jane.doe@example.com";
pub const NOTIFY_KEY: &str = "nk_live_7f3a9c2e51d04b8a";

/// The `stepbox` binary with `args` on `data_dir`, deaf to the environment variables that
/// would point it at another database, key file or policy.
pub fn stepbox(args: &[&str], data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stepbox"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("STEPBOX_DATABASE_URL")
        .env_remove("STEPBOX_KEYS_FILE")
        .env_remove("STEPBOX_AUDIT_KEY_FILE")
        .env_remove("STEPBOX_POLICY_FILE");
    command
}

/// Build every example step once per test process and return the output directory.
pub fn components_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../example-steps");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("target"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building example-steps failed");
        root.join("target/wasm32-wasip2/release")
    })
}

pub fn component_path(name: &str) -> PathBuf {
    components_dir().join(format!("{name}.wasm"))
}

pub fn component(name: &str) -> Vec<u8> {
    std::fs::read(component_path(name)).unwrap_or_else(|e| panic!("{name}.wasm: {e}"))
}

/// One sandbox for the whole test binary, as in a server process.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(SandboxConfig::default()).expect("sandbox starts"))
}

pub fn load(name: &str) -> StepModule {
    sandbox()
        .load(&component(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A refund task's data, classified the way the workflow's schema says.
pub fn refund_data(amount: f64, upstream: BTreeMap<String, Value>) -> Arc<TaskData> {
    let schema = json!({
        "type": "object",
        "properties": {
            "customer_id": { "type": "string", "x-data-classification": "pii-identifier", "x-data-subject": true },
            "customer_email": { "type": "string", "x-data-classification": "pii-contact" },
            "order_id": { "type": "string", "x-data-classification": "internal" },
            "refund_amount": { "type": "number", "x-data-classification": "financial" },
            "currency": { "type": "string", "x-data-classification": "internal" },
            "reason": { "type": "string", "x-data-classification": "internal" }
        }
    });
    let context = json!({
        "customer_id": "cus_8812",
        "customer_email": CUSTOMER_EMAIL,
        "order_id": "ord_5521",
        "refund_amount": amount,
        "currency": "EUR",
        "reason": "item arrived damaged",
        "customer_ssn": "123-45-6789"
    });
    let context = context.as_object().unwrap().clone();
    let classes = FieldClasses::from_schema(&schema).unwrap();
    let classification = classify_context(&classes, &context);
    Arc::new(TaskData {
        context,
        classification,
        upstream,
    })
}

pub fn grants(reads: &[&str], upstream: &[&str], clearance: Classification) -> Grants {
    Grants {
        reads: reads.iter().map(|s| s.to_string()).collect(),
        upstream: upstream.iter().map(|s| s.to_string()).collect(),
        clearance,
        ..Grants::default()
    }
}

pub fn attempt(step: &str, config: Value, grants: Grants, data: Arc<TaskData>) -> Attempt {
    Attempt {
        task_id: "task_e2e_0001".into(),
        step_name: step.into(),
        attempt: 1,
        config,
        grants,
        data,
        limits: Limits::default(),
    }
}

pub async fn run(step: &str, attempt: Attempt) -> AttemptReport {
    sandbox().run(&load(step), attempt).await
}

/// Run the trivial step: proves the sandbox still serves after whatever ran before.
pub async fn assert_still_serving() {
    let report = run(
        "noop",
        attempt("noop", json!({}), Grants::default(), Arc::default()),
    )
    .await;
    assert!(
        report.outcome.is_success(),
        "noop after a hostile step: {:?}",
        report.outcome
    );
}

/// A request the test server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: std::time::Instant,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP server on 127.0.0.1 that records every request. Routes:
/// `/notify` → 200 JSON, `/echo` → echoes the authorization header and body,
/// `/unavailable` → 503, `/delay` → answers after 0.4 s, `/slow` → answers after 5 s, `/redirect?to=URL` → 302 to URL,
/// `/redirect307?to=URL` → 307 to URL, `/gzip` and `/partial` → the echo, claiming to be
/// gzip-encoded or a 206 byte range, `/switch` → 503 while [`TestServer::set_down`] says
/// so, else like `/notify`.
pub struct TestServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    down: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    down: Arc<AtomicBool>,
}

impl TestServer {
    pub async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            seen: seen.clone(),
            down: down.clone(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, seen, down }
    }

    /// Make `/switch` answer 503 (`true`) or 200 (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(Shared { seen, down }): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    seen.lock().unwrap().push(Seen {
        at: std::time::Instant::now(),
        method,
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body: body.clone(),
    });
    match uri.path() {
        "/notify" => (StatusCode::OK, axum::Json(json!({ "id": "msg_1" }))).into_response(),
        "/echo" => {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default();
            format!("auth={auth} body={}", String::from_utf8_lossy(&body)).into_response()
        }
        "/unavailable" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "/switch" if down.load(Ordering::SeqCst) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "/switch" => (StatusCode::OK, axum::Json(json!({ "id": "msg_2" }))).into_response(),
        "/delay" => {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "done".into_response()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK.into_response()
        }
        "/redirect" | "/redirect307" => {
            let to = uri
                .query()
                .and_then(|q| q.strip_prefix("to="))
                .unwrap_or("/")
                .to_owned();
            let status = if uri.path() == "/redirect" {
                StatusCode::FOUND
            } else {
                StatusCode::TEMPORARY_REDIRECT
            };
            (status, [("location", to)]).into_response()
        }
        "/gzip" => ([("content-encoding", "gzip")], body).into_response(),
        "/partial" => (
            StatusCode::PARTIAL_CONTENT,
            [("content-range", "bytes 0-3/100")],
            body,
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A subject vault in a directory of its own that outlives the test (a few KiB in /tmp).
pub async fn vault() -> Arc<stepbox::crypto::SubjectVault> {
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(
        stepbox::crypto::SubjectVault::open(&dir.join("subject-vault.db"))
            .await
            .unwrap(),
    )
}
