//! Data classification: the four classification levels, the data class of each field of a task
//! context (declared by the step's input schema, guessed from well-known field names, or found
//! by PII detectors), and a redactor that masks PII in free text and JSON before it leaves the
//! host. Pure functions over values: this module must never log, never do I/O and never panic,
//! whatever text, schema or context it is given.

mod detect;
mod level;
mod names;
mod phone;
mod redact;
mod schema;

pub use detect::{Finding, PiiKind, detect, iban_valid, luhn_valid};
pub use level::{Classification, ClassifyError, DataClass};
pub use names::class_for_name;
pub use redact::{REDACTED, Redactor};
pub use schema::{ContextClassification, FieldClasses, classify_context};
