//! The API over TLS: a client that trusts the server's certificate talks HTTPS to it; a
//! client that does not, and a client speaking plain HTTP to the TLS port, get nothing;
//! a read waiting for a task's end is answered when the server begins to stop; a broken
//! certificate or key is a start-up error naming the file; `stepbox serve` refuses plain
//! HTTP on a non-loopback address.

use std::path::Path;

use stepbox::api::{self, ApiState, Tls, TlsError};
use stepbox::auth::{DEV_AUDIENCE, DEV_ISSUER, DevKey, DevTokenRequest, Verifier};
use stepbox::store::DatabaseUrl;

use crate::engine::{Setup, agent, refund_request, setup};
use crate::support::{TestServer, stepbox};

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key, made.cert.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_speaks_https_to_a_client_that_trusts_its_certificate_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cert_pem) = certificate(dir.path());
    let notify = TestServer::start().await;
    let url = DatabaseUrl::in_data_dir(dir.path());
    let Setup { engine, .. } = setup(&url, &notify, "/notify", 1).await;
    let dev = DevKey::load_or_create(dir.path()).unwrap();
    let verifier = Verifier::new(dev.key_set(), DEV_ISSUER, DEV_AUDIENCE);
    let state = ApiState::new(engine.clone(), verifier);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = Tls::from_pem_files(&cert, &key).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve_tls(listener, state, tls, async {
        let _ = stopped.await;
    }));

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let live = trusting
        .get(format!("https://localhost:{port}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert!(
        live.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let token = dev
        .mint(
            &DevTokenRequest {
                sub: "user_123".into(),
                ttl_secs: 600,
                ..DevTokenRequest::default()
            },
            1_764_000_000,
        )
        .unwrap();
    let whoami = trusting
        .get(format!("https://127.0.0.1:{port}/v1/whoami"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status(), 200);

    // A client that does not trust the certificate refuses the handshake; plain HTTP to
    // the TLS port gets no HTTP answer.
    let untrusting = reqwest::Client::new();
    let refused = untrusting
        .get(format!("https://localhost:{port}/health/live"))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let plain = untrusting
        .get(format!("http://127.0.0.1:{port}/health/live"))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    // A read waiting for a task's end (nothing runs its steps here) is answered, with the
    // task as it is, as soon as the server begins to stop, rather than holding the
    // graceful shutdown for its 30 s.
    let task = engine
        .create_task(&agent(), refund_request(150.0))
        .await
        .unwrap();
    let waiting = tokio::spawn(
        trusting
            .get(format!(
                "https://localhost:{port}/v1/tasks/{}?wait_ms=30000",
                task.id
            ))
            .bearer_auth(&token)
            .send(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the read did not wait for the task");

    let _ = stop.send(());
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the shutdown did not answer the waiting read")
        .unwrap()
        .unwrap();
    assert_eq!(read.status(), 200);
    let read: serde_json::Value = serde_json::from_str(&read.text().await.unwrap()).unwrap();
    assert_eq!(read["id"], task.id.as_str(), "{read}");
    assert_eq!(read["context"]["customer_email"], "[REDACTED]");
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
}

#[test]
fn a_missing_or_mismatched_certificate_or_key_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, _) = certificate(other.path());
    let missing = dir.path().join("nope.pem");
    match Tls::from_pem_files(&missing, &key) {
        Err(TlsError::Certificate { path, .. }) => assert!(path.ends_with("nope.pem")),
        other => panic!("{other:?}"),
    }
    match Tls::from_pem_files(&key, &key) {
        Err(TlsError::Certificate { reason, .. }) => assert!(reason.contains("no PEM"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match Tls::from_pem_files(&cert, &cert) {
        Err(e @ TlsError::Key { .. }) => {
            let text = e.to_string();
            assert!(text.contains("cert.pem"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Tls::from_pem_files(&cert, &other_key),
        Err(TlsError::Config(_))
    ));
}

#[test]
fn serve_refuses_plain_http_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let output = stepbox(&["serve", "--listen", "0.0.0.0:0"], dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to serve plain HTTP"), "{stderr}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was made before the refusal"
    );
}

#[test]
fn serve_reads_its_configuration_file_and_refuses_a_misspelt_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stepbox.yaml");
    let data = dir.path().join("data");
    // The file's listen address counts: non-loopback without TLS is refused.
    std::fs::write(&config, "listen: 0.0.0.0:0\nworkers: 2\n").unwrap();
    let output = stepbox(&["serve", "--config", config.to_str().unwrap()], &data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("refusing to serve plain HTTP on 0.0.0.0:0"),
        "{stderr}"
    );
    // A flag overrides the file.
    std::fs::write(&config, "listen: 127.0.0.1:0\n").unwrap();
    let output = stepbox(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
        &data,
    )
    .output()
    .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to serve plain HTTP"));
    std::fs::write(&config, "listen: 127.0.0.1:0\nwokers: 2\n").unwrap();
    let output = stepbox(&["serve", "--config", config.to_str().unwrap()], &data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown field `wokers`"), "{stderr}");
}
