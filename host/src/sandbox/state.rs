//! Per-attempt state (`StepState`): the WASI context, the resource table, the limiter, and
//! each capability's own state. Capabilities reach their state through a borrowed
//! [`View`], so each sees only its own part plus the shared budget and record.

use std::marker::PhantomData;
use std::sync::Arc;

use wasmtime::component::{HasData, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::capture::Captured;
use super::grants::{Grants, TaskData};
use super::host::{AuditCap, ContextCap, HttpCap, LogCap, SecretsCap};
use super::limits::{Limiter, Limits, MAX_RANDOM_BYTES};
use super::outcome::Abort;
use super::record::AttemptRecord;
use crate::classify::Redactor;

/// State every capability shares: the host-call budget, the redactor and the record.
pub(crate) struct Shared {
    pub(crate) task_id: String,
    pub(crate) step_name: String,
    host_calls_left: u32,
    host_call_limit: u32,
    redactor: LazyRedactor,
    pub(crate) record: AttemptRecord,
}

/// A redactor for the attempt's known values, built on first use: a step that never logs
/// or fails never pays for it.
pub(crate) struct LazyRedactor {
    /// Values to mask wherever they appear: the task's PII values and granted secrets.
    known_values: Vec<String>,
    /// Whether `known_values` holds a secret: then the redactor is the attempt's own, never
    /// one kept for the next attempt ([`Redactor::shared`]).
    secrets: bool,
    /// [`Redactor::generation`] when the attempt began.
    since: u64,
    built: Option<Redactor>,
}

impl LazyRedactor {
    fn new(known_values: Vec<String>, secrets: bool) -> Self {
        Self {
            known_values,
            secrets,
            since: Redactor::generation(),
            built: None,
        }
    }

    pub(crate) fn get(&mut self) -> &Redactor {
        let (known, secrets, since) = (&self.known_values, self.secrets, self.since);
        self.built.get_or_insert_with(|| {
            if secrets {
                Redactor::new(known)
            } else {
                Redactor::shared(known, since)
            }
        })
    }
}

impl Shared {
    /// Count one host call; trap once the budget is spent.
    pub(crate) fn charge(&mut self) -> wasmtime::Result<()> {
        if self.host_calls_left == 0 {
            return Err(Abort::HostCalls(self.host_call_limit).into());
        }
        self.host_calls_left -= 1;
        self.record.host_calls += 1;
        Ok(())
    }

    /// The attempt's redactor, built on first use (a step that never logs never pays).
    pub(crate) fn redactor(&mut self) -> &Redactor {
        self.redactor.get()
    }
}

/// Everything one attempt's `Store` holds.
pub(crate) struct StepState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) cpu_ticks_left: u64,
    pub(crate) cpu_ticks: u64,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
    pub(crate) shared: Shared,
    pub(crate) context: ContextCap,
    pub(crate) log: LogCap,
    pub(crate) audit: AuditCap,
    pub(crate) secrets: SecretsCap,
    pub(crate) http: HttpCap,
}

impl StepState {
    pub(crate) fn new(
        task_id: &str,
        step_name: &str,
        grants: Grants,
        data: Arc<TaskData>,
        limits: &Limits,
        client: reqwest::Client,
    ) -> Self {
        let stdout = Captured::new(limits.stdio_bytes);
        let stderr = Captured::new(limits.stdio_bytes);
        // No preopens, no environment, no arguments, closed stdin, no sockets, no name
        // lookup: the WASI surface a Rust guest's std needs, with no authority behind it.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resources);

        let mut known_values = data.classification.pii_values.clone();
        known_values.extend(grants.secrets.values().map(|s| s.expose().to_owned()));
        let secrets = !grants.secrets.is_empty();

        Self {
            wasi,
            table,
            limiter: Limiter::new(limits),
            cpu_ticks_left: limits.cpu_ticks(),
            cpu_ticks: 0,
            stdout,
            stderr,
            shared: Shared {
                task_id: task_id.to_owned(),
                step_name: step_name.to_owned(),
                host_calls_left: limits.host_calls,
                host_call_limit: limits.host_calls,
                redactor: LazyRedactor::new(known_values, secrets),
                record: AttemptRecord::default(),
            },
            context: ContextCap::new(grants.reads, grants.upstream, grants.clearance, data),
            log: LogCap::new(limits.log_bytes),
            audit: AuditCap::default(),
            secrets: SecretsCap::new(grants.secrets),
            http: HttpCap::new(client, grants.origins, limits.http_response_bytes),
        }
    }

    /// Finish the record (redacted stdio) and hand it over with the guest's panic message
    /// and the attempt's redactor, if one was needed.
    pub(crate) fn into_record(mut self) -> (AttemptRecord, String, LazyRedactor) {
        let (stdout, out_dropped) = self.stdout.take();
        let (stderr, err_dropped) = self.stderr.take();
        if !stdout.is_empty() || !stderr.is_empty() {
            let redactor = self.shared.redactor();
            // A cap can cut a value in half, where no detector would see it: drop the cut line.
            let stdout = redactor
                .redact_text(complete_lines(&stdout, out_dropped))
                .into_owned();
            let stderr = redactor
                .redact_text(complete_lines(&stderr, err_dropped))
                .into_owned();
            self.shared.record.stdout = stdout;
            self.shared.record.stderr = stderr;
        }
        let mut record = self.shared.record;
        record.stdio_dropped = out_dropped + err_dropped;
        let tail = panic_summary(&record.stderr);
        (record, tail, self.shared.redactor)
    }
}

/// `text` without its last, cut-off line when bytes were dropped after it.
fn complete_lines(text: &str, dropped: u64) -> &str {
    if dropped == 0 {
        return text;
    }
    text.rfind('\n').map_or("", |end| &text[..=end])
}

/// The guest's panic message (`thread '…' panicked at file:line:` and the line after it),
/// or else the last line it wrote to stderr.
fn panic_summary(stderr: &str) -> String {
    let mut lines = stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    if let Some(at) = lines.by_ref().position(|l| l.contains(" panicked at ")) {
        let mut all = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .skip(at);
        let location = all.next().unwrap_or_default();
        let message = all.next().unwrap_or_default();
        return format!("{location} {message}");
    }
    stderr
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned()
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A capability's borrowed view: its own state plus the shared budget and record.
pub(crate) struct View<'a, C> {
    pub(crate) cap: &'a mut C,
    pub(crate) shared: &'a mut Shared,
}

/// Marks capability `C` for `add_to_linker`: its host data is a [`View`] of `C`.
pub(crate) struct Cap<C>(PhantomData<C>);

impl<C: 'static> HasData for Cap<C> {
    type Data<'a> = View<'a, C>;
}

macro_rules! view_fn {
    ($name:ident, $field:ident, $cap:ty) => {
        pub(crate) fn $name(state: &mut StepState) -> View<'_, $cap> {
            View {
                cap: &mut state.$field,
                shared: &mut state.shared,
            }
        }
    };
}

view_fn!(context_view, context, ContextCap);
view_fn!(log_view, log, LogCap);
view_fn!(audit_view, audit, AuditCap);
view_fn!(secrets_view, secrets, SecretsCap);

/// HTTP also reads the secrets capability's issued placeholders, to substitute them.
pub(crate) struct HttpView<'a> {
    pub(crate) cap: &'a mut HttpCap,
    pub(crate) secrets: &'a SecretsCap,
    pub(crate) shared: &'a mut Shared,
}

/// Marks the HTTP capability for `add_to_linker`.
pub(crate) struct HttpData;

impl HasData for HttpData {
    type Data<'a> = HttpView<'a>;
}

pub(crate) fn http_view(state: &mut StepState) -> HttpView<'_> {
    HttpView {
        cap: &mut state.http,
        secrets: &state.secrets,
        shared: &mut state.shared,
    }
}

#[cfg(test)]
impl Shared {
    pub(crate) fn for_tests(host_calls: u32, known_values: Vec<String>) -> Self {
        Self {
            task_id: "task_test".into(),
            step_name: "step_test".into(),
            host_calls_left: host_calls,
            host_call_limit: host_calls,
            redactor: LazyRedactor::new(known_values, true),
            record: AttemptRecord::default(),
        }
    }
}
