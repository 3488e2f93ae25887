//! The sandbox: runs one step attempt in a fresh wasmtime store with no ambient authority.
//!
//! It owns the engine (Cranelift, pooling allocator, epoch ticker), the compile cache
//! keyed by component digest, the per-attempt limits, and the host side of every
//! `stepbox:step` import. A step sees only what its [`Grants`] allow; every host call is
//! recorded in an [`AttemptRecord`]; every way an attempt can end is an [`Outcome`]. It
//! must never panic or hang on guest behaviour, never hand a guest a secret's value, and
//! never let guest text reach logs unredacted.

mod bindings;
mod capture;
mod engine;
mod grants;
mod host;
mod imports;
mod limits;
mod outcome;
mod record;
mod state;
mod ticker;

pub use engine::{
    Attempt, AttemptReport, LoadError, MAX_COMPONENT_BYTES, Sandbox, SandboxConfig, SandboxError,
    StepModule,
};
pub use grants::{Grants, Origin, OriginError, SecretValue, TaskData};
pub use limits::Limits;
pub use outcome::{Containment, ErrorKind, Outcome};
pub use record::{AttemptRecord, Capability, Denial, FieldRead, HttpCall, LogLine, StepAuditEvent};
