//! Engine throughput: the 4-step refund workflow without HTTP (its last step is `noop`
//! where `notify_customer` would call out), on SQLite and on PostgreSQL, with encryption
//! and audit on and, as the baseline measured in the same run, off. A third configuration
//! encrypts but writes no task or step audit events, which splits protection's cost
//! between encryption (third against baseline) and audit (protected against third).
//!
//! Each configuration gets a fresh database and runs two phases: submit N tasks through
//! `Engine::create_task` (several submitters at once), then drain them with the workers and
//! the audit sealer, as `stepbox worker` runs them. Throughput is N over both phases; the
//! phases are printed apart so the report shows where the time goes. Each configuration
//! runs `ROUNDS` times, taking turns, and the best round counts.
//!
//! `cargo bench --bench engine --features unprotected-baseline` (what `./dev bench` runs).
//! Under `cargo test` (no `--bench` argument) it runs a few tasks per configuration and
//! checks they complete and the chain verifies, so the benchmark itself stays working.
//! Environment: `STEPBOX_BENCH_TASKS` (default 4000), `STEPBOX_BENCH_WORKERS` (default 4),
//! `STEPBOX_BENCH_BACKEND` (`sqlite` or `postgres` to run only that one),
//! `STEPBOX_BENCH_SUBMITTERS` (concurrent callers of `create_task`, default 8),
//! `STEPBOX_BENCH_ONLY` (`protected`, `encryption` or `baseline`: run that configuration
//! alone, to profile it; no ratio is printed then).

mod common;

/// The allocator of the `stepbox` binary (see host/src/main.rs), so the figures are of
/// what ships.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use common::{
    ADMIN_URL, NS, Protection, agent, drop_postgres_db, env_usize, postgres_db, refund_engine,
    request, unfinished,
};
use sqlx::Connection;
use stepbox::audit;
use stepbox::engine::WorkerPool;
use stepbox::policy::NamespacePolicy;
use stepbox::sandbox::{Sandbox, SandboxConfig};
use stepbox::store::{AuditFilter, DatabaseUrl, Store, TaskStatus};

const ROUNDS: usize = 2;

struct Run {
    tasks: usize,
    create: Duration,
    drain: Duration,
    /// CPU the whole process used over both phases, every thread's.
    cpu: Duration,
}

impl Run {
    fn total(&self) -> Duration {
        self.create + self.drain
    }

    fn tasks_per_s(&self) -> f64 {
        self.tasks as f64 / self.total().as_secs_f64()
    }

    fn cpu_per_task(&self) -> Duration {
        self.cpu / self.tasks as u32
    }
}

/// CPU time (user + system) this process has used so far, all threads: fields 14 and 15
/// of `/proc/self/stat`, in clock ticks of 10 ms. Beside the wall time it tells work from
/// waiting: protection that costs more time per task than CPU per task is spending part
/// of its cost in waits (the single writer's turn), not in work. `None` off Linux.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` do not.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

async fn run(
    url: &DatabaseUrl,
    sandbox: &Sandbox,
    protection: Protection,
    tasks: usize,
    workers: usize,
) -> Run {
    let store = Store::open(url).await.unwrap();
    let engine = refund_engine(&store, sandbox, protection, &NamespacePolicy::default()).await;
    let agent = agent();

    let cpu_start = process_cpu();
    let start = Instant::now();
    let submitters_n = env_usize("STEPBOX_BENCH_SUBMITTERS", 8);
    let submitters: Vec<_> = (0..submitters_n)
        .map(|s| {
            let engine = engine.clone();
            let agent = agent.clone();
            tokio::spawn(async move {
                for n in (s..tasks).step_by(submitters_n) {
                    engine.create_task(&agent, request(n)).await.unwrap();
                }
            })
        })
        .collect();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let create = start.elapsed();

    let start = Instant::now();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let pool = WorkerPool {
        workers,
        name: "bench".into(),
        idle: Duration::from_millis(1),
        seal_every: Duration::from_millis(100),
    };
    let running = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.work(&pool, stop).await })
    };
    // Poll with a statement that stops at the first unfinished task: a count over every
    // task (by status) loaded the database it measures, and so did a count of the
    // unfinished ones, on a thread that took cores from the workers.
    while unfinished(&store).await {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let drain = start.elapsed();
    let cpu = process_cpu()
        .zip(cpu_start)
        .map_or(Duration::ZERO, |(end, start)| end.saturating_sub(start));
    stop_tx.send(true).unwrap();
    running.await.unwrap();
    let mut read = store.begin_read().await.unwrap();
    let counts = read.count_tasks(NS).await.unwrap();
    let complete = counts
        .iter()
        .find(|(status, _)| *status == TaskStatus::Complete)
        .map_or(0, |(_, n)| *n);
    assert_eq!(complete as usize, tasks, "every task completes: {counts:?}");

    // What each configuration leaves out is really left out: the measured split would
    // mean nothing otherwise.
    let step_events = read
        .count_audit(&AuditFilter {
            action: Some("step.completed".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    drop(read);
    let expected = if protection == Protection::Full {
        4 * tasks
    } else {
        0
    };
    assert_eq!(
        step_events as usize, expected,
        "step events of {protection:?}"
    );
    if protection == Protection::Full {
        audit::seal_pending(&store).await.unwrap();
        let report = audit::verify(&store).await.unwrap();
        assert!(report.broken.is_none(), "chain intact: {report:?}");
    }
    store.close().await;
    Run {
        tasks,
        create,
        drain,
        cpu,
    }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    if let Ok(filter) = std::env::var("STEPBOX_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let tasks = if benching {
        env_usize("STEPBOX_BENCH_TASKS", 4000)
    } else {
        12
    };
    let workers = env_usize("STEPBOX_BENCH_WORKERS", 4);
    let rounds = if benching { ROUNDS } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();

    runtime.block_on(async {
        let only = std::env::var("STEPBOX_BENCH_BACKEND").ok();
        let mut backends = vec!["sqlite"];
        if only.as_deref() == Some("postgres") {
            backends.clear();
        }
        if only.as_deref() == Some("sqlite") {
            // SQLite alone.
        } else if sqlx::PgConnection::connect(ADMIN_URL).await.is_ok() {
            backends.push("postgres");
        } else {
            assert!(
                std::env::var("STEPBOX_REQUIRE_POSTGRES").is_err(),
                "PostgreSQL required but unreachable"
            );
            eprintln!("skipped: PostgreSQL not reachable at {ADMIN_URL}");
        }
        println!(
            "engine throughput: {tasks} tasks of the 4-step refund workflow, {workers} workers, best of {rounds}"
        );
        for backend in backends {
            let mut best: [Option<Run>; 3] = [None, None, None];
            let only = std::env::var("STEPBOX_BENCH_ONLY").ok();
            let configurations: Vec<(usize, Protection)> = [
                (0, Protection::Full),
                (1, Protection::EncryptionOnly),
                (2, Protection::None),
            ]
            .into_iter()
            .filter(|(_, protection)| match only.as_deref() {
                Some("protected") => *protection == Protection::Full,
                Some("encryption") => *protection == Protection::EncryptionOnly,
                Some("baseline") => *protection == Protection::None,
                _ => true,
            })
            .collect();
            for _ in 0..rounds {
                for &(slot, protection) in &configurations {
                    let (url, pg, _dir) = if backend == "sqlite" {
                        let dir = tempfile::tempdir().unwrap();
                        (
                            DatabaseUrl::Sqlite(dir.path().join("stepbox.db")),
                            None,
                            Some(dir),
                        )
                    } else {
                        let (url, name) = postgres_db().await;
                        (url, Some(name), None)
                    };
                    let figures = run(&url, &sandbox, protection, tasks, workers).await;
                    if let Some(name) = pg {
                        drop_postgres_db(&name).await;
                    }
                    if best[slot]
                        .as_ref()
                        .is_none_or(|b| figures.total() < b.total())
                    {
                        best[slot] = Some(figures);
                    }
                }
            }
            let labels = ["encryption and audit", "encryption only", "baseline (both off)"];
            for (label, r) in labels.into_iter().zip(&best) {
                let Some(r) = r else { continue };
                println!(
                    "  {backend:<8} {label:<20}: {:>7.0} tasks/s ({:>6.0} steps/s) | create {:>6.0} tasks/s, run {:>6.0} tasks/s | CPU {:>4} µs/task",
                    r.tasks_per_s(),
                    r.tasks_per_s() * 4.0,
                    r.tasks as f64 / r.create.as_secs_f64(),
                    r.tasks as f64 / r.drain.as_secs_f64(),
                    r.cpu_per_task().as_micros(),
                );
            }
            // Each cost as a share of the baseline's time (and CPU) per task, so that the
            // encryption and audit parts add up to the whole.
            let cost = |more: &Option<Run>, less: &Option<Run>, base: &Option<Run>| {
                let (Some(more), Some(less), Some(base)) = (more, less, base) else {
                    return None;
                };
                let share = |a: Duration, b: Duration, base: Duration| {
                    (a.as_secs_f64() - b.as_secs_f64()) / base.as_secs_f64() * 100.0
                };
                Some((
                    share(more.total(), less.total(), base.total()),
                    share(more.cpu, less.cpu, base.cpu),
                ))
            };
            let [full, encryption, baseline] = &best;
            for (label, more, less) in [
                ("cost of encryption + audit", full, baseline),
                ("  of which encryption     ", encryption, baseline),
                ("  of which audit          ", full, encryption),
            ] {
                if let Some((time, cpu)) = cost(more, less, baseline) {
                    println!(
                        "  {backend:<8} {label}: {time:+6.1}% time per task, {cpu:+6.1}% CPU per task"
                    );
                }
            }
        }
    });
}
