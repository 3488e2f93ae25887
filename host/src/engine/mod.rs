//! The workflow engine: definitions and their DAG, task creation, scheduling, retries,
//! leases and workers, operator control (cancel, retry), secrets at rest, and data-subject
//! requests (access, export, erasure). It decides
//! what runs when; it never touches the network or uses a secret's value itself (it
//! unseals a step's granted secrets into the sandbox's grants, and the sandbox uses them),
//! and never writes a state change without its audit event in the same transaction.

mod clock;
mod control;
mod core;
mod create;
mod data;
mod definition;
mod endings;
mod error;
mod gdpr;
mod keys;
mod pool;
mod retention;
mod secrets;
mod view;
mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use control::{CancelledTask, RetriedStep};
pub use core::{CreateTask, CreatedTask, DEFAULT_LEASE_MS, Engine, RequestDetails};
pub use definition::{
    AuditLevel, DefinitionError, RetryPolicy, StepDef, WorkflowDef, parse_module_ref, valid_name,
    valid_secret_name, valid_version,
};
pub use error::EngineError;
pub use gdpr::{Erasure, SubjectExport, SubjectReport};
pub use keys::{Rotation, rewrap_all};
pub use pool::WorkerPool;
pub use retention::RetentionRun;
pub use secrets::{MAX_SECRET_BYTES, set_secret};
pub use view::TaskView;
pub use worker::Ran;
