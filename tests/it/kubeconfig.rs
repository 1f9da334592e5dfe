//! The kubeconfig's life on a node: it appears after the daemon started (first boot), RKE2
//! rotates the client certificate (the file is replaced and the old certificate stops working),
//! and it turns invalid (a half-written or broken file must not cost us the credentials we have).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use crate::common::*;
use endpoint_copier::config::Kubeconfig;
use endpoint_copier_testbed::require_testbed;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;

async fn set_source(world: &World, addrs: &[&str]) {
    let api: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &world.ns);
    let mut slice = api.get("apiserver").await.unwrap();
    slice.endpoints = addrs.iter().map(|a| endpoint(a, true)).collect();
    api.replace("apiserver", &PostParams::default(), &slice)
        .await
        .unwrap();
}

async fn lease_transitions(world: &World) -> (Option<String>, Option<i32>) {
    let api: Api<Lease> = Api::namespaced(world.client.clone(), &world.ns);
    let spec = api.get("endpoint-copier").await.unwrap().spec.unwrap();
    (spec.holder_identity, spec.lease_transitions)
}

#[tokio::test]
async fn a_kubeconfig_that_appears_late_is_picked_up() {
    let world = World::new("late").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rke2.yaml");
    let mut config = world.config("node-1");
    config.kubeconfig = Kubeconfig::Path(path.clone());
    let daemon = Daemon::start(config);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        slices_of(&world.client, &world.ns, "vip").await.is_empty(),
        "nothing without a kubeconfig"
    );
    // RKE2 writes it once the server runs: temp file, then rename.
    std::fs::copy(
        tb.kubeconfig_for("node-1"),
        dir.path().join(".rke2.yaml.tmp"),
    )
    .unwrap();
    std::fs::rename(dir.path().join(".rke2.yaml.tmp"), &path).unwrap();
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1"],
        Duration::from_secs(10),
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_rotated_client_certificate_is_reloaded_without_losing_the_lease() {
    let world = World::new("rotate").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let mut config = world.config("node-1");
    // A renew deadline long enough to cover the reload, as the defaults (10 s) do on a node.
    config.lease.duration = std::time::Duration::from_secs(15);
    config.lease.renew_deadline = std::time::Duration::from_secs(10);
    let Kubeconfig::Path(path) = config.kubeconfig.clone() else {
        unreachable!()
    };
    let daemon = Daemon::start(config);
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1"],
        Duration::from_secs(10),
    )
    .await;
    let before = lease_transitions(&world).await;

    // The old certificate expires (401 from now on) and RKE2 writes the new one.
    tb.revoke("node-1");
    tb.rotate_client_certificate(&path);
    set_source(&world, &["198.51.100.2"]).await;
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.2"],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        lease_transitions(&world).await,
        before,
        "same holder, no Lease transition"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_kubeconfig_that_turns_invalid_keeps_the_previous_credentials() {
    let world = World::new("broken").await;
    require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let config = world.config("node-1");
    let Kubeconfig::Path(path) = config.kubeconfig.clone() else {
        unreachable!()
    };
    let daemon = Daemon::start(config);
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1"],
        Duration::from_secs(10),
    )
    .await;
    std::fs::write(&path, "this: is: not a kubeconfig").unwrap();
    // Past one kubeconfig poll (5 s), the daemon has tried the broken file and kept its client.
    tokio::time::sleep(Duration::from_secs(6)).await;
    set_source(&world, &["198.51.100.3"]).await;
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.3"],
        Duration::from_secs(10),
    )
    .await;
    daemon.stop().await;
}
