//! Forbidden: reads `/etc/passwd` through `std::fs`, so the component imports
//! `wasi:filesystem`. The host must refuse to load it.

use serde_json::{Value, json};
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct ForbiddenFilesystem;

impl Step for ForbiddenFilesystem {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        let text = std::fs::read_to_string("/etc/passwd")
            .map_err(|e| StepError::permanent("read_failed", e.to_string()))?;
        Ok(json!({ "length": text.len() }))
    }
}

export_step!(ForbiddenFilesystem);
