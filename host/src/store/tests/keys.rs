//! Data keys, rotation re-wraps, destruction and the subject blind index.

use super::{NOW, both, seed_workflow, write};
use crate::store::{DataKeyRow, DatabaseUrl, StoreError, SubjectRow};

/// Wrapped bytes no other row holds, to look for in the database files.
const MARKER: [u8; 24] = *b"WRAPPED-KEY-MARKER-7c1e!";

fn key(id: &str, wrapped: &[u8]) -> DataKeyRow {
    DataKeyRow {
        id: id.to_owned(),
        kek_id: "kek_1".to_owned(),
        wrapped: wrapped.to_vec(),
        subject: Some("bi_jane".to_owned()),
        created_at: NOW,
        destroyed_at: None,
        pad: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_keys_round_trip_list_in_pages_and_rewrap() {
    both(|store| async move {
        write(&store, async |tx| {
            for n in 0..5 {
                tx.insert_data_key(&key(&format!("dk_{n}"), &[n as u8; 40]))
                    .await?;
            }
            Ok(())
        })
        .await
        .expect("insert");
        let err = write(&store, async |tx| {
            tx.insert_data_key(&key("dk_0", b"x")).await
        })
        .await
        .expect_err("duplicate id");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        let mut tx = store.begin().await.expect("begin");
        assert_eq!(
            tx.get_data_key("dk_3").await.expect("get"),
            Some(key("dk_3", &[3; 40]))
        );
        assert_eq!(tx.get_data_key("dk_9").await.expect("get"), None);

        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = tx.list_data_keys(after.as_deref(), 2).await.expect("list");
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for key in page {
                tx.update_wrapped(&key.id, "kek_2", &[0xEE; 40])
                    .await
                    .expect("rewrap");
                seen.push(key.id);
            }
        }
        assert_eq!(seen, ["dk_0", "dk_1", "dk_2", "dk_3", "dk_4"]);
        let rewrapped = tx.get_data_key("dk_2").await.expect("get").expect("key");
        assert_eq!(
            (rewrapped.kek_id.as_str(), rewrapped.wrapped),
            ("kek_2", vec![0xEE; 40])
        );
        let err = tx
            .update_wrapped("dk_9", "kek_2", b"x")
            .await
            .expect_err("no such key");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        tx.commit().await.expect("commit");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destroyed_key_leaves_no_wrapped_bytes() {
    both(|store| async move {
        write(&store, async |tx| {
            tx.insert_data_key(&key("dk_jane", &MARKER)).await?;
            tx.insert_data_key(&key("dk_other", &[1; 40])).await
        })
        .await
        .expect("insert");
        write(&store, async |tx| {
            tx.destroy_data_key("dk_jane", NOW + 1).await?;
            tx.destroy_data_key("dk_jane", NOW + 2).await
        })
        .await
        .expect("destroy twice");

        let mut tx = store.begin().await.expect("begin");
        let destroyed = tx.get_data_key("dk_jane").await.expect("get").expect("key");
        assert!(destroyed.wrapped.is_empty());
        assert_eq!(
            destroyed.destroyed_at,
            Some(NOW + 1),
            "first destruction is kept"
        );
        let live: Vec<String> = tx
            .list_data_keys(None, 100)
            .await
            .expect("list")
            .into_iter()
            .map(|key| key.id)
            .collect();
        assert_eq!(live, ["dk_other"], "rotation skips destroyed keys");
        let err = tx
            .update_wrapped("dk_jane", "kek_2", &MARKER)
            .await
            .expect_err("destroyed stays destroyed");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let err = tx
            .destroy_data_key("dk_9", NOW)
            .await
            .expect_err("no such key");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        tx.commit().await.expect("commit");

        store.purge_erased().await.expect("purge");
        if let DatabaseUrl::Sqlite(path) = store.url() {
            for suffix in ["", "-wal"] {
                let file = format!("{}{suffix}", path.display());
                let bytes = std::fs::read(&file).unwrap_or_default();
                assert!(
                    !bytes.windows(MARKER.len()).any(|window| window == MARKER),
                    "{file} still holds the destroyed key's wrapped bytes"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subjects_round_trip_and_racing_inserts_agree_on_one_key() {
    both(|store| async move {
        seed_workflow(&store).await;
        write(&store, async |tx| {
            tx.insert_data_key(&key("dk_a", &[1; 40])).await?;
            tx.insert_data_key(&key("dk_b", &[2; 40])).await?;
            tx.insert_subject("bi_jane", "dk_a", NOW).await
        })
        .await
        .expect("insert");
        let expected = SubjectRow {
            blind_index: "bi_jane".to_owned(),
            data_key_id: "dk_a".to_owned(),
            created_at: NOW,
        };
        let err = write(&store, async |tx| {
            tx.insert_subject("bi_jane", "dk_b", NOW).await
        })
        .await
        .expect_err("one key per subject");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let err = write(&store, async |tx| {
            tx.insert_subject("bi_joe", "dk_zz", NOW).await
        })
        .await
        .expect_err("unknown key");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

        let mut tx = store.begin().await.expect("begin");
        assert_eq!(
            tx.get_subject("bi_jane").await.expect("get"),
            Some(expected.clone())
        );
        assert_eq!(tx.get_subject("bi_joe").await.expect("get"), None);
        let winner = tx
            .get_or_insert_subject("bi_jane", "dk_b", NOW + 5)
            .await
            .expect("get");
        assert_eq!(winner, expected, "the first key wins");
        let fresh = tx
            .get_or_insert_subject("bi_joe", "dk_b", NOW + 5)
            .await
            .expect("insert");
        assert_eq!(fresh.data_key_id, "dk_b");
        tx.commit().await.expect("commit");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subject_keys_answer_only_the_subjects_asked_for() {
    both(|store| async move {
        write(&store, async |tx| {
            for (n, subject) in ["bi_jane", "bi_john", "bi_jane_doe"].iter().enumerate() {
                let id = format!("dk_{n}");
                tx.insert_data_key(&DataKeyRow {
                    subject: Some((*subject).to_owned()),
                    ..key(&id, &[n as u8; 40])
                })
                .await?;
                tx.insert_subject(subject, &id, NOW).await?;
            }
            // A key made for a subject by a creation that lost the race to register it:
            // not the subject's key, so never returned as one.
            tx.insert_data_key(&key("dk_orphan", &[9; 40])).await?;
            tx.destroy_data_key("dk_1", NOW).await
        })
        .await
        .expect("seed");
        let mut tx = store.begin_read().await.expect("begin");
        let mut found = tx
            .subject_keys(&["bi_jane", "bi_john", "bi_nobody"])
            .await
            .expect("subject keys");
        found.sort_by(|a, b| a.id.cmp(&b.id));
        let seen: Vec<(&str, Option<&str>, bool)> = found
            .iter()
            .map(|k| {
                (
                    k.id.as_str(),
                    k.subject.as_deref(),
                    k.destroyed_at.is_some(),
                )
            })
            .collect();
        // A similar blind index (bi_jane_doe) is not a match; a destroyed key still is,
        // so the caller can say the subject was erased.
        assert_eq!(
            seen,
            [
                ("dk_0", Some("bi_jane"), false),
                ("dk_1", Some("bi_john"), true)
            ]
        );
        assert!(
            tx.subject_keys(&["bi_nobody"])
                .await
                .expect("none")
                .is_empty()
        );
    })
    .await;
}
