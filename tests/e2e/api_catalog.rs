//! `/v1/modules` and `/v1/workflows` on a real socket with real tokens, on both
//! databases: a namespace's manager uploads components (signed, where the namespace trusts
//! keys and demands signatures) and applies workflows in JSON or YAML; readers list and
//! read them; everyone else is refused with a stable code and an audit event; a hostile
//! component and an invalid definition are refused with the exact reason.

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api_tasks::{Api, answer, both_apis, events, get, token};
use crate::engine::{NS, drain};
use crate::support::component;

async fn put_module(
    api: &Api,
    token: &str,
    path: &str,
    wasm: &[u8],
    signature: Option<String>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .put(format!("{}/v1/modules/{path}", api.base))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(wasm.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-stepbox-signature", signature);
    }
    answer(request.send().await.unwrap()).await
}

async fn apply(api: &Api, token: &str, media: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/workflows", api.base))
        .bearer_auth(token)
        .header("content-type", media)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    answer(response).await
}

fn sign(key: &SigningKey, wasm: &[u8]) -> String {
    hex::encode(key.sign(&Sha256::digest(wasm)).to_bytes())
}

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}@{}",
                m["name"].as_str().unwrap(),
                m["version"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managers_upload_modules_signed_where_the_namespace_demands_and_hostile_ones_are_refused() {
    both_apis(|api| async move {
        let admin = token(&api, "user_1", &["ns_admin"], &[], false, 0);
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
        let stranger = token(&api, "user_777", &["payments_agent"], &[], true, 0);
        let noop = component("noop");

        let (status, problem) =
            put_module(&api, &agent, "customer_success/noop/0.1.0", &noop, None).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("manage_denied"))
        );
        let (status, module) =
            put_module(&api, &admin, "customer_success/noop/0.1.0", &noop, None).await;
        assert_eq!(status, 201, "{module}");
        assert_eq!(module["digest"], hex::encode(Sha256::digest(&noop)));
        assert_eq!(
            (module["signed"].as_bool(), module["size"].as_u64()),
            (Some(false), Some(noop.len() as u64))
        );
        let (status, problem) =
            put_module(&api, &admin, "customer_success/noop/0.1.0", &noop, None).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (409, Some("conflict")),
            "immutable"
        );

        // A component importing the filesystem never gets in, and the refusal says why.
        let hostile = component("forbidden_filesystem");
        let (status, problem) =
            put_module(&api, &admin, "customer_success/fs/0.1.0", &hostile, None).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("invalid_module")),
            "{problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("wasi:filesystem"),
            "{problem}"
        );
        let (status, _) = put_module(
            &api,
            &admin,
            "customer_success/garbage/0.1.0",
            b"\0asm junk",
            None,
        )
        .await;
        assert_eq!(status, 422);
        let response = reqwest::Client::new()
            .put(format!(
                "{}/v1/modules/customer_success/noop/0.9.0",
                api.base
            ))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(noop.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer(response).await.1["code"], "unsupported_media_type");
        let (status, _) = put_module(&api, &admin, "customer_success/noop/1.0", &noop, None).await;
        assert_eq!(status, 422, "a version that is not MAJOR.MINOR.PATCH");

        // The namespace trusts one release key and demands signatures.
        let release = SigningKey::from_bytes(&[7; 32]);
        let impostor = SigningKey::from_bytes(&[8; 32]);
        let mut policy = api.engine.namespace_policy(NS).await.unwrap();
        policy.trusted_keys = [(
            "release".to_owned(),
            hex::encode(release.verifying_key().to_bytes()),
        )]
        .into();
        policy.require_signed_modules = true;
        api.engine
            .set_policy(NS, &policy, "user:admin")
            .await
            .unwrap();
        let path = "customer_success/noop/0.2.0";
        for (signature, status, code) in [
            (None, 403, "untrusted_module"),
            (Some(sign(&impostor, &noop)), 403, "untrusted_module"),
            (
                Some(sign(&release, b"other bytes")),
                403,
                "untrusted_module",
            ),
            (Some("zz".repeat(64)), 422, "invalid_signature"),
        ] {
            let (got, problem) = put_module(&api, &admin, path, &noop, signature).await;
            assert_eq!(
                (got, problem["code"].as_str()),
                (status, Some(code)),
                "{problem}"
            );
        }
        let (status, module) =
            put_module(&api, &admin, path, &noop, Some(sign(&release, &noop))).await;
        assert_eq!(
            (status, module["signed"].as_bool()),
            (201, Some(true)),
            "{module}"
        );
        let uploaded = events(&api.store, "module.uploaded").await;
        assert_eq!(uploaded.last().unwrap().1["signed_by"], "release");
        let refused: Vec<String> = events(&api.store, "module.refused")
            .await
            .into_iter()
            .map(|(_, d)| d["code"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            refused,
            [
                "invalid_module",
                "invalid_module",
                "untrusted_module",
                "untrusted_module",
                "untrusted_module"
            ]
        );
        assert_eq!(events(&api.store, "module.denied").await.len(), 1);

        // Readers list and read; a reader of another namespace is refused.
        let (status, list) = get(&api, &agent, &format!("/v1/modules?namespace={NS}")).await;
        assert_eq!(status, 200, "{list}");
        let listed = names(&list);
        for expected in ["noop@0.1.0", "noop@0.2.0", "execute_refund@0.1.0"] {
            assert!(listed.contains(&expected.to_owned()), "{listed:?}");
        }
        assert!(!listed.iter().any(|m| m.starts_with("fs@")), "{listed:?}");
        let (status, one) = get(&api, &agent, "/v1/modules/customer_success/noop/0.2.0").await;
        assert_eq!((status, one["signed"].as_bool()), (200, Some(true)));
        let (status, _) = get(&api, &agent, "/v1/modules/customer_success/noop/9.9.9").await;
        assert_eq!(status, 404);
        let (status, problem) = get(&api, &stranger, &format!("/v1/modules?namespace={NS}")).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("read_denied"))
        );
    })
    .await;
}

const PING_YAML: &str = "
namespace: customer_success
name: ping
version: 1.0.0
input_schema:
  type: object
  properties:
    note: { type: string, x-data-classification: internal }
steps:
  - { name: first, module: noop@0.1.0 }
  - { name: left, module: noop@0.1.0, depends_on: [first] }
  - { name: right, module: noop@0.1.0, depends_on: [first] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managers_apply_yaml_or_json_workflows_that_then_run_and_readers_see_their_graph() {
    both_apis(|api| async move {
        let admin = token(&api, "user_1", &["ns_admin"], &[], false, 0);
        let agent = token(&api, "user_123", &["customer_success_agent"], &[], true, 0);
        let lead = token(&api, "user_200", &["team_lead"], &[], true, 0);
        let yaml = "application/yaml";

        // Its module is not uploaded yet: the definition is refused, naming the module.
        let (status, problem) = apply(&api, &admin, yaml, PING_YAML).await;
        assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_definition")));
        assert!(problem["detail"].as_str().unwrap().contains("noop@0.1.0"), "{problem}");
        let (status, _) = put_module(&api, &admin, "customer_success/noop/0.1.0", &component("noop"), None).await;
        assert_eq!(status, 201);

        let (status, problem) = apply(&api, &agent, yaml, PING_YAML).await;
        assert_eq!((status, problem["code"].as_str()), (403, Some("manage_denied")));
        assert_eq!(events(&api.store, "workflow.denied").await.len(), 1);
        let (status, applied) = apply(&api, &admin, yaml, PING_YAML).await;
        assert_eq!(status, 201, "{applied}");
        assert_eq!(applied["graph"]["order"][0], "first");
        assert_eq!(applied["graph"]["edges"], json!([["first", "left"], ["first", "right"]]));
        let (status, problem) = apply(&api, &admin, yaml, PING_YAML).await;
        assert_eq!((status, problem["code"].as_str()), (409, Some("conflict")), "versions are immutable");

        // The same workflow as JSON, a new version; then the exact problems.
        let mut json_def: Value = serde_json::to_value(&applied["definition"]).unwrap();
        json_def["version"] = json!("1.1.0");
        let (status, _) = apply(&api, &admin, "application/json", &json_def.to_string()).await;
        assert_eq!(status, 201);
        let cycle = PING_YAML.replace("name: first, module: noop@0.1.0", "name: first, module: noop@0.1.0, depends_on: [left]");
        let unknown = PING_YAML.replace("version: 1.0.0", "version: 2.0.0\ncolour: red");
        for (body, media, status, says) in [
            (cycle.as_str(), yaml, 422, "cycle"),
            (unknown.as_str(), yaml, 422, "colour"),
            ("{\"namespace\": ", "application/json", 422, "EOF"),
            (PING_YAML, "text/plain", 415, "application/yaml"),
        ] {
            let (got, problem) = apply(&api, &admin, media, body).await;
            assert_eq!(got, status, "{problem}");
            assert!(problem["detail"].as_str().unwrap().contains(says), "{says}: {problem}");
        }

        let (status, list) = get(&api, &agent, &format!("/v1/workflows?namespace={NS}")).await;
        assert_eq!(status, 200);
        let listed = names(&list);
        for expected in ["ping@1.0.0", "ping@1.1.0", "process_refund@1.0.0"] {
            assert!(listed.contains(&expected.to_owned()), "{listed:?}");
        }
        let (status, latest) = get(&api, &agent, "/v1/workflows/customer_success/ping").await;
        assert_eq!((status, latest["version"].as_str()), (200, Some("1.1.0")));
        let (status, exact) = get(&api, &agent, "/v1/workflows/customer_success/ping/1.0.0").await;
        assert_eq!((status, exact["created_by"].as_str()), (200, Some("user:user_1")));
        let (status, _) = get(&api, &agent, "/v1/workflows/customer_success/pong").await;
        assert_eq!(status, 404);

        // The applied workflow runs: a team lead (namespace-wide execute) creates a task.
        let response = reqwest::Client::new()
            .post(format!("{}/v1/tasks", api.base))
            .bearer_auth(&lead)
            .header("content-type", "application/json")
            .body(json!({ "namespace": NS, "name": "ping", "version": "1.0.0", "context": { "note": "hi" } }).to_string())
            .send()
            .await
            .unwrap();
        let (status, task) = answer(response).await;
        assert_eq!(status, 201, "{task}");
        drain(&api.engine).await;
        let (_, done) = get(&api, &lead, &format!("/v1/tasks/{}", task["id"].as_str().unwrap())).await;
        assert_eq!(done["status"], "complete", "{done}");
    })
    .await;
}
