//! `endpoint-copier check` and `status` against the test bed: all well, missing RBAC, the API
//! down, and a dry-run plan that writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use crate::common::*;
use endpoint_copier::inspect::{check_report, status_report};
use endpoint_copier_testbed::{Verb, require_testbed};

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
