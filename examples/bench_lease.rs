//! Lease election benchmark against the in-process test bed (`cargo run --release --example
//! bench_lease`), with the *default* Lease timings (`Config::default()`: duration 4 s, renew
//! deadline 2 s, retry period 1 s). Median and max of 10 runs each of:
//! - graceful handover (leader stops and releases → another elector leads);
//! - hard-kill takeover (leader task aborted at a random point, nothing released → another
//!   leads), and its worst case (aborted right after a renewal the followers saw);
//! - restart on the same host (leader aborted, a new elector with the same identity and the same
//!   runtime lock directory started at once → it leads again);
//! - Lease writes per minute in steady state (from the test bed's request log).
//!
//! The figures go to docs/development/lease.md. Takes about three minutes and stops by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use endpoint_copier::config::Config;
use endpoint_copier::lease::{Elector, Leadership, RuntimeLock, Settings};
use endpoint_copier_testbed::TestBed;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 10;
const STEADY_WINDOW: Duration = Duration::from_secs(5);

/// The default Lease timings, as the packaged config has them.
fn defaults() -> (Duration, Duration, Duration) {
    let d = Config::default().lease;
    (d.duration, d.renew_deadline, d.retry_period)
}

struct Node {
    rx: watch::Receiver<Leadership>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), endpoint_copier::lease::Error>>,
}

fn settings(lease: &str, identity: String) -> Settings {
    let (duration, renew_deadline, retry_period) = defaults();
    Settings {
        namespace: "kube-system".into(),
        name: lease.into(),
        identity,
        duration,
        renew_deadline,
        retry_period,
    }
}

/// One elector for `identity`, holding `lock` if given.
fn node(client: &Client, lease: &str, identity: String, lock: Option<RuntimeLock>) -> Node {
    let (elector, rx, _fence) = Elector::new(
        Api::<Lease>::namespaced(client.clone(), "kube-system"),
        settings(lease, identity),
    );
    let elector = match lock {
        Some(lock) => elector.with_runtime_lock(lock),
        None => elector,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(elector.run(stop.clone()));
    Node { rx, stop, task }
}

async fn start(clients: &[Client], lease: &str) -> Vec<Node> {
    let nodes: Vec<Node> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| node(client, lease, format!("node-{}", i + 1), None))
        .collect();
    wait_for_leader(&nodes, Duration::from_secs(10)).await;
    nodes
}

/// Waits until the Lease `lease` is written again (a renewal), so a kill right after it is the
/// worst case for the followers, whose clocks started when they saw that renewal.
async fn until_renewed(client: &Client, lease: &str) {
    let api = Api::<Lease>::namespaced(client.clone(), "kube-system");
    let rv = api.get(lease).await.unwrap().metadata.resource_version;
    while api.get(lease).await.unwrap().metadata.resource_version == rv {
        sleep(Duration::from_millis(5)).await;
    }
}

fn leader(nodes: &[Node]) -> Option<usize> {
    nodes
        .iter()
        .position(|n| *n.rx.borrow() == Leadership::Leader)
}

async fn wait_for_leader(nodes: &[Node], within: Duration) -> Duration {
    let start = Instant::now();
    while leader(nodes).is_none() {
        assert!(start.elapsed() < within, "no leader within {within:?}");
        sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

async fn stop_all(nodes: Vec<Node>) {
    for node in nodes {
        node.stop.cancel();
        let _ = node.task.await;
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn client_for(path: &std::path::Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (duration, renew_deadline, retry_period) = defaults();
    let bed = TestBed::start().await;
    let mut clients = Vec::new();
    for identity in ["node-1", "node-2", "node-3"] {
        clients.push(client_for(&bed.kubeconfig_for(identity)).await);
    }

    let mut graceful = Vec::new();
    let mut hard = Vec::new();
    let mut worst = Vec::new();
    let mut restart = Vec::new();
    let mut per_minute = Vec::new();
    for run in 0..RUNS {
        // Graceful: the leader releases on stop; a follower's watch sees it and takes over.
        let mut nodes = start(&clients, &format!("graceful-{run}")).await;
        let old = nodes.remove(leader(&nodes).unwrap());
        let stopped = Instant::now();
        old.stop.cancel();
        old.task.await.unwrap().unwrap();
        wait_for_leader(&nodes, Duration::from_secs(10)).await;
        graceful.push(stopped.elapsed().as_secs_f64() * 1000.0);

        // Steady state: the leader's Lease writes over a window, from the request log. The rate
        // comes from the first and last write's arrival (not from the count in the window), since
        // a window that is a multiple of the retry period and starts right after a write counts
        // one write fewer than it should.
        sleep(retry_period).await;
        let from = Instant::now().into_std();
        sleep(STEADY_WINDOW).await;
        let lease = format!("graceful-{run}");
        let arrivals: Vec<_> = bed
            .requests()
            .iter()
            .filter(|r| r.at >= from && r.resource == "leases" && r.verb.is_write())
            .filter(|r| r.name.as_deref() == Some(lease.as_str()))
            .map(|r| r.at)
            .collect();
        if let (Some(first), Some(last)) = (arrivals.first(), arrivals.last())
            && arrivals.len() > 1
        {
            let span = last.duration_since(*first).as_secs_f64();
            per_minute.push((arrivals.len() - 1) as f64 * 60.0 / span);
        }
        stop_all(nodes).await;

        // Hard kill at a random point of the renewal cycle: no release; followers wait for the
        // expiry they measured themselves.
        let mut nodes = start(&clients, &format!("hard-{run}")).await;
        sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
        let old = nodes.remove(leader(&nodes).unwrap());
        let killed = Instant::now();
        old.task.abort();
        let _ = old.task.await;
        wait_for_leader(&nodes, Duration::from_secs(10)).await;
        hard.push(killed.elapsed().as_secs_f64() * 1000.0);
        stop_all(nodes).await;

        // Worst case: killed right after a renewal the followers saw.
        let lease = format!("worst-{run}");
        let mut nodes = start(&clients, &lease).await;
        until_renewed(&clients[0], &lease).await;
        let old = nodes.remove(leader(&nodes).unwrap());
        let killed = Instant::now();
        old.task.abort();
        let _ = old.task.await;
        wait_for_leader(&nodes, Duration::from_secs(10)).await;
        worst.push(killed.elapsed().as_secs_f64() * 1000.0);
        stop_all(nodes).await;

        // Restart on the same host: the elector (and with it the runtime lock) is dropped, a new
        // one with the same identity and runtime directory starts at once.
        let dir = tempfile::tempdir().unwrap();
        let lease = format!("restart-{run}");
        let first = node(
            &clients[0],
            &lease,
            "node-1".into(),
            Some(RuntimeLock::acquire(dir.path()).unwrap()),
        );
        wait_for_leader(std::slice::from_ref(&first), Duration::from_secs(10)).await;
        first.task.abort();
        let _ = first.task.await;
        let restarted = Instant::now();
        let second = node(
            &clients[0],
            &lease,
            "node-1".into(),
            Some(RuntimeLock::acquire(dir.path()).unwrap()),
        );
        wait_for_leader(std::slice::from_ref(&second), Duration::from_secs(10)).await;
        restart.push(restarted.elapsed().as_secs_f64() * 1000.0);
        stop_all(vec![second]).await;

        bed.clear_requests();
        eprintln!("run {}/{RUNS} done", run + 1);
    }

    println!(
        "lease election, 3 electors, default timings: duration {:?} / renew deadline {:?} / retry period {:?}; median (max) of {RUNS} runs",
        duration, renew_deadline, retry_period
    );
    println!(
        "graceful handover (stop → new leader): {:.1} ms ({:.1})",
        median(graceful.clone()),
        max(&graceful)
    );
    println!(
        "hard-kill takeover, random point (abort → new leader): {:.0} ms ({:.0}); bound: [duration − retry period, duration] + delivery",
        median(hard.clone()),
        max(&hard)
    );
    println!(
        "hard-kill takeover, right after a renewal (abort → new leader): {:.0} ms ({:.0}); bound: duration + delivery = {} ms + delivery",
        median(worst.clone()),
        max(&worst),
        duration.as_millis()
    );
    println!(
        "restart on the same host (new process → leads again): {:.1} ms ({:.1})",
        median(restart.clone()),
        max(&restart)
    );
    println!(
        "steady-state Lease writes: {:.0} per minute (one per retry period = {:.0})",
        median(per_minute),
        60.0 / retry_period.as_secs_f64()
    );
}
