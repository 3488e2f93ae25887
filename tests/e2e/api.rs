//! The HTTP edge on a real socket: nothing under `/v1` answers without a verified token,
//! every refusal is problem+json with a stable code and an `auth.failed` audit event that
//! never holds the token, and every response carries the security headers.

use std::sync::Arc;

use serde_json::Value;
use stepbox::api::{self, ApiState};
use stepbox::auth::{DEV_AUDIENCE, DEV_ISSUER, DevKey, DevTokenRequest, Verifier};
use stepbox::crypto::KeyRing;
use stepbox::engine::{Engine, SystemClock};
use stepbox::store::{AuditFilter, DatabaseUrl, Store};

use crate::engine::both;
use crate::support::sandbox;

struct Server {
    base: String,
    store: Store,
    key: DevKey,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(url: &DatabaseUrl) -> Server {
    let store = Store::open(url).await.unwrap();
    let engine = Engine::new(
        store.clone(),
        Arc::new(KeyRing::generate().unwrap()),
        sandbox().clone(),
        Arc::new(SystemClock),
    )
    .with_subject_vault(crate::support::vault().await);
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let verifier = Verifier::new(key.key_set(), DEV_ISSUER, DEV_AUDIENCE);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api::serve(
        listener,
        ApiState::new(engine, verifier),
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        base,
        store,
        key,
        _dir: dir,
        stop: Some(stop),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn agent(ttl_secs: i64) -> DevTokenRequest {
    DevTokenRequest {
        sub: "user_123".into(),
        roles: ["customer_success_agent".to_owned()].into(),
        mfa: true,
        ttl_secs,
        ..DevTokenRequest::default()
    }
}

async fn get(server: &Server, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(format!("{}{path}", server.base))
        .header("user-agent", "stepbox-test/1");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The status, the problem's code, and the challenge of a refused request.
async fn problem(response: reqwest::Response) -> (u16, String, Option<String>) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], status);
    (status, body["code"].as_str().unwrap().to_owned(), challenge)
}

#[tokio::test]
async fn nothing_under_v1_answers_without_a_valid_token_and_each_refusal_is_audited() {
    both(|url| async move {
        let server = start(&url).await;
        assert_eq!(get(&server, "/health/live", None).await.status(), 200);
        assert_eq!(get(&server, "/health/ready", None).await.status(), 200);

        let other_dir = tempfile::tempdir().unwrap();
        let stranger = DevKey::load_or_create(other_dir.path()).unwrap();
        let foreign = stranger.mint(&agent(600), now()).unwrap();
        let expired = server.key.mint(&agent(60), now() - 3600).unwrap();
        let cases: [(Option<&str>, &str); 4] = [
            (None, "token_missing"),
            (Some("garbage"), "token_malformed"),
            (Some(&foreign), "token_unknown_key"),
            (Some(&expired), "token_expired"),
        ];
        for (token, code) in cases {
            let (status, got, challenge) = problem(get(&server, "/v1/whoami", token).await).await;
            assert_eq!((status, got.as_str()), (401, code));
            assert!(challenge.unwrap().starts_with("Bearer realm=\"stepbox\""));
        }

        let mut tx = server.store.begin_read().await.unwrap();
        let events = tx
            .query_audit(
                &AuditFilter {
                    action: Some("auth.failed".into()),
                    ..AuditFilter::default()
                },
                100,
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let codes: Vec<String> = events
            .iter()
            .map(|e| {
                let details: Value = serde_json::from_str(&e.details).unwrap();
                assert_eq!(details["ip"], "127.0.0.1");
                assert_eq!(details["user_agent"], "stepbox-test/1");
                assert_eq!(e.resource, "api/v1/whoami");
                assert!(
                    e.correlation_id
                        .as_deref()
                        .is_some_and(|c| c.starts_with("req_"))
                );
                details["code"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            codes,
            [
                "token_missing",
                "token_malformed",
                "token_unknown_key",
                "token_expired"
            ]
        );
        for event in &events {
            assert!(!event.details.contains(&foreign) && !event.details.contains(&expired));
        }
    })
    .await;
}

#[tokio::test]
async fn a_valid_token_is_answered_with_security_headers_and_a_correlation_id() {
    both(|url| async move {
        let server = start(&url).await;
        let token = server.key.mint(&agent(600), now()).unwrap();
        let response = reqwest::Client::new()
            .get(format!("{}/v1/whoami", server.base))
            .bearer_auth(&token)
            .header("x-request-id", "trace-42")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers["x-request-id"], "trace-42");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert!(
            headers["strict-transport-security"]
                .to_str()
                .unwrap()
                .starts_with("max-age=")
        );
        assert!(headers.contains_key("content-security-policy"));
        let me: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(me["subject"], "user_123");
        assert_eq!(me["roles"][0], "customer_success_agent");
        assert!(me["mfa_at"].is_i64());

        // A correlation id that is not a sane token is replaced, not echoed.
        let response = reqwest::Client::new()
            .get(format!("{}/health/live", server.base))
            .header("x-request-id", "<script>")
            .send()
            .await
            .unwrap();
        assert!(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );

        let (status, code, _) = problem(get(&server, "/nowhere", Some(&token)).await).await;
        assert_eq!((status, code.as_str()), (404, "no_route"));
    })
    .await;
}
