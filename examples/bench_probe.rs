//! Health probe benchmark; prints figures, asserts nothing.
//!
//! ```text
//! cargo run --release --example bench_probe        # as root
//! ```
//!
//! Runs as root (CI is root): it re-runs itself under `unshare --net` and puts stand-in
//! apiservers (`tests/it/common/netns.rs`: HTTPS with the test bed's CA, client certificates
//! required) at documentation-range addresses inside that namespace, next to the in-process test
//! bed. Without namespaces it prints why and exits 0. Default probe timing (300 ms period, 250 ms
//! timeout, failure threshold 2, success threshold 1), default Lease (4/2/1 s) and member
//! (heartbeat 10 s) timings. Prints:
//! 1. eviction and return: three daemons in-process (node-1..3, all probing, one leader, so the
//!    quorum of 2 is real) and three stand-ins A, B, C. For each fault of B — refused,
//!    black-holed, hung, HTTP 500 — `BENCH_TRIALS` (default 10) trials: the fault lands at a
//!    random point of the probe period; time from the fault to B `ready: false` in the target
//!    slice, and from the heal (0.5–0.8 s after the eviction) to B ready again, both as a watch
//!    on the target sees them; median and max;
//! 2. member Lease writes per host per minute (from the test bed's request log): idle over
//!    `BENCH_IDLE_SECS` (default 30), and while B fails for 2 s and recovers for 2 s, over
//!    `BENCH_FLAP_SECS` (default 20);
//! 3. daemon cost: the daemon as a child process (this example re-run as `bench_probe daemon
//!    …` in the same namespace: `daemon::run` on one current-thread runtime as `endpoint-copier
//!    run` does, without logging), so only its own work is counted while the stand-ins and the
//!    test bed stay in the parent. CPU (utime + stime from `/proc/<pid>/stat` over
//!    `BENCH_CPU_SECS`, default 15, after a 5 s warm-up) in % of one core, and RSS (`VmRSS`,
//!    peak `VmHWM`): with 3 endpoints and probes off (the baseline), with 3 probed endpoints,
//!    and with 100 (198.51.100.1–100).
//!
//! The figures go to the README. Takes about three and a half minutes with the defaults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The integration tests' harness: the namespace, the stand-in apiservers and the fixtures.
#[path = "../tests/it/common/mod.rs"]
mod common;

use common::{client_for, create, netns, source_service, source_slice, vip_service};

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::pin::pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use endpoint_copier::config::{Config, Kubeconfig, PairConfig};
use endpoint_copier::daemon;
use endpoint_copier::group::Group;
use endpoint_copier::group::member::member_name;
use endpoint_copier::names;
use endpoint_copier::probe::Spec;
use endpoint_copier::shutdown::Shutdown;
use endpoint_copier_testbed::TestBed;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use netns::{Listener, Mode, NetNs};

/// The stand-ins of the eviction benchmark (and of the 3-endpoint cost figures).
const A: &str = "203.0.113.1";
const B: &str = "203.0.113.2";
const C: &str = "203.0.113.3";
/// How long one wait for an eviction or a return may take before the trial counts as timed out.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// The daemon child's warm-up before its CPU is counted.
const WARM_UP: Duration = Duration::from_secs(5);

/// When the benchmark started, for the progress lines on stderr.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, with the time since the start.
fn progress(what: &str) {
    let started = STARTED.get_or_init(std::time::Instant::now);
    eprintln!("[{:>5.1} s] {what}", started.elapsed().as_secs_f64());
}

/// A setting from the environment, or `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("daemon") {
        return daemon_child(&args[2..]);
    }
    netns::bench_main("bench_probe", bench)
}

/// The daemon child: `daemon KUBECONFIG NAMESPACE IDENTITY RUNTIME_DIR PROBE(0|1)`. Runs the
/// daemon as `endpoint-copier run` does (one current-thread runtime) on the pair
/// `NAMESPACE/apiserver` → `NAMESPACE/vip` until its stdin closes (the parent ends it, or dies).
fn daemon_child(args: &[String]) -> ExitCode {
    let [kubeconfig, namespace, identity, runtime_dir, probe] = args else {
        eprintln!("usage: bench_probe daemon KUBECONFIG NAMESPACE IDENTITY RUNTIME_DIR PROBE");
        return ExitCode::FAILURE;
    };
    let config = daemon_config(
        Path::new(kubeconfig),
        namespace,
        identity,
        Path::new(runtime_dir),
        probe == "1",
    );
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        stop.cancel();
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(daemon::run(config, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_probe daemon {identity}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config of one daemon: the pair `namespace/apiserver` → `namespace/vip`, probing
/// `/readyz` when `probe`, electing in `namespace`, default timings otherwise.
fn daemon_config(
    kubeconfig: &Path,
    namespace: &str,
    identity: &str,
    runtime_dir: &Path,
    probe: bool,
) -> Config {
    let mut pair = PairConfig::new(
        format!("{namespace}/apiserver").parse().unwrap(),
        format!("{namespace}/vip").parse().unwrap(),
    );
    pair.probe = probe.then(Spec::readyz);
    let mut c = Config {
        kubeconfig: Kubeconfig::Path(kubeconfig.to_owned()),
        pairs: vec![pair],
        ..Config::default()
    };
    c.lease.namespace = namespace.to_owned();
    c.lease.identity = Some(identity.to_owned());
    c.lease.runtime_dir = Some(runtime_dir.to_owned());
    c.metrics.listen = None;
    c
}

/// Creates namespace `ns` with a source Service `apiserver` (one IPv4 slice, port `https` 6443,
/// `addrs` ready) and a selectorless IPv4 target Service `vip`: the test suite's fixtures.
async fn seed(client: &Client, ns: &str, addrs: &[String]) {
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    create(client, ns, &source_service(ns, "apiserver")).await;
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    create(
        client,
        ns,
        &source_slice(ns, "apiserver", "apiserver", "IPv4", &addrs),
    )
    .await;
    create(client, ns, &vip_service(ns, "vip", &["IPv4"])).await;
}

/// Each address of the target and whether it is ready, with when that was first seen (the
/// arrival of the watch event that changed it, so a late reader measures no extra delay).
type Readiness = BTreeMap<String, (bool, Instant)>;

/// Watches the target slices of `ns` (`vip`) and publishes their [`Readiness`].
fn watch_target(client: &Client, ns: &str) -> (watch::Receiver<Readiness>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Readiness::new());
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let config = watcher::Config::default().labels(&format!("{}=vip", names::SERVICE_NAME_LABEL));
    let task = tokio::spawn(async move {
        let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        let mut stream = pin!(watcher(api, config));
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    slices.insert(s.metadata.name.clone().unwrap_or_default(), s);
                }
                Ok(watcher::Event::Delete(s)) => {
                    slices.remove(&s.metadata.name.clone().unwrap_or_default());
                }
                Ok(watcher::Event::Init) => slices.clear(),
                Ok(watcher::Event::InitDone) | Err(_) => {}
            }
            let seen: BTreeMap<String, bool> = slices
                .values()
                .flat_map(|s| s.endpoints.iter())
                .flat_map(|e| {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    e.addresses.iter().map(move |a| (a.clone(), ready))
                })
                .collect();
            tx.send_if_modified(|r| {
                let before = r.clone();
                r.retain(|a, _| seen.contains_key(a));
                for (a, ready) in &seen {
                    match r.get(a) {
                        Some((was, _)) if was == ready => {}
                        _ => {
                            r.insert(a.clone(), (*ready, now));
                        }
                    }
                }
                *r != before
            });
        }
    });
    (rx, task)
}

/// Waits until `address` is `ready` in the target; returns when that was first seen, or `None`
/// after [`WAIT_LIMIT`].
async fn until(rx: &mut watch::Receiver<Readiness>, address: &str, ready: bool) -> Option<Instant> {
    let seen = timeout(
        WAIT_LIMIT,
        rx.wait_for(|r| r.get(address).is_some_and(|(v, _)| *v == ready)),
    )
    .await
    .ok()?
    .ok()?;
    seen.get(address).map(|(_, at)| *at)
}

/// Waits until every one of `addresses` is ready in the target.
async fn all_ready(rx: &mut watch::Receiver<Readiness>, addresses: &[String], limit: Duration) {
    let ok = timeout(
        limit,
        rx.wait_for(|r| {
            addresses
                .iter()
                .all(|a| r.get(a).is_some_and(|(ready, _)| *ready))
        }),
    )
    .await;
    if ok.is_err() {
        eprintln!("warning: not every endpoint ready in the target within {limit:?}");
    }
}

/// An in-process daemon.
struct Daemon {
    shutdown: Shutdown,
    task: JoinHandle<Result<(), daemon::Error>>,
}

impl Daemon {
    fn start(config: Config) -> Daemon {
        let shutdown = Shutdown::new();
        let task = tokio::spawn(daemon::run(config, shutdown.clone()));
        Daemon { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        if timeout(Duration::from_secs(15), self.task).await.is_err() {
            eprintln!("warning: a daemon did not stop within 15 s");
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes (create, update, patch) of `identity`'s member Lease in `ns` logged at or after
/// `from`, by arrival.
fn member_writes(bed: &TestBed, ns: &str, identity: &str, from: Instant) -> Vec<Instant> {
    let group = Group::new(ns, &Config::default().lease.name);
    let name = member_name(&group, identity);
    let from = from.into_std();
    bed.requests()
        .iter()
        .filter(|r| r.at >= from && r.resource == "leases" && r.verb.is_write())
        .filter(|r| r.namespace.as_deref() == Some(ns) && r.name.as_deref() == Some(&name))
        .map(|r| Instant::from_std(r.at))
        .collect()
}

/// Endpoint slice writes in `ns` logged at or after `from`.
fn slice_writes(bed: &TestBed, ns: &str, from: Instant) -> usize {
    let from = from.into_std();
    bed.requests()
        .iter()
        .filter(|r| r.at >= from && r.resource == "endpointslices" && r.verb.is_write())
        .filter(|r| r.namespace.as_deref() == Some(ns))
        .count()
}

async fn bench(ns: Arc<NetNs>) {
    println!(
        "endpoint-copier probe benchmark (machine: {} cores; probe period 300 ms, timeout 250 ms, failure threshold 2, success threshold 1, min_up {} ms)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        Config::default().probe.timing.min_up.as_millis()
    );
    progress("starting");
    let bed = TestBed::start().await;
    let admin = client_for(bed.kubeconfig()).await;
    let mut apis = BTreeMap::new();
    for a in [A, B, C] {
        apis.insert(a, ns.listener(ip(a), 6443, Some(&bed)).await);
    }
    eviction_and_writes(&bed, &admin, &apis).await;
    cost(&ns, &bed, &admin, &apis).await;
    ns.assert_sealed();
}

/// The faults of the eviction benchmark.
const FAULTS: [(&str, Mode); 4] = [
    ("refused", Mode::Refuse),
    ("black-holed", Mode::BlackHole),
    ("hung", Mode::Hang),
    ("HTTP 500", Mode::Status(500)),
];

/// Part 1 and 2: three daemons, eviction and return per fault kind, then member Lease writes.
async fn eviction_and_writes(bed: &TestBed, admin: &Client, apis: &BTreeMap<&str, Listener>) {
    let trials = env_or("BENCH_TRIALS", 10) as usize;
    let ns = "probe-evict";
    let addrs: Vec<String> = [A, B, C].iter().map(|a| (*a).to_owned()).collect();
    seed(admin, ns, &addrs).await;
    let (mut rx, watching) = watch_target(admin, ns);
    let hosts = ["node-1", "node-2", "node-3"];
    let runtime_dirs: Vec<tempfile::TempDir> =
        hosts.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let daemons: Vec<Daemon> = hosts
        .iter()
        .zip(&runtime_dirs)
        .map(|(h, dir)| {
            Daemon::start(daemon_config(
                &bed.kubeconfig_for(h),
                ns,
                h,
                dir.path(),
                true,
            ))
        })
        .collect();
    all_ready(&mut rx, &addrs, Duration::from_secs(20)).await;
    // Every host has probed and published by now.
    sleep(Duration::from_secs(2)).await;

    let b = &apis[B];
    let mut figures = Vec::new();
    for (kind, mode) in FAULTS {
        let mut evict = Vec::new();
        let mut back = Vec::new();
        let mut timeouts = 0;
        for _ in 0..trials {
            // A random point of the probe period.
            sleep(Duration::from_millis(fastrand::u64(0..300))).await;
            let fault = Instant::now();
            b.set_mode(mode);
            match until(&mut rx, B, false).await {
                Some(at) => evict.push(ms(at.duration_since(fault))),
                None => timeouts += 1,
            }
            // Every host sees B down before it heals, as after a real outage.
            sleep(Duration::from_millis(500 + fastrand::u64(0..300))).await;
            let heal = Instant::now();
            b.set_mode(Mode::Ok);
            match until(&mut rx, B, true).await {
                Some(at) => back.push(ms(at.duration_since(heal))),
                None => timeouts += 1,
            }
            // Every host sees B up again before the next fault.
            sleep(Duration::from_millis(700)).await;
        }
        progress(&format!("{kind}: {trials} trials done"));
        figures.push((kind, evict, back, timeouts));
    }

    // Idle: nothing changes; each host's member Lease is only renewed (heartbeat).
    progress("idle writes");
    let idle_window = Duration::from_secs(env_or("BENCH_IDLE_SECS", 30));
    let from = Instant::now();
    sleep(idle_window).await;
    let idle: Vec<(usize, f64)> = hosts
        .iter()
        .map(|h| {
            let writes = member_writes(bed, ns, h, from);
            // From the first and last arrival, not the count: a window that is a multiple of
            // the heartbeat counts one write more or fewer depending on where it starts.
            let rate = match (writes.first(), writes.last()) {
                (Some(first), Some(last)) if writes.len() > 1 => {
                    (writes.len() - 1) as f64 * 60.0 / last.duration_since(*first).as_secs_f64()
                }
                _ => writes.len() as f64 * 60.0 / idle_window.as_secs_f64(),
            };
            (writes.len(), rate)
        })
        .collect();
    let idle_slices = slice_writes(bed, ns, from);

    // Flapping: B fails for 2 s, recovers for 2 s, over and over.
    progress("flapping writes");
    let flap_window = Duration::from_secs(env_or("BENCH_FLAP_SECS", 20));
    let from = Instant::now();
    let mut down = false;
    while from.elapsed() < flap_window {
        down = !down;
        b.set_mode(if down { Mode::Refuse } else { Mode::Ok });
        sleep(Duration::from_secs(2)).await;
    }
    let flap_secs = from.elapsed().as_secs_f64();
    b.set_mode(Mode::Ok);
    let flap: Vec<usize> = hosts
        .iter()
        .map(|h| member_writes(bed, ns, h, from).len())
        .collect();
    let flap_slices = slice_writes(bed, ns, from);

    for d in daemons {
        d.stop().await;
    }
    watching.abort();

    println!();
    println!(
        "1. eviction and return of B (3 stand-ins, 3 daemons all probing, quorum 2 of 3; fault at a random point of the probe period; {trials} trials each)"
    );
    println!(
        "   {:<12} {:>33} {:>29}",
        "fault", "fault → not ready: median (max)", "heal → ready: median (max)"
    );
    for (kind, evict, back, timeouts) in &figures {
        let timed_out = if *timeouts > 0 {
            format!("   ({timeouts} waits timed out after {WAIT_LIMIT:?})")
        } else {
            String::new()
        };
        println!(
            "   {:<12} {:>24.0} ms ({:>4.0}) {:>20.0} ms ({:>4.0}){timed_out}",
            kind,
            median(evict),
            max(evict),
            median(back),
            max(back)
        );
    }
    println!();
    println!(
        "2. member Lease writes per host per minute (3 hosts; heartbeat 10 s, at most one write every {} ms)",
        endpoint_copier::group::member::MIN_WRITE_GAP.as_millis()
    );
    println!(
        "   idle, over {:.0} s: {} (writes per host: {}); EndpointSlice writes: {idle_slices}",
        idle_window.as_secs_f64(),
        idle.iter()
            .map(|(_, r)| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
        idle.iter()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
    );
    println!(
        "   B down 2 s, up 2 s, over {flap_secs:.0} s: {} (writes per host: {}); EndpointSlice writes: {:.1} per minute",
        flap.iter()
            .map(|n| format!("{:.1}", *n as f64 * 60.0 / flap_secs))
            .collect::<Vec<_>>()
            .join(" / "),
        flap.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
        flap_slices as f64 * 60.0 / flap_secs,
    );
}

/// The clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in clock ticks (every thread, live and ended).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line; the rest starts at field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in MiB.
fn status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The daemon child as `identity` on namespace `ns`; ends when its stdin is closed.
fn spawn_daemon(kubeconfig: &Path, ns: &str, identity: &str, dir: &Path, probe: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .arg("daemon")
        .arg(kubeconfig)
        .args([ns, identity])
        .arg(dir)
        .arg(if probe { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Part 3: the daemon child's CPU and RSS with probes off, 3 and 100 endpoints.
async fn cost(ns: &Arc<NetNs>, bed: &TestBed, admin: &Client, apis: &BTreeMap<&str, Listener>) {
    let window = Duration::from_secs(env_or("BENCH_CPU_SECS", 15));
    progress("daemon cost");
    let mut many = Vec::new();
    for i in 1..=100 {
        many.push(
            ns.listener(ip(&format!("198.51.100.{i}")), 6443, Some(bed))
                .await,
        );
    }
    let three: Vec<&Listener> = [A, B, C].iter().map(|a| &apis[a]).collect();
    let hundred: Vec<&Listener> = many.iter().collect();
    progress("100 stand-ins listening");
    let ticks = clock_ticks();
    let cases: [(&str, &[&Listener], bool); 3] = [
        ("3 endpoints, probes off", &three, false),
        ("3 endpoints probed", &three, true),
        ("100 endpoints probed", &hundred, true),
    ];
    let mut rows = Vec::new();
    for (n, (label, listeners, probe)) in cases.into_iter().enumerate() {
        let namespace = format!("probe-cost-{n}");
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.addr().ip().to_string())
            .collect();
        seed(admin, &namespace, &addrs).await;
        let (mut rx, watching) = watch_target(admin, &namespace);
        let dir = tempfile::tempdir().unwrap();
        let identity = "bench-host";
        let kubeconfig = bed.kubeconfig_for(identity);
        let mut child = spawn_daemon(&kubeconfig, &namespace, identity, dir.path(), probe);
        let pid = child.id();
        all_ready(&mut rx, &addrs, Duration::from_secs(30)).await;
        progress(&format!("{label}: in sync"));
        watching.abort();
        sleep(WARM_UP).await;

        let requests = |ls: &[&Listener]| ls.iter().map(|l| l.request_count()).sum::<usize>();
        let from = Instant::now();
        let cpu_before = cpu_ticks(pid);
        let probes_before = requests(listeners);
        sleep(window).await;
        let cpu = (cpu_ticks(pid) - cpu_before) as f64 / ticks;
        let elapsed = from.elapsed().as_secs_f64();
        let probes = (requests(listeners) - probes_before) as f64 / elapsed;
        let rss = status_mib(pid, "VmRSS");
        let hwm = status_mib(pid, "VmHWM");

        // Closing stdin stops the child gracefully (it releases its Lease).
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        let _ = child.wait();
        progress(&format!("{label}: child stopped"));
        progress(&format!("{label}: measured"));
        rows.push((label, cpu * 100.0 / elapsed, rss, hwm, probes));
    }
    println!();
    println!(
        "3. daemon cost (a child process alone on one host, after a {WARM_UP:?} warm-up, over {window:?}; CPU in % of one core)"
    );
    for (label, cpu, rss, hwm, probes) in rows {
        println!(
            "   {label:<24} CPU {cpu:>5.2} %   RSS {rss:>5.1} MiB (peak {hwm:.1})   probes answered {probes:>5.1}/s"
        );
    }
    drop(many);
}
