//! Hostile: reads `customer_ssn`, a field it does not declare. The host must refuse the
//! read and record the denial.

use serde_json::{Value, json};
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct UndeclaredRead;

impl Step for UndeclaredRead {
    type Config = NoConfig;
    type Output = Value;

    fn run(ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        let _ssn: String = ctx.get("customer_ssn")?;
        Ok(json!({ "leaked": true }))
    }
}

export_step!(UndeclaredRead);
