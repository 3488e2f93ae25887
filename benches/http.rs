//! The API under load over loopback HTTP, on SQLite: the refund task (4 steps, the last
//! `noop`) submitted with `POST /v1/tasks` and followed with `GET /v1/tasks/{id}`, with
//! workers and the audit sealer in the same process, as `stepbox serve` runs them.
//!
//! Two measurements, each with security on and, as the baseline in the same run, the
//! same pipeline with security bypassed *in this harness*: a plain axum router that
//! calls the same engine (with encryption and audit off) as a fixed principal and answers
//! unredacted. The server has no such switch; only this file builds the bypass. A third
//! server is the real API over an engine that writes no task or step audit events
//! (`Engine::without_audit`, also built only here), which splits security's cost between
//! the audit trail and the rest (tokens, policy, encryption, redaction).
//! - latency: one task at a time, submit → complete (p50, p99), the client waiting for
//!   the end with `GET /v1/tasks/{id}?wait_ms=` rather than polling;
//! - throughput: tasks submitted by concurrent clients, then drained; tasks/s over both.
//!
//! `cargo bench --bench http --features unprotected-baseline`. Under `cargo test` it runs
//! a few tasks each way, so the benchmark stays working. Environment:
//! `STEPBOX_BENCH_TASKS` (throughput tasks, default 2000), `STEPBOX_BENCH_SEQUENTIAL`
//! (latency tasks, default 200), `STEPBOX_BENCH_CLIENTS` (default 16),
//! `STEPBOX_BENCH_WORKERS` (default 4).

mod common;

/// The allocator of the `stepbox` binary (see host/src/main.rs), so the figures are of
/// what ships.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use common::{NS, Protection, agent, env_usize, refund_engine, request, unfinished};
use serde_json::{Value, json};
use stepbox::api::{self, ApiState, RateLimits};
use stepbox::auth::{DEV_AUDIENCE, DEV_ISSUER, DevKey, DevTokenRequest, Verifier};
use stepbox::engine::{CreateTask, Engine, WorkerPool};
use stepbox::policy::{AccessPolicy, NamespacePolicy};
use stepbox::sandbox::{Sandbox, SandboxConfig};
use stepbox::store::{DatabaseUrl, Store};

/// Where a server listens and what to send as a token.
#[derive(Clone)]
struct Target {
    base: String,
    token: Option<String>,
}

/// A server under test, its database, and how to stop it.
struct Served {
    target: Target,
    store: Store,
    stop: Vec<tokio::sync::watch::Sender<bool>>,
    _dir: tempfile::TempDir,
}

async fn workers(engine: &Engine, count: usize) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pool = WorkerPool {
        workers: count,
        name: "bench".into(),
        idle: Duration::from_millis(1),
        seal_every: Duration::from_millis(100),
    };
    let engine = engine.clone();
    tokio::spawn(async move { engine.work(&pool, stopped).await });
    stop
}

/// The real API: JWT, policy (the refund workflow sensitive, MFA fresh), encryption,
/// audit (unless `protection` turns it off), redaction. Rate limits raised so the load
/// generator is not refused.
async fn protected(sandbox: &Sandbox, worker_count: usize, protection: Protection) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("stepbox.db")))
        .await
        .unwrap();
    let policy = NamespacePolicy {
        sensitive_workflows: ["process_refund".to_owned()].into(),
        ..NamespacePolicy::default()
    };
    let engine = refund_engine(&store, sandbox, protection, &policy).await;
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let verifier = Verifier::new(key.key_set(), DEV_ISSUER, DEV_AUDIENCE);
    let access: AccessPolicy = serde_json::from_value(json!({ "roles": {
        "customer_success_agent": ["customer_success:read", common::PERMISSION]
    }}))
    .unwrap();
    let limit = NonZeroU32::new(1_000_000).unwrap();
    let state = ApiState::new(engine.clone(), verifier)
        .with_access(access)
        .with_rate_limits(RateLimits {
            per_ip: limit,
            per_principal: limit,
        });
    let token = key
        .mint(
            &DevTokenRequest {
                sub: "user_123".into(),
                roles: ["customer_success_agent".to_owned()].into(),
                mfa: true,
                ttl_secs: 3600,
                ..DevTokenRequest::default()
            },
            now_secs(),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(api::serve(listener, state, async move {
        let _ = stopped.changed().await;
    }));
    let working = workers(&engine, worker_count).await;
    Served {
        target: Target {
            base,
            token: Some(token),
        },
        store,
        stop: vec![stop, working],
        _dir: dir,
    }
}

/// The bypass: the same HTTP stack and engine, no token, no policy, no encryption or
/// audit, no redaction.
async fn baseline(sandbox: &Sandbox, worker_count: usize) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("stepbox.db")))
        .await
        .unwrap();
    let engine = refund_engine(
        &store,
        sandbox,
        Protection::None,
        &NamespacePolicy::default(),
    )
    .await;
    async fn create(State(engine): State<Engine>, Json(body): Json<Value>) -> Json<Value> {
        let created = engine
            .create_task(
                &agent(),
                CreateTask {
                    namespace: NS.into(),
                    workflow: "process_refund".into(),
                    version: None,
                    context: body["context"].clone(),
                    reason: None,
                    tags: vec![],
                    correlation_id: None,
                    request: None,
                },
            )
            .await
            .unwrap();
        let view = engine.task_view(&created.id).await.unwrap();
        Json(
            json!({ "id": view.id, "status": view.status.as_str(), "context": view.redacted_context(true) }),
        )
    }
    async fn read(
        State(engine): State<Engine>,
        Path(id): Path<String>,
        Query(query): Query<HashMap<String, u64>>,
    ) -> Json<Value> {
        let wait = Duration::from_millis(query.get("wait_ms").copied().unwrap_or(0));
        let task = engine.task_row_ended(&id, wait).await.unwrap();
        let view = engine.open_task(task).await.unwrap();
        Json(
            json!({ "id": view.id, "status": view.status.as_str(), "context": view.redacted_context(true) }),
        )
    }
    let router = axum::Router::new()
        .route("/v1/tasks", post(create))
        .route("/v1/tasks/{id}", get(read))
        .with_state(engine.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.changed().await;
            })
            .await
    });
    let working = workers(&engine, worker_count).await;
    Served {
        target: Target { base, token: None },
        store,
        stop: vec![stop, working],
        _dir: dir,
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn body(n: usize) -> String {
    let request = request(n);
    json!({ "namespace": NS, "name": "process_refund", "context": request.context }).to_string()
}

async fn submit(client: &reqwest::Client, served: &Target, n: usize) -> String {
    let mut post = client
        .post(format!("{}/v1/tasks", served.base))
        .header("content-type", "application/json")
        .body(body(n));
    if let Some(token) = &served.token {
        post = post.bearer_auth(token);
    }
    let response = post.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let task: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    task["id"].as_str().unwrap().to_owned()
}

/// Task `id`'s status once it has ended, or after `wait` if sooner.
async fn status(client: &reqwest::Client, served: &Target, id: &str, wait: Duration) -> String {
    let mut get = client.get(format!(
        "{}/v1/tasks/{id}?wait_ms={}",
        served.base,
        wait.as_millis()
    ));
    if let Some(token) = &served.token {
        get = get.bearer_auth(token);
    }
    let task: Value =
        serde_json::from_str(&get.send().await.unwrap().text().await.unwrap()).unwrap();
    task["status"].as_str().unwrap().to_owned()
}

/// Submit → complete, one task at a time; the sorted latencies.
async fn latencies(served: &Target, tasks: usize) -> Vec<Duration> {
    let client = reqwest::Client::new();
    let mut took = Vec::with_capacity(tasks);
    for n in 0..tasks {
        let start = Instant::now();
        let id = submit(&client, served, n).await;
        // As a client waiting for its outcome would: the server answers once it ends.
        loop {
            match status(&client, served, &id, Duration::from_secs(10))
                .await
                .as_str()
            {
                "complete" => break,
                "pending" | "in_progress" => {}
                other => panic!("task {id} ended {other}"),
            }
        }
        took.push(start.elapsed());
    }
    took.sort();
    took
}

/// `tasks` submitted by `clients` at once, then drained; tasks/s over both.
async fn throughput(served: &Served, tasks: usize, clients: usize) -> f64 {
    let start = Instant::now();
    let submitters: Vec<_> = (0..clients)
        .map(|c| {
            let target = served.target.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in (c..tasks).step_by(clients) {
                    submit(&client, &target, 1_000_000 + n).await;
                }
            })
        })
        .collect();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    while unfinished(&served.store).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tasks as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (sequential, tasks) = if benching {
        (
            env_usize("STEPBOX_BENCH_SEQUENTIAL", 200),
            env_usize("STEPBOX_BENCH_TASKS", 2000),
        )
    } else {
        (3, 12)
    };
    if let Ok(filter) = std::env::var("STEPBOX_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let clients = env_usize("STEPBOX_BENCH_CLIENTS", 16);
    let worker_count = env_usize("STEPBOX_BENCH_WORKERS", 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    runtime.block_on(async {
        println!(
            "HTTP on loopback, SQLite: latency over {sequential} sequential tasks, throughput of \
             {tasks} tasks from {clients} clients, {worker_count} workers"
        );
        let mut figures = Vec::new();
        let servers = [
            ("security on", Some(Protection::Full)),
            ("security on, no audit", Some(Protection::EncryptionOnly)),
            ("baseline (bypassed)", None),
        ];
        for (label, protection) in servers {
            let served = match protection {
                Some(protection) => protected(&sandbox, worker_count, protection).await,
                None => baseline(&sandbox, worker_count).await,
            };
            let took = latencies(&served.target, sequential).await;
            let rate = throughput(&served, tasks, clients).await;
            for stop in &served.stop {
                let _ = stop.send(true);
            }
            let (p50, p99) = (percentile(&took, 0.5), percentile(&took, 0.99));
            println!(
                "  {label:<24} submit→complete p50 {:>6.2} ms, p99 {:>6.2} ms | {:>6.0} tasks/s",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                rate
            );
            figures.push((p50, rate));
        }
        // Each cost as a share of the baseline's latency (and time per task), so that the
        // parts add up to the whole.
        let (full, no_audit, base) = (figures[0], figures[1], figures[2]);
        for (label, more, less) in [
            ("cost of security     ", full, base),
            ("  of which audit     ", full, no_audit),
            ("  of which the rest  ", no_audit, base),
        ] {
            println!(
                "  {label}: {:+6.1}% latency (p50), {:+6.1}% time per task under load",
                (more.0.as_secs_f64() - less.0.as_secs_f64()) / base.0.as_secs_f64() * 100.0,
                (1.0 / more.1 - 1.0 / less.1) * base.1 * 100.0
            );
        }
    });
}
