//! `stepbox serve` as the README runs it: a real process on a fresh data directory sets
//! itself up, a token from `stepbox token` creates the refund task over HTTP, the workers
//! run it to completion, and neither the log nor the database file holds the customer's
//! email. A second start on the same directory keeps the installation.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{CUSTOMER_EMAIL, NOTIFY_KEY, TestServer, components_dir, stepbox};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `stepbox serve` with its log (at info) going to `log`, and wait until it is ready.
async fn serve(data_dir: &Path, port: u16, notify: &str, log: &Path) -> Child {
    serve_with(data_dir, port, notify, log, &[]).await
}

/// [`serve`] with `extra` flags.
async fn serve_with(
    data_dir: &Path,
    port: u16,
    notify: &str,
    log: &Path,
    extra: &[&std::ffi::OsStr],
) -> Child {
    let child = stepbox(&["serve"], data_dir)
        .args(extra)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--steps-dir")
        .arg(components_dir())
        .arg("--notify-endpoint")
        .arg(notify)
        .env("STEPBOX_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{port}/health/ready")).await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "serve not ready: {}",
            std::fs::read_to_string(log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stop it as Ctrl-C would, and wait for it to exit cleanly.
fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "serve exited with {exit}");
}

fn token(data_dir: &Path, args: &[&str]) -> String {
    let output = stepbox(
        &[
            "token",
            "--sub",
            "user_123",
            "--roles",
            "customer_success_agent",
        ],
        data_dir,
    )
    .args(args)
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

async fn post(base: &str, token: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

async fn get_task(base: &str, token: &str, id: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/tasks/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_sets_itself_up_and_runs_the_refund_story_over_http() {
    let notify = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let port = free_port();
    let server = serve(&data, port, &notify.url("/notify"), &log).await;
    for made in ["keys.json", "jwt-dev-key.pem", "policy.json", "stepbox.db"] {
        assert!(data.join(made).exists(), "{made} made on first start");
    }
    let sealed = stepbox(
        &[
            "secrets",
            "set",
            "customer_success",
            "NOTIFY_API_KEY",
            "--from-env",
            "TEST_NOTIFY_KEY",
        ],
        &data,
    )
    .env("TEST_NOTIFY_KEY", NOTIFY_KEY)
    .output()
    .unwrap();
    assert!(
        sealed.status.success(),
        "{}",
        String::from_utf8_lossy(&sealed.stderr)
    );

    let base = format!("http://127.0.0.1:{port}");
    let body = json!({
        "namespace": "customer_success", "name": "process_refund",
        "context": {
            "customer_id": "cus_8812", "customer_email": CUSTOMER_EMAIL, "order_id": "ord_5521",
            "refund_amount": 150.0, "currency": "EUR", "reason": "item arrived damaged"
        }
    });
    // Without a fresh MFA claim the sensitive workflow is refused.
    let no_mfa = token(&data, &[]);
    let (status, problem) = post(&base, &no_mfa, &body).await;
    assert_eq!((status, &problem["code"]), (403, &json!("mfa_required")));

    let agent = token(&data, &["--mfa"]);
    let (status, task) = post(&base, &agent, &body).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["context"]["customer_email"], "[REDACTED]");
    assert_eq!(task["security_context"]["created_by"], "user_123");
    let id = task["id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let seen = get_task(&base, &agent, &id).await;
        if seen["status"] != "pending" && seen["status"] != "in_progress" {
            break seen;
        }
        assert!(Instant::now() < deadline, "task not finished: {seen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(notify.seen().len(), 1, "the customer was notified once");
    stop(server);

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("stepbox serving"), "{logged}");
    assert!(
        !logged.contains(CUSTOMER_EMAIL) && !logged.contains(NOTIFY_KEY),
        "{logged}"
    );
    for file in ["stepbox.db", "stepbox.db-wal"] {
        if let Ok(bytes) = std::fs::read(data.join(file)) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(CUSTOMER_EMAIL),
                "{file} holds the email in plaintext"
            );
        }
    }

    // The auditor's tools on the installation: what user_123 did; a whole export, verified
    // offline with the public key alone; an edited line in it named.
    let queried = stepbox(&["audit", "query", "--user-id", "user_123"], &data)
        .output()
        .unwrap();
    assert!(
        queried.status.success(),
        "{}",
        String::from_utf8_lossy(&queried.stderr)
    );
    let queried: Value = serde_json::from_slice(&queried.stdout).unwrap();
    let did: Vec<&str> = queried["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(did[..2], ["task.denied", "task.created"], "{queried}");
    assert!(!queried.to_string().contains(CUSTOMER_EMAIL));
    let export = dir.path().join("audit.jsonl");
    let exported = stepbox(&["audit", "export", "-o", export.to_str().unwrap()], &data)
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&exported.stderr).into_owned();
    assert!(
        exported.status.success() && progress.contains("exported"),
        "{progress}"
    );
    let public = stepbox(&["audit", "public-key"], &data).output().unwrap();
    assert!(public.status.success());
    let key = dir.path().join("audit.pub");
    std::fs::write(&key, &public.stdout).unwrap();
    let offline = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_stepbox"))
            .args(["audit", "verify", "--export"])
            .arg(file)
            .arg("--public-key")
            .arg(&key)
            .output()
            .unwrap()
    };
    let verified = offline(&export);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert!(report["checkpoints"].as_u64().unwrap() >= 1, "{report}");
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(!text.contains(CUSTOMER_EMAIL));
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(
        &tampered,
        text.replacen("\"outcome\":\"success\"", "\"outcome\":\"denied\"", 1),
    )
    .unwrap();
    let refused = offline(&tampered);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(": edited"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Retention by hand: nothing is due yet (the development policy keeps PII 3 years).
    let retained = stepbox(&["retention", "run"], &data).output().unwrap();
    assert!(
        retained.status.success(),
        "{}",
        String::from_utf8_lossy(&retained.stderr)
    );
    let run: Value = serde_json::from_slice(&retained.stdout).unwrap();
    assert_eq!(run["tasks_purged"], json!({}), "{run}");
    assert!(data.join("subject-vault.db").exists());

    // A second start keeps the installation: same keys, same workflow, the task still there.
    let server = serve(&data, port, &notify.url("/notify"), &log).await;
    let again = get_task(&base, &agent, &id).await;
    assert_eq!(again["status"], "complete");
    stop(server);
}

/// The `stepbox` binary as an API client of `base`, holding `token`.
fn client(args: &[&str], base: &str, token: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stepbox"))
        .args(args)
        .env("STEPBOX_SERVER", base)
        .env("STEPBOX_TOKEN", token)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_pushes_a_module_applies_a_yaml_workflow_and_follows_a_task_over_http() {
    let notify = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let port = free_port();
    let server = serve(&data, port, &notify.url("/notify"), &log).await;
    let base = format!("http://127.0.0.1:{port}");
    let minted = stepbox(&["token", "--sub", "ops_1", "--roles", "admin"], &data)
        .output()
        .unwrap();
    let admin = String::from_utf8(minted.stdout).unwrap();
    let admin = admin.trim().lines().last().unwrap().to_owned();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let noop = components_dir().join("noop.wasm");
    let pushed = client(
        &[
            "module",
            "push",
            noop.to_str().unwrap(),
            "--namespace",
            "customer_success",
            "--version",
            "0.3.0",
        ],
        &base,
        &admin,
    );
    assert!(pushed.status.success(), "{}", text(&pushed.stderr));
    let module: Value = serde_json::from_slice(&pushed.stdout).unwrap();
    assert_eq!(
        (module["name"].as_str(), module["version"].as_str()),
        (Some("noop"), Some("0.3.0"))
    );

    let definition = dir.path().join("ping.yaml");
    std::fs::write(
        &definition,
        "namespace: customer_success\nname: ping\nversion: 1.0.0\n\
         input_schema: { type: object, properties: { note: { type: string } } }\n\
         steps:\n  - { name: first, module: noop@0.3.0 }\n  - { name: second, module: noop@0.3.0, depends_on: [first] }\n",
    )
    .unwrap();
    let applied = client(
        &["workflow", "apply", definition.to_str().unwrap()],
        &base,
        &admin,
    );
    assert!(applied.status.success(), "{}", text(&applied.stderr));

    let submitted = client(
        &[
            "task",
            "submit",
            "--namespace",
            "customer_success",
            "--workflow",
            "ping",
            "--context",
            r#"{"note": "hi"}"#,
            "--wait",
            "--timeout-secs",
            "60",
        ],
        &base,
        &admin,
    );
    let progress = text(&submitted.stderr);
    assert!(submitted.status.success(), "{progress}");
    assert!(
        progress.contains("first: complete") && progress.contains("second: complete"),
        "{progress}"
    );
    let listed = client(
        &[
            "task",
            "list",
            "--namespace",
            "customer_success",
            "--workflow",
            "ping",
        ],
        &base,
        &admin,
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["items"][0]["status"], "complete");

    // Refusals are one line on stderr with the status and the stable code, exit 1.
    let missing = client(&["task", "get", "task_00ff"], &base, &admin);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("404 not_found"),
        "{}",
        text(&missing.stderr)
    );
    let agent = token(&data, &["--mfa"]);
    let refused = client(
        &["workflow", "apply", definition.to_str().unwrap()],
        &base,
        &agent,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("403 manage_denied"),
        "{}",
        text(&refused.stderr)
    );
    let forged = client(
        &["task", "list", "--namespace", "customer_success"],
        &base,
        "not-a-token",
    );
    assert!(
        text(&forged.stderr).contains("401"),
        "{}",
        text(&forged.stderr)
    );
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_files_namespace_policies_are_applied_at_start() {
    let notify = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        json!({
            "roles": { "customer_success_agent": ["customer_success:read", "customer_success.process_refund:execute"] },
            "namespaces": { "customer_success": {
                "sensitive_workflows": ["process_refund"],
                "revoked_permissions": ["customer_success.process_refund:execute"]
            } }
        })
        .to_string(),
    )
    .unwrap();
    let port = free_port();
    let flags = ["--policy".as_ref(), policy.as_os_str()];
    let child = serve_with(&data, port, &notify.url("/notify"), &log, &flags).await;
    let agent = token(&data, &["--mfa"]);
    let body = json!({
        "namespace": "customer_success", "name": "process_refund",
        "context": { "customer_id": "cus_1", "customer_email": CUSTOMER_EMAIL, "order_id": "ord_1",
                     "refund_amount": 10.0, "reason": "late" }
    });
    let (status, problem) = post(&format!("http://127.0.0.1:{port}"), &agent, &body).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("permission_denied")),
        "the file's revocation counts"
    );
    stop(child);

    // A namespace policy that cannot mean what it says stops the start, naming it.
    std::fs::write(
        &policy,
        json!({ "namespaces": { "customer_success": { "mfa_max_age_secs": 0 } } }).to_string(),
    )
    .unwrap();
    let output = stepbox(&["serve", "--policy", policy.to_str().unwrap()], &data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("namespaces.customer_success: mfa_max_age_secs"),
        "{stderr}"
    );
}
