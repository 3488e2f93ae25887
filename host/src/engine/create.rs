//! Creating tasks, with group commit.
//!
//! Everything a creation can do alone happens in the caller: resolve the version, validate
//! the context against the schema, classify it, compute the subject's blind index. What
//! needs the database — the subject's data key, the task, its steps and its
//! `task.created` event — is queued, and creations that queued while the database was
//! busy are stored together in one transaction with multi-row inserts. On SQLite, whose
//! single writer makes every creation wait for the one before, a burst of requests then
//! costs a few transactions instead of one each.
//!
//! On SQLite the transaction runs whole on the caller's thread, on the hot path's own
//! connection (`store::lite`), like a step commit: its statements never wait on another
//! thread while it holds the write lock.
//!
//! When this process runs a worker pool with free slots, the transaction also leases each
//! new task's first steps to it (`pool::Handoff`), and they start as soon as it commits:
//! no claim transaction, no wake-up of the claimer, and the context the creation holds
//! instead of one read and decrypted again. Steps without a free slot wait for a claim.
//!
//! The transaction runs in a task of its own, so a caller that gives up (a client that
//! disconnects) never strands the creations queued behind it. A creation that fails on
//! its own (its subject's key destroyed) fails alone; a database error fails the batch,
//! and nothing of it is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::EngineError;
use super::core::{CreateTask, CreatedTask, Engine, LoadedWorkflow, lock, validate_context};
use super::data::{self, Keyed, Pads, TaskKey, context_aad};
use super::view::TaskView;
use super::worker::Next;
use crate::audit::NewEvent;
use crate::classify::{ContextClassification, classify_context};
use crate::policy::Principal;
use crate::store::{
    Backend, ClaimedStep, DataKeyRow, HotWrites, StepRow, TaskRow, TaskStatus, ready,
};

/// Creations waiting for the next transaction.
#[derive(Default)]
pub(crate) struct Queue {
    waiting: Mutex<Vec<Waiting>>,
}

/// A creation checked and ready to store, and where its answer goes.
struct Waiting {
    creation: Creation,
    reply: oneshot::Sender<Answer>,
}

/// What became of a queued creation.
enum Answer {
    /// Stored, or failed.
    Done(Result<CreatedTask, EngineError>),
    /// It named no version, and another process applied a newer one than the one it was
    /// checked against: check it again. Its request comes back.
    Stale(Box<CreateTask>),
}

/// How often a creation is checked again after the latest version moved under it.
const STALE_TRIES: usize = 3;

/// How often a batch goes back to the vault for its subjects' pads before it gives up:
/// once is enough unless the vault's memory is cleared meanwhile.
const PAD_TRIES: usize = 3;

/// What a batch's transaction came to.
enum Stored {
    /// Each creation's answer (`None`: checked against a version no longer the latest),
    /// and the first steps it leased to this process's pool.
    Answers {
        answers: Vec<Option<Result<CreatedTask, EngineError>>>,
        firsts: Firsts,
    },
    /// Nothing stored: the batch must first read these pads from the vault (`existing`:
    /// the vault's keys for them), or take spares for these new subjects (`new`), which
    /// this process had none of.
    NeedPads {
        existing: Vec<String>,
        new: Vec<String>,
    },
}

/// The first steps of a batch's tasks leased to this process's pool in its transaction.
#[derive(Default)]
struct Firsts {
    /// The pool they were leased to: kept, so that a pool stopping meanwhile still runs
    /// them (it waits for their slots before it stops).
    handoff: Option<Arc<super::pool::Handoff>>,
    steps: Vec<First>,
    /// The stored policy of each of their namespaces, as the transaction read it.
    policies: Vec<(String, Option<String>)>,
    /// Whether some first step was left for a claim (the pool had no slot for it).
    untaken: bool,
}

/// A first step leased to the pool, with the slot it runs in.
struct First {
    /// The creation of the batch it belongs to.
    creation: usize,
    claim: ClaimedStep,
    task: TaskRow,
    key: TaskKey,
    slot: tokio::sync::OwnedSemaphorePermit,
}

/// A task creation with everything decided but what needs the database.
struct Creation {
    id: String,
    principal: Principal,
    request: CreateTask,
    workflow: Arc<LoadedWorkflow>,
    /// The data subject's blind index, if the context names one.
    subject: Option<String>,
    level: String,
    /// The context's classification, field by field.
    classification: ContextClassification,
    /// Blind indexes of the other identifiers the context holds about its subject (an
    /// email address, an identity number), by which a subject request finds it.
    aliases: Vec<String>,
    /// The request named no version and got the one this process knew as the latest.
    assumed_latest: bool,
}

impl Engine {
    /// Create a task: validate and classify the context, seal it, and store the task, its
    /// steps and the `task.created` event in one transaction (shared with creations made
    /// at the same moment).
    pub async fn create_task(
        &self,
        principal: &Principal,
        request: CreateTask,
    ) -> Result<CreatedTask, EngineError> {
        let mut request = request;
        for _ in 0..STALE_TRIES {
            let creation = self.check_creation(principal, request).await?;
            let (reply, answer) = oneshot::channel();
            let first = {
                let mut waiting = lock(&self.inner.creations.waiting);
                waiting.push(Waiting { creation, reply });
                waiting.len() == 1
            };
            if first {
                // Creations queued from now until this transaction starts join it.
                let engine = self.clone();
                tokio::spawn(async move { engine.store_creations().await });
            }
            match answer.await {
                Ok(Answer::Done(outcome)) => return outcome,
                Ok(Answer::Stale(back)) => request = *back,
                Err(_) => {
                    return Err(EngineError::Internal(
                        "task creation was abandoned".to_owned(),
                    ));
                }
            }
        }
        Err(EngineError::Unavailable(
            "the workflow's latest version kept changing; submit again".to_owned(),
        ))
    }

    /// The version a request naming none gets, as this process knows it (reading it from
    /// the store the first time).
    async fn latest_version(&self, namespace: &str, workflow: &str) -> Result<String, EngineError> {
        let key = super::core::latest_key(namespace, workflow);
        if let Some(version) = lock(&self.inner.latest).get(&key) {
            return Ok(version.clone());
        }
        let mut tx = self.inner.store.begin_read().await?;
        let row = tx.latest_workflow(namespace, workflow).await?;
        tx.commit().await?;
        let version = row
            .ok_or_else(|| EngineError::NotFound(format!("workflow {key}")))?
            .version;
        lock(&self.inner.latest).insert(key, version.clone());
        Ok(version)
    }

    /// Everything about a creation that needs no write: the workflow version, the
    /// context's validity and classification, the subject's blind index.
    async fn check_creation(
        &self,
        principal: &Principal,
        request: CreateTask,
    ) -> Result<Creation, EngineError> {
        let (version, assumed_latest) = match &request.version {
            Some(v) => (v.clone(), false),
            None => (
                self.latest_version(&request.namespace, &request.workflow)
                    .await?,
                true,
            ),
        };
        let key = super::core::versioned_key(&request.namespace, &request.workflow, &version);
        let workflow = match self.cached_workflow(&key) {
            Some(workflow) => workflow,
            None => {
                let mut tx = self.inner.store.begin_read().await?;
                let workflow = self
                    .workflow(&mut tx, &request.namespace, &request.workflow, &version)
                    .await?;
                tx.commit().await?;
                workflow
            }
        };

        let Value::Object(context) = &request.context else {
            return Err(EngineError::Invalid(
                "the context must be a JSON object".into(),
            ));
        };
        validate_context(&workflow.validator, &request.context)?;
        let classification = classify_context(&workflow.classes, context);
        let blind = self.inner.keys.blind_index();
        let subject_field = workflow.classes.subject_field();
        let subject = subject_field
            .and_then(|field| context.get(field))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .map(|id| blind.index(&subject_identifier(&id)));
        let aliases = match &subject {
            None => Vec::new(),
            Some(_) => classification
                .fields
                .iter()
                .filter(|(field, _)| Some(field.as_str()) != subject_field)
                .filter_map(|(field, class)| {
                    let value = context.get(field)?.as_str()?;
                    let identifies = *class == crate::classify::DataClass::PiiIdentifier
                        || (*class == crate::classify::DataClass::PiiContact
                            && value.contains('@'));
                    identifies.then(|| blind.index(&subject_identifier(value)))
                })
                .collect(),
        };
        Ok(Creation {
            id: crate::crypto::ordered_id("task_"),
            principal: principal.clone(),
            level: classification.level.to_string(),
            classification,
            aliases,
            assumed_latest,
            request,
            workflow,
            subject,
        })
    }

    /// Store every queued creation in one transaction and answer each.
    ///
    /// On SQLite the transaction runs whole on this thread ([`Store::write_now`]), so
    /// nothing in it may wait: the subjects' pads come from the vault before it. A batch
    /// that finds a subject whose pad this process does not hold writes nothing and says
    /// which; the pads are read (or made, for new subjects) and the batch runs again.
    async fn store_creations(&self) {
        let baseline_key = if self.inner.protect {
            None
        } else {
            match self.baseline_key_id().await {
                Ok(id) => Some(id),
                Err(e) => return self.answer_all(take(self), &e),
            }
        };
        let store = &self.inner.store;
        // Let the callers that are ready to queue a creation do so first: on SQLite the
        // transaction below runs at once, and without this it would hold one creation
        // where it could have held several (each commit writes a dozen pages, whatever
        // it holds).
        tokio::task::yield_now().await;
        let now = self.now();
        // Taken only once the database is ours: everything queued while this waited joins.
        let mut batch: Option<Vec<Waiting>> = None;
        let mut pads = Pads::default();
        for attempt in 0..PAD_TRIES {
            let timer = std::time::Instant::now();
            let stored = match store.backend() {
                Backend::Sqlite => {
                    store
                        .write_now(|tx| {
                            let batch = batch.get_or_insert_with(|| take(self));
                            ready(self.store_batch(
                                tx,
                                batch,
                                baseline_key.as_deref(),
                                &mut pads,
                                now,
                            ))
                        })
                        .await
                }
                Backend::Postgres => match store.begin().await {
                    Ok(mut tx) => {
                        let batch = batch.get_or_insert_with(|| take(self));
                        let stored = self
                            .store_batch(&mut tx, batch, baseline_key.as_deref(), &mut pads, now)
                            .await;
                        match stored {
                            Ok(answers @ Stored::Answers { .. }) => match tx.commit().await {
                                Ok(()) => Ok(answers),
                                Err(e) => Err(e.into()),
                            },
                            other => {
                                let _ = tx.rollback().await;
                                other
                            }
                        }
                    }
                    Err(e) => Err(e.into()),
                },
            };
            let batch_now = batch.take().unwrap_or_else(|| take(self));
            match stored {
                Ok(Stored::Answers {
                    answers: outcomes,
                    firsts,
                }) => {
                    tracing::debug!(
                        tasks = batch_now.len(),
                        handed_over = firsts.steps.len(),
                        total_us = timer.elapsed().as_micros() as u64,
                        "created"
                    );
                    if firsts.untaken {
                        self.inner.work_ready.notify_one();
                    }
                    Self::start_firsts(&batch_now, firsts);
                    for (waiting, outcome) in batch_now.into_iter().zip(outcomes) {
                        let answer = match outcome {
                            Some(outcome) => Answer::Done(outcome),
                            None => Answer::Stale(Box::new(waiting.creation.request)),
                        };
                        let _ = waiting.reply.send(answer);
                    }
                    return;
                }
                Ok(Stored::NeedPads { existing, new }) => {
                    if let Err(e) = self.fetch_pads(&mut pads, &existing, &new).await {
                        return self.answer_all(batch_now, &e);
                    }
                    let mut batch_now = batch_now;
                    if attempt == 0 {
                        // What queued while the vault wrote (a synced write: milliseconds)
                        // joins, and brings its new subjects to the next vault write.
                        batch_now.extend(take(self));
                    }
                    batch = Some(batch_now);
                }
                Err(e) => return self.answer_all(batch_now, &e),
            }
        }
        let error = EngineError::Unavailable("the subject vault kept missing pads".into());
        self.answer_all(batch.unwrap_or_default(), &error);
    }

    /// Read the `existing` pads (by the vault's keys for them) and give each of the `new`
    /// subjects a spare, into `pads`.
    async fn fetch_pads(
        &self,
        pads: &mut Pads,
        existing: &[String],
        new: &[String],
    ) -> Result<(), EngineError> {
        let Some(vault) = self.data_keys().vault else {
            return Ok(());
        };
        let timer = std::time::Instant::now();
        if !new.is_empty() {
            for (subject, (id, pad)) in new.iter().zip(vault.take_spares(new.len()).await?) {
                pads.give(subject, id, pad);
            }
        }
        let wanted: Vec<&str> = existing.iter().map(String::as_str).collect();
        let mut found = vault.pads(&wanted).await?;
        for key in wanted {
            pads.insert(key.to_owned(), found.remove(key));
        }
        tracing::debug!(
            existing = existing.len(),
            new = new.len(),
            total_us = timer.elapsed().as_micros() as u64,
            "read the vault's pads"
        );
        Ok(())
    }

    /// Whether `pads` knows the pad filed under `key` (or that there is none), taking it
    /// from the vault's memory if this process holds it.
    fn knows_pad(&self, pads: &mut Pads, key: &str) -> bool {
        if pads.knows(key) {
            return true;
        }
        match self.data_keys().vault.and_then(|v| v.cached_pad(key)) {
            Some(pad) => {
                pads.insert(key.to_owned(), Some(pad));
                true
            }
            None => false,
        }
    }

    /// Write a batch of creations in `tx`: each one's answer (`None`: checked against a
    /// version that is no longer the latest, so not stored), or the database error that
    /// fails them all. Nothing in it waits on anything but `tx`.
    async fn store_batch<W: HotWrites>(
        &self,
        tx: &mut W,
        batch: &[Waiting],
        baseline_key: Option<&str>,
        pads: &mut Pads,
        now: i64,
    ) -> Result<Stored, EngineError> {
        let stale = self.stale_creations(tx, batch).await?;
        // Each subject's key once per batch, however many of its tasks are in it; and the
        // subjects in one order, so that on PostgreSQL two batches creating the same new
        // subjects take their row locks in the same order and never deadlock.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|a, b| batch[*a].creation.subject.cmp(&batch[*b].creation.subject));
        let mut subject_keys: HashMap<String, (String, TaskKey)> = HashMap::new();
        // The keys of the batch's subjects seen before, read in one statement; only new
        // subjects need statements of their own.
        let mut stored_keys: HashMap<String, DataKeyRow> = HashMap::new();
        if baseline_key.is_none() {
            let mut subjects: Vec<&str> = batch
                .iter()
                .filter_map(|w| w.creation.subject.as_deref())
                .collect();
            subjects.sort_unstable();
            subjects.dedup();
            if !subjects.is_empty() {
                for row in tx.subject_keys(&subjects).await? {
                    if let Some(subject) = row.subject.clone() {
                        stored_keys.insert(subject, row);
                    }
                }
            }
            if let Some(vault) = self.data_keys().vault {
                let (mut existing, mut new) = (Vec::new(), Vec::new());
                for subject in subjects {
                    match stored_keys.get(subject) {
                        // Erased: its creations fail without a pad, and it never gets one
                        // again.
                        Some(row) if row.destroyed_at.is_some() => {}
                        Some(row) => {
                            if let Some(key) = row.pad_key()
                                && !self.knows_pad(pads, key)
                            {
                                existing.push(key.to_owned());
                            }
                        }
                        // New: a spare pad, already in the vault's file; the key stored
                        // below says which.
                        None if pads.fresh(subject).is_some() => {}
                        None => match vault.take_spare() {
                            Some((id, pad)) => pads.give(subject, id, pad),
                            None => new.push(subject.to_owned()),
                        },
                    }
                }
                if !existing.is_empty() || !new.is_empty() {
                    return Ok(Stored::NeedPads { existing, new });
                }
            }
        }
        let pads = &*pads;
        let keys = self.data_keys();
        // Slots of this process's pool for the tasks' first steps; a step without one
        // waits for a claim.
        let handoff = self.handoff();
        let wanted: usize = batch
            .iter()
            .zip(&stale)
            .filter(|(_, stale)| !**stale)
            .map(|(w, _)| roots(&w.creation.workflow.def).count())
            .sum();
        let mut slots = handoff.as_ref().map_or_else(Vec::new, |h| h.slots(wanted));
        let lease = handoff
            .as_ref()
            .map(|h| (h.worker(), now.saturating_add(self.inner.lease_ms)));
        let mut firsts = Firsts {
            handoff: handoff.clone(),
            ..Firsts::default()
        };
        let mut tasks = Vec::with_capacity(batch.len());
        let mut steps = Vec::with_capacity(batch.len() * 4);
        let mut events = Vec::with_capacity(batch.len());
        let mut created_in_order = Vec::with_capacity(batch.len());
        let mut outcomes: Vec<Result<CreatedTask, EngineError>> = batch
            .iter()
            .map(|_| Err(EngineError::Internal("not stored".into())))
            .collect();
        for index in order {
            if stale[index] {
                continue;
            }
            let c = &batch[index].creation;
            let keyed = match (baseline_key, &c.subject) {
                (Some(id), _) => Ok((id.to_owned(), TaskKey::none())),
                (None, Some(subject)) if subject_keys.contains_key(subject) => {
                    Ok(subject_keys[subject].clone())
                }
                // `get`, not `remove`: a key that does not open (destroyed, or failing)
                // fails each of its subject's creations alone, and never leads one of
                // them to make the subject a new key.
                (None, subject) => match subject.as_ref().and_then(|s| stored_keys.get(s).cloned())
                {
                    Some(row) => {
                        let id = row.id.clone();
                        data::open_key_with(keys.ring, Some(row), &id, |pad_key| {
                            keys.vault()?;
                            Ok(pads.get(pad_key))
                        })
                        .map(|key| (id, TaskKey::from(key)))
                    }
                    None => match data::key_for_task(tx, keys, pads, subject.as_deref(), now).await
                    {
                        Ok(Keyed::Key(id, key)) => Ok((id, TaskKey::from(key))),
                        // Written so far: only data keys, which the retry finds (on
                        // PostgreSQL, where such races happen, it is rolled back).
                        Ok(Keyed::NeedPad(pad_key)) => {
                            return Ok(Stored::NeedPads {
                                existing: vec![pad_key],
                                new: Vec::new(),
                            });
                        }
                        Err(e) => Err(e),
                    },
                },
            };
            let (key_id, key) = match keyed {
                Ok(keyed) => keyed,
                // This creation's own trouble (its subject's key destroyed, or not
                // opening): it fails alone.
                Err(e @ (EngineError::Invalid(_) | EngineError::Crypto(_))) => {
                    outcomes[index] = Err(e);
                    continue;
                }
                // A database error may have ended the transaction (PostgreSQL aborts it):
                // the batch fails.
                Err(e) => return Err(e),
            };
            if let Some(subject) = &c.subject {
                subject_keys.insert(subject.clone(), (key_id.clone(), key.clone()));
            }
            match self.task_rows(c, key_id, &key, now) {
                Ok((mut task, mut task_steps)) => {
                    if let Some((worker, expires)) = lease {
                        for step in task_steps.iter_mut().filter(|s| s.depends_on.is_empty()) {
                            let Some(slot) = slots.pop() else { break };
                            step.lease_to(worker, expires, now);
                            task.status = TaskStatus::InProgress;
                            firsts.steps.push(First {
                                creation: index,
                                claim: ClaimedStep {
                                    task_id: c.id.clone(),
                                    step: step.name.clone(),
                                    attempt: step.attempts,
                                    attempt_base: 0,
                                    lease_expires_at: expires,
                                },
                                task: TaskRow::clone(&task),
                                key: key.clone(),
                                slot,
                            });
                        }
                    }
                    let view = c.view(&task);
                    tasks.push(task);
                    steps.extend(task_steps);
                    events.push(created_event(c));
                    created_in_order.push(index);
                    outcomes[index] = Ok(CreatedTask {
                        id: c.id.clone(),
                        version: c.workflow.def.version.clone(),
                        classification: c.level.clone(),
                        contains_pii: c.classification.contains_pii,
                        audit_seq: 0,
                        view,
                    });
                }
                Err(e) => outcomes[index] = Err(e),
            }
        }
        tx.insert_tasks(&tasks).await?;
        tx.insert_steps(&steps).await?;
        let mut namespaces: Vec<&str> = firsts
            .steps
            .iter()
            .map(|f| batch[f.creation].creation.workflow.def.namespace.as_str())
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        for namespace in namespaces {
            let stored = tx.namespace_policy(namespace).await?;
            firsts.policies.push((namespace.to_owned(), stored));
        }
        firsts.untaken = created_in_order
            .iter()
            .map(|index| roots(&batch[*index].creation.workflow.def).count())
            .sum::<usize>()
            > firsts.steps.len();
        let aliases: Vec<(String, String)> = created_in_order
            .iter()
            .filter_map(|index| {
                let c = &batch[*index].creation;
                let subject = c.subject.as_ref()?;
                Some(c.aliases.iter().map(|a| (a.clone(), subject.clone())))
            })
            .flatten()
            .collect();
        tx.insert_subject_aliases(&aliases, now).await?;
        if self.inner.audit && !events.is_empty() {
            let seqs = crate::audit::record_many_in(tx, &events, now).await?;
            for (index, seq) in created_in_order.into_iter().zip(seqs) {
                if let Ok(created) = &mut outcomes[index] {
                    created.audit_seq = seq;
                }
            }
        }
        Ok(Stored::Answers {
            answers: outcomes
                .into_iter()
                .zip(stale)
                .map(|(outcome, stale)| (!stale).then_some(outcome))
                .collect(),
            firsts,
        })
    }

    /// Which creations of `batch` were checked against a latest version that another
    /// process has since replaced: one read per workflow the batch created tasks of
    /// without naming a version (not one per task, as reading it before each check was).
    async fn stale_creations<W: HotWrites>(
        &self,
        tx: &mut W,
        batch: &[Waiting],
    ) -> Result<Vec<bool>, EngineError> {
        let mut latest: HashMap<(&str, &str), Option<String>> = HashMap::new();
        for w in batch.iter().filter(|w| w.creation.assumed_latest) {
            let def = &w.creation.workflow.def;
            if !latest.contains_key(&(def.namespace.as_str(), def.name.as_str())) {
                let now = tx
                    .latest_workflow_version(&def.namespace, &def.name)
                    .await?;
                let key = super::core::latest_key(&def.namespace, &def.name);
                match &now {
                    Some(version) => lock(&self.inner.latest).insert(key, version.clone()),
                    None => lock(&self.inner.latest).remove(&key),
                };
                latest.insert((&def.namespace, &def.name), now);
            }
        }
        Ok(batch
            .iter()
            .map(|w| {
                let def = &w.creation.workflow.def;
                w.creation.assumed_latest
                    && latest[&(def.namespace.as_str(), def.name.as_str())].as_deref()
                        != Some(def.version.as_str())
            })
            .collect())
    }

    /// The task row, its context sealed under `key`, and its pending steps.
    fn task_rows(
        &self,
        c: &Creation,
        key_id: String,
        key: &TaskKey,
        now: i64,
    ) -> Result<(TaskRow, Vec<StepRow>), EngineError> {
        let def = &c.workflow.def;
        let plaintext = serde_json::to_vec(&c.request.context)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let task = TaskRow {
            id: c.id.clone(),
            namespace: def.namespace.clone(),
            workflow_name: def.name.clone(),
            workflow_version: def.version.clone(),
            status: TaskStatus::Pending,
            context: key.seal(&plaintext, context_aad(&c.id))?,
            data_key_id: key_id,
            subject: c.subject.clone(),
            classification: c.level.clone(),
            contains_pii: c.classification.contains_pii,
            created_by: c.principal.subject.clone(),
            principal: serde_json::to_string(&c.principal)
                .map_err(|e| EngineError::Internal(e.to_string()))?,
            reason: c.request.reason.clone(),
            tags: serde_json::to_string(&c.request.tags).unwrap_or_else(|_| "[]".into()),
            error_step: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let steps = def
            .steps
            .iter()
            .map(|s| {
                let deps: Vec<&str> = s.depends_on.iter().map(String::as_str).collect();
                StepRow::pending(&c.id, &s.name, &deps, now)
            })
            .collect();
        Ok((task, steps))
    }

    /// Start the first steps a batch's transaction leased to this process's pool, each
    /// with the context, key and policy its creation holds; a step whose namespace policy
    /// did not read is left to its lease, as a claim would leave it.
    fn start_firsts(batch: &[Waiting], firsts: Firsts) {
        let Some(handoff) = firsts.handoff.filter(|_| !firsts.steps.is_empty()) else {
            return;
        };
        let policies: HashMap<String, Result<crate::policy::NamespacePolicy, EngineError>> = firsts
            .policies
            .into_iter()
            .map(|(namespace, stored)| {
                let policy = match stored {
                    Some(stored) => super::core::parse_policy(&namespace, &stored),
                    None => Err(EngineError::NotFound(format!("namespace {namespace}"))),
                };
                (namespace, policy)
            })
            .collect();
        for first in firsts.steps {
            let c = &batch[first.creation].creation;
            let policy = match policies.get(&c.workflow.def.namespace) {
                Some(Ok(policy)) => policy.clone(),
                failed => {
                    let error = failed
                        .and_then(|p| p.as_ref().err())
                        .map(ToString::to_string);
                    tracing::error!(task = %first.claim.task_id, step = %first.claim.step, ?error, "reading the namespace policy for a new task's first step failed");
                    continue;
                }
            };
            let Value::Object(context) = &c.request.context else {
                continue;
            };
            let next = Next::first(
                first.claim,
                first.task,
                c.workflow.clone(),
                first.key,
                c.principal.clone(),
                context.clone(),
                c.classification.clone(),
                policy,
            );
            handoff.start(next, first.slot);
        }
    }

    /// Answer every creation of a failed batch with the batch's error.
    fn answer_all(&self, batch: Vec<Waiting>, error: &EngineError) {
        for waiting in batch {
            let _ = waiting.reply.send(Answer::Done(Err(error.duplicate())));
        }
    }
}

impl Creation {
    /// The task as a reader would find it once `task`, its row, is stored.
    fn view(&self, task: &TaskRow) -> TaskView {
        let context = match &self.request.context {
            Value::Object(context) => context.clone(),
            // Checked as an object before it was queued.
            _ => serde_json::Map::new(),
        };
        TaskView::of_row(
            task.clone(),
            self.principal.clone(),
            context,
            self.classification.fields.clone(),
        )
    }
}

/// A workflow's first steps: those that depend on none.
fn roots(def: &super::WorkflowDef) -> impl Iterator<Item = &super::StepDef> {
    def.steps.iter().filter(|s| s.depends_on.is_empty())
}

/// Take every queued creation; the next creation queued starts a new transaction.
fn take(engine: &Engine) -> Vec<Waiting> {
    std::mem::take(&mut *lock(&engine.inner.creations.waiting))
}

fn created_event(c: &Creation) -> NewEvent {
    let def = &c.workflow.def;
    NewEvent {
        actor: format!("user:{}", c.principal.subject),
        action: "task.created".into(),
        resource: format!("task/{}", c.id),
        namespace: Some(def.namespace.clone()),
        outcome: "success".into(),
        classification: Some(c.level.clone()),
        contains_pii: c.classification.contains_pii,
        correlation_id: Some(
            c.request
                .correlation_id
                .clone()
                .unwrap_or_else(|| c.id.clone()),
        ),
        details: {
            let mut classes: Vec<&str> = c
                .classification
                .fields
                .values()
                .map(|class| class.as_str())
                .collect();
            classes.sort_unstable();
            classes.dedup();
            let mut details = json!({
                "workflow": format!("{}@{}", def.name, def.version),
                "subject": c.subject,
                "fields": c.classification.fields.keys().collect::<Vec<_>>(),
                "data_classes": classes,
            });
            if let Some(request) = &c.request.request {
                details["request"] = json!(request);
            }
            details
        },
    }
}

/// An identifier as the blind index sees it: without surrounding blanks, and an email
/// address in lower case, so that `Jane.Doe@Example.com ` finds `jane.doe@example.com`.
pub(crate) fn subject_identifier(text: &str) -> String {
    let text = text.trim();
    if text.contains('@') {
        text.to_lowercase()
    } else {
        text.to_owned()
    }
}
