//! Hostile: recurses without end, each frame holding an array that stays live across the
//! call. The host must stop it when the wasm call stack overflows.
//!
//! The array is indexed only by constants, so it lives in wasm locals (spilled to the wasm
//! call stack) rather than in Rust's shadow stack in linear memory: running out of the
//! shadow stack would show up as an out-of-bounds memory access instead.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::Value;
use stepbox_guest::{Ctx, NoConfig, Step, StepError, export_step};

/// Loaded into every frame's array; mutable, so the optimiser can neither fold the values
/// nor recompute them after the recursive call.
static SEEDS: [AtomicU64; 16] = [const { AtomicU64::new(0x9e37_79b9_7f4a_7c15) }; 16];

/// Not a tail call: the frame's array is combined with the callee's result.
#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64) -> u64 {
    let seed = |i: usize| SEEDS[i].load(Relaxed) ^ depth;
    let frame = [
        seed(0),
        seed(1),
        seed(2),
        seed(3),
        seed(4),
        seed(5),
        seed(6),
        seed(7),
        seed(8),
        seed(9),
        seed(10),
        seed(11),
        seed(12),
        seed(13),
        seed(14),
        seed(15),
    ];
    SEEDS[(depth % 16) as usize].store(depth, Relaxed);
    let below = descend(depth + 1);
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = frame;
    below
        ^ a
        ^ (b << 1)
        ^ (c << 2)
        ^ (d << 3)
        ^ (e << 4)
        ^ (f << 5)
        ^ (g << 6)
        ^ (h << 7)
        ^ (i << 8)
        ^ (j << 9)
        ^ (k << 10)
        ^ (l << 11)
        ^ (m << 12)
        ^ (n << 13)
        ^ (o << 14)
        ^ (p << 15)
}

struct DeepRecursion;

impl Step for DeepRecursion {
    type Config = NoConfig;
    type Output = Value;

    fn run(_ctx: &Ctx, _config: NoConfig) -> Result<Value, StepError> {
        Ok(Value::from(descend(std::hint::black_box(0))))
    }
}

export_step!(DeepRecursion);
