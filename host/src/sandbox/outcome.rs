//! How an attempt ended: a result, the step's own error, or a containment — and the
//! mapping from wasmtime's errors to containments.

use serde::Serialize;
use wasmtime::component::ResourceTableError;
use wasmtime::{Trap, WasmBacktrace};

use super::bindings;
use super::limits::{Exceeded, Limits};
use crate::classify::Redactor;

/// The end of one attempt. Never a panic or a hang: everything a guest can do lands here.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The step returned this JSON result.
    Success {
        /// The step's result.
        result: serde_json::Value,
    },
    /// The step failed on purpose.
    StepError {
        /// Retry or not.
        kind: ErrorKind,
        /// The step's stable code.
        code: String,
        /// The step's message, redacted.
        message: String,
        /// The step's retry hint.
        retry_after_ms: Option<u64>,
    },
    /// The sandbox stopped the step.
    Contained {
        /// What was exceeded or went wrong.
        containment: Containment,
        /// Details for the operator (no guest data beyond redacted stderr).
        detail: String,
    },
}

/// Whether a step error may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Retry with backoff.
    Retryable,
    /// Fail now.
    Permanent,
}

/// Why the sandbox stopped a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Containment {
    /// The CPU budget ran out.
    OutOfCpu,
    /// The wall-clock limit passed.
    Timeout,
    /// Linear memory would have grown past the limit.
    MemoryLimit,
    /// A table would have grown past the limit.
    TableLimit,
    /// The wasm stack overflowed.
    StackOverflow,
    /// The host resource table (WASI handles) is full.
    ResourceLimit,
    /// The host-call budget ran out.
    HostCallLimit,
    /// The result is larger than allowed.
    OutputTooLarge,
    /// The result is not valid JSON.
    InvalidOutput,
    /// The guest trapped (a panic, an unreachable, a bad memory access).
    Trap,
}

impl Outcome {
    /// True for [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success { .. })
    }

    /// The containment, if the sandbox stopped the step.
    pub fn containment(&self) -> Option<Containment> {
        match self {
            Self::Contained { containment, .. } => Some(*containment),
            _ => None,
        }
    }

    pub(crate) fn contained(containment: Containment, detail: impl Into<String>) -> Self {
        Self::Contained {
            containment,
            detail: detail.into(),
        }
    }
}

/// Errors the host raises to stop a guest, so the outcome can name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Abort {
    #[error("CPU budget of {0} ticks exhausted")]
    Cpu(u64),
    #[error("host call limit of {0} exceeded")]
    HostCalls(u32),
}

/// Map the error a call ended with onto a containment.
pub(crate) fn classify_trap(
    error: &wasmtime::Error,
    exceeded: Option<Exceeded>,
    stderr_tail: &str,
) -> Outcome {
    if let Some(abort) = error.downcast_ref::<Abort>() {
        let containment = match abort {
            Abort::Cpu(_) => Containment::OutOfCpu,
            Abort::HostCalls(_) => Containment::HostCallLimit,
        };
        return Outcome::contained(containment, abort.to_string());
    }
    match exceeded {
        Some(Exceeded::Memory { requested }) => {
            return Outcome::contained(
                Containment::MemoryLimit,
                format!("memory growth to {requested} bytes refused"),
            );
        }
        Some(Exceeded::Table { requested }) => {
            return Outcome::contained(
                Containment::TableLimit,
                format!("table growth to {requested} elements refused"),
            );
        }
        None => {}
    }
    if error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        )
    }) || format!("{error:#}").contains("resource table has no free keys")
    {
        return Outcome::contained(Containment::ResourceLimit, "host resource table full");
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => {
            Outcome::contained(Containment::StackOverflow, "wasm stack overflow")
        }
        // Rust guests keep large frames on a shadow stack at the bottom of linear memory;
        // overflowing it faults just below address 0, deep inside a recursion.
        Some(Trap::MemoryOutOfBounds)
            if below_zero_fault(&format!("{error:?}")) || recursing(error) =>
        {
            Outcome::contained(
                Containment::StackOverflow,
                "shadow stack overflow (out-of-bounds access in runaway recursion)",
            )
        }
        Some(trap) => {
            let mut detail = trap.to_string();
            if !stderr_tail.is_empty() {
                detail.push_str(": ");
                detail.push_str(&one_line(stderr_tail));
            }
            Outcome::contained(Containment::Trap, detail)
        }
        // The root cause only: the wasm backtrace carries guest-chosen function names.
        None => Outcome::contained(Containment::Trap, one_line(&error.root_cause().to_string())),
    }
}

/// Frames of the trap's wasm backtrace that must be one function for the trap to count
/// as runaway recursion (wasmtime keeps the innermost 20 frames).
const RECURSION_FRAMES: usize = 16;

/// True when the innermost frames of the trap's backtrace are all the same function.
fn recursing(error: &wasmtime::Error) -> bool {
    let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() else {
        return false;
    };
    let frames = backtrace.frames();
    frames.len() >= RECURSION_FRAMES
        && frames[..RECURSION_FRAMES].windows(2).all(|pair| {
            pair[0].func_index() == pair[1].func_index()
                && pair[0].module().name() == pair[1].module().name()
        })
}

/// Rust's shadow stack sits at the bottom of linear memory and grows down; overflowing
/// it wraps to the top 64 KiB of the 32-bit address space. wasmtime names the faulting
/// address only in the error text ("memory fault at wasm address 0x…").
fn below_zero_fault(error_text: &str) -> bool {
    const MARKER: &str = "memory fault at wasm address 0x";
    error_text.match_indices(MARKER).any(|(at, _)| {
        let hex: String = error_text[at + MARKER.len()..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        u64::from_str_radix(&hex, 16).is_ok_and(|addr| (0xffff_0000..=0xffff_ffff).contains(&addr))
    })
}

pub(crate) fn success(output: String, limits: &Limits) -> Outcome {
    if output.len() > limits.output_bytes {
        return Outcome::contained(
            Containment::OutputTooLarge,
            format!(
                "output of {} bytes exceeds the limit of {}",
                output.len(),
                limits.output_bytes
            ),
        );
    }
    match serde_json::from_str(&output) {
        Ok(result) => Outcome::Success { result },
        Err(e) => Outcome::contained(
            Containment::InvalidOutput,
            format!("output is not JSON: {e}"),
        ),
    }
}

/// Longest step-error message kept (after redaction).
const MAX_ERROR_MESSAGE: usize = 1024;
/// Longest retry hint honoured: a day.
const MAX_RETRY_AFTER_MS: u64 = 24 * 60 * 60 * 1000;
/// The code used when a step's own code is not a plain identifier.
const INVALID_CODE: &str = "invalid_error_code";

pub(crate) fn step_error(error: bindings::types::StepError, redactor: &Redactor) -> Outcome {
    // Codes are identifiers that land in metrics and audit events: anything else (an
    // email, a card number) is replaced, not stored.
    let code_ok = (1..=64).contains(&error.code.len())
        && error
            .code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !redactor.contains_pii(&error.code);
    Outcome::StepError {
        kind: match error.kind {
            bindings::types::ErrorKind::Retryable => ErrorKind::Retryable,
            bindings::types::ErrorKind::Permanent => ErrorKind::Permanent,
        },
        code: if code_ok {
            error.code
        } else {
            INVALID_CODE.to_owned()
        },
        // Redact the whole message first, so a cut cannot leave half a value behind.
        message: one_line(&truncate(
            &redactor.redact_text(&error.message),
            MAX_ERROR_MESSAGE,
        )),
        retry_after_ms: error.retry_after_ms.map(|ms| ms.min(MAX_RETRY_AFTER_MS)),
    }
}

/// Guest text shown to operators stays on one line.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_just_below_address_zero_is_a_shadow_stack_overflow() {
        assert!(below_zero_fault(
            "memory fault at wasm address 0xffffff68 in linear memory of size 0x110000"
        ));
        assert!(!below_zero_fault(
            "memory fault at wasm address 0x1ffff0 in linear memory of size 0x110000"
        ));
        assert!(!below_zero_fault("wasm backtrace: 0xffff12 - <unknown>"));
    }

    use crate::classify::Redactor;
    use crate::sandbox::bindings::types::{ErrorKind as WitKind, StepError as WitError};

    fn error(code: &str, message: &str, retry_after_ms: Option<u64>) -> WitError {
        WitError {
            kind: WitKind::Retryable,
            code: code.into(),
            message: message.into(),
            retry_after_ms,
        }
    }

    #[test]
    fn a_step_error_code_must_be_an_identifier_free_of_pii() {
        let redactor = Redactor::new(["cus_8812"]);
        for (code, kept) in [
            ("amount_too_large", true),
            ("notify.unavailable-429", true),
            ("jane@example.com", false),
            ("123-45-6789", false),
            ("cus_8812", false),
            ("", false),
            ("two words", false),
        ] {
            let Outcome::StepError { code: out, .. } =
                step_error(error(code, "m", None), &redactor)
            else {
                unreachable!()
            };
            assert_eq!(out == code, kept, "{code} became {out}");
            if !kept {
                assert_eq!(out, INVALID_CODE);
            }
        }
    }

    #[test]
    fn a_step_error_message_is_redacted_on_one_line_and_the_retry_hint_clamped() {
        let redactor = Redactor::new(["cus_8812"]);
        let message = format!(
            "customer cus_8812\nemail jane@example.com {}",
            "x".repeat(5000)
        );
        let Outcome::StepError {
            message,
            retry_after_ms,
            ..
        } = step_error(error("busy", &message, Some(u64::MAX)), &redactor)
        else {
            unreachable!()
        };
        assert!(
            !message.contains("cus_8812") && !message.contains("jane@example.com"),
            "{message}"
        );
        assert!(!message.contains('\n'));
        assert!(message.len() <= MAX_ERROR_MESSAGE);
        assert_eq!(retry_after_ms, Some(MAX_RETRY_AFTER_MS));
    }
}
