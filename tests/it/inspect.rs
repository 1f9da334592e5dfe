//! `endpoint-copier check` and `status` against the test bed: all well, missing RBAC (required
//! and optional), the API down, a dry-run plan that writes nothing, a foreign (mirrored) slice on
//! the target, the group's members and a pair configured on another member only. The shipped
//! RBAC manifests against the rights `check` asks for are `rbac.rs`'s.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use crate::common::*;
use endpoint_copier::inspect::{Feature, Verdict, check_report, render, status_report};
use endpoint_copier::names;
use endpoint_copier_testbed::{Verb, require_testbed};
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};

#[tokio::test]
async fn check_is_clean_when_everything_is_in_place() {
    let world = World::new("check-ok").await;
    let daemon = world.synced(&["198.51.100.1"]).await;
    let report = check_report(&world.config("node-2")).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.permissions.iter().all(|p| p.allowed));
    assert_eq!(report.pairs.len(), 1);
    assert!(report.pairs[0].in_sync);
    assert_eq!(report.pairs[0].target_endpoints, 1);
    assert_eq!(
        report.lease.as_ref().unwrap().holder.as_deref(),
        Some("node-1")
    );
    daemon.stop().await;
}

#[tokio::test]
async fn check_reports_a_missing_permission_by_name() {
    let world = World::new("check-rbac").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    tb.set_allowed("node-2", Verb::Update, "endpointslices", false);
    let report = check_report(&world.config("node-2")).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("missing permission: update endpointslices.discovery.k8s.io")),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn check_shows_the_plan_without_writing_it() {
    let world = World::new("check-plan").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1", "198.51.100.2"]).await;
    let report = check_report(&world.config("node-2")).await.unwrap();
    let pair = &report.pairs[0];
    assert!(!pair.in_sync);
    assert_eq!(pair.plan, vec!["create vip".to_owned()]);
    assert_eq!(pair.source_endpoints, 2);
    let writes = tb
        .requests()
        .iter()
        .filter(|r| {
            r.identity == "node-2" && r.verb.is_write() && r.resource != "selfsubjectaccessreviews"
        })
        .count();
    assert_eq!(writes, 0, "check is a dry run");
    assert!(slices_of(&world.client, &world.ns, "vip").await.is_empty());
}

#[tokio::test]
async fn check_says_when_the_api_is_down() {
    let world = World::new("check-down").await;
    let tb = require_testbed!(world.cluster);
    let config = world.config("node-2");
    tb.go_down().await;
    let report = check_report(&config).await.unwrap();
    tb.come_up().await;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].starts_with("cannot reach the API server"),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn status_shows_the_leader_and_whether_each_pair_is_in_sync() {
    let world = World::new("status").await;
    world.seed(&["198.51.100.1"]).await;
    let before = status_report(&world.config("node-2")).await.unwrap();
    assert!(!before.pairs[0].in_sync);
    assert_eq!(before.problems.len(), 1);
    let daemon = Daemon::start(world.config("node-1"));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1"],
        Duration::from_secs(10),
    )
    .await;
    let after = status_report(&world.config("node-2")).await.unwrap();
    assert!(after.problems.is_empty(), "{:?}", after.problems);
    assert!(after.pairs[0].in_sync);
    assert_eq!(
        (
            after.pairs[0].source_endpoints,
            after.pairs[0].target_endpoints
        ),
        (1, 1)
    );
    let lease = after.lease.unwrap();
    assert_eq!(lease.holder.as_deref(), Some("node-1"));
    assert!(lease.renewed_secs_ago.unwrap() <= 5);
    daemon.stop().await;
}

#[tokio::test]
async fn the_json_report_carries_every_section() {
    let world = World::new("status-json").await;
    world.seed(&["198.51.100.1"]).await;
    let report = status_report(&world.config("node-2")).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "kubeconfig",
        "server",
        "pairs",
        "refused",
        "lease",
        "problems",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    assert_eq!(json["pairs"][0]["target"], world.target());
}

/// An `Endpoints` object named like the target, with a port and `addr`: the mirroring controller
/// copies it into a slice of the target that no copier group manages.
fn mirrored_endpoints(ns: &str, addr: &str) -> Endpoints {
    Endpoints {
        metadata: meta(ns, "vip"),
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress {
                ip: addr.into(),
                ..Default::default()
            }]),
            ports: Some(vec![EndpointPort {
                name: Some("k8s-api".into()),
                port: 6443,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }]),
    }
}

/// Seeds, syncs as node-1 and adds a mirrored slice of `203.0.113.9` to the target; returns the
/// daemon and the mirrored slice's name.
async fn synced_with_a_mirrored_slice(world: &World) -> (Daemon, String) {
    let daemon = world.synced(&["198.51.100.1"]).await;
    create(
        &world.client,
        &world.ns,
        &mirrored_endpoints(&world.ns, "203.0.113.9"),
    )
    .await;
    let name = eventually(
        "the mirroring controller's slice of the target",
        Duration::from_secs(10),
        || async {
            slices_of(&world.client, &world.ns, "vip")
                .await
                .into_iter()
                .find(|(_, s)| {
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(names::MANAGED_BY_LABEL))
                        == Some(&MIRRORING.to_owned())
                })
                .map(|(n, _)| n)
        },
    )
    .await;
    (daemon, name)
}

const MIRRORING: &str = "endpointslicemirroring-controller.k8s.io";

#[tokio::test]
async fn check_names_a_mirrored_slice_with_its_manager_and_addresses_as_a_problem() {
    let world = World::new("check-foreign").await;
    require_testbed!(world.cluster);
    let (daemon, name) = synced_with_a_mirrored_slice(&world).await;
    let report = check_report(&world.config("node-2")).await.unwrap();
    let pair = &report.pairs[0];
    // In sync is judged over our slices only; the foreign one is counted apart.
    assert!(pair.in_sync, "{pair:?}");
    assert_eq!((pair.target_endpoints, pair.foreign_endpoints), (1, 1));
    assert_eq!(pair.foreign.len(), 1, "{pair:?}");
    assert_eq!(pair.foreign[0].name, name);
    assert_eq!(pair.foreign[0].manager, MIRRORING);
    assert_eq!(
        pair.foreign[0].ready_addresses,
        vec!["203.0.113.9".to_owned()]
    );
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    for part in [
        name.as_str(),
        MIRRORING,
        "203.0.113.9",
        &format!(
            "remove the Endpoints object {}/vip, or label it endpointslice.kubernetes.io/skip-mirror=true",
            world.ns
        ),
    ] {
        assert!(problem.contains(part), "{part} missing in {problem}");
    }
    assert_eq!(Verdict::of(&report), Verdict::Problems(1));

    let text = render(&report);
    assert!(!text.contains("\nok\n"), "{text}");
    assert!(
        text.contains("target 1 ready ours + 1 ready foreign, in sync"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  foreign slice {name} by {MIRRORING}: 203.0.113.9"
        )),
        "{text}"
    );
    assert!(text.contains("problem: EndpointSlice "), "{text}");

    let json = serde_json::to_value(&report).unwrap();
    let foreign = &json["pairs"][0]["foreign"][0];
    assert_eq!(foreign["name"], name.as_str());
    assert_eq!(foreign["manager"], MIRRORING);
    assert_eq!(foreign["ready_addresses"][0], "203.0.113.9");
    assert_eq!(json["pairs"][0]["foreign_endpoints"], 1);
    daemon.stop().await;
}

#[tokio::test]
async fn status_shows_a_mirrored_slice_apart_from_ours() {
    let world = World::new("status-foreign").await;
    require_testbed!(world.cluster);
    let (daemon, name) = synced_with_a_mirrored_slice(&world).await;
    let report = status_report(&world.config("node-2")).await.unwrap();
    let pair = &report.pairs[0];
    assert!(pair.in_sync);
    assert_eq!((pair.target_endpoints, pair.foreign_endpoints), (1, 1));
    assert_eq!(pair.foreign[0].manager, MIRRORING);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains(&name) && w.contains("203.0.113.9")),
        "{:?}",
        report.warnings
    );
    assert!(render(&report).contains(&format!("foreign slice {name} by {MIRRORING}")));
    daemon.stop().await;
}

#[tokio::test]
async fn check_and_status_show_the_group_and_its_live_members() {
    let world = World::new("check-group").await;
    let daemon = world.synced(&["198.51.100.1"]).await;
    for report in [
        check_report(&world.config("node-2")).await.unwrap(),
        status_report(&world.config("node-2")).await.unwrap(),
    ] {
        let group = report.group.as_ref().unwrap();
        assert_eq!(group.lease, format!("{}/endpoint-copier", world.ns));
        assert_eq!(group.label, format!("{}.endpoint-copier", world.ns));
        assert_eq!(group.identity, "node-2");
        let members = group.members.as_ref().unwrap();
        assert_eq!(members.len(), 1, "{members:?}");
        let m = &members[0];
        assert_eq!(m.identity, "node-1");
        assert!(m.live && !m.this_host, "{m:?}");
        assert_eq!(m.pairs[0].target, world.target());
        // The same pair on both hosts: nothing to warn about.
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let text = render(&report);
        assert!(text.contains("  member node-1: live, renewed "), "{text}");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_pair_configured_only_on_another_live_member_is_a_warning() {
    let world = World::new("check-mismatch").await;
    let daemon = world.synced(&["198.51.100.1"]).await;
    let mut config = world.config("node-2");
    config.pairs.clear();
    let report = check_report(&config).await.unwrap();
    let want = format!(
        "pair {} <- {} is configured on node-1 only: kept, never deleted, while node-1 is live",
        world.target(),
        world.source()
    );
    assert_eq!(report.warnings, vec![want.clone()]);
    assert_eq!(Verdict::of(&report), Verdict::Ok, "{:?}", report.problems);
    assert!(render(&report).contains(&format!("warning: {want}\n")));
    daemon.stop().await;
}

#[tokio::test]
async fn a_missing_optional_right_is_a_warning_naming_what_it_disables() {
    let world = World::new("check-optional").await;
    let tb = require_testbed!(world.cluster);
    let daemon = world.synced(&["198.51.100.1"]).await;
    tb.set_allowed("node-2", Verb::Delete, "endpoints", false);
    let report = check_report(&world.config("node-2")).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(Verdict::of(&report), Verdict::Ok);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("missing permission: delete endpoints")
                && w.ends_with(
                    "disables the removal of endpoint-copier-operator's leftover Endpoints"
                )),
        "{:?}",
        report.warnings
    );
    let denied: Vec<_> = report.permissions.iter().filter(|p| !p.allowed).collect();
    assert!(
        denied
            .iter()
            .all(|p| p.features == vec![Feature::LegacyCleanup]),
        "{denied:?}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_missing_right_the_member_watch_needs_is_a_problem() {
    let world = World::new("check-members-rbac").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    tb.set_allowed("node-2", Verb::Watch, "leases", false);
    let report = check_report(&world.config("node-2")).await.unwrap();
    // The election Lease's watch (by name) and the member watch (by label) are both denied.
    for (named, by) in [(" named endpoint-copier", "mirroring"), ("", "members")] {
        assert!(
            report.problems.iter().any(|p| p.starts_with(&format!(
                "missing permission: watch leases.coordination.k8s.io{named} in {}, needed by {by}",
                world.ns
            ))),
            "{:?}",
            report.problems
        );
    }
    assert!(matches!(Verdict::of(&report), Verdict::Problems(_)));
}

#[tokio::test]
async fn check_reports_a_read_it_may_not_make_instead_of_failing() {
    let world = World::new("check-no-list").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    tb.set_allowed("node-2", Verb::List, "endpointslices", false);
    let report = check_report(&world.config("node-2")).await.unwrap();
    // The test bed grants per identity, not per namespace: the namespaced and the cluster-wide
    // requests are both denied, and said in one line.
    assert_eq!(
        report.problems,
        vec![format!(
            "missing permission: list endpointslices.discovery.k8s.io in {} and all namespaces, needed by mirroring and annotated pairs: {}",
            world.ns,
            Feature::Mirroring.without()
        )]
    );
    assert!(report.pairs.is_empty(), "the pairs could not be read");
}
