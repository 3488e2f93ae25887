//! Hostile: asks for `PAYMENTS_DB_PASSWORD`, a secret it is not granted. The host must
//! refuse and record the denial.

use serde_json::{Value, json};
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct UngrantedSecret;

impl Step for UngrantedSecret {
    type Config = NoConfig;
    type Output = Value;

    fn run(ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        let _password = ctx.secret("PAYMENTS_DB_PASSWORD")?;
        Ok(json!({ "leaked": true }))
    }
}

export_step!(UngrantedSecret);
