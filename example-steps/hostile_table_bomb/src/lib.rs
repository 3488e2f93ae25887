//! Hostile: creates WASI pollables (monotonic-clock `subscribe-duration`) forever and never
//! drops them, growing the host's resource table. The host must stop it at its resource
//! limit.

use serde_json::Value;
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct TableBomb;

impl Step for TableBomb {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        loop {
            let pollable = wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000);
            std::mem::forget(pollable);
        }
    }
}

export_step!(TableBomb);
