//! Flap benchmark: what a flapping apiserver costs the cluster; prints figures, asserts nothing.
//!
//! ```text
//! cargo run --release --example bench_flap        # as root
//! ```
//!
//! Runs as root (CI is root): it re-runs itself under `unshare --net` and puts three stand-in
//! apiservers A, B, C (`tests/it/common/netns.rs`: HTTPS with the test bed's CA, client
//! certificates required) at documentation-range addresses inside that namespace, next to the
//! in-process test bed. Without namespaces it prints why and exits 0.
//!
//! For 3 and then 7 simulated hosts (`BENCH_HOSTS`, default `3,7`): that many daemons
//! in-process (node-1..N, each probing `/readyz` of A, B, C with the default `[probe]` and
//! `[members]` settings of the build, one of them leader). Once every endpoint is ready, B turns
//! flaky: each request to it fails with HTTP 500 with a chance of `BENCH_FAIL_PERCENT` (default
//! 50), drawn per request, so every host sees its own sequence — a `/readyz` hovering around
//! the probes' timeout. After `BENCH_WARMUP_SECS` (default 5), over `BENCH_FLAP_SECS` (default
//! 60), from the test bed's request log:
//! - member Lease writes per minute, all hosts together and per host (the heartbeat alone is 6
//!   per minute and host);
//! - EndpointSlice writes per minute in the pair's namespace (each one is fanned out to every
//!   kube-proxy watching the VIP);
//! - probes per second B received (what the hosts spend on it).
//!
//! "Before" (no flap damping, a member write every 250 ms at most) is the same program built at
//! the commit before flap damping (a `git worktree` of it, with this file and
//! `tests/it/common/netns.rs` copied in and the body of [`damping`] replaced, as it says);
//! `BENCH_MIN_UP_MS=0` turns the damping off on this build and keeps the 1-per-second write
//! cap. The figures go to docs/usage/configuration.md (Flap damping). Takes about
//! 2 × (warm-up + flap) plus a few seconds per run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The integration tests' harness: the namespace, the stand-in apiservers and the fixtures.
#[path = "../tests/it/common/mod.rs"]
mod common;

use common::{
    Daemon, client_for, create, netns, source_service, source_slice, vip_service, wait_for_target,
};

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use endpoint_copier::config::Config;
use endpoint_copier::group::Group;
use endpoint_copier::group::member::member_name;
use endpoint_copier::probe::Spec;
use endpoint_copier_testbed::TestBed;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::sleep;

use netns::{Listener, Mode, NetNs};

/// The stand-ins; B is the flaky one.
const A: &str = "203.0.113.1";
const B: &str = "203.0.113.2";
const C: &str = "203.0.113.3";

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
    netns::bench_main("bench_flap", bench)
}

/// The config of host `identity` in namespace `ns`: the pair `ns/apiserver` → `ns/vip` probing
/// `/readyz`, the build's default `[probe]` and `[members]` settings but for [`damping`].
fn host_config(bed: &TestBed, ns: &str, identity: &str) -> Config {
    let source = format!("{ns}/apiserver");
    let target = format!("{ns}/vip");
    let mut c = common::config(
        &bed.kubeconfig_for(identity),
        identity,
        &[(&source, &target)],
    );
    c.pairs[0].probe = Some(Spec::readyz());
    c.lease.namespace = ns.to_owned();
    damping(&mut c);
    c
}

/// Applies `BENCH_MIN_UP_MS`, when set, as `[probe] min_up_ms` (the flap damping) to `c`, and
/// says in words what `c` does. The only place that names the damping: to measure a build from
/// before it, replace the body with `"no flap damping".to_owned()`.
fn damping(c: &mut Config) -> String {
    if let Ok(ms) = std::env::var("BENCH_MIN_UP_MS") {
        c.probe.timing.min_up = Duration::from_millis(ms.parse().unwrap());
    }
    format!("min_up {} ms", c.probe.timing.min_up.as_millis())
}

/// Creates namespace `ns` with a source Service `apiserver` (one IPv4 slice, A, B, C ready, port
/// `https` 6443) and a selectorless target Service `vip`.
async fn seed(client: &Client, ns: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
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
    create(
        client,
        ns,
        &source_slice(ns, "apiserver", "apiserver", "IPv4", &[A, B, C]),
    )
    .await;
    create(client, ns, &vip_service(ns, "vip", &["IPv4"])).await;
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What one run measured.
struct Figures {
    hosts: usize,
    member_writes_per_min: f64,
    slice_writes_per_min: f64,
    b_probes_per_sec: f64,
}

async fn bench(ns: Arc<NetNs>) {
    let t = Config::default().probe.timing;
    let fail = u8::try_from(env_or("BENCH_FAIL_PERCENT", 50).min(100)).unwrap_or(50);
    let warmup = Duration::from_secs(env_or("BENCH_WARMUP_SECS", 5));
    let flap = Duration::from_secs(env_or("BENCH_FLAP_SECS", 60));
    let hosts: Vec<usize> = std::env::var("BENCH_HOSTS")
        .unwrap_or_else(|_| "3,7".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let damped = damping(&mut Config::default());
    println!(
        "endpoint-copier flap benchmark (machine: {} cores; probe period {} ms, timeout {} ms, failure threshold {}, success threshold {}, {}; B fails {fail} % of its requests; {} s measured after {} s)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        t.period.as_millis(),
        t.timeout.as_millis(),
        t.failure_threshold,
        t.success_threshold,
        damped,
        flap.as_secs(),
        warmup.as_secs(),
    );
    progress("starting");
    let bed = TestBed::start().await;
    let admin = client_for(bed.kubeconfig()).await;
    let mut apis: BTreeMap<&str, Listener> = BTreeMap::new();
    for a in [A, B, C] {
        apis.insert(a, ns.listener(ip(a), 6443, Some(&bed)).await);
    }
    let mut figures = Vec::new();
    for n in hosts {
        figures.push(run(&bed, &admin, &apis, n, fail, warmup, flap).await);
    }
    println!();
    println!(
        "| hosts | member Lease writes / min (all hosts) | per host | EndpointSlice writes / min | probes / s on B |"
    );
    println!("|---|---|---|---|---|");
    for f in &figures {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            f.hosts,
            f.member_writes_per_min,
            f.member_writes_per_min / f.hosts as f64,
            f.slice_writes_per_min,
            f.b_probes_per_sec
        );
    }
    ns.assert_sealed();
}

/// One run with `n` hosts: seed, start, wait until synced, flap B, count.
async fn run(
    bed: &TestBed,
    admin: &Client,
    apis: &BTreeMap<&str, Listener>,
    n: usize,
    fail: u8,
    warmup: Duration,
    flap: Duration,
) -> Figures {
    let ns = format!("flap-{n}");
    seed(admin, &ns).await;
    let identities: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
    let daemons: Vec<Daemon> = identities
        .iter()
        .map(|id| Daemon::start(host_config(bed, &ns, id)))
        .collect();
    wait_for_target(admin, &ns, "vip", &[A, B, C], Duration::from_secs(60)).await;
    // Every host has probed and published by now.
    sleep(Duration::from_secs(3)).await;
    progress(&format!("{n} hosts synced; B turns flaky"));
    apis[B].set_mode(Mode::Flaky(fail));
    sleep(warmup).await;
    let from = std::time::Instant::now();
    let b_before = apis[B].request_count();
    sleep(flap).await;
    let b_after = apis[B].request_count();
    let elapsed = from.elapsed();
    apis[B].set_mode(Mode::Ok);
    let group = Group::new(&ns, &Config::default().lease.name);
    let members: BTreeSet<String> = identities
        .iter()
        .map(|id| member_name(&group, id))
        .collect();
    let log = bed.requests();
    let in_window = |r: &&endpoint_copier_testbed::RequestRecord| {
        r.at >= from && r.at <= from + elapsed && r.namespace.as_deref() == Some(ns.as_str())
    };
    let member_writes = log
        .iter()
        .filter(in_window)
        .filter(|r| r.resource == "leases" && r.verb.is_write())
        .filter(|r| r.name.as_ref().is_some_and(|name| members.contains(name)))
        .count();
    let slice_writes = log
        .iter()
        .filter(in_window)
        .filter(|r| r.resource == "endpointslices" && r.verb.is_write())
        .count();
    let minutes = elapsed.as_secs_f64() / 60.0;
    let f = Figures {
        hosts: n,
        member_writes_per_min: member_writes as f64 / minutes,
        slice_writes_per_min: slice_writes as f64 / minutes,
        b_probes_per_sec: (b_after - b_before) as f64 / elapsed.as_secs_f64(),
    };
    progress(&format!(
        "{n} hosts: {member_writes} member Lease writes, {slice_writes} EndpointSlice writes in {:.0} s",
        elapsed.as_secs_f64()
    ));
    for d in daemons {
        d.stop().await;
    }
    f
}
