//! The simulator (issue 23): several copies of the real daemon (`daemon::run_with`) against the
//! test bed in one process, on one thread, under tokio's paused clock, over an in-memory
//! network; a seeded fault schedule; invariants checked after every write the test bed accepts.
//!
//! `cargo test --release --test sim` runs the CI budget and ends with one line
//! `sim: R runs, S simulated s, W wall s, V violations` (exit 1 when V > 0). Environment:
//! `SIM_SEED` (the first seed; alone, replays that one run), `SIM_RUNS` (either of the two:
//! seeds only, no scripted scenarios), `SIM_SCENARIO` (one scripted scenario of `faults.rs`), `SIM_DURATION`
//! (simulated seconds per run), `SIM_HOSTS` (1–7; unset: 3 in half the runs, 2, 4 or 5 in the
//! others, drawn from the seed), `SIM_LOG` (a tracing filter for the daemons'
//! logs, e.g. `endpoint_copier=debug`), `SIM_TRACE` (print the last events of every run, not
//! only of a failing one; `SIM_TRACE=schedule`: the schedule's), `SIM_TAIL` (how many: default 50). docs/development/testing.md, "Simulator", says how to
//! replay a seed and extend the simulator.
//!
//! Files: `net.rs` the network and its faults, `world.rs` one run (the cluster, the hosts and
//! their clocks, the other cluster, the write observer, the trace), `drains.rs` Node drains,
//! `faults.rs` the seeded fault schedule, `check.rs` the invariants on the VIP and their
//! self-test, `targets.rs` those on the other targets.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod check;
mod drains;
mod faults;
mod net;
mod targets;
mod world;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Runs per `cargo test --release --test sim` (fits ~3 minutes of wall time on 2 cores; see
/// docs/development/testing.md for the measurement).
const CI_RUNS: u64 = 500;
/// Simulated seconds per CI run.
const CI_DURATION_SECS: u64 = 600;
/// A debug build (`cargo test` of the whole workspace) runs a token budget: the daemons are
/// some 20 times slower unoptimised.
const DEBUG_RUNS: u64 = 2;
/// Simulated seconds per debug run.
const DEBUG_DURATION_SECS: u64 = 120;
/// The first seed when `SIM_SEED` is not set: CI runs the same seeds every time.
const FIRST_SEED: u64 = 1;
/// Wall time without any progress of the virtual clock after which a run is declared stuck.
const STALL: Duration = Duration::from_secs(30);
/// Runs made twice at the end (the first ones): the same seed must give the same trace, byte
/// for byte (invariant `reproducible`).
const REPLAYED: usize = 16;

/// One run to make.
struct Job {
    /// `seed 7`, `scenario stale-ballot`.
    name: String,
    /// How to replay it.
    replay: String,
    seed: u64,
    opts: world::Opts,
}

struct Settings {
    /// `SIM_SCENARIO`: only that scenario.
    scenario: Option<String>,
    /// Whether `SIM_SEED` or `SIM_RUNS` asked for seeds only (no scenarios).
    seeds_only: bool,
    first_seed: u64,
    runs: u64,
    /// `SIM_HOSTS`, when set.
    hosts: Option<usize>,
    duration: Duration,
}

impl Settings {
    /// The runs to make: a scenario alone; or the scripted scenarios (unless seeds were asked
    /// for), then the seeds.
    fn jobs(&self) -> Vec<Job> {
        let scenario_job = |name: &str| {
            faults::scenario(name).map(|opts| Job {
                name: format!("scenario {name}"),
                replay: format!("SIM_SCENARIO={name}"),
                seed: self.first_seed,
                opts,
            })
        };
        if let Some(name) = &self.scenario {
            return scenario_job(name).into_iter().collect();
        }
        let mut jobs: Vec<Job> = if self.seeds_only {
            Vec::new()
        } else {
            faults::SCENARIOS
                .iter()
                .filter_map(|n| scenario_job(n))
                .collect()
        };
        for seed in self.first_seed..self.first_seed + self.runs {
            jobs.push(Job {
                name: format!("seed {seed}"),
                replay: format!("SIM_SEED={seed}"),
                seed,
                opts: world::Opts {
                    hosts: hosts_for(seed, self.hosts),
                    duration: self.duration,
                    scenario: None,
                    extra: None,
                },
            });
        }
        jobs
    }
}

/// The hosts of a run: `SIM_HOSTS`, else drawn from the seed — 3 in half the runs, 2 in a
/// quarter (where one stale ballot is a tie), 4 or 5 in the rest.
fn hosts_for(seed: u64, fixed: Option<usize>) -> usize {
    fixed.unwrap_or_else(|| {
        // Its own generator: the world's draws stay the same whatever the host count.
        match fastrand::Rng::with_seed(seed ^ 0x5157_4f53_5453).u32(0..20) {
            0..=9 => 3,
            10..=14 => 2,
            15..=17 => 4,
            _ => 5,
        }
    })
}

fn var(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}='{v}' is not a whole number")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let seed = var("SIM_SEED")?;
        let (runs, secs) = if cfg!(debug_assertions) {
            (DEBUG_RUNS, DEBUG_DURATION_SECS)
        } else {
            (CI_RUNS, CI_DURATION_SECS)
        };
        // A seed alone replays that run.
        let runs = var("SIM_RUNS")?.unwrap_or(if seed.is_some() { 1 } else { runs });
        let secs = var("SIM_DURATION")?.unwrap_or(secs);
        let hosts = var("SIM_HOSTS")?;
        let scenario = std::env::var("SIM_SCENARIO").ok();
        if let Some(name) = &scenario
            && faults::scenario(name).is_none()
        {
            return Err(format!(
                "SIM_SCENARIO={name}: no such scenario (there are: {})",
                faults::SCENARIOS.join(", ")
            ));
        }
        let seeds_only = seed.is_some() || std::env::var_os("SIM_RUNS").is_some();
        if let Some(hosts) = hosts
            && !(1..=7).contains(&hosts)
        {
            return Err(format!("SIM_HOSTS={hosts}: between 1 and 7"));
        }
        if secs < 30 {
            return Err(format!(
                "SIM_DURATION={secs}: at least 30 simulated seconds"
            ));
        }
        Ok(Settings {
            scenario,
            seeds_only,
            first_seed: seed.unwrap_or(FIRST_SEED),
            runs,
            hosts: hosts.map(|h| h as usize),
            duration: Duration::from_secs(secs),
        })
    }
}

/// Beats once per liveness tick (every 500 ms of virtual time); the watchdog thread reads it.
pub struct Progress {
    pub beats: AtomicU64,
    /// The run going on, to name it (its replay), and the ones finished.
    pub replay: std::sync::Mutex<String>,
    pub runs: AtomicU64,
    pub simulated: AtomicU64,
    /// The run's lab, for its trace.
    pub lab: std::sync::Mutex<Option<Arc<std::sync::Mutex<world::Lab>>>>,
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(64);
        }
    };
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        eprintln!("sim: NOTIFY_SOCKET is set: the simulated daemons would notify it; unset it");
        return ExitCode::from(64);
    }
    if let Ok(filter) = std::env::var("SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    match check::self_test() {
        Ok(names) => println!(
            "sim: checker self-test: {} invariants fire on crafted histories ({})",
            names.len(),
            names.join(", ")
        ),
        Err(e) => {
            eprintln!("sim: checker self-test failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    let progress = Arc::new(Progress {
        beats: AtomicU64::new(0),
        replay: std::sync::Mutex::new(String::new()),
        runs: AtomicU64::new(0),
        simulated: AtomicU64::new(0),
        lab: std::sync::Mutex::new(None),
    });
    let wall = std::time::Instant::now();
    {
        let progress = Arc::clone(&progress);
        std::thread::spawn(move || watchdog(&progress, wall));
    }
    let (mut simulated, mut violations, mut runs) = (0u64, 0usize, 0u64);
    let jobs = settings.jobs();
    let mut firsts = Vec::new();
    for job in &jobs {
        let started = std::time::Instant::now();
        let outcome = match run_one(job, &progress) {
            Ok(o) => o,
            Err(code) => return code,
        };
        if firsts.len() < REPLAYED {
            firsts.push((outcome.digest, outcome.tail.clone()));
        }
        runs += 1;
        simulated += job.opts.duration.as_secs();
        progress.runs.store(runs, Ordering::Relaxed);
        progress.simulated.store(simulated, Ordering::Relaxed);
        println!(
            "sim: {}: {} hosts, schedule digest {:016x}, trace digest {:016x} ({} events), {} violations, {:.1} wall s, at most {} slice writes/min, faults {:?}",
            job.name,
            job.opts.hosts,
            outcome.schedule,
            outcome.digest,
            outcome.events,
            outcome.violations.len(),
            started.elapsed().as_secs_f64(),
            outcome.busiest_minute,
            outcome.faults
        );
        if !outcome.violations.is_empty() {
            violations += outcome.violations.len();
            eprint!("{}", world::report(&job.replay, &outcome));
        } else if std::env::var("SIM_TRACE").is_ok_and(|v| v == "schedule") {
            for line in &outcome.schedule_tail {
                eprintln!("  {line}");
            }
        } else if std::env::var_os("SIM_TRACE").is_some() {
            eprint!("{}", world::report(&job.replay, &outcome));
        }
    }
    // The same seed, the same trace: the first runs again, their digests compared — in a build
    // whose select! order is seeded (.cargo/config.toml); without it, replays may differ.
    if cfg!(not(tokio_unstable)) {
        firsts.clear();
        println!(
            "sim: built without --cfg tokio_unstable (RUSTFLAGS replaced .cargo/config.toml's): select! is unseeded, replays are not checked"
        );
    }
    let (replayed, mut differed) = (firsts.len(), 0usize);
    for (job, (first, first_tail)) in jobs.iter().zip(firsts) {
        let again = match run_one(job, &progress) {
            Ok(o) => o,
            Err(code) => return code,
        };
        runs += 1;
        simulated += job.opts.duration.as_secs();
        if again.digest != first {
            violations += 1;
            differed += 1;
            eprintln!(
                "sim: {}: invariant reproducible broken: trace digest {first:016x}, then {:016x} on a replay in this process",
                job.replay, again.digest
            );
            // Where they part: the first differing line of the two tails (`SIM_TAIL` widens them).
            let parted = first_tail.iter().zip(&again.tail).find(|(a, b)| a != b);
            if let Some((a, b)) = parted {
                eprintln!(
                    "sim: {}: first run: {a}\nsim: {}: replay:    {b}",
                    job.replay, job.replay
                );
            }
            if std::env::var_os("SIM_TRACE").is_some() {
                eprint!(
                    "{}",
                    world::report(&format!("{} (replay)", job.replay), &again)
                );
            }
        }
    }
    if replayed > 0 {
        println!(
            "sim: replayed the first {replayed} runs: {}",
            if differed == 0 {
                "the same trace digests".to_owned()
            } else {
                format!("{differed} differed, see above")
            }
        );
    }
    println!(
        "sim: {runs} runs, {simulated} simulated s, {:.1} wall s, {violations} violations",
        wall.elapsed().as_secs_f64()
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One run of `job` on a fresh runtime, every random draw seeded from its seed; `Err` when no
/// runtime could be built.
fn run_one(job: &Job, progress: &Arc<Progress>) -> Result<world::Outcome, ExitCode> {
    if let Ok(mut r) = progress.replay.lock() {
        r.clone_from(&job.replay);
    }
    // The daemons' own randomness (backoff jitter, nonces) is fastrand's thread-local
    // generator, and every task runs on this thread.
    fastrand::seed(job.seed);
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    // select!'s branch order is random per runtime; only tokio_unstable lets us seed it
    // (.cargo/config.toml sets it for every build but the shipped ones).
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&job.seed.to_le_bytes()));
    let runtime = builder.build().map_err(|e| {
        eprintln!("sim: no runtime: {e}");
        ExitCode::FAILURE
    })?;
    let outcome = runtime.block_on(world::run(job.seed, &job.opts, Arc::clone(progress)));
    drop(runtime);
    Ok(outcome)
}

/// Ends the process when virtual time stops advancing: a task that never yields, or a loop
/// whose next wake-up is always now, keeps the paused clock from moving, and the run would
/// never end. Counted as a violation of `progress`.
fn watchdog(progress: &Progress, wall: std::time::Instant) {
    let mut last = progress.beats.load(Ordering::Relaxed);
    let mut since = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = progress.beats.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = std::time::Instant::now();
        } else if since.elapsed() >= STALL {
            let replay = progress
                .replay
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            eprintln!(
                "sim: {replay}: invariant progress broken: virtual time has not advanced for {} wall s (a task spins without yielding, or a wake-up loop never sleeps)",
                STALL.as_secs()
            );
            let lab = progress.lab.lock().ok().and_then(|l| l.clone());
            if let Some(lab) = lab
                && let Ok(lab) = lab.try_lock()
            {
                eprint!("{}", lab.tail_report(&replay));
            }
            eprintln!("sim: replay with {replay}");
            println!(
                "sim: {} runs, {} simulated s, {:.1} wall s, 1 violations",
                progress.runs.load(Ordering::Relaxed) + 1,
                progress.simulated.load(Ordering::Relaxed),
                wall.elapsed().as_secs_f64()
            );
            std::process::exit(1);
        }
    }
}
