//! Node facts end to end: `nodeName` and zone filled from the Nodes that hold the source
//! addresses, a dual-stack target's IPv6 slice derived from the Nodes of a single-stack source,
//! and drains by the `endpoint-copier/drain` annotation (expiry, never the last ready endpoint).
//!
//! Nodes are cluster-scoped: each test gives its Nodes names of its own and a label naming its
//! namespace, and its daemon watches only the Nodes with that label (`[nodes] selector`), so
//! tests running at once never see each other's Nodes.

use std::time::Duration;

use endpoint_copier::names;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use crate::common::*;

/// How long a change may take to show in the target (generous for a loaded CI machine).
const SEEN: Duration = Duration::from_secs(10);
/// The label each test puts on its Nodes, valued with its namespace.
const WORLD_LABEL: &str = "it.endpoint-copier/world";

/// This world's daemon config, watching only this world's Nodes.
pub(crate) fn config(world: &World, derive: bool) -> endpoint_copier::config::Config {
    let mut c = world.config("node-1");
    c.nodes.selector = Some(format!("{WORLD_LABEL}={}", world.ns));
    c.pairs[0].derive_families = derive;
    c
}

/// Creates Node `<ns>-<name>` with `addresses` (InternalIP each), zone `zone-<name>` and
/// `annotations`; the status is written as the kubelet does, through the status subresource.
/// Deliberately without the control-plane label: the other tests' daemons (default selector)
/// must never see these Nodes, whose addresses their sources use too.
pub(crate) async fn add_node(
    world: &World,
    name: &str,
    addresses: &[&str],
    annotations: &[(&str, &str)],
) -> String {
    let full = format!("{}-{name}", world.ns);
    let api: Api<Node> = Api::all(world.client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(full.clone()),
            labels: Some(
                [
                    (WORLD_LABEL.to_owned(), world.ns.clone()),
                    (names::ZONE_LABEL.to_owned(), format!("zone-{name}")),
                ]
                .into(),
            ),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    api.create(&PostParams::default(), &node).await.unwrap();
    let status = serde_json::json!({"status": {"addresses": addresses
        .iter()
        .map(|a| serde_json::json!({"type": "InternalIP", "address": a}))
        .collect::<Vec<_>>()}});
    match world.testbed() {
        Some(tb) => {
            tb.store()
                .replace_status(
                    endpoint_copier_testbed::store::resource("", "v1", "nodes").unwrap(),
                    None,
                    &full,
                    status,
                    &Default::default(),
                )
                .unwrap();
        }
        None => {
            api.patch_status(
                &full,
                &Default::default(),
                &kube::api::Patch::Merge(&status),
            )
            .await
            .unwrap();
        }
    }
    full
}

/// Sets (or, with `None`, removes) the drain annotations of Node `full`, as a person would
/// with `kubectl annotate`.
async fn set_drain(world: &World, full: &str, drain: Option<&str>, expires: Option<&str>) {
    let api: Api<Node> = Api::all(world.client.clone());
    let patch = serde_json::json!({"metadata": {"annotations": {
        names::ANNOTATION_DRAIN: drain,
        names::ANNOTATION_DRAIN_EXPIRES: expires,
    }}});
    api.patch(full, &Default::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
}

/// (address, nodeName, zone) of every endpoint of the target's slices of `family`, sorted.
pub(crate) async fn endpoints_of(
    world: &World,
    family: &str,
) -> Vec<(String, Option<String>, Option<String>)> {
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    let mut v: Vec<_> = slices
        .values()
        .filter(|s| s.address_type == family)
        .flat_map(|s| s.endpoints.iter())
        .map(|e| (e.addresses[0].clone(), e.node_name.clone(), e.zone.clone()))
        .collect();
    v.sort();
    v
}

/// Waits for an Event `reason` on the target whose note contains `needle`.
async fn event(world: &World, reason: &str, needle: &str) -> String {
    let events: Api<Event> = Api::namespaced(world.client.clone(), &world.ns);
    eventually(
        &format!("a {reason} Event on vip mentioning {needle:?}"),
        SEEN,
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let note = e.note.clone().unwrap_or_default();
                (e.reason.as_deref() == Some(reason) && note.contains(needle)).then_some(note)
            })
        },
    )
    .await
}

pub(crate) fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[tokio::test]
async fn node_name_and_zone_are_filled_from_the_nodes_and_left_empty_without_one() {
    let world = World::new("nodes-fill").await;
    let a = add_node(&world, "a", &["198.51.100.1"], &[]).await;
    let b = add_node(&world, "b", &["198.51.100.2"], &[]).await;
    world
        .seed(&["198.51.100.1", "198.51.100.2", "198.51.100.3"])
        .await;
    let daemon = Daemon::start(config(&world, false));
    let want = vec![
        ("198.51.100.1".to_owned(), some(&a), some("zone-a")),
        ("198.51.100.2".to_owned(), some(&b), some("zone-b")),
        // No Node holds it: copied as it is.
        ("198.51.100.3".to_owned(), None, None),
    ];
    eventually("nodeName and zone filled", SEEN, || async {
        (endpoints_of(&world, "IPv4").await == want).then_some(())
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_node_added_later_fills_in_its_endpoint() {
    let world = World::new("nodes-later").await;
    world.seed(&["198.51.100.1", "198.51.100.2"]).await;
    // No Node yet: copied as today.
    let daemon = Daemon::start(config(&world, false));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "198.51.100.2"],
        SEEN,
    )
    .await;
    assert!(
        endpoints_of(&world, "IPv4")
            .await
            .iter()
            .all(|(_, n, _)| n.is_none())
    );
    let a = add_node(&world, "a", &["198.51.100.2"], &[]).await;
    eventually("the new Node's endpoint filled in", SEEN, || async {
        let got = endpoints_of(&world, "IPv4").await;
        (got == vec![
            ("198.51.100.1".to_owned(), None, None),
            ("198.51.100.2".to_owned(), some(&a), some("zone-a")),
        ])
        .then_some(())
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_dual_stack_target_gets_ipv6_endpoints_from_the_nodes_of_a_single_stack_source() {
    let world = World::new("nodes-dual").await;
    let a = add_node(&world, "a", &["198.51.100.1", "2001:db8::1"], &[]).await;
    let b = add_node(&world, "b", &["198.51.100.2", "2001:db8::2"], &[]).await;
    // A Node without an IPv6 address: reported, not guessed.
    let c = add_node(&world, "c", &["198.51.100.3"], &[]).await;
    world
        .seed_source(&["198.51.100.1", "198.51.100.2", "198.51.100.3"])
        .await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv4", "IPv6"]),
    )
    .await;
    let daemon = Daemon::start(config(&world, true));
    let want = vec![
        ("2001:db8::1".to_owned(), some(&a), some("zone-a")),
        ("2001:db8::2".to_owned(), some(&b), some("zone-b")),
    ];
    eventually("the IPv6 slice derived from the Nodes", SEEN, || async {
        (endpoints_of(&world, "IPv6").await == want).then_some(())
    })
    .await;
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    let v6: Vec<&EndpointSlice> = slices
        .values()
        .filter(|s| s.address_type == "IPv6")
        .collect();
    assert_eq!(v6.len(), 1);
    assert_eq!(v6[0].metadata.name.as_deref(), Some("vip-ipv6"));
    assert_eq!(
        ready_addresses(v6),
        vec!["2001:db8::1".to_owned(), "2001:db8::2".to_owned()]
    );
    let note = event(&world, "NodeAddressMissing", &c).await;
    assert!(note.contains("IPv6"), "{note}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_drained_node_leaves_every_family_and_comes_back_when_the_annotation_goes() {
    let world = World::new("nodes-drain").await;
    let a = add_node(&world, "a", &["198.51.100.1", "2001:db8::1"], &[]).await;
    add_node(&world, "b", &["198.51.100.2", "2001:db8::2"], &[]).await;
    world.seed_source(&["198.51.100.1", "198.51.100.2"]).await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv4", "IPv6"]),
    )
    .await;
    let daemon = Daemon::start(config(&world, true));
    let all = ["198.51.100.1", "198.51.100.2", "2001:db8::1", "2001:db8::2"];
    wait_for_target(&world.client, &world.ns, "vip", &all, SEEN).await;
    set_drain(&world, &a, Some("true"), None).await;
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.2", "2001:db8::2"],
        SEEN,
    )
    .await;
    // Kept in the slice, written not ready and not serving.
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    let drained: Vec<_> = slices
        .values()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.node_name.as_deref() == Some(a.as_str()))
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (c.ready, c.serving)
        })
        .collect();
    assert_eq!(drained, vec![(Some(false), Some(false)); 2]);
    event(&world, "EndpointDrained", "198.51.100.1").await;
    set_drain(&world, &a, None, None).await;
    wait_for_target(&world.client, &world.ns, "vip", &all, SEEN).await;
    daemon.stop().await;
}

#[tokio::test]
async fn an_expired_drain_is_ignored_and_a_drain_ends_at_its_expiry() {
    let world = World::new("nodes-expiry").await;
    let a = add_node(
        &world,
        "a",
        &["198.51.100.1"],
        &[
            (names::ANNOTATION_DRAIN, "true"),
            (names::ANNOTATION_DRAIN_EXPIRES, "2020-01-01T00:00:00Z"),
        ],
    )
    .await;
    add_node(&world, "b", &["198.51.100.2"], &[]).await;
    world.seed(&["198.51.100.1", "198.51.100.2"]).await;
    let daemon = Daemon::start(config(&world, false));
    // Expired: both ready, and nodeName shows the daemon saw the Node.
    eventually("both ready with nodeName", SEEN, || async {
        let got = endpoints_of(&world, "IPv4").await;
        let slices = slices_of(&world.client, &world.ns, "vip").await;
        (got.iter().all(|(_, n, _)| n.is_some()) && ready_addresses(slices.values()).len() == 2)
            .then_some(())
    })
    .await;
    // A drain for 2 more seconds: out now, back by itself when it expires.
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    set_drain(&world, &a, Some("true"), Some(&until.to_string())).await;
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.2"], SEEN).await;
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "198.51.100.2"],
        SEEN,
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_timed_drain_counts_from_when_the_leader_saw_it_not_by_the_writers_clock() {
    let world = World::new("nodes-skew").await;
    let a = add_node(&world, "a", &["198.51.100.1"], &[]).await;
    add_node(&world, "b", &["198.51.100.2"], &[]).await;
    world.seed(&["198.51.100.1", "198.51.100.2"]).await;
    let daemon = Daemon::start(config(&world, false));
    let both = ["198.51.100.1", "198.51.100.2"];
    wait_for_target(&world.client, &world.ns, "vip", &both, SEEN).await;
    // `drain --expires 6` on a host whose wall clock is an hour behind: its expiry instant is
    // already past by ours. The drain lasts its 6 s from when the leader saw it, all the same.
    // (6 s: long enough for a loaded machine to show the drained state before it ends.)
    let behind = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let expires = (behind + jiff::SignedDuration::from_secs(6)).to_string();
    let api: Api<Node> = Api::all(world.client.clone());
    let patch = serde_json::json!({"metadata": {"annotations": {
        names::ANNOTATION_DRAIN: "true",
        names::ANNOTATION_DRAIN_EXPIRES: expires,
        names::ANNOTATION_DRAIN_DURATION: "6",
    }}});
    api.patch(&a, &Default::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.2"], SEEN).await;
    // And it ends by itself, 6 s after.
    wait_for_target(&world.client, &world.ns, "vip", &both, SEEN).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_remote_cp_1_survives_a_local_drain_of_cp_1() {
    use endpoint_copier::source::{RemoteSource, Source};
    let world = World::new("nodes-remote").await;
    let cp1 = add_node(&world, "cp-1", &["198.51.100.1"], &[]).await;
    add_node(&world, "cp-2", &["198.51.100.2"], &[]).await;
    world.seed(&["198.51.100.1", "198.51.100.2"]).await;
    // Another cluster, whose apiserver runs on a Node of the same name.
    let remote = TestBed::start().await;
    let admin = client_for(remote.kubeconfig()).await;
    create(&admin, "default", &source_service("default", "db")).await;
    let mut slice = source_slice("default", "db", "db-1", "IPv4", &["203.0.113.1"]);
    slice.endpoints[0].node_name = Some(cp1.clone());
    create(&admin, "default", &slice).await;
    let mut c = config(&world, false);
    c.pairs[0].sources = vec![
        Source::Service(world.source().parse().unwrap()),
        Source::Remote(RemoteSource {
            kubeconfig: remote.kubeconfig_for("remote-reader"),
            service: "default/db".parse().unwrap(),
        }),
    ];
    let daemon = Daemon::start(c);
    let all = ["198.51.100.1", "198.51.100.2", "203.0.113.1"];
    wait_for_target(&world.client, &world.ns, "vip", &all, SEEN).await;
    set_drain(&world, &cp1, Some("true"), None).await;
    // Only this cluster's cp-1 leaves.
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.2", "203.0.113.1"],
        SEEN,
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn the_last_ready_endpoint_is_never_drained() {
    let world = World::new("nodes-last").await;
    let a = add_node(&world, "a", &["198.51.100.1"], &[]).await;
    world.seed(&["198.51.100.1"]).await;
    let daemon = Daemon::start(config(&world, false));
    eventually("the endpoint filled in", SEEN, || async {
        (endpoints_of(&world, "IPv4").await
            == vec![("198.51.100.1".to_owned(), some(&a), some("zone-a"))])
        .then_some(())
    })
    .await;
    set_drain(&world, &a, Some("true"), None).await;
    let note = event(&world, "EndpointSpared", "198.51.100.1").await;
    assert!(note.contains("never fewer than one"), "{note}");
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    assert_eq!(
        ready_addresses(slices.values()),
        vec!["198.51.100.1".to_owned()]
    );
    daemon.stop().await;
}

#[tokio::test]
async fn the_drain_command_returns_once_the_daemon_took_the_node_out_and_resume_brings_it_back() {
    use endpoint_copier::drain::{self, DrainOptions, ResumeOptions};
    let world = World::new("nodes-cmd").await;
    let a = add_node(&world, "a", &["198.51.100.1"], &[]).await;
    add_node(&world, "b", &["198.51.100.2"], &[]).await;
    world.seed(&["198.51.100.1", "198.51.100.2"]).await;
    let mut c = config(&world, false);
    // Only this world's target: other tests' annotated Services may hold the same addresses.
    c.annotations.enabled = false;
    let daemon = Daemon::start(c.clone());
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "198.51.100.2"],
        SEEN,
    )
    .await;

    // As the rke2-server drop-in runs it before the server stops: it returns only once the
    // running daemon has taken the Node's endpoint out of the target.
    let drained = drain::drain(
        &c,
        &DrainOptions {
            node: Some(a.clone()),
            timeout: SEEN,
            expires: drain::DEFAULT_EXPIRES,
        },
    )
    .await
    .unwrap();
    assert_eq!(drained.targets, vec![world.target().parse().unwrap()]);
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    assert_eq!(ready_addresses(slices.values()), ["198.51.100.2"]);

    // Draining the other one now would empty the target: refused.
    let b = format!("{}-b", world.ns);
    let refused = drain::drain(
        &c,
        &DrainOptions {
            node: Some(b),
            timeout: SEEN,
            expires: drain::DEFAULT_EXPIRES,
        },
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("last ready"), "{refused}");

    drain::resume(
        &c,
        &ResumeOptions {
            node: Some(a),
            timeout: SEEN,
            timed_only: true,
        },
    )
    .await
    .unwrap();
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "198.51.100.2"],
        SEEN,
    )
    .await;
    daemon.stop().await;
}
