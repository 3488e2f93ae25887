//! Per-attempt resource limits and the `ResourceLimiter` that enforces the memory,
//! table and instance ones.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::ResourceLimiter;

/// Linear memory a step may use by default: enough for JSON work on a few MiB of data.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;
/// The largest memory limit any step may ask for. The pooling allocator reserves slots of
/// this size, so it is also the hard ceiling no configuration can lift.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;
/// Table elements (function references) a step may hold. Rust components need a few hundred.
pub const DEFAULT_TABLE_ELEMENTS: usize = 20_000;
/// Core instances per attempt. A Rust `wasm32-wasip2` component has about half a dozen.
pub const DEFAULT_INSTANCES: usize = 32;
/// Tables and memories per attempt (the component's modules and its adapter shims).
pub const DEFAULT_TABLES: usize = 16;
/// See [`DEFAULT_TABLES`].
pub const DEFAULT_MEMORIES: usize = 4;
/// CPU a step may burn per attempt, measured in epoch ticks of [`EPOCH_TICK`].
pub const DEFAULT_CPU: Duration = Duration::from_secs(2);
/// Wall-clock time per attempt, including time spent waiting on the host (HTTP calls).
pub const DEFAULT_WALL_TIME: Duration = Duration::from_secs(10);
/// Host calls (context reads, log lines, HTTP requests, …) per attempt. A refund step makes
/// about ten; the budget stops a step that spins on the host.
pub const DEFAULT_HOST_CALLS: u32 = 10_000;
/// Live host resources (WASI pollables, streams) per attempt.
pub const DEFAULT_RESOURCES: usize = 1_000;
/// Bytes of JSON a step may return.
pub const DEFAULT_OUTPUT_BYTES: usize = 1 << 20;
/// Bytes of log text kept per attempt (lines past it are counted and dropped).
pub const DEFAULT_LOG_BYTES: usize = 64 << 10;
/// Bytes of stdout and of stderr kept per attempt (the rest is counted and dropped).
pub const DEFAULT_STDIO_BYTES: usize = 16 << 10;
/// Bytes of an HTTP response body handed back to the step.
pub const DEFAULT_HTTP_RESPONSE_BYTES: usize = 1 << 20;
/// Ceilings no step configuration may exceed: each bounds what one attempt can hold of
/// a shared pool slot or of host memory.
pub const MAX_CPU: Duration = Duration::from_secs(5 * 60);
/// See [`MAX_CPU`].
pub const MAX_WALL_TIME: Duration = Duration::from_secs(15 * 60);
/// See [`MAX_CPU`].
pub const MAX_HOST_CALLS: u32 = 1_000_000;
/// See [`MAX_CPU`].
pub const MAX_RESOURCES: usize = 100_000;
/// See [`MAX_CPU`]; also caps stdout/stderr, log and HTTP response buffers.
pub const MAX_BUFFER_BYTES: usize = 64 << 20;
/// Bytes of randomness one WASI call may ask for.
pub const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// How often the epoch ticker advances the engine's epoch. Each tick is a point where a
/// running step yields to the scheduler, and the unit of the CPU budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// What one attempt may consume. Every field has a documented default; `serde` fills
/// missing ones from [`Limits::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Total linear memory, bytes ([`DEFAULT_MEMORY_BYTES`], at most [`MAX_MEMORY_BYTES`]).
    pub memory_bytes: usize,
    /// Elements per table ([`DEFAULT_TABLE_ELEMENTS`]).
    pub table_elements: usize,
    /// Core instances ([`DEFAULT_INSTANCES`]).
    pub instances: usize,
    /// Guest CPU time ([`DEFAULT_CPU`]), in whole epoch ticks.
    #[serde(with = "millis")]
    pub cpu: Duration,
    /// Wall-clock time ([`DEFAULT_WALL_TIME`]).
    #[serde(with = "millis")]
    pub wall_time: Duration,
    /// Host calls ([`DEFAULT_HOST_CALLS`]).
    pub host_calls: u32,
    /// Live host resources ([`DEFAULT_RESOURCES`]).
    pub resources: usize,
    /// Output JSON bytes ([`DEFAULT_OUTPUT_BYTES`]).
    pub output_bytes: usize,
    /// Log bytes kept ([`DEFAULT_LOG_BYTES`]).
    pub log_bytes: usize,
    /// Stdout and stderr bytes kept, each ([`DEFAULT_STDIO_BYTES`]).
    pub stdio_bytes: usize,
    /// HTTP response body bytes ([`DEFAULT_HTTP_RESPONSE_BYTES`]).
    pub http_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            table_elements: DEFAULT_TABLE_ELEMENTS,
            instances: DEFAULT_INSTANCES,
            cpu: DEFAULT_CPU,
            wall_time: DEFAULT_WALL_TIME,
            host_calls: DEFAULT_HOST_CALLS,
            resources: DEFAULT_RESOURCES,
            output_bytes: DEFAULT_OUTPUT_BYTES,
            log_bytes: DEFAULT_LOG_BYTES,
            stdio_bytes: DEFAULT_STDIO_BYTES,
            http_response_bytes: DEFAULT_HTTP_RESPONSE_BYTES,
        }
    }
}

impl Limits {
    /// The CPU budget in epoch ticks (at least one).
    pub(crate) fn cpu_ticks(&self) -> u64 {
        let ticks = self.cpu.as_nanos() / EPOCH_TICK.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    /// Refuse limits the sandbox cannot honour or that would let one step hog the host.
    pub fn validate(&self) -> Result<(), String> {
        let over = |what: &str, value: u128, max: u128| {
            Err(format!("{what} {value} exceeds the ceiling of {max}"))
        };
        if self.memory_bytes > MAX_MEMORY_BYTES {
            return over(
                "memory_bytes",
                self.memory_bytes as u128,
                MAX_MEMORY_BYTES as u128,
            );
        }
        if self.table_elements > DEFAULT_TABLE_ELEMENTS {
            // The pool's tables are sized for this many elements.
            return over(
                "table_elements",
                self.table_elements as u128,
                DEFAULT_TABLE_ELEMENTS as u128,
            );
        }
        if self.instances > DEFAULT_INSTANCES {
            return over(
                "instances",
                self.instances as u128,
                DEFAULT_INSTANCES as u128,
            );
        }
        if self.cpu.is_zero() || self.wall_time.is_zero() {
            return Err("cpu and wall_time must be positive".to_owned());
        }
        if self.cpu > MAX_CPU {
            return over("cpu (ms)", self.cpu.as_millis(), MAX_CPU.as_millis());
        }
        if self.wall_time > MAX_WALL_TIME {
            return over(
                "wall_time (ms)",
                self.wall_time.as_millis(),
                MAX_WALL_TIME.as_millis(),
            );
        }
        if self.host_calls > MAX_HOST_CALLS {
            return over("host_calls", self.host_calls.into(), MAX_HOST_CALLS.into());
        }
        if self.resources > MAX_RESOURCES {
            return over("resources", self.resources as u128, MAX_RESOURCES as u128);
        }
        for (what, value) in [
            ("output_bytes", self.output_bytes),
            ("log_bytes", self.log_bytes),
            ("stdio_bytes", self.stdio_bytes),
            ("http_response_bytes", self.http_response_bytes),
        ] {
            if value > MAX_BUFFER_BYTES {
                return over(what, value as u128, MAX_BUFFER_BYTES as u128);
            }
        }
        Ok(())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Which limit the limiter refused, kept so the outcome can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Memory { requested: usize },
    Table { requested: usize },
}

/// Enforces [`Limits`] on memories, tables and instances for one store.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
    /// Bytes granted across all of the store's memories.
    memory_in_use: usize,
    pub(crate) exceeded: Option<Exceeded>,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            instances: limits.instances,
            memory_in_use: 0,
            exceeded: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if total > self.memory_bytes {
            self.exceeded = Some(Exceeded::Memory { requested: total });
            // Trap instead of returning -1: a Rust guest would abort anyway, and a trap
            // names the limit in the outcome.
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded",
                self.memory_bytes
            ));
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.exceeded = Some(Exceeded::Table { requested: desired });
            return Err(wasmtime::format_err!(
                "table limit of {} elements exceeded",
                self.table_elements
            ));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        DEFAULT_TABLES
    }

    fn memories(&self) -> usize {
        DEFAULT_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_growth_past_the_limit_is_refused_and_named() {
        let mut limiter = Limiter::new(&Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        });
        assert!(limiter.memory_growing(0, 512 << 10, None).unwrap());
        assert!(limiter.memory_growing(512 << 10, 1 << 20, None).unwrap());
        assert!(
            limiter
                .memory_growing(1 << 20, (1 << 20) + 65536, None)
                .is_err()
        );
        assert_eq!(
            limiter.exceeded,
            Some(Exceeded::Memory {
                requested: (1 << 20) + 65536
            })
        );
    }

    #[test]
    fn table_growth_past_the_limit_is_refused() {
        let mut limiter = Limiter::new(&Limits {
            table_elements: 10,
            ..Limits::default()
        });
        assert!(limiter.table_growing(0, 10, None).unwrap());
        assert!(limiter.table_growing(10, 11, None).is_err());
    }

    #[test]
    fn limits_parse_with_defaults_and_reject_unknown_fields() {
        let limits: Limits = serde_json::from_str(r#"{"cpu": 500}"#).unwrap();
        assert_eq!(limits.cpu, Duration::from_millis(500));
        assert_eq!(limits.memory_bytes, DEFAULT_MEMORY_BYTES);
        assert!(serde_json::from_str::<Limits>(r#"{"cpus": 1}"#).is_err());
        assert_eq!(Limits::default().validate(), Ok(()));
        for too_big in [
            Limits {
                memory_bytes: MAX_MEMORY_BYTES + 1,
                ..Limits::default()
            },
            Limits {
                wall_time: MAX_WALL_TIME + Duration::from_secs(1),
                ..Limits::default()
            },
            Limits {
                cpu: Duration::ZERO,
                ..Limits::default()
            },
            Limits {
                host_calls: MAX_HOST_CALLS + 1,
                ..Limits::default()
            },
            Limits {
                http_response_bytes: MAX_BUFFER_BYTES + 1,
                ..Limits::default()
            },
            Limits {
                table_elements: DEFAULT_TABLE_ELEMENTS + 1,
                ..Limits::default()
            },
        ] {
            assert!(too_big.validate().is_err(), "{too_big:?}");
        }
    }
}
