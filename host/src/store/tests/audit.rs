//! Audit storage: sequence numbers, sealing, reading, filtering, checkpoints, and the
//! barrier that keeps the sealer from passing an uncommitted event.

use std::time::Duration;

use super::{NOW, both, write};
use crate::store::{AuditFilter, AuditRow, CheckpointRow, NewAuditRow, StoreError};

fn event(id: &str, actor: &str, ts: i64) -> NewAuditRow {
    NewAuditRow {
        id: id.to_owned(),
        ts,
        actor: actor.to_owned(),
        action: "task.created".to_owned(),
        resource: format!("task/{id}"),
        namespace: Some("payments".to_owned()),
        outcome: "success".to_owned(),
        classification: Some("confidential".to_owned()),
        contains_pii: true,
        correlation_id: None,
        details: r#"{"subject":"bi_jane"}"#.to_owned(),
    }
}

fn ids(rows: &[AuditRow]) -> Vec<&str> {
    rows.iter().map(|row| row.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_events_get_increasing_seqs_and_seal_once() {
    both(|store| async move {
        let seqs = write(&store, async |tx| {
            let mut seqs = Vec::new();
            for n in 0..4 {
                seqs.push(
                    tx.insert_audit_event(&event(&format!("e{n}"), "user_1", NOW + n))
                        .await?,
                );
            }
            Ok(seqs)
        })
        .await
        .expect("insert");
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
        let err = write(&store, async |tx| {
            tx.insert_audit_event(&event("e0", "u", NOW)).await
        })
        .await
        .expect_err("ids are unique");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        let mut tx = store.begin().await.expect("begin");
        assert_eq!(tx.last_sealed().await.expect("tip"), None);
        let unsealed = tx.unsealed_events(0, 10).await.expect("unsealed");
        assert_eq!(ids(&unsealed), ["e0", "e1", "e2", "e3"]);
        assert_eq!(unsealed[0].seq, seqs[0]);
        assert_eq!(unsealed[0].details, r#"{"subject":"bi_jane"}"#);
        assert!(unsealed[0].contains_pii && unsealed[0].hash.is_none());

        tx.seal_event(seqs[0], None, &[1; 32]).await.expect("seal");
        tx.seal_event(seqs[1], Some(&[1; 32]), &[2; 32])
            .await
            .expect("seal");
        let err = tx
            .seal_event(seqs[1], Some(&[1; 32]), &[9; 32])
            .await
            .expect_err("twice");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let err = tx
            .seal_event(seqs[3] + 100, None, &[9; 32])
            .await
            .expect_err("no such event");
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        assert_eq!(
            tx.last_sealed().await.expect("tip"),
            Some((seqs[1], vec![2; 32]))
        );
        assert_eq!(
            ids(&tx.unsealed_events(seqs[1], 1).await.expect("unsealed")),
            ["e2"]
        );

        let from = tx.audit_events(seqs[1], 10).await.expect("read");
        assert_eq!(ids(&from), ["e1", "e2", "e3"]);
        assert_eq!(from[0].prev_hash.as_deref(), Some(&[1; 32][..]));
        assert_eq!(from[0].hash.as_deref(), Some(&[2; 32][..]));
        tx.commit().await.expect("commit");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_queries_filter_by_actor_time_and_resource() {
    both(|store| async move {
        write(&store, async |tx| {
            tx.insert_audit_event(&event("a1", "user_123", NOW)).await?;
            tx.insert_audit_event(&event("a2", "user_9", NOW + 10))
                .await?;
            tx.insert_audit_event(&event("a3", "user_123", NOW + 20))
                .await?;
            tx.insert_audit_event(&event("a4", "user_123", NOW + 30))
                .await
        })
        .await
        .expect("insert");
        let mut tx = store.begin_read().await.expect("begin");
        let by_actor = AuditFilter {
            actor: Some("user_123".to_owned()),
            ..AuditFilter::default()
        };
        assert_eq!(
            ids(&tx.query_audit(&by_actor, 10).await.expect("q")),
            ["a1", "a3", "a4"]
        );
        let window = AuditFilter {
            from_ts: Some(NOW + 10),
            until_ts: Some(NOW + 30),
            ..by_actor.clone()
        };
        assert_eq!(ids(&tx.query_audit(&window, 10).await.expect("q")), ["a3"]);
        let first = tx.query_audit(&by_actor, 1).await.expect("q");
        let next = AuditFilter {
            after_seq: Some(first[0].seq),
            ..by_actor
        };
        assert_eq!(ids(&tx.query_audit(&next, 1).await.expect("q")), ["a3"]);
        let resource = AuditFilter {
            resource: Some("task/a2".to_owned()),
            ..AuditFilter::default()
        };
        assert_eq!(
            ids(&tx.query_audit(&resource, 10).await.expect("q")),
            ["a2"]
        );
        assert_eq!(
            tx.query_audit(&AuditFilter::default(), 10)
                .await
                .expect("q")
                .len(),
            4
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoints_round_trip() {
    both(|store| async move {
        let checkpoint = |seq: i64| CheckpointRow {
            seq,
            hash: vec![seq as u8; 32],
            signature: vec![5; 64],
            key_id: "audit-key-1".to_owned(),
            created_at: NOW + seq,
        };
        write(&store, async |tx| {
            tx.insert_checkpoint(&checkpoint(20)).await?;
            tx.insert_checkpoint(&checkpoint(10)).await
        })
        .await
        .expect("insert");
        let err = write(&store, async |tx| {
            tx.insert_checkpoint(&checkpoint(10)).await
        })
        .await
        .expect_err("one per seq");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        let mut tx = store.begin_read().await.expect("begin");
        assert_eq!(
            tx.checkpoints().await.expect("read"),
            vec![checkpoint(10), checkpoint(20)]
        );
    })
    .await;
}

/// A sealer reading while an older event is uncommitted must not see a newer one that
/// committed first: whatever it reads is a complete prefix of what ends up stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sealer_never_reads_past_an_uncommitted_event() {
    both(|store| async move {
        let mut slow = store.begin().await.expect("begin");
        let slow_seq = slow
            .insert_audit_event(&event("slow", "u", NOW))
            .await
            .expect("insert");

        let fast = tokio::spawn({
            let store = store.clone();
            async move {
                write(&store, async |tx| {
                    tx.insert_audit_event(&event("fast", "u", NOW)).await
                })
                .await
                .expect("insert")
            }
        });
        // On PostgreSQL `fast` commits now; on SQLite it waits for the write lock.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sealer = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.begin().await.expect("begin");
                let read = tx.unsealed_events(0, 100).await.expect("read");
                tx.commit().await.expect("commit");
                read
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        slow.commit().await.expect("commit");
        let fast_seq = fast.await.expect("join");
        let read = sealer.await.expect("join");

        let seen_max = read.iter().map(|row| row.seq).max().unwrap_or(0);
        for (id, seq) in [("slow", slow_seq), ("fast", fast_seq)] {
            let seen = read.iter().any(|row| row.id == id);
            assert!(
                seen || seq > seen_max,
                "{id} (seq {seq}) missing below {seen_max}"
            );
        }
    })
    .await;
}
