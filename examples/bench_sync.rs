//! The mirror engine's benchmark; prints figures, asserts nothing.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench_sync
//! ```
//!
//! 1. source change → target slice written: p50/p99 over 1,000 changes (in-process daemon);
//! 2. EndpointSlice writes while nothing changes, over `BENCH_IDLE_SECS` (default 60);
//! 3. 1,000 annotated pairs from a cold start to all in sync;
//! 4. resident memory of the real binary (`target/release/endpoint-copier run`) with the
//!    default pair, then with 10,000 unrelated Services and 10,000 unrelated EndpointSlices
//!    (`BENCH_BINARY=path` measures another build, e.g. the static one from `cargo dist`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/figures.rs"]
mod figures;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use endpoint_copier::config::{Config, Kubeconfig};
use endpoint_copier::names;
use endpoint_copier::shutdown::Shutdown;
use endpoint_copier_testbed::TestBed;
use endpoint_copier_testbed::store::{ListParams, WriteParams, resource};
use figures::{client, idle_secs, idle_writes, summary, until_written};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{PostParams, WatchParams};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!(
        "endpoint-copier benchmark (machine: {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    latency_and_idle_writes().await;
    cold_start_annotated(1000).await;
    memory().await;
}

fn slices() -> &'static endpoint_copier_testbed::store::Resource {
    resource("discovery.k8s.io", "v1", "endpointslices").unwrap()
}

fn services() -> &'static endpoint_copier_testbed::store::Resource {
    resource("", "v1", "services").unwrap()
}

fn source_slice(addrs: &[String]) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {names::SERVICE_NAME_LABEL: "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": addrs.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    })
}

fn vip(name: &str, annotated: bool) -> serde_json::Value {
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [
            {"name": "rke2-api", "port": 9345, "targetPort": 9345, "protocol": "TCP"},
            {"name": "k8s-api", "port": 6443, "targetPort": 6443, "protocol": "TCP"}]},
    });
    if annotated {
        svc["metadata"]["annotations"] = json!({names::ANNOTATION_ENABLED: "true", names::ANNOTATION_SOURCE_NAME: "kubernetes",
                // The mirror alone: a default/kubernetes source would probe /readyz, and these
                // addresses exist nowhere (bench_probe measures probes in a namespace).
                names::ANNOTATION_PROBE: "false"});
    }
    svc
}

/// The default pair's objects, written straight into the store: the `kubernetes` slice with
/// three control-plane addresses and EIB's `kubernetes-vip` Service.
fn seed_default_pair(store: &endpoint_copier_testbed::Store) {
    let w = WriteParams::default();
    store
        .create(slices(), Some("default"), source_slice(&three()), &w)
        .unwrap();
    store
        .create(
            services(),
            Some("default"),
            vip("kubernetes-vip", false),
            &w,
        )
        .unwrap();
}

fn three() -> Vec<String> {
    (11..14).map(|i| format!("198.51.100.{i}")).collect()
}

fn daemon_config(tb: &TestBed, identity: &str) -> Config {
    let mut c = Config {
        kubeconfig: Kubeconfig::Path(tb.kubeconfig_for(identity)),
        ..Config::default()
    };
    c.lease.identity = Some(identity.to_owned());
    c.metrics.listen = None;
    c.lease.runtime_dir = Some(std::env::temp_dir().join(format!(
        "endpoint-copier-bench-{}-{identity}",
        std::process::id()
    )));
    // The mirror alone: no probes (the seeded addresses exist nowhere; bench_probe measures
    // the probes inside a network namespace).
    c.pairs[0].probe = None;
    c
}

async fn latency_and_idle_writes() {
    let tb = TestBed::start().await;
    let store = tb.store();
    seed_default_pair(store);
    let shutdown = Shutdown::new();
    let daemon = tokio::spawn(endpoint_copier::daemon::run(
        daemon_config(&tb, "bench"),
        shutdown.clone(),
    ));
    let admin = client(tb.kubeconfig()).await;
    let api: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");

    // Wait for the first sync, then watch the target from its current version.
    let rv = loop {
        if let Ok(s) = api.get("kubernetes-vip").await {
            break s.metadata.resource_version.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let wp = WatchParams::default().fields("metadata.name=kubernetes-vip");
    let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
    let mut samples = Vec::with_capacity(1000);
    let mut source = api.get("kubernetes").await.unwrap();
    for i in 0..1000u32 {
        // Alternate the third address so every change is a real change.
        let addr = format!("203.0.113.{}", 1 + i % 200);
        source.endpoints[2].addresses = vec![addr.clone()];
        let t = Instant::now();
        source = api
            .replace("kubernetes", &PostParams::default(), &source)
            .await
            .unwrap();
        until_written(&mut events, &addr).await;
        samples.push(t.elapsed());
    }
    println!(
        "source change -> target slice written (1000 changes): {}",
        summary(&mut samples)
    );
    let idle = idle_secs(60);
    let (writes, lease_writes) = idle_writes(&tb, idle).await;
    println!(
        "EndpointSlice writes in {idle} s with nothing changing: {writes} (Lease renewals: {lease_writes})"
    );
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}

async fn cold_start_annotated(n: usize) {
    let tb = TestBed::start().await;
    let store = tb.store();
    store
        .create(
            slices(),
            Some("default"),
            source_slice(&three()),
            &WriteParams::default(),
        )
        .unwrap();
    for i in 0..n {
        store
            .create(
                services(),
                Some("default"),
                vip(&format!("vip-{i}"), true),
                &WriteParams::default(),
            )
            .unwrap();
    }
    let mut config = daemon_config(&tb, "bench");
    config.pairs.clear();
    let shutdown = Shutdown::new();
    let t = Instant::now();
    let daemon = tokio::spawn(endpoint_copier::daemon::run(config, shutdown.clone()));
    let lp = ListParams {
        label_selector: Some(format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY)),
        ..Default::default()
    };
    loop {
        let list = store.list(slices(), Some("default"), &lp).unwrap();
        if list["items"].as_array().map_or(0, Vec::len) >= n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{n} pairs not in sync after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{n} annotated pairs from a cold start to all in sync: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}

/// The daemon binary to measure: `BENCH_BINARY` (for example the static one from `cargo dist`),
/// else the release build next to this benchmark.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BENCH_BINARY") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("endpoint-copier");
    assert!(
        bin.exists(),
        "build the daemon first: cargo build --release (looked for {})",
        bin.display()
    );
    bin
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn measure_rss(tb: &TestBed, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = tb.kubeconfig_for("rss");
    std::fs::write(
        dir.path().join("50-bench.toml"),
        format!(
            "kubeconfig = \"{}\"\n[[pair]]\nsource = \"default/kubernetes\"\ntarget = \"default/kubernetes-vip\"\nprobe = false\n[lease]\nidentity = \"rss\"\nruntime_dir = \"{}\"\n[metrics]\nlisten = \"\"\n",
            kubeconfig.display(),
            dir.path().join("run").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["--config-dir", dir.path().to_str().unwrap(), "run"])
        .env(names::LOG_ENV, "warn")
        .spawn()
        .unwrap();
    let admin = client(tb.kubeconfig()).await;
    let api: Api<EndpointSlice> = Api::namespaced(admin, "default");
    let t = Instant::now();
    while api.get_opt("kubernetes-vip").await.unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "binary did not sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let it settle into steady state (a few Lease renewals, watch bookmarks).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, peak) = rss_kib(child.id());
    println!(
        "daemon RSS {label}: {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    stop(&mut child);
}

fn stop(child: &mut std::process::Child) {
    // SIGTERM for a clean release (as systemd stops it), then reap.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

async fn memory() {
    let tb = TestBed::start().await;
    let store = tb.store();
    seed_default_pair(store);
    measure_rss(&tb, "with the default pair").await;
    // Delete the target's slice so the second run's sync is observable again.
    store
        .delete(
            slices(),
            Some("default"),
            "kubernetes-vip",
            &Default::default(),
        )
        .unwrap();
    // The 10,000 slices below stand for what the endpointslice controller writes for these
    // selector Services on a real cluster; the test bed's controllers scan a namespace per
    // change, so they are off while seeding 20,000 objects into one namespace.
    tb.set_controller_manager(false);
    for i in 0..10_000u32 {
        let name = format!("app-{i}");
        store
            .create(services(), Some("default"), json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}), &WriteParams::default())
            .unwrap();
        store
            .create(slices(), Some("default"), json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-abcde"), "namespace": "default", "labels": {names::SERVICE_NAME_LABEL: name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [format!("203.0.113.{}", 1 + i % 250)], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}), &WriteParams::default())
            .unwrap();
    }
    measure_rss(
        &tb,
        "with 10,000 unrelated Services and 10,000 unrelated EndpointSlices",
    )
    .await;
}
