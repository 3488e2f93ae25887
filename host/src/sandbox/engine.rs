//! The shared half of the sandbox: one wasmtime `Engine` per process (Cranelift, pooling
//! allocator, epoch interruption driven by a ticker thread), one `Linker`, a cache of
//! `InstancePre`s by component digest, and the HTTP client. `Sandbox::run` builds a
//! fresh `Store` per attempt and always returns an [`AttemptReport`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

use super::bindings::{self, StepPre};
use super::grants::{Grants, TaskData};
use super::imports;
use super::limits::{self, Limits};
use super::outcome::{Abort, Containment, Outcome, classify_trap, step_error, success};
use super::record::AttemptRecord;
use super::state::{self, Cap, HttpData, StepState};
use super::ticker::Ticker;

/// Largest component accepted, bytes. The refund steps are ~100 KiB.
pub const MAX_COMPONENT_BYTES: usize = 16 << 20;
/// Distinct components kept compiled; past it the cache is cleared and refilled.
const MODULE_CACHE_CAPACITY: usize = 256;
/// Bytes of each linear memory kept resident between attempts (reset with memset).
const KEEP_RESIDENT_BYTES: usize = 2 << 20;
/// Bytes of each table kept resident between attempts.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;
/// Timeout for one outbound HTTP request (the attempt's wall-clock limit still applies).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout for establishing an outbound connection.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Process-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Attempts that may run at once: the pooling allocator's slot count.
    pub max_concurrent_attempts: u32,
    /// Use the pooling allocator (fast, preallocated) rather than on-demand allocation.
    pub pooling: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_concurrent_attempts: 128,
            pooling: true,
        }
    }
}

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// wasmtime refused the engine configuration (e.g. not enough virtual memory).
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// Why a component was refused at load time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Bigger than [`MAX_COMPONENT_BYTES`].
    #[error("component is {size} bytes, over the limit of {MAX_COMPONENT_BYTES}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not a valid WebAssembly component (a core module, garbage, or invalid code).
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// Imports an interface outside the allowed set.
    #[error("component imports `{import}`, which steps may not use")]
    DeniedImport {
        /// The import's full name.
        import: String,
    },
    /// Does not export the `stepbox:step` world's `run`.
    #[error("component does not implement the stepbox:step world: {0}")]
    NotAStep(String),
}

/// A component ready to run: compiled once, pre-linked.
#[derive(Clone)]
pub struct StepModule {
    digest: Arc<str>,
    pre: StepPre<StepState>,
}

impl StepModule {
    /// The SHA-256 digest of the component bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// One attempt to run: who, with what, under which grants and limits.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The task id.
    pub task_id: String,
    /// The step's name.
    pub step_name: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// The step's config (JSON).
    pub config: serde_json::Value,
    /// What the step may do.
    pub grants: Grants,
    /// The task data it may draw on.
    pub data: Arc<TaskData>,
    /// Resource limits.
    pub limits: Limits,
}

/// How an attempt went, and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptReport {
    /// The outcome.
    pub outcome: Outcome,
    /// The record of host calls.
    pub record: AttemptRecord,
    /// Wall-clock duration, milliseconds.
    pub duration_ms: u64,
    /// Guest CPU used, in epoch ticks.
    pub cpu_ticks: u64,
}

/// The sandbox: cheap to clone, shared by every worker of the process.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<StepState>,
    modules: Mutex<HashMap<Arc<str>, StepModule>>,
    http: reqwest::Client,
    /// One permit per pool slot: attempts past the pool's size wait for a slot instead of
    /// failing to instantiate.
    slots: Semaphore,
    ticker: Ticker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl Sandbox {
    /// Build the engine, linker, ticker and HTTP client.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true);
        wasm.epoch_interruption(true);
        // Steps use the synchronous component ABI (host calls may still be async on the
        // host side); without the component-model-async machinery a store is cheaper to
        // create and drop.
        wasm.concurrency_support(false);
        if config.pooling {
            let mut pool = PoolingAllocationConfig::default();
            let slots = config.max_concurrent_attempts.max(1);
            pool.total_component_instances(slots);
            pool.total_stacks(slots);
            pool.total_core_instances(slots * limits::DEFAULT_INSTANCES as u32);
            pool.total_memories(slots * limits::DEFAULT_MEMORIES as u32);
            pool.total_tables(slots * limits::DEFAULT_TABLES as u32);
            pool.max_core_instances_per_component(limits::DEFAULT_INSTANCES as u32);
            pool.max_memories_per_component(limits::DEFAULT_MEMORIES as u32);
            pool.max_tables_per_component(limits::DEFAULT_TABLES as u32);
            pool.max_memory_size(limits::MAX_MEMORY_BYTES);
            pool.table_elements(limits::DEFAULT_TABLE_ELEMENTS);
            // Reset a slot by rewriting the pages the last attempt touched (found with
            // PAGEMAP_SCAN where the kernel has it) instead of madvise + fresh page faults.
            pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
            pool.table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
            pool.pagemap_scan(wasmtime::Enabled::Auto);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        link(&mut linker).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;

        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .user_agent(concat!("stepbox/", env!("CARGO_PKG_VERSION")))
            // Requests go straight to the allowed origin: a proxy from the environment
            // would see every secret sent over plain HTTP.
            .no_proxy()
            .build()
            .map_err(|e| SandboxError::Http(e.to_string()))?;

        // Without the ticker no step could ever be interrupted: failing to start it is fatal.
        let ticker = Ticker::start(engine.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                modules: Mutex::new(HashMap::new()),
                http,
                slots: Semaphore::new(config.max_concurrent_attempts.max(1) as usize),
                ticker,
            }),
        })
    }

    /// Validate and compile a component, once per digest: size, component-ness, the import
    /// allow-list, and the `run` export.
    pub fn load(&self, wasm: &[u8]) -> Result<StepModule, LoadError> {
        if wasm.len() > MAX_COMPONENT_BYTES {
            return Err(LoadError::TooLarge { size: wasm.len() });
        }
        let digest: Arc<str> = hex::encode(Sha256::digest(wasm)).into();
        if let Some(module) = self.modules().get(&digest) {
            return Ok(module.clone());
        }
        if !is_component_binary(wasm) {
            return Err(LoadError::Invalid(
                "expected a component, found a core module or other bytes".into(),
            ));
        }
        let engine = &self.inner.engine;
        let component =
            Component::new(engine, wasm).map_err(|e| LoadError::Invalid(format!("{e}")))?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if let Some(import) = imports::first_denied(imports.iter().map(String::as_str)) {
            return Err(LoadError::DeniedImport {
                import: import.to_owned(),
            });
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::NotAStep(format!("{e}")))?;
        let pre = StepPre::new(pre).map_err(|e| LoadError::NotAStep(format!("{e}")))?;
        let module = StepModule {
            digest: digest.clone(),
            pre,
        };
        let mut modules = self.modules();
        if modules.len() >= MODULE_CACHE_CAPACITY {
            modules.clear();
        }
        modules.insert(digest, module.clone());
        Ok(module)
    }

    fn modules(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, StepModule>> {
        self.inner.modules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run one attempt in a fresh store. Never panics, never hangs past the wall-clock
    /// limit: every failure is an [`Outcome`]. Waits for a free pool slot first.
    pub async fn run(&self, module: &StepModule, attempt: Attempt) -> AttemptReport {
        // The semaphore is never closed, so acquiring cannot fail.
        let _slot = self.inner.slots.acquire().await.ok();
        let started = Instant::now();
        match AssertUnwindSafe(self.attempt(module, attempt, started))
            .catch_unwind()
            .await
        {
            Ok(report) => report,
            Err(_) => {
                tracing::error!(module = %module.digest(), "host panicked while running a step");
                AttemptReport {
                    outcome: Outcome::contained(Containment::Trap, "internal host error"),
                    record: AttemptRecord::default(),
                    duration_ms: elapsed_ms(started),
                    cpu_ticks: 0,
                }
            }
        }
    }

    async fn attempt(
        &self,
        module: &StepModule,
        attempt: Attempt,
        started: Instant,
    ) -> AttemptReport {
        if let Err(problem) = attempt.limits.validate() {
            return AttemptReport {
                outcome: Outcome::contained(
                    Containment::Trap,
                    format!("invalid limits: {problem}"),
                ),
                record: AttemptRecord::default(),
                duration_ms: 0,
                cpu_ticks: 0,
            };
        }
        let Attempt {
            task_id,
            step_name,
            attempt,
            config,
            grants,
            data,
            limits,
        } = attempt;
        let state = StepState::new(
            &task_id,
            &step_name,
            grants,
            data,
            &limits,
            self.inner.http.clone(),
        );
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            state.cpu_ticks += 1;
            if state.cpu_ticks >= state.cpu_ticks_left {
                return Err(Abort::Cpu(state.cpu_ticks_left).into());
            }
            Ok(UpdateDeadline::Yield(1))
        });

        let input = bindings::types::StepInput {
            task_id,
            step_name,
            attempt,
            config: config.to_string(),
        };
        let call = async {
            let step = module.pre.instantiate_async(&mut store).await?;
            step.call_run(&mut store, &input).await
        };
        let result = tokio::time::timeout(limits.wall_time, call).await;

        let exceeded = store.data().limiter.exceeded;
        let cpu_ticks = store.data().cpu_ticks;
        let (record, stderr_tail, mut redactor) = store.into_data().into_record();
        let outcome = match result {
            Err(_) => Outcome::contained(
                Containment::Timeout,
                format!(
                    "wall-clock limit of {} ms passed",
                    limits.wall_time.as_millis()
                ),
            ),
            Ok(Err(error)) => classify_trap(&error, exceeded, &stderr_tail),
            Ok(Ok(Ok(output))) => success(output, &limits),
            Ok(Ok(Err(error))) => step_error(error, redactor.get()),
        };
        AttemptReport {
            outcome,
            record,
            duration_ms: elapsed_ms(started),
            cpu_ticks,
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Link the harmless WASI interfaces (their context grants no authority, and the import
/// allow-list refuses components that want more) and the stepbox capabilities.
fn link(linker: &mut Linker<StepState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    bindings::types::add_to_linker::<_, Cap<crate::sandbox::host::ContextCap>>(
        linker,
        state::context_view,
    )?;
    bindings::context::add_to_linker::<_, Cap<_>>(linker, state::context_view)?;
    bindings::log::add_to_linker::<_, Cap<_>>(linker, state::log_view)?;
    bindings::audit::add_to_linker::<_, Cap<_>>(linker, state::audit_view)?;
    bindings::secrets::add_to_linker::<_, Cap<_>>(linker, state::secrets_view)?;
    bindings::http::add_to_linker::<_, HttpData>(linker, state::http_view)?;
    Ok(())
}

/// A component starts with the magic and a layer field of 1 (core modules have 0).
fn is_component_binary(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}
