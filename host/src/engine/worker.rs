//! Workers: claim a ready step under a lease, re-check its permission against the
//! creator's snapshot and the namespace policy as it is now, open the secrets the policy
//! still grants it, run it in the sandbox while renewing the lease, and commit the outcome
//! — result, retry or failure — with its audit events in one transaction. A worker that
//! lost its lease (or whose step was cancelled) commits nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::core::Engine;
use super::data::{TaskKey, context_aad, record_aad, result_aad};
use super::{EngineError, StepDef};
use crate::audit::{self, NewEvent};
use crate::policy::Principal;
use crate::sandbox::{Attempt, AttemptReport, Grants, Origin, Outcome, SecretValue, TaskData};
use crate::store::{AttemptRow, ClaimedStep, StepStatus, TaskRow, TaskStatus, Tx};

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

/// What a claimed step's attempt needs.
struct Prepared {
    def: StepDef,
    key: TaskKey,
    module: crate::sandbox::StepModule,
    attempt: Attempt,
}

enum Preparation {
    Ready(Prepared),
    /// The creator may no longer run the step: why.
    Denied(String),
}

/// A process's workers.
#[derive(Debug, Clone)]
pub struct WorkerPool {
    /// How many steps this process runs at once.
    pub workers: usize,
    /// Name prefix of the workers (unique per process: leases name their owner).
    pub name: String,
    /// How long an idle worker waits before looking for work again.
    pub idle: Duration,
    /// How often committed audit events are sealed into the chain.
    pub seal_every: Duration,
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
        let now = self.now();
        // The claim and everything the attempt needs are read in one transaction: one
        // commit per claim, and on SQLite the reads come from the writer's warm cache.
        let mut tx = self.inner.store.begin().await?;
        let Some(claim) = tx
            .claim_ready_step(worker, now, self.inner.lease_ms)
            .await?
        else {
            tx.commit().await?;
            return Ok(Ran::Idle);
        };
        let task = tx
            .get_task(&claim.task_id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("task {}", claim.task_id)))?;
        let prepared = match self.prepare(&mut tx, &claim, &task).await {
            Ok(prepared) => prepared,
            // The database is briefly away: undo the claim, so the step is claimed again.
            Err(e @ EngineError::Unavailable(_)) => return Err(e),
            // Anything else will not get better by trying again (its data key destroyed, a
            // ciphertext that does not open, its module gone): keep the claim and fail the
            // step for good, audited, rather than claim it again and again.
            Err(e) => {
                tx.commit().await?;
                let reason = e.to_string();
                return self
                    .fail_unrun(
                        &claim,
                        &task,
                        worker,
                        "unrunnable",
                        "step.failed",
                        "failure",
                        &reason,
                    )
                    .await;
            }
        };
        let Prepared {
            def,
            key,
            module,
            attempt,
        } = match prepared {
            Preparation::Ready(ready) => ready,
            Preparation::Denied(reason) => {
                tx.commit().await?;
                return self
                    .fail_unrun(
                        &claim,
                        &task,
                        worker,
                        "permission_denied",
                        "step.denied",
                        "denied",
                        &reason,
                    )
                    .await;
            }
        };
        tx.commit().await?;
        let report = self.run_with_lease(&module, attempt, &claim, worker).await;
        self.commit(&claim, &task, &def, &key, worker, now, report)
            .await
    }

    /// Everything an attempt of the claimed step needs, read in the claim's transaction;
    /// or why the step may not run.
    async fn prepare(
        &self,
        tx: &mut Tx<'_>,
        claim: &ClaimedStep,
        task: &TaskRow,
    ) -> Result<Preparation, EngineError> {
        let workflow = self
            .workflow(
                tx,
                &task.namespace,
                &task.workflow_name,
                &task.workflow_version,
            )
            .await?;
        let def = workflow
            .def
            .steps
            .iter()
            .find(|s| s.name == claim.step)
            .cloned()
            .ok_or_else(|| {
                EngineError::Internal(format!("step {} is not in its workflow", claim.step))
            })?;
        let policy = Self::policy(tx, &task.namespace).await?;
        let principal: Principal = serde_json::from_str(&task.principal).map_err(|_| {
            EngineError::Internal("stored permission snapshot does not parse".into())
        })?;

        // Policy before work: no instantiation for a step its creator may no longer run.
        if let Some(permission) = &def.requires_permission
            && let Err(denial) = policy.check(&principal, permission)
        {
            return Ok(Preparation::Denied(denial.to_string()));
        }

        let key = self.task_key(tx, &task.data_key_id).await?;
        let context = open_json(&key, &task.context, context_aad(&task.id))?;
        let steps = tx.get_steps(&task.id).await?;
        let mut upstream = BTreeMap::new();
        for step in steps.iter().filter(|s| def.depends_on.contains(&s.name)) {
            if let Some(sealed) = &step.result {
                let row = format!("{}/{}", task.id, step.name);
                upstream.insert(
                    step.name.clone(),
                    open_json(&key, sealed, result_aad(&row))?,
                );
            }
        }
        let module = self.module(tx, &task.namespace, &def.module).await?;
        // Only secrets the namespace policy still grants: one withdrawn since the workflow
        // was applied is denied to the step like one never set.
        let granted: Vec<String> = def
            .secrets
            .iter()
            .filter(|name| policy.secrets.contains(*name))
            .cloned()
            .collect();
        let secrets = self.step_secrets(tx, &task.namespace, &granted).await?;
        let Value::Object(context) = context else {
            return Err(EngineError::Internal(
                "stored context is not an object".into(),
            ));
        };
        let classification = crate::classify::classify_context(&workflow.classes, &context);
        let attempt = Attempt {
            task_id: task.id.clone(),
            step_name: def.name.clone(),
            attempt: u32::try_from(claim.attempt).unwrap_or(u32::MAX),
            config: def.config.clone(),
            grants: grants(&def, secrets),
            data: Arc::new(TaskData {
                context,
                classification,
                upstream,
            }),
            limits: def.limits(),
        };
        Ok(Preparation::Ready(Prepared {
            def,
            key,
            module,
            attempt,
        }))
    }

    /// Run the attempt, renewing the lease every third of its length meanwhile.
    async fn run_with_lease(
        &self,
        module: &crate::sandbox::StepModule,
        attempt: Attempt,
        claim: &ClaimedStep,
        worker: &str,
    ) -> AttemptReport {
        let every = Duration::from_millis(
            u64::try_from(self.inner.lease_ms / 3)
                .unwrap_or(1_000)
                .max(10),
        );
        let run = self.inner.sandbox.run(module, attempt);
        tokio::pin!(run);
        loop {
            tokio::select! {
                report = &mut run => return report,
                () = tokio::time::sleep(every) => {
                    let now = self.now();
                    if let Err(e) = self.inner.store.renew_lease(&claim.task_id, &claim.step, worker, now, self.inner.lease_ms).await {
                        tracing::warn!(task = %claim.task_id, step = %claim.step, error = %e, "lease renewal failed");
                    }
                }
            }
        }
    }

    /// Fail a claimed step for good without running it: its creator may no longer run
    /// it (`permission_denied`), or it cannot be prepared (`unrunnable`).
    #[allow(clippy::too_many_arguments)]
    async fn fail_unrun(
        &self,
        claim: &ClaimedStep,
        task: &TaskRow,
        worker: &str,
        code: &str,
        action: &str,
        outcome: &str,
        reason: &str,
    ) -> Result<Ran, EngineError> {
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
        self.finish_task(&mut tx, task, TaskStatus::Error, Some(&claim.step), now)
            .await?;
        let event = step_event(
            task,
            &claim.step,
            claim.attempt,
            worker,
            action,
            outcome,
            json!({ "code": code, "reason": reason }),
        );
        self.audit(&mut tx, &event, now).await?;
        tx.commit().await?;
        Ok(Ran::Step {
            task_id: task.id.clone(),
            step: claim.step.clone(),
            status: if code == "permission_denied" {
                "denied"
            } else {
                "error"
            }
            .into(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        claim: &ClaimedStep,
        task: &TaskRow,
        def: &StepDef,
        key: &TaskKey,
        worker: &str,
        started: i64,
        report: AttemptReport,
    ) -> Result<Ran, EngineError> {
        let now = self.now();
        let row = format!("{}/{}", task.id, claim.step);
        let attempt_row = format!("{row}/{}", claim.attempt);
        let record =
            serde_json::to_vec(&report.record).map_err(|e| EngineError::Internal(e.to_string()))?;
        let record = key.seal(&record, record_aad(&attempt_row))?;
        let outcome_name = match &report.outcome {
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

        let mut tx = self.inner.store.begin().await?;
        let written = match &report.outcome {
            Outcome::Success { result } => {
                let plaintext =
                    serde_json::to_vec(result).map_err(|e| EngineError::Internal(e.to_string()))?;
                let sealed = key.seal(&plaintext, result_aad(&row))?;
                tx.complete_step(&task.id, &claim.step, worker, claim.attempt, &sealed, now)
                    .await
                    .map(|()| StepStatus::Complete)
            }
            failure => {
                let retryable = match failure {
                    Outcome::StepError { kind, .. } => {
                        *kind == crate::sandbox::ErrorKind::Retryable
                    }
                    _ => true,
                };
                let attempts_left =
                    claim.attempt - claim.attempt_base < i64::from(def.retry.max_attempts);
                let retry_at = (retryable && attempts_left).then(|| {
                    let hint = match failure {
                        Outcome::StepError {
                            retry_after_ms: Some(ms),
                            ..
                        } => i64::try_from(*ms).unwrap_or(i64::MAX),
                        _ => 0,
                    };
                    let backoff = def.retry.backoff(
                        u32::try_from(claim.attempt + 1).unwrap_or(u32::MAX),
                        jitter(),
                    );
                    now + i64::try_from(backoff.as_millis())
                        .unwrap_or(i64::MAX)
                        .max(hint)
                });
                let error = serde_json::to_string(failure)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                tx.fail_step(
                    &task.id,
                    &claim.step,
                    worker,
                    claim.attempt,
                    &error,
                    retry_at,
                    now,
                )
                .await
                .map(|()| {
                    if retry_at.is_some() {
                        StepStatus::WaitingForRetry
                    } else {
                        StepStatus::Error
                    }
                })
            }
        };
        let status = match written {
            Ok(status) => status,
            Err(e) => {
                tx.rollback().await?;
                return lost_or(e);
            }
        };
        tx.insert_attempt(&AttemptRow {
            task_id: task.id.clone(),
            step: claim.step.clone(),
            attempt: claim.attempt,
            worker: worker.to_owned(),
            outcome: outcome_name.clone(),
            record,
            started_at: started,
            duration_ms: i64::try_from(report.duration_ms).unwrap_or(i64::MAX),
        })
        .await?;

        let (action, outcome) = match status {
            StepStatus::Complete => ("step.completed", "success"),
            StepStatus::WaitingForRetry => ("step.retrying", "failure"),
            _ => ("step.failed", "failure"),
        };
        let mut details = json!({
            "outcome": outcome_name,
            "duration_ms": report.duration_ms,
            "cpu_ticks": report.cpu_ticks,
        });
        if def.audit_level == super::AuditLevel::Full {
            details["fields_read"] = json!(report.record.fields_read);
            details["upstream_read"] = json!(report.record.upstream_read);
            details["secrets_used"] = json!(report.record.secrets_used);
            details["hosts_called"] = json!(report.record.http_calls);
            details["denials"] = json!(report.record.denials);
        }
        self.audit(
            &mut tx,
            &step_event(
                task,
                &claim.step,
                claim.attempt,
                worker,
                action,
                outcome,
                details,
            ),
            now,
        )
        .await?;
        if def.audit_level == super::AuditLevel::Full {
            for event in &report.record.audit_events {
                let business = step_event(
                    task,
                    &claim.step,
                    claim.attempt,
                    worker,
                    "step.business_event",
                    "success",
                    json!({ "action": event.action, "subject": event.subject, "metadata": event.metadata }),
                );
                self.audit(&mut tx, &business, now).await?;
            }
        }

        match status {
            StepStatus::Complete => {
                let steps = tx.get_steps(&task.id).await?;
                if steps.iter().all(|s| s.status == StepStatus::Complete) {
                    self.finish_task(&mut tx, task, TaskStatus::Complete, None, now)
                        .await?;
                }
            }
            StepStatus::Error => {
                self.finish_task(&mut tx, task, TaskStatus::Error, Some(&claim.step), now)
                    .await?;
            }
            _ => {}
        }
        tx.commit().await?;
        Ok(Ran::Step {
            task_id: task.id.clone(),
            step: claim.step.clone(),
            status: status.as_str().to_owned(),
        })
    }

    async fn finish_task(
        &self,
        tx: &mut Tx<'_>,
        task: &TaskRow,
        status: TaskStatus,
        error_step: Option<&str>,
        now: i64,
    ) -> Result<(), EngineError> {
        if status == TaskStatus::Error {
            tx.cancel_pending_steps(&task.id, now).await?;
        }
        tx.set_task_status(&task.id, status, error_step, now)
            .await?;
        let action = if status == TaskStatus::Complete {
            "task.completed"
        } else {
            "task.failed"
        };
        let event = NewEvent {
            actor: "system:engine".into(),
            action: action.into(),
            resource: format!("task/{}", task.id),
            namespace: Some(task.namespace.clone()),
            outcome: if status == TaskStatus::Complete {
                "success"
            } else {
                "failure"
            }
            .into(),
            classification: Some(task.classification.clone()),
            contains_pii: task.contains_pii,
            correlation_id: Some(task.id.clone()),
            details: json!({ "error_step": error_step }),
        };
        self.audit(tx, &event, now).await?;
        Ok(())
    }

    /// Run `workers` workers and the audit sealer until `stop` is set, then seal what
    /// they committed: what `stepbox worker` and `stepbox serve` run.
    pub async fn work(&self, pool: &WorkerPool, stop: tokio::sync::watch::Receiver<bool>) {
        let store = self.inner.store.clone();
        let every = pool.seal_every;
        let mut sealer_stop = stop.clone();
        let sealer = tokio::spawn(async move {
            loop {
                if let Err(e) = audit::seal_pending(&store).await {
                    tracing::warn!(error = %e, "sealing audit events failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = sealer_stop.changed() => return,
                }
            }
        });
        self.run_workers(pool.workers.max(1), &pool.name, pool.idle, stop)
            .await;
        let _ = sealer.await;
        if let Err(e) = audit::seal_pending(&self.inner.store).await {
            tracing::warn!(error = %e, "sealing audit events failed");
        }
    }

    /// Run workers until `stop` resolves: each loops over [`Engine::run_once`], sleeping
    /// `idle` when nothing is ready.
    pub async fn run_workers(
        &self,
        count: usize,
        worker_prefix: &str,
        idle: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let handles: Vec<_> = (0..count)
            .map(|n| {
                let engine = self.clone();
                let worker = format!("{worker_prefix}-{n}");
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    while !*stop.borrow() {
                        match engine.run_once(&worker).await {
                            Ok(Ran::Idle) => {
                                tokio::select! {
                                    () = tokio::time::sleep(idle) => {}
                                    _ = stop.changed() => {}
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(worker = %worker, error = %e, "worker step failed");
                                tokio::time::sleep(idle).await;
                            }
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            let _ = handle.await;
        }
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
