//! The audit trail: a tamper-evident chain of events. It owns the chain format (canonical
//! encoding, link hashes), the verifier, and the sealer that links events in sequence
//! order; signed checkpoints of the chain; how events read to an auditor, exports and their
//! offline verification; and the compliance reports counted from the trail. It must never
//! hold raw PII (subjects appear as blind-index references only) and never rewrite a
//! sealed event.

mod chain;
mod checkpoint;
mod export;
mod present;
mod report;
mod trail;

pub use chain::{
    Break, GENESIS, Problem, Verification, Verifier, canonical, link_hash, seal_in_order,
};
pub use checkpoint::{
    AuditSigner, CHECKPOINT_EVERY_MS, CheckpointKeys, SigningKeyError, checkpoint, key_id,
};
pub use export::{ExportError, ExportFormat, export, verify_export};
pub use present::{
    CSV_HEADER, ExportCheckpoint, ExportEvent, ExportLine, compliance_tags, csv_record, event_view,
    export_header, parse_rfc3339, rfc3339,
};
pub use report::{Period, ReportInputs, compliance_report, controls, period_bounds, report_csv};
pub use trail::{AuditError, NewEvent, record, record_many, seal_pending, verify, verify_signed};
pub(crate) use trail::{record_many_in, record_rows_in, rows};
