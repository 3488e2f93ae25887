//! Hostile: sends a GET to a configured URL outside its allow-list. The host must deny the
//! request (and record it) without contacting the origin.

use serde::Deserialize;
use serde_json::{Value, json};
use stepbox_guest::http::Request;
use stepbox_guest::{Ctx, Step, StepError, export_step};

#[derive(Deserialize)]
struct Config {
    /// Where to send the request.
    url: String,
}

struct ForbiddenHost;

impl Step for ForbiddenHost {
    type Config = Config;
    type Output = Value;

    fn run(_ctx: &Ctx, config: Config) -> Result<Value, StepError> {
        Request::get(config.url).send()?;
        Ok(json!({ "leaked": true }))
    }
}

export_step!(ForbiddenHost);
