//! Audit events that change no state — an API read, a refused token, a rate limit — each
//! recorded before its request is answered, with group commit.
//!
//! Every read of a task through the API writes its `task.read` event first (fail closed:
//! data whose access cannot be recorded is not shown). One transaction per event made each
//! read a write of its own, taking the database's write turn from the workers' commits as
//! often as clients read: on SQLite, whose one writer serves everything, that was a
//! transaction per task under load. So events queue, and the events that queued while the
//! last transaction ran are written together in the next, each with its own time, in the
//! order they queued. Each caller is answered once its event is committed, and a batch
//! that fails fails each of its callers, as a transaction of its own would have.
//!
//! The transaction runs in a task of its own, like task creation's (`create`), so a caller
//! that gives up never strands the events queued behind it.

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::EngineError;
use super::core::{Engine, lock};
use crate::audit::{self, NewEvent};
use crate::store::{Backend, NewAuditRow, ready};

/// Events waiting for the next transaction.
#[derive(Default)]
pub(crate) struct Recorder {
    waiting: Mutex<Vec<Pending>>,
}

/// An event ready to write, and where its sequence number goes.
struct Pending {
    row: NewAuditRow,
    reply: oneshot::Sender<Result<i64, EngineError>>,
}

impl Engine {
    /// Record `event`, at time `now`, in a transaction shared with the events recorded at
    /// the same moment; its sequence number once committed.
    pub(crate) async fn record_event(
        &self,
        event: &NewEvent,
        now: i64,
    ) -> Result<i64, EngineError> {
        let row = audit::rows(std::slice::from_ref(event), now)?
            .pop()
            .ok_or_else(|| EngineError::Internal("the event was not built".into()))?;
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut waiting = lock(&self.inner.recorder.waiting);
            waiting.push(Pending { row, reply });
            waiting.len() == 1
        };
        if first {
            // Events queued from now until this transaction starts join it.
            let engine = self.clone();
            tokio::spawn(async move { engine.record_waiting().await });
        }
        answer
            .await
            .map_err(|_| EngineError::Internal("recording the event was abandoned".into()))?
    }

    /// Write every queued event in one transaction and answer each.
    async fn record_waiting(&self) {
        let store = &self.inner.store;
        let mut batch: Option<Vec<Pending>> = None;
        let written = match store.backend() {
            // Taken once the write turn is ours: everything queued while this waited joins.
            Backend::Sqlite => {
                store
                    .write_now(|tx| {
                        let rows = rows_of(batch.get_or_insert_with(|| self.take_events()));
                        ready(audit::insert_rows_in(tx, rows))
                    })
                    .await
            }
            Backend::Postgres => {
                let rows = rows_of(batch.get_or_insert_with(|| self.take_events()));
                match store.begin().await {
                    Ok(mut tx) => match audit::insert_rows_in(&mut tx, rows).await {
                        Ok(seqs) => tx.commit().await.map(|()| seqs).map_err(Into::into),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.into()),
                }
            }
        };
        let batch = batch.unwrap_or_else(|| self.take_events());
        match written {
            Ok(seqs) if seqs.len() == batch.len() => {
                for (pending, seq) in batch.into_iter().zip(seqs) {
                    let _ = pending.reply.send(Ok(seq));
                }
            }
            Ok(_) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(EngineError::Internal(
                        "not every event of the batch was recorded".into(),
                    )));
                }
            }
            Err(e) => {
                let e = EngineError::from(e);
                for pending in batch {
                    let _ = pending.reply.send(Err(e.duplicate()));
                }
            }
        }
    }

    /// Take every queued event; the next event queued starts a new transaction.
    fn take_events(&self) -> Vec<Pending> {
        std::mem::take(&mut *lock(&self.inner.recorder.waiting))
    }
}

fn rows_of(batch: &[Pending]) -> Vec<NewAuditRow> {
    batch.iter().map(|p| p.row.clone()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::crypto::KeyRing;
    use crate::engine::SystemClock;
    use crate::sandbox::{Sandbox, SandboxConfig};
    use crate::store::{DatabaseUrl, Store};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_recorded_at_once_each_get_their_own_row_time_and_place_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&DatabaseUrl::Sqlite(dir.path().join("stepbox.db")))
            .await
            .unwrap();
        let engine = Engine::new(
            store.clone(),
            Arc::new(KeyRing::generate().unwrap()),
            Sandbox::new(SandboxConfig::default()).unwrap(),
            Arc::new(SystemClock),
        );
        let callers: Vec<_> = (0..64_i64)
            .map(|n| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let event = NewEvent {
                        actor: format!("user:u{n}"),
                        action: "task.read".into(),
                        resource: format!("task/t{n}"),
                        outcome: "success".into(),
                        ..NewEvent::default()
                    };
                    (n, engine.record_event(&event, 1_000 + n).await.unwrap())
                })
            })
            .collect();
        let mut answered = Vec::new();
        for caller in callers {
            answered.push(caller.await.unwrap());
        }
        let seqs: HashSet<i64> = answered.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(seqs.len(), 64, "each event its own sequence number");

        let mut tx = store.begin_read().await.unwrap();
        let rows = tx.audit_events(i64::MIN, 1000).await.unwrap();
        tx.commit().await.unwrap();
        for (n, seq) in answered {
            let row = rows
                .iter()
                .find(|r| r.seq == seq)
                .expect("the answered seq is stored");
            assert_eq!(
                row.actor,
                format!("user:u{n}"),
                "seq {seq} answered to another caller"
            );
            assert_eq!(row.ts, 1_000 + n, "each event keeps its own time");
        }
        audit::seal_pending(&store).await.unwrap();
        let report = audit::verify(&store).await.unwrap();
        assert!(report.is_intact() && report.checked == 64, "{report:?}");
    }
}
