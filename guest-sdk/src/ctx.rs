use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::StepError;
use crate::bindings::stepbox::step::{audit, context, secrets};

/// What the host returns for a field above the step's clearance.
const REDACTED: &str = "[REDACTED]";

/// The step's view of its task: identity of the attempt, declared context fields,
/// upstream results, secrets and the audit trail.
#[derive(Debug)]
pub struct Ctx {
    task_id: String,
    step_name: String,
    attempt: u32,
}

/// Config type for steps that take no configuration (accepts any JSON object).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct NoConfig {}

/// A granted secret, as the opaque placeholder the host hands out.
///
/// Put it in a request header or body (`format!("Bearer {key}")`); the host swaps in the
/// real value only when it sends the request to an allowed host. Printing it prints the
/// placeholder, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    name: String,
    placeholder: String,
}

impl Secret {
    /// The secret's name, as granted.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.placeholder)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.name)
    }
}

impl Ctx {
    pub(crate) fn new(task_id: String, step_name: String, attempt: u32) -> Self {
        Self {
            task_id,
            step_name,
            attempt,
        }
    }

    /// The task this attempt belongs to.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// This step's name in its workflow.
    pub fn step_name(&self) -> &str {
        &self.step_name
    }

    /// 1 for the first attempt, 2 for the first retry, …
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Read a declared context field as `T`.
    ///
    /// Fails permanently with `context_undeclared` if the step did not declare the field in
    /// its `reads`, `context_missing` if the task has no such field, `context_redacted` if
    /// the field is above the step's clearance (the host hands out `"[REDACTED]"`), and
    /// `context_type` if the value does not deserialise as `T`.
    pub fn get<T: DeserializeOwned>(&self, field: &str) -> Result<T, StepError> {
        let raw = context::get(field).map_err(context_error)?;
        parse_field(field, &raw)
    }

    /// Like [`Ctx::get`], but a field absent from the task context is `None`.
    pub fn get_opt<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>, StepError> {
        match context::get(field) {
            Ok(raw) => parse_field(field, &raw).map(Some),
            Err(context::ContextError::NotFound(_)) => Ok(None),
            Err(e) => Err(context_error(e)),
        }
    }

    /// The result of an upstream step this step depends on.
    pub fn upstream<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        let raw = context::upstream(step).map_err(context_error)?;
        serde_json::from_str(&raw).map_err(|e| {
            StepError::permanent(
                "upstream_type",
                format!("result of upstream step `{step}` has an unexpected shape: {e}"),
            )
        })
    }

    /// The placeholder for a secret granted to this step.
    pub fn secret(&self, name: &str) -> Result<Secret, StepError> {
        match secrets::placeholder(name) {
            Ok(placeholder) => Ok(Secret {
                name: name.to_owned(),
                placeholder,
            }),
            Err(secrets::SecretError::NotGranted(name)) => Err(StepError::permanent(
                "secret_not_granted",
                format!("secret `{name}` is not granted to this step"),
            )),
        }
    }

    /// Record a business event in the audit trail. `subject` is an identifier (a refund id,
    /// a task id), never raw personal data; `metadata` must serialise to a JSON object.
    pub fn audit(
        &self,
        action: &str,
        subject: &str,
        metadata: &impl Serialize,
    ) -> Result<(), StepError> {
        let metadata = serde_json::to_string(metadata).map_err(|e| {
            StepError::permanent(
                "audit_metadata",
                format!("metadata does not serialise: {e}"),
            )
        })?;
        audit::emit(action, subject, &metadata)
            .map_err(|reason| StepError::permanent("audit_refused", reason))
    }
}

fn parse_field<T: DeserializeOwned>(field: &str, raw: &str) -> Result<T, StepError> {
    if serde_json::from_str::<&str>(raw).is_ok_and(|s| s == REDACTED) {
        return Err(StepError::permanent(
            "context_redacted",
            format!("field `{field}` is above this step's clearance"),
        ));
    }
    serde_json::from_str(raw).map_err(|e| {
        StepError::permanent(
            "context_type",
            format!("field `{field}` has an unexpected type: {e}"),
        )
    })
}

fn context_error(error: context::ContextError) -> StepError {
    match error {
        context::ContextError::Undeclared(name) => StepError::permanent(
            "context_undeclared",
            format!("`{name}` is not among this step's declared reads"),
        ),
        context::ContextError::NotFound(name) => StepError::permanent(
            "context_missing",
            format!("`{name}` is not in this task's context"),
        ),
    }
}
