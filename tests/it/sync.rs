//! The mirror engine end to end: the real daemon against the test bed (or a real cluster through
//! `ENDPOINT_COPIER_TEST_KUBECONFIG`), one behaviour per test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use crate::common::*;
use endpoint_copier::names;
use endpoint_copier_testbed::{Verb, require_testbed};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

const CONVERGE: Duration = Duration::from_secs(10);

fn writes_to_slices(tb: &TestBed, since: u64) -> usize {
    tb.requests()
        .iter()
        .filter(|r| r.seq > since && r.resource == "endpointslices")
        .filter(|r| {
            matches!(
                r.verb,
                Verb::Create | Verb::Update | Verb::Patch | Verb::Delete
            )
        })
        .count()
}

/// Waits until the target `vip` has no EndpointSlice at all (not merely no ready endpoint).
async fn wait_for_no_slices(world: &World, what: &str) {
    eventually(what, CONVERGE, || async {
        slices_of(&world.client, &world.ns, "vip")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

fn last_seq(tb: &TestBed) -> u64 {
    tb.requests().last().map_or(0, |r| r.seq)
}

#[tokio::test]
async fn the_default_pair_mirrors_kubernetes_into_kubernetes_vip() {
    let cluster = Cluster::connect().await;
    require_testbed!(cluster);
    let tb = cluster.testbed().unwrap();
    let client = client_for(tb.kubeconfig()).await;
    let addrs = ["198.51.100.10", "198.51.100.11", "198.51.100.12"];
    create(
        &client,
        "default",
        &source_slice("default", "kubernetes", "kubernetes", "IPv4", &addrs),
    )
    .await;
    create(
        &client,
        "default",
        &vip_service("default", "kubernetes-vip", &["IPv4"]),
    )
    .await;

    let mut config = endpoint_copier::config::Config {
        kubeconfig: endpoint_copier::config::Kubeconfig::Path(tb.kubeconfig_for("node-1")),
        ..Default::default()
    };
    config.lease.identity = Some("node-1".into());
    config.lease.runtime_dir = Some(runtime_dir());
    config.metrics.listen = None;
    // The default pair probes the apiservers; these addresses exist only in the eviction tests'
    // network namespaces, so here the probes are off (they would dial outside the machine).
    config.pairs[0].probe = None;
    let daemon = Daemon::start(config);
    wait_for_target(&client, "default", "kubernetes-vip", &addrs, CONVERGE).await;

    let slices = slices_of(&client, "default", "kubernetes-vip").await;
    let slice = slices
        .get("kubernetes-vip")
        .expect("the target slice is named like the target Service");
    let labels = slice.metadata.labels.clone().unwrap();
    assert_eq!(labels[names::MANAGED_BY_LABEL], "endpoint-copier");
    assert_eq!(labels[names::SOURCE_LABEL], "kubernetes");
    let mut ports: Vec<(String, i32)> = slice
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port.unwrap()))
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![("k8s-api".into(), 6443), ("rke2-api".into(), 9345)]
    );
    let owner = &slice.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "kubernetes-vip")
    );
    daemon.stop().await;
}

#[tokio::test]
async fn annotated_pairs_in_several_namespaces_are_mirrored() {
    let world = World::new("annotated").await;
    let other = world.cluster.unique_namespace("annotated-b").await;
    world.seed_source(&["203.0.113.1"]).await;
    create(&world.client, &other, &source_service(&other, "apiserver")).await;
    create(
        &world.client,
        &other,
        &source_slice(&other, "apiserver", "apiserver", "IPv4", &["203.0.113.2"]),
    )
    .await;
    for ns in [&world.ns, &other] {
        let mut svc = vip_service(ns, "vip", &["IPv4"]);
        svc.metadata.annotations = Some(
            [
                (names::ANNOTATION_ENABLED.to_owned(), "true".to_owned()),
                (
                    names::ANNOTATION_SOURCE_NAME.to_owned(),
                    "apiserver".to_owned(),
                ),
            ]
            .into(),
        );
        create(&world.client, ns, &svc).await;
    }
    let mut config = world.config("node-1");
    config.pairs.clear();
    let daemon = Daemon::start(config);
    wait_for_target(&world.client, &world.ns, "vip", &["203.0.113.1"], CONVERGE).await;
    wait_for_target(&world.client, &other, "vip", &["203.0.113.2"], CONVERGE).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_dual_stack_source_gives_one_target_slice_per_family() {
    let world = World::new("dualstack").await;
    create(
        &world.client,
        &world.ns,
        &source_service(&world.ns, "apiserver"),
    )
    .await;
    create(
        &world.client,
        &world.ns,
        &source_slice(
            &world.ns,
            "apiserver",
            "apiserver-v4",
            "IPv4",
            &["198.51.100.1"],
        ),
    )
    .await;
    create(
        &world.client,
        &world.ns,
        &source_slice(
            &world.ns,
            "apiserver",
            "apiserver-v6",
            "IPv6",
            &["2001:db8::1"],
        ),
    )
    .await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv4", "IPv6"]),
    )
    .await;
    let daemon = Daemon::start(world.config("node-1"));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "2001:db8::1"],
        CONVERGE,
    )
    .await;
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    let mut families: Vec<String> = slices.values().map(|s| s.address_type.clone()).collect();
    families.sort();
    assert_eq!(
        families,
        vec!["IPv4", "IPv6"],
        "two slices, not one overwriting the other"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_source_of_2500_endpoints_over_3_slices_is_mirrored_whole() {
    let world = World::new("large").await;
    create(
        &world.client,
        &world.ns,
        &source_service(&world.ns, "apiserver"),
    )
    .await;
    let mut all = Vec::new();
    for (i, count) in [(0u32, 1000u32), (1, 1000), (2, 500)] {
        let addrs: Vec<String> = (0..count)
            .map(|n| {
                let k = i * 1000 + n;
                format!("2001:db8::{:x}:{:x}", k / 256, k % 256)
            })
            .collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        create(
            &world.client,
            &world.ns,
            &source_slice(
                &world.ns,
                "apiserver",
                &format!("apiserver-{i}"),
                "IPv6",
                &refs,
            ),
        )
        .await;
        all.extend(addrs);
    }
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv6"]),
    )
    .await;
    let daemon = Daemon::start(world.config("node-1"));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &refs,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(slices_of(&world.client, &world.ns, "vip").await.len(), 3);
    daemon.stop().await;
}

#[tokio::test]
async fn endpoints_added_removed_and_turned_not_ready_follow_the_source() {
    let world = World::new("follow").await;
    let daemon = world.synced(&["198.51.100.1", "198.51.100.2"]).await;

    let api: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &world.ns);
    let mut slice = api.get("apiserver").await.unwrap();
    slice.endpoints.push(endpoint("198.51.100.3", true));
    slice = api
        .replace("apiserver", &PostParams::default(), &slice)
        .await
        .unwrap();
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "198.51.100.2", "198.51.100.3"],
        CONVERGE,
    )
    .await;

    slice.endpoints.retain(|e| e.addresses[0] != "198.51.100.1");
    slice = api
        .replace("apiserver", &PostParams::default(), &slice)
        .await
        .unwrap();
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.2", "198.51.100.3"],
        CONVERGE,
    )
    .await;

    slice.endpoints[0] = endpoint("198.51.100.2", false);
    api.replace("apiserver", &PostParams::default(), &slice)
        .await
        .unwrap();
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.3"], CONVERGE).await;
    let target = slices_of(&world.client, &world.ns, "vip").await;
    let total: usize = target.values().map(|s| s.endpoints.len()).sum();
    assert_eq!(
        total, 2,
        "the not-ready endpoint is copied as not ready, not dropped"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn changing_the_target_ports_rewrites_the_slice_ports() {
    let world = World::new("ports").await;
    let daemon = world.synced(&["198.51.100.1"]).await;

    let services: Api<Service> = Api::namespaced(world.client.clone(), &world.ns);
    let mut svc = services.get("vip").await.unwrap();
    let ports = svc.spec.as_mut().unwrap().ports.as_mut().unwrap();
    ports[0].target_port = Some(IntOrString::String("https".into())); // named: resolved in the source
    ports[1].target_port = Some(IntOrString::Int(16443));
    ports[1].app_protocol = Some("kubernetes.io/h2c".into());
    services
        .replace("vip", &PostParams::default(), &svc)
        .await
        .unwrap();

    eventually("ports rewritten", CONVERGE, || async {
        let slices = slices_of(&world.client, &world.ns, "vip").await;
        let ports = slices.get("vip")?.ports.clone()?;
        let mut got: Vec<(String, i32, Option<String>)> = ports
            .into_iter()
            .map(|p| {
                (
                    p.name.unwrap_or_default(),
                    p.port.unwrap_or(0),
                    p.app_protocol,
                )
            })
            .collect();
        got.sort();
        (got == vec![
            (
                "k8s-api".to_owned(),
                16443,
                Some("kubernetes.io/h2c".to_owned()),
            ),
            ("rke2-api".to_owned(), 6443, None),
        ])
        .then_some(())
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn removing_the_annotation_deletes_our_slices() {
    let world = World::new("unannotate").await;
    world.seed_annotated(&["203.0.113.9"]).await;
    let mut config = world.config("node-1");
    config.pairs.clear();
    let daemon = Daemon::start(config);
    wait_for_target(&world.client, &world.ns, "vip", &["203.0.113.9"], CONVERGE).await;

    let services: Api<Service> = Api::namespaced(world.client.clone(), &world.ns);
    let patch = serde_json::json!({"metadata": {"annotations": {names::ANNOTATION_ENABLED: null}}});
    services
        .patch("vip", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_no_slices(&world, "our slices deleted").await;
    daemon.stop().await;
}

#[tokio::test]
async fn deleting_the_target_service_removes_its_slices() {
    let world = World::new("target-gone").await;
    let daemon = world.synced(&["198.51.100.1"]).await;
    if let Some(tb) = world.testbed() {
        // Even with the garbage collector down, the daemon removes the slices itself.
        tb.set_garbage_collection(false);
    }
    delete::<Service>(&world.client, &world.ns, "vip").await;
    wait_for_no_slices(&world, "target slices gone").await;
    daemon.stop().await;
}

#[tokio::test]
async fn deleting_the_source_keeps_the_target_and_raises_an_event() {
    let world = World::new("source-gone").await;
    let daemon = world.synced(&["198.51.100.1", "198.51.100.2"]).await;

    delete::<EndpointSlice>(&world.client, &world.ns, "apiserver").await;
    delete::<Service>(&world.client, &world.ns, "apiserver").await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(world.client.clone(), &world.ns);
    eventually("a SourceMissing Event on the target", CONVERGE, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("SourceMissing")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("vip")
            })
            .then_some(())
    })
    .await;
    // Fail-static: the VIP keeps its endpoints.
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    assert_eq!(
        ready_addresses(slices.values()),
        vec!["198.51.100.1", "198.51.100.2"]
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_manual_edit_or_delete_of_a_target_slice_is_repaired() {
    let world = World::new("repair").await;
    let daemon = world.synced(&["198.51.100.1"]).await;

    let api: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &world.ns);
    let mut slice = api.get("vip").await.unwrap();
    slice.endpoints = vec![endpoint("203.0.113.66", true)];
    api.replace("vip", &PostParams::default(), &slice)
        .await
        .unwrap();
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;

    delete::<EndpointSlice>(&world.client, &world.ns, "vip").await;
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;
    daemon.stop().await;
}

#[tokio::test]
async fn restarting_in_sync_writes_nothing() {
    let world = World::new("restart").await;
    let daemon = world.synced(&["198.51.100.1", "198.51.100.2"]).await;
    daemon.stop().await;

    let Some(tb) = world.testbed() else {
        eprintln!("skipped: needs the test bed's request log");
        return;
    };
    let since = last_seq(tb);
    let daemon = Daemon::start(world.config("node-1"));
    // Wait until the restarted daemon leads and has planned (its Lease write is in the log).
    eventually("the restarted daemon leads", CONVERGE, || async {
        tb.requests()
            .iter()
            .any(|r| {
                r.seq > since && r.resource == "leases" && r.verb == Verb::Update && r.code == 200
            })
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        writes_to_slices(tb, since),
        0,
        "a restart in sync writes no EndpointSlice"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn nothing_is_written_while_nothing_changes() {
    let world = World::new("idle").await;
    require_testbed!(world.cluster);
    let tb = world.testbed().unwrap();
    let daemon = world.synced(&["198.51.100.1"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let since = last_seq(tb);
    // Watches restarting and resyncs must not write either.
    tb.close_watches();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(writes_to_slices(tb, since), 0);
    daemon.stop().await;
}

#[tokio::test]
async fn the_api_down_for_10_seconds_converges_after() {
    let world = World::new("down").await;
    require_testbed!(world.cluster);
    let tb = world.testbed().unwrap();
    world.seed(&["198.51.100.1"]).await;
    let mut config = world.config("node-1");
    // The Lease must outlive the outage, or there is nobody to write afterwards... which is
    // also fine, but this test is about convergence, not election.
    config.lease.duration = Duration::from_secs(30);
    config.lease.renew_deadline = Duration::from_secs(20);
    config.lease.retry_period = Duration::from_secs(1);
    let daemon = Daemon::start(config);
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;

    tb.go_down().await;
    // Change the source while the API is down (directly in the store: nobody can reach it).
    let api = endpoint_copier_testbed::store::resource("discovery.k8s.io", "v1", "endpointslices")
        .unwrap();
    let mut slice = tb.store().get(api, Some(&world.ns), "apiserver").unwrap();
    slice["endpoints"] =
        serde_json::json!([{"addresses": ["198.51.100.2"], "conditions": {"ready": true}}]);
    tb.store()
        .replace(
            api,
            Some(&world.ns),
            "apiserver",
            slice,
            &Default::default(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    tb.come_up().await;
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.2"],
        Duration::from_secs(30),
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn an_expired_watch_relists_and_converges() {
    let world = World::new("gone").await;
    require_testbed!(world.cluster);
    let tb = world.testbed().unwrap();
    let daemon = world.synced(&["198.51.100.1"]).await;

    let api: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &world.ns);
    let mut slice = api.get("apiserver").await.unwrap();
    slice.endpoints = vec![endpoint("198.51.100.7", true)];
    // Compact history and drop the watches together: the re-watch from the last seen
    // resourceVersion gets 410 Gone and must relist.
    tb.compact();
    api.replace("apiserver", &PostParams::default(), &slice)
        .await
        .unwrap();
    tb.compact();
    tb.close_watches();
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.7"], CONVERGE).await;
    daemon.stop().await;
}

#[tokio::test]
async fn injected_409_429_and_503_are_retried_until_converged() {
    use endpoint_copier_testbed::{Failure, Match};
    let world = World::new("faults").await;
    require_testbed!(world.cluster);
    let tb = world.testbed().unwrap();
    world.seed(&["198.51.100.1"]).await;
    let m = Match {
        identity: Some("node-1".into()),
        verb: None,
        resource: Some("endpointslices".into()),
        ..Match::default()
    };
    tb.fail_next(
        Match {
            verb: Some(Verb::Create),
            ..m.clone()
        },
        1,
        Failure::Conflict,
    );
    tb.fail_next(
        Match {
            verb: Some(Verb::Create),
            ..m.clone()
        },
        1,
        Failure::TooManyRequests {
            retry_after_secs: 1,
        },
    );
    tb.fail_next(
        Match {
            verb: Some(Verb::Create),
            ..m.clone()
        },
        1,
        Failure::ServiceUnavailable,
    );
    let daemon = Daemon::start(world.config("node-1"));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1"],
        Duration::from_secs(20),
    )
    .await;
    let codes: Vec<u16> = tb
        .requests()
        .iter()
        .filter(|r| {
            r.identity == "node-1" && r.resource == "endpointslices" && r.verb == Verb::Create
        })
        .map(|r| r.code)
        .collect();
    assert_eq!(
        &codes[..3],
        &[409, 429, 503],
        "each injected failure was met: {codes:?}"
    );
    assert_eq!(codes.last(), Some(&201));
    daemon.stop().await;
}

#[tokio::test]
async fn slices_of_a_pair_removed_while_the_daemon_was_down_are_deleted_at_start() {
    let world = World::new("orphans").await;
    world.seed_annotated(&["203.0.113.9"]).await;
    let mut config = world.config("node-1");
    config.pairs.clear();
    let daemon = Daemon::start(config.clone());
    wait_for_target(&world.client, &world.ns, "vip", &["203.0.113.9"], CONVERGE).await;
    daemon.stop().await;

    let services: Api<Service> = Api::namespaced(world.client.clone(), &world.ns);
    let patch = serde_json::json!({"metadata": {"annotations": {names::ANNOTATION_ENABLED: null}}});
    services
        .patch("vip", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let daemon = Daemon::start(config);
    wait_for_no_slices(&world, "the orphaned slices deleted").await;
    daemon.stop().await;
}
