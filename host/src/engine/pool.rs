//! A process's workers, as a pipeline: many runs between one committer that also claims,
//! and a claimer for when the committer is idle.
//!
//! A step costs far more in database statements and commits than in running: the refund
//! workflow's steps run in tens of microseconds, while claiming one and committing its
//! outcome take about twenty statements. So the work is batched where it is cheap to batch:
//! - each run executes its attempt in the sandbox, renewing its lease meanwhile, and
//!   queues the outcome;
//! - the committer commits every outcome queued meanwhile in one transaction and, in the
//!   same transaction on SQLite (right after it on PostgreSQL), claims as many ready
//!   steps as there are free slots — the dependents it just made ready among them — and
//!   hands each to a run of its own. Under load a cycle of the pipeline thus costs one
//!   write transaction where a claim and a commit of their own cost two;
//! - the claimer claims when the committer has nothing to commit: at start, when a task
//!   is created, or when a commit made more steps ready than its claim could take. It
//!   keeps at most one batch more claimed than there are runs.
//!
//! While one transaction commits, the next batch gathers, so the batches grow with the
//! load by themselves and no outcome waits for a timer. Exactly-once commits still rest on
//! the lease fencing of each step (`store::claim`), not on the batching.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::EngineError;
use super::core::Engine;
use super::worker::{Claimed, Finished};
use crate::audit;

/// Most steps one claim transaction takes.
const MAX_CLAIM: usize = 64;
/// Most outcomes one commit transaction writes.
const MAX_COMMIT: usize = 256;
/// How often the committer tries a batch while the database is unavailable before it
/// gives the batch up (its steps run again once their leases expire).
const COMMIT_TRIES: u32 = 6;

/// A process's workers.
#[derive(Debug, Clone)]
pub struct WorkerPool {
    /// How many steps this process runs at once.
    pub workers: usize,
    /// The lease owner's name (unique per process: leases name their owner).
    pub name: String,
    /// How long an idle claimer waits before looking for work again, unless a step this
    /// process completed made another ready first.
    pub idle: Duration,
    /// How often committed audit events are sealed into the chain.
    pub seal_every: Duration,
}

impl Engine {
    /// Run the workers and the audit sealer until `stop` is set, then seal what they
    /// committed: what `stepbox worker` and `stepbox serve` run.
    pub async fn work(&self, pool: &WorkerPool, stop: watch::Receiver<bool>) {
        let every = pool.seal_every;
        let mut sealer_stop = stop.clone();
        let engine = self.clone();
        let sealer = tokio::spawn(async move {
            loop {
                engine.seal_and_sign().await;
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = sealer_stop.changed() => return,
                }
            }
        });
        self.run_workers(pool.workers.max(1), &pool.name, pool.idle, stop)
            .await;
        let _ = sealer.await;
        self.seal_and_sign().await;
    }

    /// Seal what was committed, then sign a checkpoint of the new tip if one is due.
    async fn seal_and_sign(&self) {
        let store = &self.inner.store;
        if let Err(e) = audit::seal_pending(store).await {
            tracing::warn!(error = %e, "sealing audit events failed");
        }
        if let Some(signer) = &self.inner.audit_signer
            && let Err(e) =
                audit::checkpoint(store, signer, self.now(), audit::CHECKPOINT_EVERY_MS).await
        {
            tracing::warn!(error = %e, "signing an audit checkpoint failed");
        }
    }

    /// Run up to `count` steps at once under the lease owner `worker` until `stop` is set;
    /// then let the runs in flight finish and commit their outcomes.
    pub async fn run_workers(
        &self,
        count: usize,
        worker: &str,
        idle: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let count = count.max(1);
        // Claimed steps in this process, running or waiting to: the runs, plus one claim
        // batch ahead, so a claim is never smaller than the runs can use.
        let capacity = count + MAX_CLAIM;
        let (outcomes, queue) = mpsc::channel::<Finished>(count.max(MAX_COMMIT));
        let runs = Arc::new(Runs {
            slots: Arc::new(Semaphore::new(capacity)),
            runs: Arc::new(Semaphore::new(count)),
            outcomes: outcomes.downgrade(),
            worker: worker.to_owned(),
            stop: stop.clone(),
        });
        let committer = tokio::spawn(self.clone().commit_loop(queue, runs.clone()));
        while !stopping(&stop) {
            let permits = runs.free_slots();
            if permits.is_empty() {
                self.wait_for_work(idle, &mut stop).await;
                continue;
            }
            let limit = permits.len();
            match self.claim(worker, limit).await {
                Ok(claimed) => {
                    let took = claimed.len();
                    self.start(claimed, permits, &runs).await;
                    if took < limit {
                        self.wait_for_work(idle, &mut stop).await;
                    }
                }
                Err(e) => {
                    tracing::error!(worker, error = %e, "claiming steps failed");
                    drop(permits);
                    self.wait_for_work(idle, &mut stop).await;
                }
            }
        }
        // Wait for every claimed step to have run, then for the outcomes to be committed:
        // the committer stops once the last sender is gone, and only runs hold one besides
        // this (it claims nothing more once `stop` is set).
        let _ = runs
            .slots
            .acquire_many(u32::try_from(capacity).unwrap_or(u32::MAX))
            .await;
        drop(outcomes);
        let _ = committer.await;
    }

    /// Fail the claim's refusals, and run each of its jobs under one of `permits`.
    async fn start(&self, claimed: Claimed, mut permits: Vec<OwnedSemaphorePermit>, runs: &Runs) {
        let worker = runs.worker.as_str();
        for refusal in &claimed.refusals {
            if let Err(e) = self.refuse(refusal, worker).await {
                tracing::error!(worker, error = %e, "failing an unrunnable step failed");
            }
        }
        if claimed.jobs.is_empty() {
            return;
        }
        // The claimer holds the strong sender until every slot is back, and a job's slot
        // is among `permits`: it is still there.
        let Some(outcomes) = runs.outcomes.upgrade() else {
            return;
        };
        for job in claimed.jobs {
            let Some(permit) = permits.pop() else { break };
            let engine = self.clone();
            let outcomes = outcomes.clone();
            let worker = worker.to_owned();
            let runs = runs.runs.clone();
            tokio::spawn(async move {
                // Claimed ahead of the runs: keep the lease while waiting for one.
                let Ok(run) = engine
                    .renewing(&job.claim, &worker, runs.acquire_owned())
                    .await
                else {
                    return;
                };
                let finished = engine.run_job(job, &worker).await;
                drop(run);
                drop(permit);
                // The committer only stops once every sender is gone.
                let _ = outcomes.send(finished).await;
            });
        }
    }

    /// Sleep until `idle` passes, this process makes a step ready, or `stop` is set.
    async fn wait_for_work(&self, idle: Duration, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            () = tokio::time::sleep(idle) => {}
            () = self.inner.work_ready.notified() => {}
            _ = stop.changed() => {}
        }
    }

    /// Commit queued outcomes, every one that queued meanwhile in one transaction, and
    /// claim for the slots free, until the queue closes.
    async fn commit_loop(self, mut queue: mpsc::Receiver<Finished>, runs: Arc<Runs>) {
        let mut batch = Vec::new();
        while queue.recv_many(&mut batch, MAX_COMMIT).await > 0 {
            let permits = runs.free_slots();
            match self
                .commit_and_claim(&batch, &runs.worker, permits.len())
                .await
            {
                Ok((_, Ok(claimed))) => self.start(claimed, permits, &runs).await,
                Ok((_, Err(e))) => {
                    tracing::error!(worker = %runs.worker, error = %e, "claiming steps failed");
                }
                Err(e) => {
                    drop(permits);
                    tracing::debug!(error = %e, "committing a batch failed; trying again");
                    self.commit_with_retries(&batch).await;
                }
            }
            batch.clear();
        }
    }

    /// Commit a batch, riding out a short database outage. If an outcome cannot be
    /// committed for another reason, commit the others one by one so one bad outcome
    /// does not cost the rest.
    async fn commit_with_retries(&self, batch: &[Finished]) {
        let mut wait = Duration::from_millis(50);
        for _ in 0..COMMIT_TRIES {
            match self.commit(batch).await {
                Ok(_) => return,
                Err(EngineError::Unavailable(e)) => {
                    tracing::warn!(error = %e, outcomes = batch.len(), "database unavailable; committing again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) if batch.len() > 1 => {
                    tracing::warn!(error = %e, "committing a batch failed; committing its outcomes one by one");
                    for one in batch.chunks(1) {
                        Box::pin(self.commit_with_retries(one)).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "committing a step's outcome failed; it runs again when its lease expires");
                    return;
                }
            }
        }
        tracing::error!(
            outcomes = batch.len(),
            "database unavailable; outcomes dropped, their steps run again when their leases expire"
        );
    }
}

/// What the claimer and the committer share to start runs.
struct Runs {
    /// Claimed steps in this process, running or waiting to run: one permit each.
    slots: Arc<Semaphore>,
    /// Steps running: one permit each.
    runs: Arc<Semaphore>,
    /// Where runs queue their outcomes. Weak: the committer, which keeps this, must not
    /// keep its own queue open.
    outcomes: mpsc::WeakSender<Finished>,
    /// The lease owner.
    worker: String,
    stop: watch::Receiver<bool>,
}

impl Runs {
    /// Up to a claim batch of free slots; none once the workers are stopping.
    fn free_slots(&self) -> Vec<OwnedSemaphorePermit> {
        let mut permits = Vec::new();
        if stopping(&self.stop) {
            return permits;
        }
        while permits.len() < MAX_CLAIM {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        permits
    }
}

/// Whether the workers are to stop: `stop` is set, or its sender is gone.
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}
