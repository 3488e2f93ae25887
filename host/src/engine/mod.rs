//! The workflow engine: definitions and their DAG, task creation, scheduling, retries,
//! leases and workers. It decides what runs when; it never touches the network or a
//! secret's value itself (the sandbox does), and never writes a state change without
//! its audit event in the same transaction.

mod clock;
mod core;
mod data;
mod definition;
mod error;
mod keys;
mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use core::{CreateTask, CreatedTask, DEFAULT_LEASE_MS, Engine};
pub use definition::{
    AuditLevel, DefinitionError, RetryPolicy, StepDef, WorkflowDef, parse_module_ref, valid_name,
    valid_version,
};
pub use error::EngineError;
pub use keys::{Rotation, rewrap_all};
pub use worker::{Ran, WorkerPool};
