//! A leader that starts cold (a restart, a crash-restart retaking its claim at once) writes only
//! from a complete view: without the Node list it keeps the derived family and the drains as
//! written, and before its member view is complete it keeps the evictions as written.

use std::time::Duration;

use endpoint_copier::probe::Verdict;
use endpoint_copier_testbed::{Failure, Match, Verb, require_testbed};

use crate::common::netns::{self, Mode};
use crate::common::*;
use crate::eviction::{A, B, Bed, C};
use crate::nodes::{add_node, config, endpoints_of, some};

#[tokio::test]
async fn a_leader_restarted_while_the_node_list_fails_keeps_the_derived_family() {
    let world = World::new("cold-nodes").await;
    let tb = require_testbed!(world.cluster);
    let a = add_node(&world, "a", &["198.51.100.1", "2001:db8::1"], &[]).await;
    world.seed_source(&["198.51.100.1"]).await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv4", "IPv6"]),
    )
    .await;
    let daemon = Daemon::start(config(&world, true));
    let derived = vec![("2001:db8::1".to_owned(), some(&a), some("zone-a"))];
    eventually(
        "the IPv6 slice derived from the Nodes",
        Duration::from_secs(10),
        || async { (endpoints_of(&world, "IPv6").await == derived).then_some(()) },
    )
    .await;
    daemon.stop().await;

    // The Node list fails (503) while the leader starts again.
    let since = tb.requests().last().map_or(0, |r| r.seq);
    tb.fail_until_healed(
        Match::any()
            .identity("node-1")
            .resource("nodes")
            .verb(Verb::List),
        Failure::ServiceUnavailable,
    );
    let daemon = Daemon::start(config(&world, true));
    eventually(
        "the restarted daemon to fail the Node list",
        Duration::from_secs(10),
        || async {
            tb.requests()
                .iter()
                .any(|r| r.seq > since && r.resource == "nodes" && r.code == 503)
                .then_some(())
        },
    )
    .await;
    // Long enough for a plan (the source and target lists are served) and a few Node retries.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tb.heal_failures();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deletes: Vec<_> = tb
        .requests()
        .into_iter()
        .filter(|r| r.seq > since && r.resource == "endpointslices" && r.verb == Verb::Delete)
        .collect();
    assert!(
        deletes.is_empty(),
        "deleted without a Node view: {deletes:#?}"
    );
    assert_eq!(endpoints_of(&world, "IPv6").await, derived);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_never_writes_an_evicted_apiserver_ready_before_its_view_is_complete() {
    let Some(ns) = netns::enter(
        "coldleader::a_restarted_leader_never_writes_an_evicted_apiserver_ready_before_its_view_is_complete",
    ) else {
        return;
    };
    let bed = Bed::new(ns).await;
    let tb = bed.world.testbed().unwrap();
    bed.ballot("node-2", &[B]).await;
    bed.ballot("node-3", &[B]).await;
    bed.api(B).set_mode(Mode::Refuse);
    let daemon = crate::common::Daemon::start(bed.config("node-1"));
    bed.published("node-1", B, Verdict::Down).await;
    bed.vip(&[A, C]).await;
    daemon.stop().await;

    // B answers again meanwhile, but the others still see it down. The restarted leader's own
    // ballot is empty at first and its member list comes 3 s late (its first two Lease LISTs:
    // the election Lease's watch and the members').
    bed.api(B).set_mode(Mode::Ok);
    let since = tb.requests().last().map_or(0, |r| r.seq);
    tb.delay_next(
        Match::any()
            .identity("node-1")
            .resource("leases")
            .verb(Verb::List),
        1,
        Duration::from_secs(3),
    );
    let daemon = crate::common::Daemon::start(bed.config("node-1"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    bed.vip(&[A, C]).await;
    let updates = tb
        .requests()
        .iter()
        .filter(|r| r.seq > since && r.identity == "node-1" && r.resource == "endpointslices")
        .filter(|r| r.verb.is_write())
        .count();
    assert_eq!(updates, 0, "the evicted apiserver stays as written");
    daemon.stop().await;
}
