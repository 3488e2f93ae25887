//! A process's workers, as a pipeline: one claimer, many runs, one committer.
//!
//! A step costs far more in database statements and commits than in running: the refund
//! workflow's steps run in tens of microseconds, while claiming one and committing its
//! outcome take about twenty statements. So the work is batched where it is cheap to batch:
//! - the claimer takes up to a batch of ready steps in one transaction (one claim
//!   statement, one read per kind of row), keeping at most one batch more claimed than
//!   there are runs, and hands each to a run of its own;
//! - each run executes its attempt in the sandbox, renewing its lease meanwhile, and
//!   queues the outcome;
//! - the committer commits every outcome queued meanwhile in one transaction, and in the
//!   same transaction leases to this process the step each completed attempt makes ready
//!   (the first dependent whose upstream results the attempt holds: see `worker::Next`).
//!   That step runs next in the attempt's slot, with the task, key and opened context the
//!   attempt already had, so a workflow's later steps cost no claim transaction, no task
//!   reads and no decryption. The committer then wakes the claimer for whatever else
//!   became ready (the other steps of a fan-out, the join of parallel branches).
//!
//! A task created in a process whose pool has a free slot skips the claim too: the
//! creation's transaction leases its first steps to the pool (see `create`), and they
//! start in free slots as soon as it commits, with the context the creation still holds.
//!
//! While one transaction commits, the next batch gathers, so the batches grow with the
//! load by themselves and no outcome waits for a timer. Exactly-once commits still rest on
//! the lease fencing of each step (`store::claim`), not on the batching.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::EngineError;
use super::core::{Engine, lock};
use super::worker::{Finished, Job, Next};
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

/// Where this process's task creations hand the first steps of their tasks while its
/// pool runs: the pool's lease owner, its slots, and what starts its runs.
pub(crate) struct Handoff {
    worker: String,
    slots: Arc<Semaphore>,
    launcher: Launcher,
}

impl Handoff {
    /// The lease owner the steps handed over are leased to.
    pub(crate) fn worker(&self) -> &str {
        &self.worker
    }

    /// Up to `wanted` free slots of the pool, none if it has none: a step is handed over
    /// only with a slot to run in, so the creations never take more than the pool runs.
    pub(crate) fn slots(&self, wanted: usize) -> Vec<OwnedSemaphorePermit> {
        (0..wanted)
            .map_while(|_| self.slots.clone().try_acquire_owned().ok())
            .collect()
    }

    /// Run `next`, a step the creation that holds `slot` leased to this pool.
    pub(crate) fn start(&self, next: Next, slot: OwnedSemaphorePermit) {
        tokio::spawn(self.launcher.clone().run_next(next, Some(slot)));
    }
}

/// The pool's [`Handoff`] while it takes new work: withdrawn when dropped (the pool
/// stopping, or its future dropped), which also ends the handoff's hold on the engine.
struct Offered<'a>(&'a Engine);

impl Drop for Offered<'_> {
    fn drop(&mut self) {
        lock(&self.0.inner.handoff).take();
    }
}

impl Engine {
    /// The running pool's [`Handoff`], if this process runs one.
    pub(crate) fn handoff(&self) -> Option<Arc<Handoff>> {
        lock(&self.inner.handoff).clone()
    }
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
        let slots = Arc::new(Semaphore::new(capacity));
        let runs = Arc::new(Semaphore::new(count));
        let (outcomes, queue) = mpsc::channel::<Finished>(count.max(MAX_COMMIT));
        let launcher = Launcher {
            engine: self.clone(),
            worker: worker.to_owned(),
            runs,
            outcomes: outcomes.downgrade(),
        };
        let committer = tokio::spawn(self.clone().commit_loop(
            queue,
            launcher.clone(),
            stop.clone(),
        ));
        // One pool per process takes the creations' first steps: a second one (tests run
        // several) leaves the first its handoff.
        let offered = {
            let mut handoff = lock(&self.inner.handoff);
            handoff.is_none().then(|| {
                *handoff = Some(Arc::new(Handoff {
                    worker: worker.to_owned(),
                    slots: slots.clone(),
                    launcher: launcher.clone(),
                }));
                Offered(self)
            })
        };
        while !*stop.borrow() {
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = stop.changed() => break,
            };
            let mut permits = vec![first];
            while permits.len() < MAX_CLAIM {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let claimed = match self.claim(worker, permits.len()).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!(worker, error = %e, "claiming steps failed");
                    drop(permits);
                    self.wait_for_work(idle, &mut stop).await;
                    continue;
                }
            };
            if claimed.jobs.is_empty() && claimed.refusals.is_empty() {
                drop(permits);
                self.wait_for_work(idle, &mut stop).await;
                continue;
            }
            for refusal in &claimed.refusals {
                if let Err(e) = self.refuse(refusal, worker).await {
                    tracing::error!(worker, error = %e, "failing an unrunnable step failed");
                }
            }
            for job in claimed.jobs {
                let Some(permit) = permits.pop() else { break };
                tokio::spawn(launcher.clone().run(job, Some(permit)));
            }
        }
        // No new work from now on; what was handed over runs in the slots waited for below.
        drop(offered);
        // Wait for every claimed step to have run, then for the outcomes to be committed
        // (the committer stops once the last sender is gone).
        let _ = slots
            .acquire_many(u32::try_from(capacity).unwrap_or(u32::MAX))
            .await;
        drop(outcomes);
        let _ = committer.await;
    }

    /// Sleep until `idle` passes, this process makes a step ready, or `stop` is set.
    async fn wait_for_work(&self, idle: Duration, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            () = tokio::time::sleep(idle) => {}
            () = self.inner.work_ready.notified() => {}
            _ = stop.changed() => {}
        }
    }

    /// Commit queued outcomes, every one that queued meanwhile in one transaction, until
    /// the queue closes; run the steps each commit took, in the slots of the attempts they
    /// follow. Once `stop` is set, commits take nothing.
    async fn commit_loop(
        self,
        mut queue: mpsc::Receiver<Finished>,
        launcher: Launcher,
        stop: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::new();
        while queue.recv_many(&mut batch, MAX_COMMIT).await > 0 {
            let take = !*stop.borrow();
            for next in self.commit_with_retries(&batch, take).await {
                let slot = batch[next.from].slot.take();
                tokio::spawn(launcher.clone().run_next(next, slot));
            }
            // The slots of attempts that took nothing go back to the claimer. What the
            // attempts held is freed off the committer, which every run waits on.
            let done = std::mem::replace(&mut batch, Vec::with_capacity(MAX_COMMIT));
            tokio::spawn(async move { drop(done) });
        }
    }

    /// Commit a batch, riding out a short database outage, and return the steps it took
    /// (see [`Engine::commit_taking`]). If an outcome cannot be committed for another
    /// reason, commit the others one by one so one bad outcome does not cost the rest.
    async fn commit_with_retries(&self, batch: &[Finished], take: bool) -> Vec<Next> {
        let mut wait = Duration::from_millis(50);
        for _ in 0..COMMIT_TRIES {
            match self.commit_taking(batch, take).await {
                Ok((_, nexts)) => return nexts,
                Err(EngineError::Unavailable(e)) => {
                    tracing::warn!(error = %e, outcomes = batch.len(), "database unavailable; committing again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) if batch.len() > 1 => {
                    tracing::warn!(error = %e, "committing a batch failed; committing its outcomes one by one");
                    let mut nexts = Vec::new();
                    for (index, one) in batch.chunks(1).enumerate() {
                        for mut next in Box::pin(self.commit_with_retries(one, take)).await {
                            next.from = index;
                            nexts.push(next);
                        }
                    }
                    return nexts;
                }
                Err(e) => {
                    tracing::error!(error = %e, "committing a step's outcome failed; it runs again when its lease expires");
                    return Vec::new();
                }
            }
        }
        tracing::error!(
            outcomes = batch.len(),
            "database unavailable; outcomes dropped, their steps run again when their leases expire"
        );
        Vec::new()
    }
}

/// What starts a pool's runs: from the claimer, a claimed job; from the committer, a
/// step its commit took.
#[derive(Clone)]
struct Launcher {
    engine: Engine,
    worker: String,
    runs: Arc<Semaphore>,
    /// Weak, so that the committer holding it never keeps its own queue open: the runs
    /// it starts hold pool slots, and the pool keeps a sender until every slot is back.
    outcomes: mpsc::WeakSender<Finished>,
}

impl Launcher {
    /// Run `job` once a run is free, holding `slot` until its outcome is committed.
    async fn run(self, job: Job, slot: Option<OwnedSemaphorePermit>) {
        let Some(outcomes) = self.outcomes.upgrade() else {
            return;
        };
        let (engine, worker) = (&self.engine, self.worker.as_str());
        // Claimed ahead of the runs: keep the lease while waiting for one.
        let Ok(run) = engine
            .renewing(&job.parts.claim, worker, self.runs.clone().acquire_owned())
            .await
        else {
            return;
        };
        let mut finished = engine.run_job(job, worker).await;
        drop(run);
        finished.slot = slot;
        // The committer only stops once every sender is gone.
        let _ = outcomes.send(finished).await;
    }

    /// Prepare and run a step a commit took; fail it for good if it may no longer run.
    async fn run_next(self, next: Next, slot: Option<OwnedSemaphorePermit>) {
        match self.engine.prepare_next(next).await {
            Ok(job) => self.run(job, slot).await,
            Err(Some(refusal)) => {
                if let Err(e) = self.engine.refuse(&refusal, &self.worker).await {
                    tracing::error!(worker = %self.worker, error = %e, "failing an unrunnable step failed");
                }
            }
            Err(None) => {}
        }
    }
}
