//! Hostile: bypasses the SDK's `Step` trait and returns `{not json` as its result. The host
//! must reject it as invalid output.

use stepbox_guest::bindings::Guest;
use stepbox_guest::bindings::stepbox::step::types::{StepError, StepInput};

struct MalformedOutput;

impl Guest for MalformedOutput {
    fn run(_input: StepInput) -> Result<String, StepError> {
        Ok("{not json".to_string())
    }
}

stepbox_guest::bindings::__stepbox_export_world!(MalformedOutput);
