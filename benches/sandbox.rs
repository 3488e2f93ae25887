//! Per-step sandbox overhead: instantiate + call + drop of a trivial step (`noop`), pooled
//! and on-demand, against two baselines measured in the same run: a native Rust function
//! doing the same work, and spawning a process (`/bin/true`).
//!
//! Besides criterion's estimates, the bench prints p50/p99 from a separate timed pass and
//! the ratios to the baselines. Build the example steps first (`./dev build-steps`).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use stepbox::sandbox::{Attempt, Grants, Limits, Sandbox, SandboxConfig, StepModule};

/// Iterations of the percentile pass.
const SAMPLES: usize = 20_000;

fn noop_component() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../example-steps/target/wasm32-wasip2/release/noop.wasm");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run ./dev build-steps first)", path.display()))
}

fn attempt() -> Attempt {
    Attempt {
        task_id: "task_bench".into(),
        step_name: "noop".into(),
        attempt: 1,
        config: json!({}),
        grants: Grants::default(),
        data: Arc::default(),
        limits: Limits::default(),
    }
}

/// What `noop` does, natively: parse its config, build and serialise its output.
fn native_noop(config: &str) -> String {
    let _config: serde_json::Value = serde_json::from_str(config).expect("config parses");
    serde_json::to_string(&json!({ "ok": true })).expect("serialises")
}

fn setup(pooling: bool) -> (tokio::runtime::Runtime, Sandbox, StepModule) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        pooling,
        ..SandboxConfig::default()
    })
    .unwrap();
    let module = sandbox.load(&noop_component()).unwrap();
    (rt, sandbox, module)
}

fn run_once(rt: &tokio::runtime::Runtime, sandbox: &Sandbox, module: &StepModule) {
    let report = rt.block_on(sandbox.run(module, attempt()));
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
}

fn percentiles(mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..SAMPLES / 10 {
        f();
    }
    let mut times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        f();
        times.push(start.elapsed());
    }
    times.sort();
    (times[SAMPLES / 2], times[SAMPLES * 99 / 100])
}

fn overhead(c: &mut Criterion) {
    let pooled = setup(true);
    let on_demand = setup(false);
    let mut group = c.benchmark_group("step");
    group.bench_function("pooled", |b| {
        b.iter(|| run_once(&pooled.0, &pooled.1, &pooled.2))
    });
    group.bench_function("on_demand", |b| {
        b.iter(|| run_once(&on_demand.0, &on_demand.1, &on_demand.2))
    });
    group.bench_function("native_fn", |b| {
        b.iter(|| black_box(native_noop(black_box("{}"))))
    });
    group.sample_size(20);
    group.bench_function("process_spawn", |b| {
        b.iter(|| std::process::Command::new("/bin/true").status().unwrap())
    });
    group.finish();

    // `cargo test --benches` runs each benchmark once as a smoke test; the percentile
    // pass is for real runs (`cargo bench` passes `--bench`).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (p50, p99) = percentiles(|| run_once(&pooled.0, &pooled.1, &pooled.2));
    let (od50, od99) = percentiles(|| run_once(&on_demand.0, &on_demand.1, &on_demand.2));
    let (n50, n99) = percentiles(|| {
        black_box(native_noop(black_box("{}")));
    });
    let mut spawn = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        std::process::Command::new("/bin/true").status().unwrap();
        spawn.push(start.elapsed());
    }
    spawn.sort();
    let (s50, s99) = (spawn[100], spawn[198]);
    println!("\nper-step overhead, {SAMPLES} samples (p50 / p99):");
    println!("  pooled      {p50:>10.2?} / {p99:>10.2?}   (target p50 <= 10us, p99 <= 30us)");
    println!("  on-demand   {od50:>10.2?} / {od99:>10.2?}");
    println!("  native fn   {n50:>10.2?} / {n99:>10.2?}");
    println!("  /bin/true   {s50:>10.2?} / {s99:>10.2?}");
    println!(
        "  pooled p50 is {:.0}x native, {:.1}% of a process spawn; on-demand p50 is {:.2}x pooled",
        p50.as_secs_f64() / n50.as_secs_f64(),
        100.0 * p50.as_secs_f64() / s50.as_secs_f64(),
        od50.as_secs_f64() / p50.as_secs_f64()
    );
}

criterion_group!(benches, overhead);
criterion_main!(benches);
