//! Waiting for a task to end without polling the database for it.
//!
//! A client that wants a task's outcome asks once and is answered when the task ends
//! (`GET /v1/tasks/{id}?wait_ms=…`, `stepbox task wait`). Tasks this process ends wake
//! their waiters as soon as the transaction that ended them commits. A task ended by
//! another process (several `stepbox worker`s on one PostgreSQL) is found by reading it
//! again every [`READ_AGAIN`], so a missed wake-up costs at most that much, never a
//! wrong answer: a waiter only ever returns the row as the database has it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::EngineError;
use super::core::{Engine, lock};
use crate::store::TaskRow;

/// How often a waiter reads its task again in case another process ended it.
const READ_AGAIN: Duration = Duration::from_millis(100);

/// The tasks someone in this process waits on, each with how many wait and what wakes
/// them.
#[derive(Default)]
pub(crate) struct Endings {
    waiting: Mutex<HashMap<String, (usize, Arc<Notify>)>>,
}

impl Endings {
    /// Wake whoever waits on the tasks `ended` (committed as ended just now).
    pub(crate) fn ended<'a>(&self, ended: impl IntoIterator<Item = &'a str>) {
        let waiting = lock(&self.waiting);
        if waiting.is_empty() {
            return;
        }
        for id in ended {
            if let Some((_, notify)) = waiting.get(id) {
                notify.notify_waiters();
            }
        }
    }

    fn watch(&self, id: &str) -> Watch<'_> {
        let mut waiting = lock(&self.waiting);
        let (count, notify) = waiting
            .entry(id.to_owned())
            .or_insert_with(|| (0, Arc::new(Notify::new())));
        *count += 1;
        Watch {
            endings: self,
            id: id.to_owned(),
            notify: notify.clone(),
        }
    }
}

/// One waiter's registration: gone when it is dropped, the task's entry with its last.
struct Watch<'a> {
    endings: &'a Endings,
    id: String,
    notify: Arc<Notify>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(&self.endings.waiting);
        if let Some((count, _)) = waiting.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.id);
            }
        }
    }
}

impl Engine {
    /// Task `task_id`'s row once it has ended (complete, error or cancelled), or as it is
    /// when `within` has passed, whichever comes first. `NotFound` if there is no such
    /// task (or it was purged meanwhile).
    pub async fn task_row_ended(
        &self,
        task_id: &str,
        within: Duration,
    ) -> Result<TaskRow, EngineError> {
        let deadline = tokio::time::Instant::now() + within;
        let watch = self.inner.endings.watch(task_id);
        loop {
            // Listening before reading: an end committed between the read and the wait
            // still wakes this waiter.
            let woken = watch.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let task = self.task_row(task_id).await?;
            let now = tokio::time::Instant::now();
            if task.status.is_terminal() || now >= deadline {
                return Ok(task);
            }
            let next = deadline.min(now + READ_AGAIN);
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_is_woken_by_its_task_only_and_unregisters() {
        let endings = Endings::default();
        let watch = endings.watch("task_a");
        let other = endings.watch("task_b");
        let (notify_a, notify_b) = (watch.notify.clone(), other.notify.clone());
        let woken = notify_a.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let not_woken = notify_b.notified();
        tokio::pin!(not_woken);
        not_woken.as_mut().enable();

        endings.ended(["task_a", "task_c"]);
        tokio::time::timeout(Duration::from_secs(1), woken)
            .await
            .expect("the waiter on task_a was not woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), not_woken)
                .await
                .is_err(),
            "a waiter on task_b was woken by task_a's end"
        );

        drop(watch);
        assert!(lock(&endings.waiting).contains_key("task_b"));
        assert!(!lock(&endings.waiting).contains_key("task_a"));
        drop(other);
        assert!(
            lock(&endings.waiting).is_empty(),
            "a waiter stayed registered"
        );
    }
}
