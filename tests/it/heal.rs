//! Faults in sequence: a host's connections to the API are black-holed and the network heals
//! (its watches sit on connections the server forgot), then the leader's host dies. The healed
//! host takes the Lease and must evict the dead apiserver from a fresh view: no conflict loop on
//! a stale cache, no quorum of one from a member view that stopped changing.
//!
//! Measured first on three real kube-apiservers (`ha-kill.sh N --partition`, `ha-revive.sh N`,
//! then the leader's host powered off): the dead apiserver stayed ready in the VIP for as long as
//! anyone watched. `Partition::BlackHole` is the test bed's model of that cut.

use std::time::Duration;

use endpoint_copier::probe::Verdict;
use endpoint_copier_testbed::{Partition, Verb};
use tokio::time::Instant;

use crate::common::netns::{self, Mode};
use crate::common::{Daemon, eventually};
use crate::eviction::{A, B, Bed, C, WITHIN};

/// How long the follower's connections are black-holed (the real run: 25 s; the member and Lease
/// timings here are shorter, so 6 s outlasts every request's deadline and a member heartbeat's
/// worth of renewals).
const CUT: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_and_healed_evicts_the_dead_leaders_apiserver_when_it_takes_over() {
    let Some(ns) = netns::enter(
        "heal::a_host_cut_off_and_healed_evicts_the_dead_leaders_apiserver_when_it_takes_over",
    ) else {
        return;
    };
    let bed = Bed::new(ns).await;
    let tb = bed
        .world
        .testbed()
        .expect("the black hole is a test bed fault");
    // node-3 is a host whose daemon the test plays (its ballot renewed every second, seeing
    // what a live host would). It is no candidate, so node-2 is the one that takes over.
    bed.ballot("node-3", &[]).await;
    let dir = bed.binary_config("node-1");
    let mut leader = crate::binary::spawn_run(dir.path());
    bed.vip(&[A, B, C]).await;
    bed.published("node-1", A, Verdict::Up).await;
    let node2 = Daemon::start(bed.config("node-2"));
    bed.published("node-2", A, Verdict::Up).await;

    // node-2's connections to the API are black-holed, then the network heals.
    tb.partition("node-2", Partition::BlackHole);
    tokio::time::sleep(CUT).await;
    tb.heal("node-2");
    // Its member Lease is written again once its client answers (the heal edge).
    let healed = Instant::now();
    eventually("node-2 to write again after the heal", WITHIN, || async {
        tb.requests()
            .iter()
            .any(|r| {
                r.identity == "node-2"
                    && r.resource == "leases"
                    && r.verb.is_write()
                    && r.code == 200
                    && r.at > healed.into_std()
            })
            .then_some(())
    })
    .await;

    // node-1's host dies: its daemon and its apiserver at once.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(leader.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    leader.wait().unwrap();
    bed.api(A).set_mode(Mode::Refuse);
    bed.ballot("node-3", &[A]).await;
    let died = Instant::now();
    bed.vip(&[B, C]).await;
    eprintln!(
        "the dead apiserver left the VIP {:?} after its host died",
        died.elapsed()
    );

    let conflicts = tb
        .requests()
        .iter()
        .filter(|r| r.identity == "node-2" && r.resource == "endpointslices")
        .filter(|r| r.verb == Verb::Update && r.code == 409)
        .count();
    assert!(
        conflicts <= 3,
        "{conflicts} conflicts: a loop on a stale cache"
    );
    node2.stop().await;
}
