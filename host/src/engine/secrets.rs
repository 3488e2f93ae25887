//! Secrets at rest. Each value is sealed with AES-256-GCM under a data key of its own,
//! bound by associated data to `secrets`, `<namespace>/<name>`, `value`; the data key is
//! wrapped in `data_keys` like a task's, so KEK rotation re-wraps it with the rest and a
//! replaced value's key is destroyed. Setting a secret requires the namespace policy to
//! allow its name and is audited by name. This module must never write a value in the
//! clear, put one in an error, a log line or an audit event, or hand one to anything but
//! the sandbox's grants (as a [`SecretValue`], which never prints).

use std::collections::BTreeMap;

use serde_json::json;

use super::core::Engine;
use super::data;
use super::{EngineError, valid_secret_name};
use crate::audit::{self, NewEvent};
use crate::crypto::{Aad, KeyRing};
use crate::sandbox::SecretValue;
use crate::store::{SecretRow, Store, Tx};

/// Longest secret value accepted, in bytes. Secrets are tokens and keys, substituted into
/// request headers whose values the sandbox caps at 8 KiB after substitution; 8 KiB also
/// holds a PEM-encoded RSA-4096 private key.
pub const MAX_SECRET_BYTES: usize = 8 * 1024;

/// Where a secret's value lives (`row` is `namespace/name`).
fn secret_aad(row: &str) -> Aad<'_> {
    Aad {
        table: "secrets",
        row,
        field: "value",
    }
}

/// Seal `value` as the secret `namespace`/`name` in `store`, replacing any previous value
/// (whose data key is destroyed), with its `secret.set` audit event in the same
/// transaction. `Invalid` if the name is malformed, the value empty or longer than
/// [`MAX_SECRET_BYTES`], or the namespace policy's `secrets` does not list the name;
/// `NotFound` if the namespace does not exist. [`Engine::set_secret`] is this with the
/// engine's store, keys and clock; operators' tools call it without an engine.
pub async fn set_secret(
    store: &Store,
    keys: &KeyRing,
    namespace: &str,
    name: &str,
    value: &SecretValue,
    actor: &str,
    now_ms: i64,
) -> Result<(), EngineError> {
    if !valid_secret_name(name) {
        return Err(EngineError::Invalid(format!(
            "secret name `{name}` is not valid (1-64 of A-Z, a-z, 0-9, _)"
        )));
    }
    let plaintext = value.expose().as_bytes();
    if plaintext.is_empty() || plaintext.len() > MAX_SECRET_BYTES {
        return Err(EngineError::Invalid(format!(
            "secret `{name}`: the value must be 1 to {MAX_SECRET_BYTES} bytes"
        )));
    }
    let mut tx = store.begin().await?;
    let policy = Engine::policy(&mut tx, namespace).await?;
    if !policy.secrets.contains(name) {
        return Err(EngineError::Invalid(format!(
            "secret `{name}` is not in namespace `{namespace}`'s policy; add it to `secrets` first"
        )));
    }
    let (key_id, key) = data::new_data_key(&mut tx, keys, now_ms).await?;
    let row = format!("{namespace}/{name}");
    let sealed = key.seal(plaintext, secret_aad(&row))?;
    let replaced = tx
        .put_secret(&SecretRow {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            data_key_id: key_id.clone(),
            value: sealed,
            created_by: actor.to_owned(),
            created_at: now_ms,
            updated_at: now_ms,
        })
        .await?;
    // The old value's key seals nothing else: destroying it shreds the old value wherever
    // a copy of its ciphertext survives.
    if let Some(old) = &replaced {
        tx.destroy_data_key(old, now_ms).await?;
    }
    let event = NewEvent {
        actor: actor.to_owned(),
        action: "secret.set".into(),
        resource: format!("secret/{row}"),
        namespace: Some(namespace.to_owned()),
        outcome: "success".into(),
        details: json!({ "name": name, "replaced": replaced.is_some(), "data_key": key_id }),
        ..NewEvent::default()
    };
    audit::record(&mut tx, &event, now_ms).await?;
    tx.commit().await?;
    Ok(())
}

impl Engine {
    /// Seal `value` as the secret `namespace`/`name`; see [`set_secret`].
    pub async fn set_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &SecretValue,
        actor: &str,
    ) -> Result<(), EngineError> {
        set_secret(
            &self.inner.store,
            &self.inner.keys,
            namespace,
            name,
            value,
            actor,
            self.now(),
        )
        .await
    }

    /// Read and open the secrets `names` of `namespace` within `tx` (a worker's read of a
    /// step's task). A name with no stored value is simply absent, so the sandbox denies
    /// the step's request for it. A value that does not open — tampered, or moved from
    /// another secret's row — is `Crypto(Decrypt)`, never garbage.
    pub async fn step_secrets(
        &self,
        tx: &mut Tx<'_>,
        namespace: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, SecretValue>, EngineError> {
        open_secrets(tx, &self.inner.keys, namespace, names).await
    }
}

/// [`Engine::step_secrets`] with an explicit key ring.
async fn open_secrets(
    tx: &mut Tx<'_>,
    keys: &KeyRing,
    namespace: &str,
    names: &[String],
) -> Result<BTreeMap<String, SecretValue>, EngineError> {
    let mut secrets = BTreeMap::new();
    for name in names {
        let Some(stored) = tx.get_secret(namespace, name).await? else {
            continue;
        };
        let key = data::unwrap(
            tx,
            data::Keys {
                ring: keys,
                vault: None,
            },
            &stored.data_key_id,
        )
        .await?;
        let row = format!("{namespace}/{name}");
        let plaintext = key.open(&stored.value, secret_aad(&row)).inspect_err(|e| {
            tracing::error!(namespace, secret = %name, error = %e, "a stored secret does not open");
        })?;
        let value = String::from_utf8(plaintext)
            .map_err(|_| EngineError::Internal(format!("stored secret {row} is not UTF-8")))?;
        secrets.insert(name.clone(), SecretValue::new(value));
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CryptoError;
    use crate::store::tests::{NOW, both};

    const VALUE: &str = "nk_live_unit_4c1d9e";

    async fn namespace(store: &Store, granted: &[&str]) {
        let policy = json!({ "secrets": granted }).to_string();
        let mut tx = store.begin().await.unwrap();
        tx.upsert_namespace("payments", &policy, NOW).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn open(
        store: &Store,
        keys: &KeyRing,
        names: &[&str],
    ) -> Result<BTreeMap<String, SecretValue>, EngineError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut tx = store.begin_read().await.unwrap();
        let opened = open_secrets(&mut tx, keys, "payments", &names).await;
        tx.commit().await.unwrap();
        opened
    }

    async fn set(
        store: &Store,
        keys: &KeyRing,
        name: &str,
        value: &str,
    ) -> Result<(), EngineError> {
        let value = SecretValue::new(value);
        set_secret(store, keys, "payments", name, &value, "user:admin", NOW).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_secret_round_trips_sealed_and_a_missing_one_is_absent() {
        both(|store| async move {
            let keys = KeyRing::generate().unwrap();
            namespace(&store, &["API_KEY", "UNSET"]).await;
            set(&store, &keys, "API_KEY", VALUE).await.unwrap();

            let opened = open(&store, &keys, &["API_KEY", "UNSET"]).await.unwrap();
            assert_eq!(opened.len(), 1, "a secret never set is absent");
            assert_eq!(opened["API_KEY"], SecretValue::new(VALUE));

            let mut tx = store.begin_read().await.unwrap();
            let row = tx.get_secret("payments", "API_KEY").await.unwrap().unwrap();
            let data_key = tx.get_data_key(&row.data_key_id).await.unwrap().unwrap();
            let events = tx.audit_events(i64::MIN, 100).await.unwrap();
            tx.commit().await.unwrap();
            assert!(
                !row.value
                    .windows(VALUE.len())
                    .any(|w| w == VALUE.as_bytes())
            );
            assert_eq!(data_key.subject, None);
            let set_events: Vec<_> = events.iter().filter(|e| e.action == "secret.set").collect();
            assert_eq!(set_events.len(), 1);
            assert_eq!(set_events[0].resource, "secret/payments/API_KEY");
            assert_eq!(set_events[0].actor, "user:admin");
            assert!(
                !set_events[0].details.contains(VALUE),
                "{}",
                set_events[0].details
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replacing_a_secret_destroys_the_old_values_key() {
        both(|store| async move {
            let keys = KeyRing::generate().unwrap();
            namespace(&store, &["API_KEY"]).await;
            set(&store, &keys, "API_KEY", "first-value").await.unwrap();
            let mut tx = store.begin_read().await.unwrap();
            let first = tx.get_secret("payments", "API_KEY").await.unwrap().unwrap();
            tx.commit().await.unwrap();

            set(&store, &keys, "API_KEY", "second-value").await.unwrap();
            let opened = open(&store, &keys, &["API_KEY"]).await.unwrap();
            assert_eq!(opened["API_KEY"], SecretValue::new("second-value"));
            let mut tx = store.begin_read().await.unwrap();
            let second = tx.get_secret("payments", "API_KEY").await.unwrap().unwrap();
            let old_key = tx.get_data_key(&first.data_key_id).await.unwrap().unwrap();
            tx.commit().await.unwrap();
            assert_ne!(first.data_key_id, second.data_key_id);
            assert_eq!(
                (second.created_at, second.created_by.as_str()),
                (NOW, "user:admin")
            );
            assert!(old_key.destroyed_at.is_some() && old_key.wrapped.is_empty());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_outside_the_policy_bad_names_and_bad_values_are_refused() {
        both(|store| async move {
            let keys = KeyRing::generate().unwrap();
            let missing = set(&store, &keys, "API_KEY", VALUE).await.unwrap_err();
            assert!(matches!(missing, EngineError::NotFound(_)), "{missing}");

            namespace(&store, &["API_KEY"]).await;
            for (name, value) in [
                ("OTHER_KEY", VALUE),
                ("BAD-NAME", VALUE),
                ("", VALUE),
                ("API_KEY", ""),
            ] {
                let error = set(&store, &keys, name, value).await.unwrap_err();
                assert!(matches!(error, EngineError::Invalid(_)), "{name}: {error}");
                assert!(!error.to_string().contains(VALUE), "{error}");
            }
            let long = "x".repeat(MAX_SECRET_BYTES + 1);
            let error = set(&store, &keys, "API_KEY", &long).await.unwrap_err();
            assert!(matches!(error, EngineError::Invalid(_)), "{error}");
            let mut tx = store.begin_read().await.unwrap();
            assert_eq!(tx.get_secret("payments", "OTHER_KEY").await.unwrap(), None);
            assert_eq!(tx.get_secret("payments", "API_KEY").await.unwrap(), None);
            tx.commit().await.unwrap();
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_value_moved_to_another_secrets_row_does_not_open() {
        both(|store| async move {
            let keys = KeyRing::generate().unwrap();
            namespace(&store, &["FIRST", "SECOND"]).await;
            set(&store, &keys, "FIRST", "first-value").await.unwrap();
            set(&store, &keys, "SECOND", "second-value").await.unwrap();

            // The ciphertext alone (wrong key), then with its data key (wrong row).
            let mut tx = store.begin().await.unwrap();
            let first = tx.get_secret("payments", "FIRST").await.unwrap().unwrap();
            let mut second = tx.get_secret("payments", "SECOND").await.unwrap().unwrap();
            second.value = first.value.clone();
            tx.put_secret(&second).await.unwrap();
            tx.commit().await.unwrap();
            let error = open(&store, &keys, &["SECOND"]).await.unwrap_err();
            assert!(
                matches!(error, EngineError::Crypto(CryptoError::Decrypt)),
                "{error}"
            );

            let mut tx = store.begin().await.unwrap();
            second.data_key_id = first.data_key_id.clone();
            tx.put_secret(&second).await.unwrap();
            tx.commit().await.unwrap();
            let error = open(&store, &keys, &["SECOND"]).await.unwrap_err();
            assert!(
                matches!(error, EngineError::Crypto(CryptoError::Decrypt)),
                "{error}"
            );
            assert!(error.to_string().contains("decryption failed"), "{error}");
            assert_eq!(
                open(&store, &keys, &["FIRST"]).await.unwrap()["FIRST"],
                SecretValue::new("first-value")
            );
        })
        .await;
    }
}
