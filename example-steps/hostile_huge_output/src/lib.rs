//! Hostile: returns a 4 MiB JSON string. The host must refuse it as output too large.

use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct HugeOutput;

impl Step for HugeOutput {
    type Config = NoConfig;
    type Output = String;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<String, StepError> {
        Ok("x".repeat(4 * 1024 * 1024))
    }
}

export_step!(HugeOutput);
