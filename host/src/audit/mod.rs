//! The audit trail: a tamper-evident chain of events. It owns the chain format (canonical
//! encoding, link hashes), the verifier, and the sealer that links events in sequence
//! order. It must never hold raw PII (subjects appear as blind-index references only) and
//! never rewrite a sealed event.

mod chain;
mod trail;

pub use chain::{
    Break, GENESIS, Problem, Verification, Verifier, canonical, link_hash, seal_in_order,
};
pub use trail::{AuditError, NewEvent, record, record_many, seal_pending, verify};
