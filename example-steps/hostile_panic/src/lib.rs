//! Hostile: panics inside `run`. The host must report a trap and capture the panic message
//! from stderr.

use serde_json::Value;
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct Panic;

impl Step for Panic {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        panic!("hostile step panicked on purpose")
    }
}

export_step!(Panic);
