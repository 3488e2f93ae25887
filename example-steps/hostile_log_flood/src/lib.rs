//! Hostile: logs 1 KiB lines forever. The host must cap the kept log volume and stop the
//! step at its host-call limit.

use serde_json::Value;
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step, info};

struct LogFlood;

impl Step for LogFlood {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        let line = "x".repeat(1024);
        let mut n: u64 = 0;
        loop {
            info!({ "n" => n }, "{line}");
            n += 1;
        }
    }
}

export_step!(LogFlood);
