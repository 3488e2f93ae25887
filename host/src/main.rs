//! The `stepbox` binary: parse flags, set up logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use stepbox::cli::Cli;

/// mimalloc rather than glibc's allocator: the engine allocates and frees many small,
/// short-lived buffers per step (rows, JSON, sealed blobs, audit events), and under glibc
/// malloc and free were ~15 % of its CPU. Engine benchmark, protected, 4,000 tasks, three
/// interleaved pairs (2026-12-06): 1,896 / 1,828 / 1,973 -> 2,314 / 2,113 / 2,283 tasks/s,
/// process CPU -7 to -12 %, peak memory 170 -> 240 MB (mimalloc keeps freed pages longer).
/// The benchmarks use it too, so they measure what ships. Feature `mimalloc` (default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STEPBOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}
