//! The engine's face: the shared handle, the catalog (modules, workflows, namespace
//! policies) and task creation. Every state change commits with its audit event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::clock::Clock;
use super::data::{self, TaskKey};
use super::{EngineError, WorkflowDef, parse_module_ref};
use crate::audit::{self, AuditSigner, NewEvent};
use crate::classify::FieldClasses;
use crate::crypto::{KeyRing, SubjectVault};
use crate::policy::NamespacePolicy;
use crate::sandbox::{Sandbox, StepModule};
use crate::store::{Backend, ModuleInfo, ModuleRow, Store, Tx, WorkflowRow};

/// Longest lease a worker holds on a step before it must renew it.
pub const DEFAULT_LEASE_MS: i64 = 30_000;

/// The engine: cheap to clone, shared by the API and every worker of the process.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) sandbox: Sandbox,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) lease_ms: i64,
    /// Parsed workflow definitions, by namespace/name/version (immutable once applied).
    pub(crate) workflows: Mutex<HashMap<String, Arc<LoadedWorkflow>>>,
    /// The version a task naming no version gets, by namespace/name: as this process last
    /// read or applied it. A creation that used it checks it again in the transaction
    /// that stores it (see `create`), so another process's newer version is never missed.
    pub(crate) latest: Mutex<HashMap<String, String>>,
    /// Loaded modules, by namespace/name/version.
    pub(crate) modules: Mutex<HashMap<String, StepModule>>,
    /// Task data sealed. Only the throughput benchmark's baseline turns this off, through
    /// a build feature shipped binaries never enable.
    pub(crate) protect: bool,
    /// Task and step changes audited. Turned off only by the same build feature: in the
    /// baseline, and in the benchmark's measure of what encryption alone costs.
    pub(crate) audit: bool,
    /// The unprotected baseline's one placeholder data key row (tasks must name one).
    pub(crate) baseline_key: tokio::sync::OnceCell<()>,
    /// Woken when this process made a step ready (created a task, completed a step,
    /// scheduled a retry), so an idle claimer looks again at once instead of at its next
    /// poll. Steps made ready by other processes are found by polling.
    pub(crate) work_ready: tokio::sync::Notify,
    /// Task creations waiting to be stored together (see `create`).
    pub(crate) creations: super::create::Queue,
    /// Who waits here for which task to end (see `endings`).
    pub(crate) endings: super::endings::Endings,
    /// Where creations hand their tasks' first steps while this process's pool runs.
    pub(crate) handoff: Mutex<Option<Arc<super::pool::Handoff>>>,
    /// Signs the audit chain's checkpoints, if this process has the key.
    pub(crate) audit_signer: Option<Arc<AuditSigner>>,
    /// The subject pads (see `crypto::SubjectVault`); without one, no task may name a
    /// data subject.
    pub(crate) vault: Option<Arc<SubjectVault>>,
}

/// A workflow definition ready to use: parsed, its fields classified, its input schema
/// compiled once.
pub(crate) struct LoadedWorkflow {
    pub(crate) def: WorkflowDef,
    pub(crate) classes: FieldClasses,
    pub(crate) validator: jsonschema::Validator,
}

impl LoadedWorkflow {
    fn new((def, classes): (WorkflowDef, FieldClasses)) -> Result<Self, EngineError> {
        let validator = jsonschema::validator_for(&def.input_schema).map_err(|_| {
            EngineError::Invalid("the workflow's input schema is not a valid JSON Schema".into())
        })?;
        Ok(Self {
            def,
            classes,
            validator,
        })
    }
}

/// A request to create a task.
#[derive(Debug, Clone)]
pub struct CreateTask {
    /// The workflow's namespace.
    pub namespace: String,
    /// The workflow's name.
    pub workflow: String,
    /// A version, or the latest.
    pub version: Option<String>,
    /// The context (a JSON object).
    pub context: Value,
    /// Why (free text, kept with the task).
    pub reason: Option<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// The request's correlation id (e.g. the API's `x-request-id`), carried by the
    /// `task.created` event; `None`: the task's id.
    pub correlation_id: Option<String>,
    /// Where the request came from, for the `task.created` event.
    pub request: Option<RequestDetails>,
}

/// Where a request came from, as its audit event keeps it: never a token or a body.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RequestDetails {
    /// The client's address.
    pub ip: Option<String>,
    /// The client's user agent, cut short.
    pub user_agent: Option<String>,
    /// The token's session id.
    pub session_id: Option<String>,
}

/// What the caller learns about a created task.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedTask {
    /// The task as stored, its context open: what a read right after would find, without
    /// the read (and the decryption). Holds PII: redact before showing it.
    #[serde(skip)]
    pub view: super::TaskView,
    /// The new task's id.
    pub id: String,
    /// The workflow version it runs.
    pub version: String,
    /// The context's overall classification.
    pub classification: String,
    /// Whether the context holds PII.
    pub contains_pii: bool,
    /// Sequence number of the `task.created` audit event.
    pub audit_seq: i64,
}

/// The id of the trusted key of `policy` under which `signature` verifies over `digest`.
fn trusted_signer(
    policy: &NamespacePolicy,
    digest: &[u8],
    signature: &[u8],
) -> Result<String, EngineError> {
    let untrusted =
        || EngineError::Untrusted("the signature does not verify under any trusted key".into());
    let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| untrusted())?;
    policy
        .trusted_keys
        .iter()
        .find(|(_, key)| {
            crate::policy::trusted_key(key)
                .is_some_and(|key| key.verify_strict(digest, &signature).is_ok())
        })
        .map(|(id, _)| id.clone())
        .ok_or_else(untrusted)
}

/// A namespace's stored policy, parsed.
pub(crate) fn parse_policy(namespace: &str, stored: &str) -> Result<NamespacePolicy, EngineError> {
    serde_json::from_str(stored)
        .map_err(|_| EngineError::Internal(format!("stored policy of {namespace} does not parse")))
}

/// The key of [`Inner::latest`].
pub(crate) fn latest_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

pub(crate) fn versioned_key(namespace: &str, name: &str, version: &str) -> String {
    format!("{namespace}/{name}@{version}")
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// An engine over `store`, sealing data with `keys`, running steps in `sandbox`.
    pub fn new(store: Store, keys: Arc<KeyRing>, sandbox: Sandbox, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                keys,
                sandbox,
                clock,
                lease_ms: DEFAULT_LEASE_MS,
                workflows: Mutex::new(HashMap::new()),
                latest: Mutex::new(HashMap::new()),
                modules: Mutex::new(HashMap::new()),
                protect: true,
                audit: true,
                baseline_key: tokio::sync::OnceCell::new(),
                work_ready: tokio::sync::Notify::new(),
                creations: super::create::Queue::default(),
                endings: super::endings::Endings::default(),
                handoff: Mutex::new(None),
                audit_signer: None,
                vault: None,
            }),
        }
    }

    /// The same engine storing task data in the clear and writing no task or step audit
    /// events: the baseline against which the throughput benchmark measures what
    /// encryption and audit cost. Exists only in builds with the `unprotected-baseline`
    /// feature, which the `stepbox` binary never has.
    #[cfg(feature = "unprotected-baseline")]
    pub fn unprotected_baseline(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.protect = false;
            inner.audit = false;
        }
        self
    }

    /// The same engine sealing task data but writing no task or step audit events: what
    /// the throughput benchmark measures to split protection's cost between encryption
    /// and audit. Exists only in builds with the `unprotected-baseline` feature.
    #[cfg(feature = "unprotected-baseline")]
    pub fn without_audit(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.audit = false;
        }
        self
    }

    /// The key a task's data is sealed under.
    pub(crate) async fn task_key(
        &self,
        tx: &mut Tx<'_>,
        data_key_id: &str,
    ) -> Result<TaskKey, EngineError> {
        if !self.inner.protect {
            return Ok(TaskKey::none());
        }
        Ok(data::unwrap(tx, self.data_keys(), data_key_id)
            .await?
            .into())
    }

    /// The unprotected baseline's placeholder data key, inserted on first use.
    pub(crate) async fn baseline_key_id(&self) -> Result<String, EngineError> {
        const ID: &str = "dk_unprotected_baseline";
        self.inner
            .baseline_key
            .get_or_try_init(|| async {
                let mut tx = self.inner.store.begin().await?;
                tx.insert_data_key(&crate::store::DataKeyRow {
                    id: ID.into(),
                    kek_id: "none".into(),
                    wrapped: Vec::new(),
                    subject: None,
                    created_at: self.now(),
                    destroyed_at: None,
                    pad: None,
                })
                .await?;
                tx.commit().await?;
                Ok::<(), EngineError>(())
            })
            .await?;
        Ok(ID.into())
    }

    /// Record an audit event in a transaction of its own: for events that change no
    /// state, such as a refused token.
    pub(crate) async fn record_event(
        &self,
        event: &NewEvent,
        now: i64,
    ) -> Result<i64, EngineError> {
        let store = &self.inner.store;
        if store.backend() == Backend::Sqlite {
            // One event, one short transaction on the hot path: API reads record their
            // access this way, so a client polling a task must not slow down its steps.
            let events = std::slice::from_ref(event);
            let seqs = store
                .write_now(|tx| crate::store::ready(audit::record_many_in(tx, events, now)))
                .await?;
            return seqs
                .first()
                .copied()
                .ok_or_else(|| EngineError::Internal("the event was not recorded".into()));
        }
        let mut tx = store.begin().await?;
        let seq = audit::record(&mut tx, event, now).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// The same engine with step leases of `lease_ms` (set before sharing the engine): how
    /// long a crashed worker's step waits before another worker takes it over.
    pub fn with_lease_ms(mut self, lease_ms: i64) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.lease_ms = lease_ms.max(100);
        }
        self
    }

    /// The same engine signing audit checkpoints with `signer` after sealing (set before
    /// sharing the engine).
    pub fn with_audit_signer(mut self, signer: Arc<AuditSigner>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.audit_signer = Some(signer);
        }
        self
    }

    /// The same engine keeping subject pads in `vault` (set before sharing the engine).
    pub fn with_subject_vault(mut self, vault: Arc<SubjectVault>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.vault = Some(vault);
        }
        self
    }

    /// The subject vault, if this engine has one.
    pub fn subject_vault(&self) -> Option<&Arc<SubjectVault>> {
        self.inner.vault.as_ref()
    }

    /// What opens data keys.
    pub(crate) fn data_keys(&self) -> data::Keys<'_> {
        data::Keys {
            ring: &self.inner.keys,
            vault: self.inner.vault.as_deref(),
        }
    }

    /// The audit checkpoint signer, if this engine has one.
    pub fn audit_signer(&self) -> Option<&Arc<AuditSigner>> {
        self.inner.audit_signer.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The key ring.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.inner.keys
    }

    /// A task's context, decrypted (the API redacts it for the caller).
    pub async fn task_context(&self, task_id: &str) -> Result<Value, EngineError> {
        Ok(Value::Object(self.task_view(task_id).await?.into_context()))
    }

    pub(crate) fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Create or replace a namespace's policy.
    pub async fn set_policy(
        &self,
        namespace: &str,
        policy: &NamespacePolicy,
        actor: &str,
    ) -> Result<(), EngineError> {
        if !super::valid_name(namespace) {
            return Err(EngineError::Invalid(format!(
                "namespace `{namespace}` is not a valid name"
            )));
        }
        policy.validate().map_err(EngineError::Invalid)?;
        let now = self.now();
        let text =
            serde_json::to_string(policy).map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut tx = self.inner.store.begin().await?;
        tx.upsert_namespace(namespace, &text, now).await?;
        let event = NewEvent {
            actor: actor.to_owned(),
            action: "namespace.policy_set".into(),
            resource: format!("namespace/{namespace}"),
            namespace: Some(namespace.to_owned()),
            outcome: "success".into(),
            details: json!({ "policy": policy }),
            ..NewEvent::default()
        };
        audit::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn policy(
        tx: &mut Tx<'_>,
        namespace: &str,
    ) -> Result<NamespacePolicy, EngineError> {
        let row = tx
            .get_namespace(namespace)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("namespace {namespace}")))?;
        parse_policy(namespace, &row.policy)
    }

    /// Upload an unsigned module (validated by the sandbox) into a namespace. Immutable
    /// per version. See [`Engine::register_signed_module`].
    pub async fn register_module(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        wasm: &[u8],
        uploader: &str,
    ) -> Result<String, EngineError> {
        let stored = self
            .register_signed_module(namespace, name, version, wasm, None, uploader)
            .await?;
        Ok(stored.digest)
    }

    /// Upload a module with an optional Ed25519 `signature` over its SHA-256 digest. A
    /// signature must verify under one of the namespace's trusted keys (a signature that
    /// does not is refused, never stored as if unsigned); a namespace with
    /// `require_signed_modules` refuses unsigned uploads. Returns the module as stored,
    /// without its bytes.
    pub async fn register_signed_module(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        wasm: &[u8],
        signature: Option<&[u8]>,
        uploader: &str,
    ) -> Result<ModuleInfo, EngineError> {
        if !super::valid_name(name) || !super::valid_version(version) {
            return Err(EngineError::Invalid(format!(
                "module `{name}@{version}` is not a valid name@MAJOR.MINOR.PATCH"
            )));
        }
        let module = self
            .inner
            .sandbox
            .load(wasm)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let hash = Sha256::digest(wasm);
        let digest = hex::encode(hash);
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let policy = Self::policy(&mut tx, namespace).await?;
        let signed_by = match signature {
            Some(signature) => Some(trusted_signer(&policy, &hash, signature)?),
            None if policy.require_signed_modules => {
                return Err(EngineError::Untrusted(format!(
                    "namespace `{namespace}` accepts only modules signed by a trusted key"
                )));
            }
            None => None,
        };
        let row = ModuleRow {
            digest: digest.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
            bytes: wasm.to_vec(),
            size: wasm.len() as i64,
            uploader: uploader.to_owned(),
            signature: signature.map(<[u8]>::to_vec),
            created_at: now,
        };
        tx.insert_module(&row).await?;
        let event = NewEvent {
            actor: uploader.to_owned(),
            action: "module.uploaded".into(),
            resource: format!("module/{namespace}/{name}@{version}"),
            namespace: Some(namespace.to_owned()),
            outcome: "success".into(),
            details: json!({ "digest": digest, "size": wasm.len(), "signed_by": signed_by }),
            ..NewEvent::default()
        };
        audit::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        lock(&self.inner.modules).insert(versioned_key(namespace, name, version), module);
        Ok(ModuleInfo::from(&row))
    }

    /// Apply a workflow definition (YAML or JSON): checked on its own, then against the
    /// namespace (its modules exist, its grants are within the policy). Immutable per
    /// version. Returns the definition and its stored row.
    pub async fn apply_workflow(
        &self,
        definition: &str,
        actor: &str,
    ) -> Result<(WorkflowDef, WorkflowRow), EngineError> {
        let loaded = LoadedWorkflow::new(WorkflowDef::parse(definition)?)?;
        let def = &loaded.def;
        let now = self.now();
        let mut tx = self.inner.store.begin().await?;
        let policy = Self::policy(&mut tx, &def.namespace).await?;
        for step in &def.steps {
            let (module, version) = parse_module_ref(&step.module).unwrap_or_default();
            if tx
                .get_module(&def.namespace, module, version)
                .await?
                .is_none()
            {
                return Err(EngineError::Invalid(format!(
                    "step `{}`: module `{}` is not uploaded to namespace `{}`",
                    step.name, step.module, def.namespace
                )));
            }
            for secret in &step.secrets {
                if !policy.secrets.contains(secret) {
                    return Err(EngineError::Invalid(format!(
                        "step `{}`: secret `{secret}` is not granted to namespace `{}`",
                        step.name, def.namespace
                    )));
                }
            }
            for host in &step.hosts {
                if !policy.hosts.contains(host) {
                    return Err(EngineError::Invalid(format!(
                        "step `{}`: host `{host}` is not allowed for namespace `{}`",
                        step.name, def.namespace
                    )));
                }
            }
        }
        let stored =
            serde_json::to_string(&def).map_err(|e| EngineError::Internal(e.to_string()))?;
        let row = WorkflowRow {
            namespace: def.namespace.clone(),
            name: def.name.clone(),
            version: def.version.clone(),
            definition: stored,
            created_by: actor.to_owned(),
            created_at: now,
        };
        tx.insert_workflow(&row).await?;
        let event = NewEvent {
            actor: actor.to_owned(),
            action: "workflow.applied".into(),
            resource: format!("workflow/{}/{}@{}", def.namespace, def.name, def.version),
            namespace: Some(def.namespace.clone()),
            outcome: "success".into(),
            details: json!({ "steps": def.steps.len() }),
            ..NewEvent::default()
        };
        audit::record(&mut tx, &event, now).await?;
        tx.commit().await?;
        let key = versioned_key(&def.namespace, &def.name, &def.version);
        let def = def.clone();
        lock(&self.inner.workflows).insert(key, Arc::new(loaded));
        lock(&self.inner.latest).insert(latest_key(&def.namespace, &def.name), def.version.clone());
        Ok((def, row))
    }

    /// A workflow by exact version (cached; definitions never change).
    pub(crate) async fn workflow(
        &self,
        tx: &mut Tx<'_>,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<LoadedWorkflow>, EngineError> {
        let key = versioned_key(namespace, name, version);
        if let Some(found) = self.cached_workflow(&key) {
            return Ok(found);
        }
        let row = tx
            .get_workflow(namespace, name, version)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("workflow {key}")))?;
        let parsed = Arc::new(LoadedWorkflow::new(WorkflowDef::parse(&row.definition)?)?);
        lock(&self.inner.workflows).insert(key, parsed.clone());
        Ok(parsed)
    }

    /// A workflow already parsed by this process, by [`versioned_key`].
    pub(crate) fn cached_workflow(&self, key: &str) -> Option<Arc<LoadedWorkflow>> {
        lock(&self.inner.workflows).get(key).cloned()
    }

    /// A module this process has loaded already, by its `name@version` reference.
    pub(crate) fn cached_module(&self, namespace: &str, reference: &str) -> Option<StepModule> {
        let (name, version) = parse_module_ref(reference)?;
        lock(&self.inner.modules)
            .get(&versioned_key(namespace, name, version))
            .cloned()
    }

    /// A module ready to run (loaded from the store once per process).
    pub(crate) async fn module(
        &self,
        tx: &mut Tx<'_>,
        namespace: &str,
        reference: &str,
    ) -> Result<StepModule, EngineError> {
        let (name, version) = parse_module_ref(reference)
            .ok_or_else(|| EngineError::Internal(format!("bad module reference {reference}")))?;
        let key = versioned_key(namespace, name, version);
        if let Some(found) = lock(&self.inner.modules).get(&key) {
            return Ok(found.clone());
        }
        let row = tx
            .get_module(namespace, name, version)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("module {key}")))?;
        let module = self.inner.sandbox.load(&row.bytes).map_err(|e| {
            EngineError::Internal(format!("stored module {key} no longer loads: {e}"))
        })?;
        lock(&self.inner.modules).insert(key, module.clone());
        Ok(module)
    }
}

/// Check the context against the workflow's schema; errors name the field and the rule,
/// never the value (it may be PII).
pub(crate) fn validate_context(
    validator: &jsonschema::Validator,
    context: &Value,
) -> Result<(), EngineError> {
    let problems: Vec<String> = validator
        .iter_errors(context)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            let rule = e.schema_path().to_string();
            format!(
                "`{}` violates {}",
                if at.is_empty() { "/" } else { &at },
                rule
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "context does not match the input schema: {}",
            problems.join("; ")
        )))
    }
}
