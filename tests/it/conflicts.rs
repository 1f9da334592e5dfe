//! A write refused with 409 Conflict: the daemon reads the slice again and re-lists its
//! namespace before it plans again, so it never sends the same stale resourceVersion twice; a
//! streak of conflicts (another writer) is reported once and backed off, never a tight loop.

use std::time::Duration;

use endpoint_copier_testbed::{Failure, Match, RequestRecord, Verb, require_testbed};

use crate::common::{World, events_on, eventually, wait_for_target};

fn slice_updates(m: Match) -> Match {
    m.identity("node-1")
        .resource("endpointslices")
        .verb(Verb::Update)
}

fn of_node1(requests: &[RequestRecord], resource: &str) -> Vec<RequestRecord> {
    requests
        .iter()
        .filter(|r| r.identity == "node-1" && r.resource == resource)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_conflict_reads_the_slice_again_and_relists_before_the_next_write() {
    let world = World::new("conflict").await;
    let tb = require_testbed!(world.cluster);
    let daemon = world.synced(&["198.51.100.1"]).await;
    let before = tb.requests().len();
    tb.fail_next(slice_updates(Match::any()), 1, Failure::Conflict);
    world.set_source(&["198.51.100.1", "198.51.100.2"]).await;
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "198.51.100.2"],
        Duration::from_secs(10),
    )
    .await;
    let after: Vec<RequestRecord> = tb.requests().split_off(before);
    let slices = of_node1(&after, "endpointslices");
    let conflict = slices
        .iter()
        .position(|r| r.verb == Verb::Update && r.code == 409)
        .expect("the injected conflict was met");
    let rest = &slices[conflict + 1..];
    let reread = rest
        .iter()
        .position(|r| r.verb == Verb::Get && r.name.as_deref() == Some("vip"))
        .expect("the conflicting slice is read again");
    let relist = rest
        .iter()
        .position(|r| r.verb == Verb::List && r.namespace.as_deref() == Some(world.ns.as_str()))
        .expect("the namespace's slices are listed again");
    let written = rest
        .iter()
        .position(|r| r.verb == Verb::Update && r.code == 200)
        .expect("the next update succeeds");
    assert!(reread < written, "read again before writing: {rest:#?}");
    assert!(relist < written, "listed again before writing: {rest:#?}");
    daemon.stop().await;
}

#[tokio::test]
async fn conflicts_that_keep_coming_are_reported_once_and_backed_off() {
    let world = World::new("conflicts").await;
    let tb = require_testbed!(world.cluster);
    let daemon = world.synced(&["198.51.100.1"]).await;
    tb.fail_until_healed(slice_updates(Match::any()), Failure::Conflict);
    world.set_source(&["198.51.100.1", "198.51.100.2"]).await;
    let note = eventually(
        "a WriteFailed Event naming the conflicts",
        Duration::from_secs(10),
        || async {
            events_on(&world, "vip", "WriteFailed")
                .await
                .into_iter()
                .find(|n| n.contains("conflicts in a row"))
        },
    )
    .await;
    assert!(note.starts_with("3 conflicts in a row"), "{note}");
    // How the backoff grows is an engine rule, unit-tested under paused time
    // (`daemon::tests::conflicts_back_off_from_200_ms_doubling`); here, that it converges once
    // the other writer stops.
    tb.heal_failures();
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "198.51.100.2"],
        Duration::from_secs(40),
    )
    .await;
    daemon.stop().await;
}
