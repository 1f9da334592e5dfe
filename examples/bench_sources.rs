//! Pairs with several sources: prints figures, asserts nothing.
//!
//! ```text
//! cargo run --release --example bench_sources
//! ```
//!
//! 1. the pure union (`desired::union::union`) of a Service here, a Service elsewhere and static
//!    addresses, at 3 and at 1,000 endpoints per source: time per plan;
//! 2. a change in the remote cluster → the target slice written: p50/p99 over 300 changes
//!    (in-process daemon; the local cluster and the remote one are two test beds);
//! 3. EndpointSlice writes while nothing changes in either cluster, over `BENCH_IDLE_SECS`
//!    (default 30).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/figures.rs"]
mod figures;

use std::time::{Duration, Instant};

use endpoint_copier::config::{Config, Kubeconfig, PairConfig};
use endpoint_copier::desired::union::{Input, static_slices, union};
use endpoint_copier::group::Group;
use endpoint_copier::names;
use endpoint_copier::shutdown::Shutdown;
use endpoint_copier::source::{RemoteSource, Source, StaticSource};
use endpoint_copier_testbed::TestBed;
use figures::{client, idle_secs, idle_writes, summary, until_written};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{PostParams, WatchParams};
use kube::{Api, Client};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!(
        "endpoint-copier sources benchmark (machine: {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    pure_union(3);
    pure_union(1000);
    remote_latency_and_idle_writes().await;
}

/// A slice of `service` holding `addrs` (all of one family).
fn slice(ns: &str, service: &str, name: &str, addrs: &[String]) -> serde_json::Value {
    let family = if addrs.iter().any(|a| a.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {names::SERVICE_NAME_LABEL: service}},
        "addressType": family,
        "endpoints": addrs.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    })
}

/// A selector-less Service of one `family`.
fn service(ns: &str, name: &str, family: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "ipFamilies": [family], "ports": [
            {"name": "k8s-api", "port": 6443, "targetPort": 6443, "protocol": "TCP"}]},
    })
}

async fn create_service(c: &Client, v: serde_json::Value) {
    let svc: Service = serde_json::from_value(v).unwrap();
    let api: Api<Service> = Api::namespaced(c.clone(), svc.metadata.namespace.as_deref().unwrap());
    api.create(&PostParams::default(), &svc).await.unwrap();
}

async fn create_slice(c: &Client, v: serde_json::Value) {
    let s: EndpointSlice = serde_json::from_value(v).unwrap();
    let api: Api<EndpointSlice> =
        Api::namespaced(c.clone(), s.metadata.namespace.as_deref().unwrap());
    api.create(&PostParams::default(), &s).await.unwrap();
}

fn three() -> Vec<String> {
    (11..14).map(|i| format!("198.51.100.{i}")).collect()
}

/// `n` documentation addresses in `2001:db8:<block>::/64`.
fn addresses(block: u16, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("2001:db8:{block:x}::{i:x}"))
        .collect()
}

fn pure_union(n: usize) {
    let target_ref = "default/kubernetes-vip".parse().unwrap();
    let mut target: Service =
        serde_json::from_value(service("default", "kubernetes-vip", "IPv6")).unwrap();
    target.metadata.uid = Some("u-bench".into());
    let here: EndpointSlice = serde_json::from_value(slice(
        "default",
        "kubernetes",
        "kubernetes",
        &addresses(1, n),
    ))
    .unwrap();
    let there: EndpointSlice =
        serde_json::from_value(slice("app", "db", "db-9qz4m", &addresses(2, n))).unwrap();
    let local = Source::Service("default/kubernetes".parse().unwrap());
    let remote = Source::Remote(RemoteSource {
        kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
        service: "app/db".parse().unwrap(),
    });
    let fixed = StaticSource::new(addresses(3, n).iter().map(|a| a.parse().unwrap()));
    let fixed_slices = static_slices(&fixed, &target);
    let fixed = Source::Static(fixed);
    let (here, there) = ([here], [there]);
    let inputs = [
        Input {
            source: &local,
            slices: Ok(&here),
        },
        Input {
            source: &remote,
            slices: Ok(&there),
        },
        Input {
            source: &fixed,
            slices: Ok(&fixed_slices),
        },
    ];
    let owner = Group::default_group().owner();
    let rounds = if n > 100 { 200 } else { 20_000 };
    let t = Instant::now();
    let mut written = 0;
    for _ in 0..rounds {
        written = union(&target_ref, &target, &inputs, &[], &owner)
            .unwrap()
            .slices
            .iter()
            .map(|s| s.endpoints.len())
            .sum::<usize>();
    }
    let per = t.elapsed() / rounds;
    println!(
        "union of 3 sources x {n} endpoints ({written} written): {:.1} us per plan",
        per.as_secs_f64() * 1e6
    );
}

async fn remote_latency_and_idle_writes() {
    let here = TestBed::start().await;
    let there = TestBed::start().await;
    let admin = client(here.kubeconfig()).await;
    let remote_admin = client(there.kubeconfig()).await;
    create_slice(
        &admin,
        slice("default", "kubernetes", "kubernetes", &three()),
    )
    .await;
    create_service(&admin, service("default", "kubernetes-vip", "IPv4")).await;
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(remote_admin.clone());
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
        )
        .await
        .unwrap();
    create_service(&remote_admin, service("app", "db", "IPv4")).await;
    create_slice(
        &remote_admin,
        slice("app", "db", "db-9qz4m", &["203.0.113.1".to_owned()]),
    )
    .await;

    let mut config = Config {
        kubeconfig: Kubeconfig::Path(here.kubeconfig_for("bench")),
        ..Config::default()
    };
    config.lease.identity = Some("bench".to_owned());
    config.metrics.listen = None;
    config.lease.runtime_dir = Some(std::env::temp_dir().join(format!(
        "endpoint-copier-bench-sources-{}",
        std::process::id()
    )));
    config.pairs = vec![PairConfig::of(
        vec![
            Source::Service("default/kubernetes".parse().unwrap()),
            Source::Remote(RemoteSource {
                kubeconfig: there.kubeconfig_for("reader"),
                service: "app/db".parse().unwrap(),
            }),
            Source::Static(StaticSource::new(["203.0.113.200".parse().unwrap()])),
        ],
        "default/kubernetes-vip".parse().unwrap(),
    )];
    // The mirror alone: these addresses exist nowhere (bench_probe measures probes).
    config.pairs[0].probe = None;
    let shutdown = Shutdown::new();
    let daemon = tokio::spawn(endpoint_copier::daemon::run(config, shutdown.clone()));

    // Wait until the remote's slice is in the target, then watch the target from there.
    let targets: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
    let remote_slices: Api<EndpointSlice> = Api::namespaced(remote_admin.clone(), "app");
    let (name, rv) = loop {
        let list = targets.list(&Default::default()).await.unwrap();
        if let Some(s) = list
            .items
            .iter()
            .find(|s| s.endpoints.iter().any(|e| e.addresses[0] == "203.0.113.1"))
        {
            break (
                s.metadata.name.clone().unwrap(),
                list.metadata.resource_version.unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
    let mut events = targets.watch(&wp, &rv).await.unwrap().boxed();
    let mut source = remote_slices.get("db-9qz4m").await.unwrap();
    let mut samples = Vec::with_capacity(300);
    for i in 0..300u32 {
        let addr = format!("203.0.113.{}", 2 + i % 150);
        source.endpoints[0].addresses = vec![addr.clone()];
        let t = Instant::now();
        source = remote_slices
            .replace("db-9qz4m", &PostParams::default(), &source)
            .await
            .unwrap();
        until_written(&mut events, &addr).await;
        samples.push(t.elapsed());
    }
    println!(
        "remote change -> target slice written (300 changes): {}",
        summary(&mut samples)
    );
    let idle = idle_secs(30);
    let (writes, _) = idle_writes(&here, idle).await;
    let remote_requests = there.requests().len();
    println!(
        "EndpointSlice writes in {idle} s with nothing changing (three sources): {writes}; requests the remote cluster served in all: {remote_requests}"
    );
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}
