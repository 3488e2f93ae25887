//! Sealed secrets: stored and replaced by namespace and name, tied to a namespace and a
//! data key that must exist.

use super::{NOW, both, seed_workflow, write};
use crate::store::{DataKeyRow, SecretRow, StoreError};

fn secret(name: &str, data_key_id: &str, value: &[u8], at: i64) -> SecretRow {
    SecretRow {
        namespace: "payments".to_owned(),
        name: name.to_owned(),
        data_key_id: data_key_id.to_owned(),
        value: value.to_vec(),
        created_by: format!("user:at_{at}"),
        created_at: at,
        updated_at: at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_stored_replaced_and_tied_to_their_namespace_and_key() {
    both(|store| async move {
        seed_workflow(&store).await;
        write(&store, async |tx| {
            tx.insert_data_key(&DataKeyRow {
                id: "dk_2".to_owned(),
                kek_id: "kek_1".to_owned(),
                wrapped: vec![9; 40],
                subject: None,
                created_at: NOW,
                destroyed_at: None,
                pad: None,
            })
            .await
        })
        .await
        .expect("second key");

        let replaced = write(&store, async |tx| {
            tx.put_secret(&secret("API_KEY", "dk_1", b"sealed-1", NOW))
                .await
        })
        .await
        .expect("insert");
        assert_eq!(replaced, None);
        let replaced = write(&store, async |tx| {
            tx.put_secret(&secret("API_KEY", "dk_2", b"sealed-2", NOW + 5))
                .await
        })
        .await
        .expect("replace");
        assert_eq!(
            replaced.as_deref(),
            Some("dk_1"),
            "the caller learns the old key"
        );

        let mut tx = store.begin_read().await.expect("begin");
        let stored = tx.get_secret("payments", "API_KEY").await.expect("get");
        assert_eq!(tx.get_secret("payments", "OTHER").await.expect("get"), None);
        assert_eq!(tx.get_secret("other", "API_KEY").await.expect("get"), None);
        tx.commit().await.expect("commit");
        let stored = stored.expect("stored");
        assert_eq!(
            stored,
            SecretRow {
                created_by: "user:at_1700000000000".to_owned(),
                created_at: NOW,
                ..secret("API_KEY", "dk_2", b"sealed-2", NOW + 5)
            },
            "first creation kept, value and key replaced"
        );
        let debug = format!("{stored:?}");
        assert!(
            !debug.contains("115, 101") && debug.contains("value_len: 8"),
            "{debug}"
        );

        for row in [
            SecretRow {
                namespace: "nowhere".to_owned(),
                ..secret("X", "dk_1", b"s", NOW)
            },
            secret("Y", "dk_missing", b"s", NOW),
        ] {
            let err = write(&store, async |tx| tx.put_secret(&row).await)
                .await
                .expect_err("dangling reference");
            assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        }
    })
    .await;
}
