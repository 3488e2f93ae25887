//! Hostile: burns CPU forever in a loop the optimiser cannot remove. The host must stop it
//! when its CPU budget runs out.

use serde_json::Value;
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct InfiniteLoop;

impl Step for InfiniteLoop {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export_step!(InfiniteLoop);
