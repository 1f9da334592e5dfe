//! What the mirror benchmarks share: a client for the test bed, percentiles, the wait for a
//! change to reach a watched target slice, and the count of writes while nothing changes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use endpoint_copier_testbed::{TestBed, Verb};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::WatchEvent;

/// A kube client from `kubeconfig`.
pub async fn client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

/// The `p` quantile (0–1) of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `p50 …, p99 …, max …` of `samples`, in milliseconds.
pub fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(samples, 0.50).as_secs_f64() * 1e3,
        percentile(samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    )
}

/// Waits on a target slice's watch until an update holds `address`.
pub async fn until_written(
    events: &mut BoxStream<'_, kube::Result<WatchEvent<EndpointSlice>>>,
    address: &str,
) {
    loop {
        match events.next().await {
            Some(Ok(WatchEvent::Modified(s)))
                if s.endpoints.iter().any(|e| e.addresses[0] == address) =>
            {
                return;
            }
            Some(Ok(_)) => {}
            other => panic!("target watch ended: {other:?}"),
        }
    }
}

/// `BENCH_IDLE_SECS`, else `default`.
pub fn idle_secs(default: u64) -> u64 {
    std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// EndpointSlice writes and Lease updates `tb` serves over the next `secs` seconds.
pub async fn idle_writes(tb: &TestBed, secs: u64) -> (usize, usize) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let since = tb.requests().last().map_or(0, |r| r.seq);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let log = tb.requests();
    let slices = log
        .iter()
        .filter(|r| {
            r.seq > since
                && r.resource == "endpointslices"
                && !matches!(r.verb, Verb::Get | Verb::List | Verb::Watch)
        })
        .count();
    let leases = log
        .iter()
        .filter(|r| r.seq > since && r.resource == "leases" && r.verb == Verb::Update)
        .count();
    (slices, leases)
}
