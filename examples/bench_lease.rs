//! Lease election benchmark against the in-process test bed (`cargo run --release --example
//! bench_lease`): the median of 10 runs each of graceful handover (leader stops → another
//! elector leads), hard-kill takeover (leader task aborted, no release → another leads), and
//! Lease writes per minute in steady state (from the test bed's request log).
//!
//! Timings are the integration tests' (duration 3 s, renew deadline 2 s, retry period 0.5 s);
//! the figures go to docs/development/lease.md. Takes about a minute and stops by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use endpoint_copier::lease::{Elector, Leadership, Settings};
use endpoint_copier_testbed::TestBed;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 10;
const DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(500);
const STEADY_WINDOW: Duration = Duration::from_secs(5);

struct Node {
    rx: watch::Receiver<Leadership>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), endpoint_copier::lease::Error>>,
}

async fn start(clients: &[Client], lease: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let settings = Settings {
            namespace: "kube-system".into(),
            name: lease.into(),
            identity: format!("node-{}", i + 1),
            duration: DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        };
        let (elector, rx, _fence) = Elector::new(
            Api::<Lease>::namespaced(client.clone(), "kube-system"),
            settings,
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(elector.run(stop.clone()));
        nodes.push(Node { rx, stop, task });
    }
    wait_for_leader(&nodes, Duration::from_secs(10)).await;
    nodes
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
    let bed = TestBed::start().await;
    let mut clients = Vec::new();
    for identity in ["node-1", "node-2", "node-3"] {
        clients.push(client_for(&bed.kubeconfig_for(identity)).await);
    }

    let mut graceful = Vec::new();
    let mut hard = Vec::new();
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
        sleep(RETRY_PERIOD).await;
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

        // Hard kill: no release; followers wait for the expiry they measured themselves.
        let mut nodes = start(&clients, &format!("hard-{run}")).await;
        let old = nodes.remove(leader(&nodes).unwrap());
        let killed = Instant::now();
        old.task.abort();
        let _ = old.task.await;
        wait_for_leader(&nodes, Duration::from_secs(10)).await;
        hard.push(killed.elapsed().as_secs_f64() * 1000.0);
        stop_all(nodes).await;
        bed.clear_requests();
        eprintln!("run {}/{RUNS} done", run + 1);
    }

    println!(
        "lease election, 3 electors, duration 3 s / renew deadline 2 s / retry period 0.5 s, median of {RUNS} runs"
    );
    println!(
        "graceful handover (stop → new leader): {:.1} ms",
        median(graceful)
    );
    println!(
        "hard-kill takeover (abort → new leader): {:.0} ms (bound: duration + retry period = 3500 ms)",
        median(hard)
    );
    println!(
        "steady-state Lease writes: {:.0} per minute (one per retry period = {:.0}; at the default 2 s: 30)",
        median(per_minute),
        60.0 / RETRY_PERIOD.as_secs_f64()
    );
}
