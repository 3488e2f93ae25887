//! Hostile: allocates, fills and keeps 1 MiB chunks forever. The host must stop it at the
//! memory limit.

use serde_json::Value;
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

const CHUNK: usize = 1 << 20;

struct MemoryBomb;

impl Step for MemoryBomb {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        let mut n: u8 = 0;
        loop {
            let mut chunk = vec![0u8; CHUNK];
            // Touch every page, so the memory is really used.
            chunk.fill(n | 1);
            hoard.push(std::hint::black_box(chunk));
            n = n.wrapping_add(1);
        }
    }
}

export_step!(MemoryBomb);
