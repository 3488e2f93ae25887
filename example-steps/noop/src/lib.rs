//! Does nothing and makes no host call: returns `{"ok": true}`. Measures the host's
//! per-attempt overhead in the benchmark.

use serde_json::{Value, json};
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct Noop;

impl Step for Noop {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        Ok(json!({ "ok": true }))
    }
}

export_step!(Noop);
