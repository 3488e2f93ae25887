//! Hostile: recurses without end with a large array in every frame whose address escapes,
//! so it lives on Rust's shadow stack in linear memory (the common way real guests run
//! out of stack). Overflowing it wraps below address 0; the host must report a stack
//! overflow, not a bare memory fault.

use std::hint::black_box;

use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[(depth % 4096) as usize] = depth as u8;
    black_box(&mut frame);
    descend(depth + 1) ^ u64::from(frame[7])
}

struct ShadowStackOverflow;

impl Step for ShadowStackOverflow {
    type Config = NoConfig;
    type Output = u64;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<u64, StepError> {
        Ok(descend(0))
    }
}

export_step!(ShadowStackOverflow);
