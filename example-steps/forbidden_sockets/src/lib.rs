//! Forbidden: opens a TCP connection through `std::net`, so the component imports
//! `wasi:sockets`. The host must refuse to load it.

use serde_json::{Value, json};
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

struct ForbiddenSockets;

impl Step for ForbiddenSockets {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        let connected = std::net::TcpStream::connect("127.0.0.1:5432").is_ok();
        Ok(json!({ "connected": connected }))
    }
}

export_step!(ForbiddenSockets);
