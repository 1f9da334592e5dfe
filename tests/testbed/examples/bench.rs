//! Benchmark of the test bed through HTTPS with kube-rs clients, so we know it is never the
//! bottleneck of endpoint-copier's own benchmarks (goal: ≥ 5,000 writes/s; watch fan-out to 10
//! watchers).
//!
//! Run: `cargo run --release -p endpoint-copier-testbed --example bench` (about 15 s, stops by itself).
//! Phase 1: WRITERS clients, each with its own connection pool, merge-patch their own Lease as fast
//! as they can for WRITE_SECS. Phase 2: 10 watchers watch EndpointSlices while 4 writers update
//! slices whose annotation carries the send time; each watcher measures delivery latency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use endpoint_copier_testbed::TestBed;
use endpoint_copier_testbed::cluster::client;

/// Concurrent writing clients in phase 1.
const WRITERS: usize = 32;
/// Length of phase 1, in seconds.
const WRITE_SECS: u64 = 5;
/// Watchers in phase 2.
const WATCHERS: usize = 10;
/// Writers in phase 2.
const FANOUT_WRITERS: usize = 4;
/// Length of phase 2, in seconds.
const FANOUT_SECS: u64 = 5;

fn lease(name: &str) -> Lease {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"holderIdentity": name}}))
        .unwrap()
}

fn slice(name: &str, sent_ns: u128) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "bench"},
            "annotations": {"bench/sent-ns": sent_ns.to_string()}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.51.100.10"], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }))
    .unwrap()
}

async fn writes(bed: &TestBed) -> f64 {
    let mut clients = Vec::new();
    for i in 0..WRITERS {
        let c = client(&bed.kubeconfig_for(&format!("writer-{i}")))
            .await
            .unwrap();
        let api: Api<Lease> = Api::namespaced(c, "kube-system");
        api.create(&PostParams::default(), &lease(&format!("w{i}")))
            .await
            .unwrap();
        clients.push(api);
    }
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, api)| {
            let (count, stop) = (count.clone(), stop.clone());
            tokio::spawn(async move {
                let name = format!("w{i}");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let p =
                        Patch::Merge(json!({"metadata": {"annotations": {"n": n.to_string()}}}));
                    api.patch(&name, &PatchParams::default(), &p).await.unwrap();
                    n += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(WRITE_SECS)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

struct Fanout {
    events_per_sec: f64,
    writes: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn fanout(bed: &TestBed) -> Fanout {
    let base = Instant::now();
    let admin = client(bed.kubeconfig()).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(admin, "default");
    let rv = slices
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    for i in 0..WATCHERS {
        let c = client(&bed.kubeconfig_for(&format!("watcher-{i}")))
            .await
            .unwrap();
        let api: Api<EndpointSlice> = Api::namespaced(c, "default");
        let mut stream = api
            .watch(&WatchParams::default().timeout(60), &rv)
            .await
            .unwrap()
            .boxed();
        let (latencies, stop) = (latencies.clone(), stop.clone());
        watchers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
                match next {
                    Ok(Some(Ok(WatchEvent::Added(s) | WatchEvent::Modified(s)))) => {
                        let sent: u128 = s.metadata.annotations.as_ref().unwrap()["bench/sent-ns"]
                            .parse()
                            .unwrap();
                        let now = base.elapsed().as_nanos();
                        mine.push(Duration::from_nanos((now - sent) as u64));
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => panic!("watch error: {e}"),
                    Ok(None) => break,
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    let writes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let writers: Vec<_> = (0..FANOUT_WRITERS)
        .map(|i| {
            let (slices, writes) = (slices.clone(), writes.clone());
            tokio::spawn(async move {
                let name = format!("bench-{i}");
                slices
                    .create(
                        &PostParams::default(),
                        &slice(&name, base.elapsed().as_nanos()),
                    )
                    .await
                    .unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
                while start.elapsed() < Duration::from_secs(FANOUT_SECS) {
                    let sent = base.elapsed().as_nanos().to_string();
                    let p =
                        Patch::Merge(json!({"metadata": {"annotations": {"bench/sent-ns": sent}}}));
                    slices
                        .patch(&name, &PatchParams::default(), &p)
                        .await
                        .unwrap();
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in watchers {
        w.await.unwrap();
    }
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Fanout {
        events_per_sec: l.len() as f64 / elapsed.as_secs_f64(),
        writes: writes.load(Ordering::Relaxed),
        p50: pct(0.50),
        p99: pct(0.99),
        max: l.last().copied().unwrap_or_default(),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let bed = TestBed::start().await;
    let wps = writes(&bed).await;
    println!(
        "writes: {wps:.0} writes/s ({WRITERS} kube-rs clients, merge patch on a Lease each, {WRITE_SECS} s)"
    );
    let f = fanout(&bed).await;
    println!(
        "watch fan-out: {WATCHERS} watchers, {} writes by {FANOUT_WRITERS} writers in {FANOUT_SECS} s: {:.0} events/s delivered, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        f.writes,
        f.events_per_sec,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.max.as_secs_f64() * 1e3,
    );
}
