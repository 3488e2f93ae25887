//! Workers: claim ready steps under a lease, re-check each one's permission against the
//! creator's snapshot and the namespace policy as it is now, open the secrets the policy
//! still grants it, run it in the sandbox while renewing the lease, and commit the outcome
//! — result, retry or failure — with its audit events. A worker that lost its lease (or
//! whose step was cancelled) commits nothing.
//!
//! Work is batched at both ends, because on either database the cost of a step is its
//! statements and commits, not its run: one transaction claims several steps and reads
//! everything they need, and one transaction commits the outcomes of every attempt that
//! finished meanwhile, with multi-row statements (see `pool` for the loops that do this).
//! [`Engine::run_once`] is the same path with batches of one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::core::{Engine, LoadedWorkflow, versioned_key};
use super::data::{self, TaskKey, context_aad, record_aad, result_aad};
use super::{EngineError, StepDef};
use crate::audit::NewEvent;
use crate::policy::{NamespacePolicy, Principal};
use crate::sandbox::{Attempt, AttemptReport, Grants, Origin, Outcome, SecretValue, TaskData};
use crate::store::{
    AttemptRow, Backend, ClaimReads, ClaimedStep, Completion, HotWrites, NewAuditRow, StepStatus,
    StoreError, TaskRow, TaskStatus, Tx, ready,
};

/// What one call of [`Engine::run_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// No step was ready.
    Idle,
    /// A step ran (or was denied) and its outcome was committed.
    Step {
        /// The task.
        task_id: String,
        /// The step.
        step: String,
        /// `complete`, `waiting_for_retry`, `error` or `denied`.
        status: String,
    },
    /// The step ran but another worker had taken it over: nothing was committed.
    LostLease,
}

/// A claimed step with everything its attempt needs.
pub(crate) struct Job {
    pub(crate) parts: Parts,
    module: crate::sandbox::StepModule,
    attempt: Attempt,
}

/// A claimed step's own rows, what a job is built from besides its data, secrets and
/// module.
pub(crate) struct Parts {
    pub(crate) claim: ClaimedStep,
    task: Arc<TaskRow>,
    workflow: Arc<LoadedWorkflow>,
    def: StepDef,
    key: TaskKey,
    principal: Arc<Principal>,
}

/// A step a commit released and leased in the same transaction to the worker whose
/// attempt released it, to run next with what that attempt already holds: no claim
/// transaction, no task or result reads, no key to open, no context to decrypt (only its
/// secrets, and its module if not cached, are read). The policy is re-checked as the
/// commit read it, as a claim would.
pub(crate) struct Next {
    /// The finished attempt of the commit's batch it follows (whose slot it takes over).
    pub(crate) from: usize,
    pub(crate) claim: ClaimedStep,
    task: Arc<TaskRow>,
    workflow: Arc<LoadedWorkflow>,
    key: TaskKey,
    principal: Arc<Principal>,
    data: Arc<TaskData>,
    upstream: BTreeMap<String, Value>,
    policy: Arc<NamespacePolicy>,
}

impl Next {
    /// A task's first step, leased to this process's pool by the transaction that created
    /// the task ([`super::pool::Handoff`]): it runs with the context and key the creation
    /// holds, checked against the namespace policy as that transaction read it.
    #[allow(clippy::too_many_arguments)] // what a claim would have read, one by one
    pub(crate) fn first(
        claim: ClaimedStep,
        task: TaskRow,
        workflow: Arc<LoadedWorkflow>,
        key: TaskKey,
        principal: Principal,
        context: serde_json::Map<String, Value>,
        classification: crate::classify::ContextClassification,
        policy: NamespacePolicy,
    ) -> Self {
        Self {
            from: 0,
            claim,
            task: Arc::new(task),
            workflow,
            key,
            principal: Arc::new(principal),
            data: Arc::new(TaskData {
                context,
                classification,
                upstream: BTreeMap::new(),
            }),
            upstream: BTreeMap::new(),
            policy: Arc::new(policy),
        }
    }
}

/// A claimed step that must fail without running.
pub(crate) struct Refusal {
    claim: ClaimedStep,
    task: Arc<TaskRow>,
    /// `permission_denied` (its creator may no longer run it) or `unrunnable` (it cannot
    /// be prepared: its data key destroyed, a ciphertext that does not open, its module
    /// gone).
    code: &'static str,
    reason: String,
}

/// A finished attempt, waiting to be committed.
pub(crate) struct Finished {
    claim: ClaimedStep,
    task: Arc<TaskRow>,
    workflow: Arc<LoadedWorkflow>,
    def: StepDef,
    key: TaskKey,
    principal: Arc<Principal>,
    /// What the attempt was given: a step it releases may run with it ([`Next`]).
    data: Arc<TaskData>,
    worker: String,
    started: i64,
    report: AttemptReport,
    /// Its writes, made ready by the run (`None`: the commit makes them).
    prepared: Option<Prepared>,
    /// The pool's slot the attempt held, passed on to the step it releases, if any.
    pub(crate) slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What one claim transaction took.
#[derive(Default)]
pub(crate) struct Claimed {
    pub(crate) jobs: Vec<Job>,
    pub(crate) refusals: Vec<Refusal>,
}

/// The reads a claim batch shares: each task, data key and namespace policy once.
struct BatchReads {
    tasks: HashMap<String, Arc<TaskRow>>,
    keys: HashMap<String, Result<TaskKey, String>>,
    results: HashMap<(String, String), Vec<u8>>,
    policies: HashMap<String, NamespacePolicy>,
}

/// A read transaction begun only once something is not in this process's caches.
struct Reader<'a> {
    store: &'a crate::store::Store,
    tx: Option<Tx<'a>>,
}

impl<'a> Reader<'a> {
    async fn tx(&mut self) -> Result<&mut Tx<'a>, EngineError> {
        if self.tx.is_none() {
            self.tx = Some(self.store.begin_read().await?);
        }
        Ok(self.tx.as_mut().expect("just begun"))
    }
}

/// The rows a claim batch needs, read in `tx` (the PostgreSQL path; SQLite reads them in
/// the claim's own transaction, `LiteTx::claim_reads`).
async fn read_batch(
    tx: &mut Tx<'_>,
    claims: &[ClaimedStep],
    keys: bool,
) -> Result<ClaimReads, EngineError> {
    let mut task_ids: Vec<&str> = claims.iter().map(|c| c.task_id.as_str()).collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    let tasks = tx.get_tasks(&task_ids).await?;
    let mut key_ids: Vec<&str> = tasks.iter().map(|t| t.data_key_id.as_str()).collect();
    key_ids.sort_unstable();
    key_ids.dedup();
    let keys = if keys {
        tx.get_data_keys(&key_ids).await?
    } else {
        Vec::new()
    };
    let results = tx.complete_results(&task_ids).await?;
    Ok(ClaimReads {
        tasks,
        keys,
        results,
        policies: Vec::new(),
    })
}

/// A step's grants: its declaration, and the secret values opened for it.
fn grants(def: &StepDef, secrets: BTreeMap<String, SecretValue>) -> Grants {
    Grants {
        reads: def.reads.iter().cloned().collect(),
        upstream: def.depends_on.iter().cloned().collect(),
        clearance: def.clearance,
        secrets,
        origins: def
            .hosts
            .iter()
            .filter_map(|h| Origin::parse(h).ok())
            .collect(),
    }
}

fn system(worker: &str) -> String {
    format!("system:{worker}")
}

impl Engine {
    /// Claim one ready step and see it through. Never runs a step twice concurrently and
    /// never commits a result twice.
    pub async fn run_once(&self, worker: &str) -> Result<Ran, EngineError> {
        let mut claimed = self.claim(worker, 1).await?;
        if let Some(refusal) = claimed.refusals.pop() {
            return self.refuse(&refusal, worker).await;
        }
        let Some(job) = claimed.jobs.pop() else {
            return Ok(Ran::Idle);
        };
        let finished = self.run_job(job, worker).await;
        let mut ran = self.commit(std::slice::from_ref(&finished)).await?;
        Ok(ran.pop().unwrap_or(Ran::LostLease))
    }

    /// Claim up to `limit` ready steps for `worker`, then read everything they need.
    ///
    /// The claim is a short write transaction of its own and the reads come after it, in
    /// a read transaction: on SQLite they no longer hold the single write lock, on
    /// PostgreSQL the claimed rows are unlocked sooner. Reading after the claim commits is
    /// safe because what is read cannot change under a held lease: a task's context and
    /// its complete steps' results are written once, and a key destroyed meanwhile makes
    /// the step unrunnable, as it would have a moment later. If the reads fail on a
    /// database error the claims stand and their steps are taken again when the leases
    /// expire; a step that cannot be prepared for any other reason comes back as a
    /// refusal, to be failed once rather than claimed again and again.
    pub(crate) async fn claim(&self, worker: &str, limit: usize) -> Result<Claimed, EngineError> {
        let now = self.now();
        let timer = std::time::Instant::now();
        let lease_ms = self.inner.lease_ms;
        let store = &self.inner.store;
        let protect = self.inner.protect;
        let (claims, raw) = match store.backend() {
            // On SQLite the reads join the claim's transaction: run on this thread they
            // cost far less than a transaction of their own.
            Backend::Sqlite => {
                store
                    .write_now(|tx| {
                        let claims = tx.claim_ready_steps(worker, now, lease_ms, limit)?;
                        let reads = if claims.is_empty() {
                            ClaimReads::default()
                        } else {
                            tx.claim_reads(&claims, protect)?
                        };
                        Ok::<_, StoreError>((claims, Some(reads)))
                    })
                    .await?
            }
            // On PostgreSQL the claim commits first, unlocking its rows sooner; the reads
            // follow in a read transaction.
            Backend::Postgres => {
                let mut tx = store.begin().await?;
                let claims = tx.claim_ready_steps(worker, now, lease_ms, limit).await?;
                tx.commit().await?;
                (claims, None)
            }
        };
        let held = timer.elapsed();
        if claims.is_empty() {
            return Ok(Claimed::default());
        }
        let mut reader = Reader { store, tx: None };
        let raw = match raw {
            Some(raw) => raw,
            None => read_batch(reader.tx().await?, &claims, protect).await?,
        };
        let mut reads = self.open_reads(raw).await?;
        let mut claimed = Claimed::default();
        for claim in claims {
            let Some(task) = reads.tasks.get(&claim.task_id).cloned() else {
                return Err(EngineError::NotFound(format!("task {}", claim.task_id)));
            };
            match self.prepare(&mut reader, &mut reads, &claim, &task).await {
                Ok(Ok(job)) => claimed.jobs.push(job),
                Ok(Err(reason)) => claimed.refusals.push(Refusal {
                    claim,
                    task,
                    code: "permission_denied",
                    reason,
                }),
                Err(e @ EngineError::Unavailable(_)) => return Err(e),
                Err(e) => claimed.refusals.push(Refusal {
                    claim,
                    task,
                    code: "unrunnable",
                    reason: e.to_string(),
                }),
            }
        }
        if let Some(tx) = reader.tx {
            tx.commit().await?;
        }
        tracing::debug!(
            steps = claimed.jobs.len() + claimed.refusals.len(),
            claim_us = held.as_micros() as u64,
            total_us = timer.elapsed().as_micros() as u64,
            "claimed"
        );
        Ok(claimed)
    }

    /// The batch's rows made ready to use: tasks by id, data keys opened, results by
    /// step, policies parsed.
    async fn open_reads(&self, raw: ClaimReads) -> Result<BatchReads, EngineError> {
        let ClaimReads {
            tasks,
            keys,
            results,
            policies,
        } = raw;
        let tasks: HashMap<String, Arc<TaskRow>> = tasks
            .into_iter()
            .map(|task| (task.id.clone(), Arc::new(task)))
            .collect();
        let mut key_ids: Vec<&str> = tasks.values().map(|t| t.data_key_id.as_str()).collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        let keys = if self.inner.protect {
            let mut rows: HashMap<String, _> =
                keys.into_iter().map(|row| (row.id.clone(), row)).collect();
            let mut opened = HashMap::with_capacity(key_ids.len());
            for id in &key_ids {
                let key = data::open_key(self.data_keys(), rows.remove(*id), id)
                    .await
                    .map(TaskKey::from)
                    .map_err(|e| e.to_string());
                opened.insert((*id).to_owned(), key);
            }
            opened
        } else {
            key_ids
                .iter()
                .map(|id| ((*id).to_owned(), Ok(TaskKey::none())))
                .collect()
        };
        let results = results
            .into_iter()
            .map(|(task, step, result)| ((task, step), result))
            .collect();
        let policies = policies
            .into_iter()
            .map(|(namespace, policy)| {
                let parsed = super::core::parse_policy(&namespace, &policy)?;
                Ok((namespace, parsed))
            })
            .collect::<Result<_, EngineError>>()?;
        Ok(BatchReads {
            tasks,
            keys,
            results,
            policies,
        })
    }

    /// Everything an attempt of the claimed step needs; `Ok(Err(why))` if its creator may
    /// no longer run it.
    async fn prepare(
        &self,
        reader: &mut Reader<'_>,
        reads: &mut BatchReads,
        claim: &ClaimedStep,
        task: &Arc<TaskRow>,
    ) -> Result<Result<Job, String>, EngineError> {
        let key = versioned_key(&task.namespace, &task.workflow_name, &task.workflow_version);
        let workflow = match self.cached_workflow(&key) {
            Some(workflow) => workflow,
            None => {
                self.workflow(
                    reader.tx().await?,
                    &task.namespace,
                    &task.workflow_name,
                    &task.workflow_version,
                )
                .await?
            }
        };
        let def = step_def(&workflow, &claim.step)?;
        if !reads.policies.contains_key(&task.namespace) {
            let policy = Self::policy(reader.tx().await?, &task.namespace).await?;
            reads.policies.insert(task.namespace.clone(), policy);
        }
        let policy = &reads.policies[&task.namespace];
        let principal: Principal = serde_json::from_str(&task.principal).map_err(|_| {
            EngineError::Internal("stored permission snapshot does not parse".into())
        })?;
        if let Err(why) = permitted(policy, &principal, &def) {
            return Ok(Err(why));
        }

        let key = match reads.keys.get(&task.data_key_id) {
            Some(Ok(key)) => key.clone(),
            Some(Err(why)) => return Err(EngineError::Invalid(why.clone())),
            None => {
                return Err(EngineError::NotFound(format!(
                    "data key {}",
                    task.data_key_id
                )));
            }
        };
        let context = open_json(&key, &task.context, context_aad(&task.id))?;
        let mut upstream = BTreeMap::new();
        for name in &def.depends_on {
            if let Some(sealed) = reads.results.get(&(task.id.clone(), name.clone())) {
                let row = format!("{}/{name}", task.id);
                upstream.insert(name.clone(), open_json(&key, sealed, result_aad(&row))?);
            }
        }
        let Value::Object(context) = context else {
            return Err(EngineError::Internal(
                "stored context is not an object".into(),
            ));
        };
        let classification = crate::classify::classify_context(&workflow.classes, &context);
        let data = TaskData {
            context,
            classification,
            upstream,
        };
        let parts = Parts {
            claim: claim.clone(),
            task: task.clone(),
            workflow,
            def,
            key,
            principal: Arc::new(principal),
        };
        self.assemble(reader, parts, policy, data).await.map(Ok)
    }

    /// The job of a step this process just took in its commit ([`Next`]): everything the
    /// attempt before it had — the task, its key, its opened context — with the upstream
    /// results it holds, checked against the namespace policy as the commit read it. The
    /// refusal to commit if its creator may no longer run it or it cannot be prepared;
    /// `Err(None)` if the database is unavailable (its lease runs out, and a claim takes it).
    pub(crate) async fn prepare_next(&self, next: Next) -> Result<Job, Option<Refusal>> {
        let (claim, task) = (next.claim.clone(), next.task.clone());
        let refusal = |code, reason| {
            Some(Refusal {
                claim: claim.clone(),
                task: task.clone(),
                code,
                reason,
            })
        };
        match self.try_prepare_next(next).await {
            Ok(Ok(job)) => Ok(job),
            Ok(Err(why)) => Err(refusal("permission_denied", why)),
            // Its lease runs out and a claim takes it then.
            Err(e @ EngineError::Unavailable(_)) => {
                tracing::warn!(task = %claim.task_id, step = %claim.step, error = %e, "preparing a released step failed");
                Err(None)
            }
            Err(e) => Err(refusal("unrunnable", e.to_string())),
        }
    }

    async fn try_prepare_next(&self, next: Next) -> Result<Result<Job, String>, EngineError> {
        let def = step_def(&next.workflow, &next.claim.step)?;
        let policy = next.policy;
        if let Err(why) = permitted(&policy, &next.principal, &def) {
            return Ok(Err(why));
        }
        let data = TaskData {
            context: next.data.context.clone(),
            classification: next.data.classification.clone(),
            upstream: next.upstream,
        };
        let parts = Parts {
            claim: next.claim,
            task: next.task,
            workflow: next.workflow,
            def,
            key: next.key,
            principal: next.principal,
        };
        let store = &self.inner.store;
        let mut reader = Reader { store, tx: None };
        let job = self.assemble(&mut reader, parts, &policy, data).await;
        if let Some(tx) = reader.tx {
            tx.commit().await?;
        }
        job.map(Ok)
    }

    /// A permitted step's job: its secrets (those the policy still grants) and module
    /// found, its attempt built.
    async fn assemble(
        &self,
        reader: &mut Reader<'_>,
        parts: Parts,
        policy: &NamespacePolicy,
        data: TaskData,
    ) -> Result<Job, EngineError> {
        let (def, namespace) = (&parts.def, &parts.task.namespace);
        // Only secrets the namespace policy still grants: one withdrawn since the workflow
        // was applied is denied to the step like one never set.
        let granted: Vec<String> = def
            .secrets
            .iter()
            .filter(|name| policy.secrets.contains(*name))
            .cloned()
            .collect();
        let module = match self.cached_module(namespace, &def.module) {
            Some(module) => module,
            None => {
                self.module(reader.tx().await?, namespace, &def.module)
                    .await?
            }
        };
        let secrets = if granted.is_empty() {
            BTreeMap::new()
        } else {
            self.step_secrets(reader.tx().await?, namespace, &granted)
                .await?
        };
        let attempt = Attempt {
            task_id: parts.task.id.clone(),
            step_name: def.name.clone(),
            attempt: u32::try_from(parts.claim.attempt).unwrap_or(u32::MAX),
            config: def.config.clone(),
            grants: grants(def, secrets),
            data: Arc::new(data),
            limits: def.limits(),
        };
        Ok(Job {
            parts,
            module,
            attempt,
        })
    }

    /// Run a claimed step's attempt, renewing its lease every third of its length
    /// meanwhile.
    pub(crate) async fn run_job(&self, job: Job, worker: &str) -> Finished {
        let Job {
            parts:
                Parts {
                    claim,
                    task,
                    workflow,
                    def,
                    key,
                    principal,
                },
            module,
            attempt,
        } = job;
        let started = self.now();
        let data = attempt.data.clone();
        let report = self
            .renewing(&claim, worker, self.inner.sandbox.run(&module, attempt))
            .await;
        let mut finished = Finished {
            claim,
            task,
            workflow,
            def,
            key,
            principal,
            data,
            worker: worker.to_owned(),
            started,
            report,
            prepared: None,
            slot: None,
        };
        // Here, in the attempt's own run, rather than in the committer all runs wait on.
        // Should it fail, the commit tries again and reports why.
        finished.prepared = finished.prepare(self.now(), self.inner.audit).ok();
        finished
    }

    /// Await `work` while renewing `worker`'s lease on the claimed step every third of the
    /// lease's length.
    pub(crate) async fn renewing<T>(
        &self,
        claim: &ClaimedStep,
        worker: &str,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = Duration::from_millis(
            u64::try_from(self.inner.lease_ms / 3)
                .unwrap_or(1_000)
                .max(10),
        );
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep(every) => {
                    let now = self.now();
                    if let Err(e) = self.inner.store.renew_lease(&claim.task_id, &claim.step, worker, now, self.inner.lease_ms).await {
                        tracing::warn!(task = %claim.task_id, step = %claim.step, error = %e, "lease renewal failed");
                    }
                }
            }
        }
    }

    /// Fail a claimed step for good without running it, audited: its creator may no
    /// longer run it (`permission_denied`), or it cannot be prepared (`unrunnable`).
    pub(crate) async fn refuse(&self, refusal: &Refusal, worker: &str) -> Result<Ran, EngineError> {
        let Refusal {
            claim,
            task,
            code,
            reason,
        } = refusal;
        let (action, outcome, status) = if *code == "permission_denied" {
            ("step.denied", "denied", "denied")
        } else {
            ("step.failed", "failure", "error")
        };
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let error = json!({ "kind": "permanent", "code": code, "message": reason }).to_string();
        if let Err(e) = tx
            .fail_step(
                &task.id,
                &claim.step,
                worker,
                claim.attempt,
                &error,
                None,
                now,
            )
            .await
        {
            tx.rollback().await?;
            return lost_or(e);
        }
        let mut events = vec![step_event(
            task,
            &claim.step,
            claim.attempt,
            worker,
            action,
            outcome,
            json!({ "code": code, "reason": reason }),
        )];
        self.finish_task(
            &mut tx,
            task,
            TaskStatus::Error,
            Some(&claim.step),
            now,
            &mut events,
        )
        .await?;
        self.audit_many(&mut tx, &[], &events, now).await?;
        tx.commit().await?;
        self.inner.endings.ended([task.id.as_str()]);
        Ok(Ran::Step {
            task_id: task.id.clone(),
            step: claim.step.clone(),
            status: status.into(),
        })
    }

    /// Commit the outcomes of finished attempts in one transaction: results with one
    /// statement, attempt records and audit events with one each, tasks completed with
    /// one. An attempt whose worker lost its lease commits nothing (`Ran::LostLease`).
    /// Any database error rolls the whole batch back; the caller may try it again.
    pub(crate) async fn commit(&self, batch: &[Finished]) -> Result<Vec<Ran>, EngineError> {
        Ok(self.commit_taking(batch, false).await?.0)
    }

    /// [`Engine::commit`], and if `take`, lease the steps its completions make ready to
    /// the workers that completed them, in the same transaction: for each completed
    /// attempt, the first step depending on it whose every upstream result the attempt
    /// holds (see [`Next`]). A step released but not taken waits for a claim.
    pub(crate) async fn commit_taking(
        &self,
        batch: &[Finished],
        take: bool,
    ) -> Result<(Vec<Ran>, Vec<Next>), EngineError> {
        let now = self.now();
        // Everything sealed and built before the transaction: no cryptography and little
        // serializing under the write lock. The runs did it (`Engine::run_job`).
        let audit = self.inner.audit;
        let sealed = batch
            .iter()
            .map(|f| match &f.prepared {
                Some(prepared) => Ok(Cow::Borrowed(prepared)),
                None => f.prepare(now, audit).map(Cow::Owned),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let timer = std::time::Instant::now();
        let store = &self.inner.store;
        let Committed {
            statuses,
            taken,
            ended,
            untaken,
        } = match store.backend() {
            // The whole transaction at once, on this thread (see `store::lite`): every
            // write below is ready when first polled.
            Backend::Sqlite => {
                store
                    .write_now(|tx| ready(self.commit_in(tx, batch, &sealed, take, now)))
                    .await?
            }
            Backend::Postgres => {
                let mut tx = store.begin().await?;
                let committed = self.commit_in(&mut tx, batch, &sealed, take, now).await?;
                tx.commit().await?;
                committed
            }
        };
        self.inner.endings.ended(ended.iter().map(String::as_str));
        let nexts = self.nexts(batch, taken);
        tracing::debug!(
            outcomes = batch.len(),
            total_us = timer.elapsed().as_micros() as u64,
            "committed"
        );
        // The claimer is woken only for work it can find: a step this commit released but
        // did not take (a fan-out, a join), or a retry. Waking it after every commit of a
        // chain whose next steps were all taken cost an empty claim transaction each.
        if untaken
            || statuses
                .iter()
                .any(|s| *s == Some(StepStatus::WaitingForRetry))
        {
            self.inner.work_ready.notify_one();
        }
        let ran = batch
            .iter()
            .zip(&statuses)
            .map(|(f, status)| match status {
                Some(status) => Ran::Step {
                    task_id: f.task.id.clone(),
                    step: f.claim.step.clone(),
                    status: status.as_str().to_owned(),
                },
                None => Ran::LostLease,
            })
            .collect();
        Ok((ran, nexts))
    }

    /// The steps a commit took ([`Taken`]), each with what the attempt it follows holds.
    fn nexts(&self, batch: &[Finished], taken: Taken) -> Vec<Next> {
        let policies: HashMap<String, Result<Arc<NamespacePolicy>, EngineError>> = taken
            .policies
            .into_iter()
            .map(|(namespace, stored)| {
                let policy = match stored {
                    Some(stored) => super::core::parse_policy(&namespace, &stored).map(Arc::new),
                    None => Err(EngineError::NotFound(format!("namespace {namespace}"))),
                };
                (namespace, policy)
            })
            .collect();
        let mut nexts = Vec::with_capacity(taken.steps.len());
        for (from, claim) in taken.steps {
            let f = &batch[from];
            let Some(upstream) = f
                .workflow
                .def
                .steps
                .iter()
                .find(|s| s.name == claim.step)
                .and_then(|def| f.upstream_for(def))
            else {
                // Not taken unless the attempt held them all (`holds_upstream_of`).
                continue;
            };
            // A policy that cannot be read leaves the step to its lease, as a claim does:
            // it runs out, and the step is tried again then.
            let policy = match policies.get(&f.task.namespace) {
                Some(Ok(policy)) => policy.clone(),
                failed => {
                    let error = failed
                        .and_then(|p| p.as_ref().err())
                        .map(ToString::to_string);
                    tracing::error!(task = %claim.task_id, step = %claim.step, ?error, "reading the namespace policy for a released step failed");
                    continue;
                }
            };
            nexts.push(Next {
                from,
                claim,
                task: f.task.clone(),
                workflow: f.workflow.clone(),
                key: f.key.clone(),
                principal: f.principal.clone(),
                data: f.data.clone(),
                upstream,
                policy,
            });
        }
        nexts
    }

    /// The writes of [`Engine::commit`] in `tx`.
    async fn commit_in<W: HotWrites>(
        &self,
        tx: &mut W,
        batch: &[Finished],
        sealed: &[Cow<'_, Prepared>],
        take: bool,
        now: i64,
    ) -> Result<Committed, EngineError> {
        let completions: Vec<Completion<'_>> = batch
            .iter()
            .zip(sealed)
            .filter_map(|(f, s)| match &s.sealed.verdict {
                Verdict::Success { result } => Some(Completion {
                    task_id: &f.task.id,
                    step: &f.claim.step,
                    worker: &f.worker,
                    attempt: f.claim.attempt,
                    result,
                }),
                Verdict::Failure { .. } => None,
            })
            .collect();
        let completed: std::collections::HashSet<(String, String, i64)> = if completions.is_empty()
        {
            Default::default()
        } else {
            tx.complete_steps(&completions, now)
                .await?
                .into_iter()
                .collect()
        };

        let mut statuses: Vec<Option<StepStatus>> = Vec::with_capacity(batch.len());
        for (f, s) in batch.iter().zip(sealed) {
            let status = match &s.sealed.verdict {
                // By attempt: of a stale and a current attempt of one step in this batch,
                // only the one that committed releases its dependents.
                Verdict::Success { .. } => completed
                    .contains(&(f.task.id.clone(), f.claim.step.clone(), f.claim.attempt))
                    .then_some(StepStatus::Complete),
                Verdict::Failure { error, retry_in } => {
                    let retry_at = retry_in.map(|ms| now.saturating_add(ms));
                    match tx
                        .fail_step(
                            &f.task.id,
                            &f.claim.step,
                            &f.worker,
                            f.claim.attempt,
                            error,
                            retry_at,
                            now,
                        )
                        .await
                    {
                        Ok(()) => Some(s.sealed.status()),
                        Err(StoreError::Conflict(_)) => None,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            statuses.push(status);
        }

        // Steps waiting on the completed ones: each waits on one fewer per dependency
        // completed (the workflow says which; definitions never change).
        let mut released: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (f, status) in batch.iter().zip(&statuses) {
            if *status != Some(StepStatus::Complete) {
                continue;
            }
            for next in f
                .workflow
                .def
                .steps
                .iter()
                .filter(|s| s.depends_on.contains(&f.claim.step))
            {
                *released.entry((&f.task.id, &next.name)).or_default() += 1;
            }
        }
        let released_steps = released.len();
        if !released.is_empty() {
            let released: Vec<(&str, &str, i64)> = released
                .into_iter()
                .map(|((task, step), n)| (task, step, n))
                .collect();
            tx.release_steps(&released).await?;
        }

        let mut attempts = Vec::with_capacity(batch.len());
        let mut built: Vec<&NewAuditRow> = Vec::with_capacity(batch.len() * 2);
        let mut events = Vec::new();
        for ((f, s), status) in batch.iter().zip(sealed).zip(&statuses) {
            if status.is_none() {
                continue;
            }
            attempts.push(AttemptRow {
                task_id: f.task.id.clone(),
                step: f.claim.step.clone(),
                attempt: f.claim.attempt,
                worker: f.worker.clone(),
                outcome: s.sealed.outcome.clone(),
                record: s.sealed.record.clone(),
                started_at: f.started,
                duration_ms: i64::try_from(f.report.duration_ms).unwrap_or(i64::MAX),
            });
            // Built for the status its verdict gives, which is the one it got.
            built.extend(&s.rows);
        }
        tx.insert_attempts(&attempts).await?;

        // The tasks this commit ends, whose waiters it wakes once committed.
        let mut ended = Vec::new();
        for (f, status) in batch.iter().zip(&statuses) {
            if *status == Some(StepStatus::Error) {
                let before = events.len();
                self.finish_task(
                    tx,
                    &f.task,
                    TaskStatus::Error,
                    Some(&f.claim.step),
                    now,
                    &mut events,
                )
                .await?;
                if events.len() > before {
                    ended.push(f.task.id.clone());
                }
            }
        }
        // After the failed tasks ended: a step of a task that failed in this very commit
        // is no longer taken (nor was it cancelled, had it been taken first).
        let taken = if take {
            self.take_released(tx, batch, &statuses, now).await?
        } else {
            Taken::default()
        };
        let mut maybe_done: Vec<&str> = batch
            .iter()
            .zip(&statuses)
            .filter(|(_, status)| **status == Some(StepStatus::Complete))
            .map(|(f, _)| f.task.id.as_str())
            .collect();
        maybe_done.sort_unstable();
        maybe_done.dedup();
        if !maybe_done.is_empty() {
            for id in tx.complete_finished_tasks(&maybe_done, now).await? {
                if let Some(f) = batch.iter().find(|f| f.task.id == id) {
                    events.push(task_event(&f.task, TaskStatus::Complete, None));
                }
                ended.push(id);
            }
        }
        self.audit_many(tx, &built, &events, now).await?;
        Ok(Committed {
            untaken: released_steps > taken.steps.len(),
            statuses,
            taken,
            ended,
        })
    }

    /// In a commit's `tx`, after its releases: lease to each completed attempt's worker
    /// the first step depending on it whose upstream results the attempt holds, if that
    /// step is now ready, and read the policies of their namespaces.
    async fn take_released<W: HotWrites>(
        &self,
        tx: &mut W,
        batch: &[Finished],
        statuses: &[Option<StepStatus>],
        now: i64,
    ) -> Result<Taken, EngineError> {
        let mut wanted: HashMap<(&str, &str), usize> = HashMap::new();
        for (index, (f, status)) in batch.iter().zip(statuses).enumerate() {
            if *status != Some(StepStatus::Complete) {
                continue;
            }
            let next = f.workflow.def.steps.iter().find(|s| {
                s.depends_on.contains(&f.claim.step)
                    && !wanted.contains_key(&(f.task.id.as_str(), s.name.as_str()))
                    && f.holds_upstream_of(s)
            });
            if let Some(next) = next {
                wanted.insert((&f.task.id, &next.name), index);
            }
        }
        let mut taken = Taken::default();
        let mut workers: Vec<&str> = wanted.values().map(|i| batch[*i].worker.as_str()).collect();
        workers.sort_unstable();
        workers.dedup();
        for worker in workers {
            let steps: Vec<(&str, &str)> = wanted
                .iter()
                .filter(|(_, i)| batch[**i].worker == worker)
                .map(|(key, _)| *key)
                .collect();
            for claim in tx
                .take_released(&steps, worker, now, self.inner.lease_ms)
                .await?
            {
                if let Some(index) = wanted.get(&(claim.task_id.as_str(), claim.step.as_str())) {
                    taken.steps.push((*index, claim));
                }
            }
        }
        let mut namespaces: Vec<&str> = taken
            .steps
            .iter()
            .map(|(i, _)| batch[*i].task.namespace.as_str())
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        for namespace in namespaces {
            let stored = tx.namespace_policy(namespace).await?;
            taken.policies.push((namespace.to_owned(), stored));
        }
        Ok(taken)
    }

    /// End a task as `status` in `tx`, adding its event to `events`. Ending in error
    /// cancels its steps that have not started. A task already finished (cancelled, or
    /// failed by another branch first) stays as it is.
    async fn finish_task<W: HotWrites>(
        &self,
        tx: &mut W,
        task: &TaskRow,
        status: TaskStatus,
        error_step: Option<&str>,
        now: i64,
        events: &mut Vec<NewEvent>,
    ) -> Result<(), EngineError> {
        if status == TaskStatus::Error {
            tx.cancel_pending_steps(&task.id, now).await?;
        }
        match tx.set_task_status(&task.id, status, error_step, now).await {
            Ok(()) => {
                events.push(task_event(task, status, error_step));
                Ok(())
            }
            Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Record audit events of the task path in `tx`, many per statement: rows built
    /// ahead (`crate::audit::rows`), then `events`.
    async fn audit_many<W: HotWrites>(
        &self,
        tx: &mut W,
        built: &[&NewAuditRow],
        events: &[NewEvent],
        now: i64,
    ) -> Result<(), EngineError> {
        if !self.inner.audit || (built.is_empty() && events.is_empty()) {
            return Ok(());
        }
        crate::audit::record_rows_in(tx, built, events, now).await?;
        Ok(())
    }
}

/// What a commit's transaction did ([`Engine::commit_in`]).
struct Committed {
    /// What became of each outcome (`None`: its lease was lost, nothing of it written).
    statuses: Vec<Option<StepStatus>>,
    /// The steps it leased to the workers whose attempts released them.
    taken: Taken,
    /// The tasks it ended, whose waiters it wakes once committed.
    ended: Vec<String>,
    /// Whether it released more steps than it took: some may be ready for a claim.
    untaken: bool,
}

/// What a commit leased to its workers ([`Engine::take_released`]): each step with the
/// index of the attempt it follows, and the stored policies of their namespaces.
#[derive(Default)]
struct Taken {
    steps: Vec<(usize, ClaimedStep)>,
    policies: Vec<(String, Option<String>)>,
}

/// How an attempt ended, as it will be stored.
#[derive(Clone)]
enum Verdict {
    /// Its result, sealed.
    Success { result: Vec<u8> },
    /// Its error as JSON, and how long after its commit to try again, in ms (`None`:
    /// never). A delay rather than a time: the commit may come later than planned, after
    /// a database outage, and the backoff counts from it.
    Failure {
        error: String,
        retry_in: Option<i64>,
    },
}

/// A finished attempt's outcome, sealed and ready to write.
#[derive(Clone)]
struct Sealed {
    verdict: Verdict,
    /// The attempt record, sealed.
    record: Vec<u8>,
    /// `success`, `step_error:<code>` or `contained:<what>`.
    outcome: String,
}

impl Sealed {
    /// What the step becomes if its attempt commits (it still holds the lease).
    fn status(&self) -> StepStatus {
        match self.verdict {
            Verdict::Success { .. } => StepStatus::Complete,
            Verdict::Failure {
                retry_in: Some(_), ..
            } => StepStatus::WaitingForRetry,
            Verdict::Failure { retry_in: None, .. } => StepStatus::Error,
        }
    }
}

/// A finished attempt's writes, made before its commit: its outcome sealed, and the rows
/// of its audit events (none when the benchmark turns audit off), which the commit records
/// with its own time if the attempt commits.
#[derive(Clone)]
struct Prepared {
    sealed: Sealed,
    rows: Vec<NewAuditRow>,
}

impl Finished {
    /// Whether this attempt holds every upstream result `next` needs: its own result, and
    /// those it was given.
    fn holds_upstream_of(&self, next: &StepDef) -> bool {
        matches!(self.report.outcome, Outcome::Success { .. })
            && next
                .depends_on
                .iter()
                .all(|dep| *dep == self.claim.step || self.data.upstream.contains_key(dep))
    }

    /// The upstream results of `next` this attempt holds, if it holds them all.
    fn upstream_for(&self, next: &StepDef) -> Option<BTreeMap<String, Value>> {
        let Outcome::Success { result } = &self.report.outcome else {
            return None;
        };
        next.depends_on
            .iter()
            .map(|dep| {
                let value = if *dep == self.claim.step {
                    result.clone()
                } else {
                    self.data.upstream.get(dep)?.clone()
                };
                Some((dep.clone(), value))
            })
            .collect()
    }

    /// Seal the attempt's outcome and, if `audit`, build its audit rows.
    fn prepare(&self, now: i64, audit: bool) -> Result<Prepared, EngineError> {
        let sealed = self.seal()?;
        let rows = if audit {
            let mut events = Vec::new();
            self.events(sealed.status(), &sealed.outcome, &mut events);
            crate::audit::rows(&events, now)
        } else {
            Vec::new()
        };
        Ok(Prepared { sealed, rows })
    }

    /// Seal the attempt's result and record, and decide whether a failure is retried.
    fn seal(&self) -> Result<Sealed, EngineError> {
        let row = format!("{}/{}", self.task.id, self.claim.step);
        let attempt_row = format!("{row}/{}", self.claim.attempt);
        let record = serde_json::to_vec(&self.report.record)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let record = self.key.seal(&record, record_aad(&attempt_row))?;
        let outcome = match &self.report.outcome {
            Outcome::Success { .. } => "success".to_owned(),
            Outcome::StepError { code, .. } => format!("step_error:{code}"),
            Outcome::Contained { containment, .. } => format!(
                "contained:{}",
                serde_json::to_value(containment)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        };
        let verdict = match &self.report.outcome {
            Outcome::Success { result } => {
                let plaintext =
                    serde_json::to_vec(result).map_err(|e| EngineError::Internal(e.to_string()))?;
                Verdict::Success {
                    result: self.key.seal(&plaintext, result_aad(&row))?,
                }
            }
            failure => {
                let retryable = match failure {
                    Outcome::StepError { kind, .. } => {
                        *kind == crate::sandbox::ErrorKind::Retryable
                    }
                    _ => true,
                };
                let attempts_left = self.claim.attempt - self.claim.attempt_base
                    < i64::from(self.def.retry.max_attempts);
                let retry_in = (retryable && attempts_left).then(|| {
                    let hint = match failure {
                        Outcome::StepError {
                            retry_after_ms: Some(ms),
                            ..
                        } => i64::try_from(*ms).unwrap_or(i64::MAX),
                        _ => 0,
                    };
                    let backoff = self.def.retry.backoff(
                        u32::try_from(self.claim.attempt + 1).unwrap_or(u32::MAX),
                        jitter(),
                    );
                    i64::try_from(backoff.as_millis())
                        .unwrap_or(i64::MAX)
                        .max(hint)
                });
                Verdict::Failure {
                    error: serde_json::to_string(failure)
                        .map_err(|e| EngineError::Internal(e.to_string()))?,
                    retry_in,
                }
            }
        };
        Ok(Sealed {
            verdict,
            record,
            outcome,
        })
    }

    /// The attempt's audit events: what became of the step, then (at audit level full)
    /// the business events the step reported.
    fn events(&self, status: StepStatus, outcome_name: &str, events: &mut Vec<NewEvent>) {
        let (action, outcome) = match status {
            StepStatus::Complete => ("step.completed", "success"),
            StepStatus::WaitingForRetry => ("step.retrying", "failure"),
            _ => ("step.failed", "failure"),
        };
        let report = &self.report;
        let mut details = json!({
            "outcome": outcome_name,
            "duration_ms": report.duration_ms,
            "cpu_ticks": report.cpu_ticks,
        });
        let full = self.def.audit_level == super::AuditLevel::Full;
        if full {
            // The classes of the data it read, for the trail's compliance tags.
            let mut classes: Vec<&str> = report
                .record
                .fields_read
                .iter()
                .filter(|read| !read.redacted)
                .filter_map(|read| self.workflow.classes.get(&read.field))
                .map(|class| class.as_str())
                .collect();
            classes.sort_unstable();
            classes.dedup();
            details["data_classes"] = json!(classes);
            details["fields_read"] = json!(report.record.fields_read);
            details["upstream_read"] = json!(report.record.upstream_read);
            details["secrets_used"] = json!(report.record.secrets_used);
            details["hosts_called"] = json!(report.record.http_calls);
            details["denials"] = json!(report.record.denials);
        }
        let (task, step, attempt, worker) = (
            &self.task,
            &self.claim.step,
            self.claim.attempt,
            &self.worker,
        );
        events.push(step_event(
            task, step, attempt, worker, action, outcome, details,
        ));
        if full {
            for event in &report.record.audit_events {
                events.push(step_event(
                    task,
                    step,
                    attempt,
                    worker,
                    "step.business_event",
                    "success",
                    json!({ "action": event.action, "subject": event.subject, "metadata": event.metadata }),
                ));
            }
        }
    }
}

/// A task's `task.completed` or `task.failed` event.
fn task_event(task: &TaskRow, status: TaskStatus, error_step: Option<&str>) -> NewEvent {
    let complete = status == TaskStatus::Complete;
    NewEvent {
        actor: "system:engine".into(),
        action: if complete {
            "task.completed"
        } else {
            "task.failed"
        }
        .into(),
        resource: format!("task/{}", task.id),
        namespace: Some(task.namespace.clone()),
        outcome: if complete { "success" } else { "failure" }.into(),
        classification: Some(task.classification.clone()),
        contains_pii: task.contains_pii,
        correlation_id: Some(task.id.clone()),
        details: json!({
            "error_step": error_step,
            "workflow": format!("{}@{}", task.workflow_name, task.workflow_version),
        }),
    }
}

fn lost_or(e: crate::store::StoreError) -> Result<Ran, EngineError> {
    match e {
        crate::store::StoreError::Conflict(_) => Ok(Ran::LostLease),
        other => Err(other.into()),
    }
}

fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

fn open_json(
    key: &TaskKey,
    sealed: &[u8],
    aad: crate::crypto::Aad<'_>,
) -> Result<Value, EngineError> {
    let plaintext = key.open(sealed, aad)?;
    serde_json::from_slice(&plaintext)
        .map_err(|_| EngineError::Internal("stored data is not JSON".into()))
}

fn step_event(
    task: &TaskRow,
    step: &str,
    attempt: i64,
    worker: &str,
    action: &str,
    outcome: &str,
    mut details: Value,
) -> NewEvent {
    details["attempt"] = json!(attempt);
    details["step"] = json!(step);
    details["workflow"] = json!(format!("{}@{}", task.workflow_name, task.workflow_version));
    NewEvent {
        actor: system(worker),
        action: action.into(),
        resource: format!("step/{}/{step}", task.id),
        namespace: Some(task.namespace.clone()),
        outcome: outcome.into(),
        classification: Some(task.classification.clone()),
        contains_pii: task.contains_pii,
        correlation_id: Some(task.id.clone()),
        details,
    }
}

/// The step `name` of `workflow`.
fn step_def(workflow: &LoadedWorkflow, name: &str) -> Result<StepDef, EngineError> {
    workflow
        .def
        .steps
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| EngineError::Internal(format!("step {name} is not in its workflow")))
}

/// Policy before work: no instantiation for a step its creator may no longer run — any
/// step once its creator is suspended here, a gated one once its permission is no longer
/// held. `Err(why)` if it may not run.
fn permitted(policy: &NamespacePolicy, principal: &Principal, def: &StepDef) -> Result<(), String> {
    if policy.suspended_subjects.contains(&principal.subject) {
        return Err(crate::policy::Denial::Suspended.to_string());
    }
    if let Some(permission) = &def.requires_permission
        && let Err(denial) = policy.check(principal, permission)
    {
        return Err(denial.to_string());
    }
    Ok(())
}
