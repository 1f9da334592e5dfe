//! The probes end to end: the real daemon probes stand-in apiservers at documentation-range
//! addresses inside a network namespace of the test's own (`common::netns`), publishes its
//! verdicts, and the leader writes what the quorum decides into the target. Other copies' ballots
//! are member Leases written by the test, as another host's daemon would write them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use endpoint_copier::config::Config;
use endpoint_copier::group::member::{member_lease, member_name};
use endpoint_copier::group::{Group, MemberRecord};
use endpoint_copier::probe::{Spec, Target, Verdict};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;

use crate::common::netns::{self, Listener, Mode, NetNs};
use crate::common::{Daemon, World, eventually, slices_of, wait_for_target};

/// How long a test waits for something the probes and the quorum must bring about. Generous: the
/// speed is the benchmark's business (`examples/bench_probe.rs`), not a test's.
pub(crate) const WITHIN: Duration = Duration::from_secs(10);

pub(crate) const A: &str = "198.51.100.21";
pub(crate) const B: &str = "198.51.100.22";
pub(crate) const C: &str = "198.51.100.23";

/// A world in the namespace with three stand-in apiservers (HTTPS, the test bed's CA, client
/// certificates required) behind its source, and a target in sync.
pub(crate) struct Bed {
    ns: Arc<NetNs>,
    pub(crate) world: World,
    /// The other hosts the test plays, with what each sees down; renewed every second.
    fakes: Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>>,
    apis: BTreeMap<&'static str, Listener>,
}

impl Bed {
    pub(crate) async fn new(ns: Arc<NetNs>) -> Bed {
        let world = World::new("evict").await;
        let tb = world.testbed().expect("probe tests run on the test bed");
        let mut apis = BTreeMap::new();
        for a in [A, B, C] {
            apis.insert(a, ns.listener(ip(a), 6443, Some(tb)).await);
        }
        world.seed(&[A, B, C]).await;
        let fakes: Arc<std::sync::Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
        let (client, namespace, renewed) = (world.client.clone(), world.ns.clone(), fakes.clone());
        // Ends with the test's runtime.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let all = renewed.lock().unwrap().clone();
                for (identity, down) in all {
                    write_ballot(&client, &namespace, &identity, &down).await;
                }
            }
        });
        Bed {
            ns,
            world,
            fakes,
            apis,
        }
    }

    /// The daemon config of `identity`, its pair probing `/readyz`.
    pub(crate) fn config(&self, identity: &str) -> Config {
        let mut c = self.world.config(identity);
        c.pairs[0].probe = Some(Spec::readyz());
        c
    }

    /// A config directory for the binary as `identity`, with the same pair and probe as
    /// [`Bed::config`] (Lease timings 4/2/1 s: the binary takes whole seconds).
    pub(crate) fn binary_config(&self, identity: &str) -> tempfile::TempDir {
        crate::common::drop_in_dir(
            &self.world,
            identity,
            "probe = { https = \"/readyz\" }",
            &format!(
                "duration_secs = 4\nrenew_deadline_secs = 2\nretry_period_secs = 1\nruntime_dir = \"{}\"",
                crate::common::runtime_dir().display()
            ),
        )
    }

    fn target(&self, a: &str) -> Target {
        target_of(a)
    }

    /// Writes (or rewrites) the member Lease of another host, `identity`, seeing `down` down
    /// and the rest of A, B, C up: the ballot that host's daemon would publish. From then on it
    /// is renewed every second, as a live host's daemon renews its member Lease (a ballot counts
    /// only once the leader has seen it renew).
    pub(crate) async fn ballot(&self, identity: &str, down: &[&str]) {
        let down: Vec<String> = down.iter().map(|a| (*a).to_owned()).collect();
        self.fakes
            .lock()
            .unwrap()
            .insert(identity.to_owned(), down.clone());
        write_ballot(&self.world.client, &self.world.ns, identity, &down).await;
    }

    /// Waits until `identity`'s own member Lease publishes `verdict` on `a`.
    pub(crate) async fn published(&self, identity: &str, a: &str, verdict: Verdict) {
        let group = Group::new(&self.world.ns, "endpoint-copier");
        let api: Api<Lease> = Api::namespaced(self.world.client.clone(), &self.world.ns);
        let name = member_name(&group, identity);
        let target = self.target(a);
        eventually(
            &format!("{identity} to publish {a} {verdict:?}"),
            WITHIN,
            || async {
                let lease = api.get_opt(&name).await.ok()??;
                let record = MemberRecord::from_lease(&lease).ok()?;
                (record.verdicts.get(&target) == Some(&verdict)).then_some(())
            },
        )
        .await;
    }

    /// Waits until the target's ready addresses are exactly `ready`, every address of A, B, C
    /// still in it (evicted ones not ready, not serving).
    pub(crate) async fn vip(&self, ready: &[&str]) {
        wait_for_target(&self.world.client, &self.world.ns, "vip", ready, WITHIN).await;
        let slices = slices_of(&self.world.client, &self.world.ns, "vip").await;
        let all: BTreeSet<String> = slices
            .values()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| e.addresses[0].clone())
            .collect();
        assert_eq!(all, BTreeSet::from([A.into(), B.into(), C.into()]));
        for e in slices.values().flat_map(|s| s.endpoints.iter()) {
            let c = e.conditions.clone().unwrap_or_default();
            if !ready.contains(&e.addresses[0].as_str()) {
                assert_eq!((c.ready, c.serving), (Some(false), Some(false)), "{e:?}");
            }
        }
    }

    /// Endpoint slice writes the test bed received so far.
    fn slice_writes(&self) -> usize {
        self.world
            .testbed()
            .unwrap()
            .requests()
            .iter()
            .filter(|r| r.resource == "endpointslices" && r.verb.is_write())
            .filter(|r| r.namespace.as_deref() == Some(self.world.ns.as_str()))
            .count()
    }

    pub(crate) fn api(&self, a: &str) -> &Listener {
        &self.apis[a]
    }
}

/// The probe target of apiserver `a`, as every host's daemon names it.
fn target_of(a: &str) -> Target {
    format!("https://{a}:6443/readyz").parse().unwrap()
}

/// Writes (or rewrites, with a new renew time) the member Lease of host `identity` in the
/// group of the world in `ns`, seeing `down` down and the rest of A, B, C up.
async fn write_ballot(client: &kube::Client, ns: &str, identity: &str, down: &[String]) {
    let group = Group::new(ns, "endpoint-copier");
    let mut record = MemberRecord::new(
        identity,
        [(
            format!("{ns}/apiserver").parse().unwrap(),
            format!("{ns}/vip").parse().unwrap(),
        )],
    );
    record.verdicts = [A, B, C]
        .into_iter()
        .map(|a| {
            let v = if down.iter().any(|d| d == a) {
                Verdict::Down
            } else {
                Verdict::Up
            };
            (target_of(a), v)
        })
        .collect();
    let lease = member_lease(&group, &record, Duration::from_secs(30), Timestamp::now()).unwrap();
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let name = lease.metadata.name.clone().unwrap();
    // A conflict with the test's own write of the same ballot is harmless: the next renewal
    // writes it again.
    match api.get_opt(&name).await.unwrap() {
        None => {
            let _ = api.create(&PostParams::default(), &lease).await;
        }
        Some(old) => {
            let mut lease = lease;
            lease.metadata.resource_version = old.metadata.resource_version;
            let _ = api.replace(&name, &PostParams::default(), &lease).await;
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One daemon alone (its own view decides): `mode` on B takes B out of the VIP, healing puts
/// it back; probes reach only the stand-ins, authenticated with the kubeconfig's certificate.
async fn evicted_and_returned(test: &str, mode: Mode) {
    let Some(ns) = netns::enter(test) else { return };
    let bed = Bed::new(ns).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;
    bed.published("node-1", B, Verdict::Up).await;

    bed.api(B).set_mode(mode);
    bed.vip(&[A, C]).await;
    bed.api(B).set_mode(Mode::Ok);
    bed.vip(&[A, B, C]).await;

    daemon.stop().await;
    for a in [A, B, C] {
        let requests = bed.api(a).requests();
        assert!(!requests.is_empty(), "{a} was probed");
        for r in requests {
            assert_eq!(r.path, "/readyz");
            // Over HTTPS with the node kubeconfig's client certificate (an Unauthorized stand-in
            // still saw who asked).
            assert_eq!(r.user.as_deref(), Some("node-1"), "{a}: {r:?}");
        }
    }
    bed.ns.assert_sealed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_apiserver_leaves_the_vip_and_returns() {
    evicted_and_returned(
        "eviction::a_refusing_apiserver_leaves_the_vip_and_returns",
        Mode::Refuse,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_apiserver_leaves_the_vip_and_returns() {
    evicted_and_returned(
        "eviction::a_hung_apiserver_leaves_the_vip_and_returns",
        Mode::Hang,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_apiserver_leaves_the_vip_and_returns() {
    evicted_and_returned(
        "eviction::a_black_holed_apiserver_leaves_the_vip_and_returns",
        Mode::BlackHole,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_answering_500_leaves_the_vip_and_returns() {
    evicted_and_returned(
        "eviction::an_apiserver_answering_500_leaves_the_vip_and_returns",
        Mode::Status(500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_answering_401_leaves_the_vip_and_returns() {
    evicted_and_returned(
        "eviction::an_apiserver_answering_401_leaves_the_vip_and_returns",
        Mode::Unauthorized,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_never_evicts_and_a_majority_does() {
    let Some(ns) = netns::enter("eviction::a_minority_never_evicts_and_a_majority_does") else {
        return;
    };
    let bed = Bed::new(ns).await;
    // Two other hosts, both seeing every apiserver up.
    bed.ballot("node-2", &[]).await;
    bed.ballot("node-3", &[]).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;

    // Only node-1 sees B down: one of three.
    bed.api(B).set_mode(Mode::Status(500));
    bed.published("node-1", B, Verdict::Down).await;
    let writes = bed.slice_writes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    bed.vip(&[A, B, C]).await;
    assert_eq!(bed.slice_writes(), writes, "a minority wrote nothing");

    // node-2 agrees: two of three.
    bed.ballot("node-2", &[B]).await;
    bed.vip(&[A, C]).await;
    // node-2 changes its mind: one of three again, B is back.
    bed.ballot("node-2", &[]).await;
    bed.vip(&[A, B, C]).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_apiserver_looks_down_the_vip_keeps_them() {
    let Some(ns) = netns::enter("eviction::when_every_apiserver_looks_down_the_vip_keeps_them")
    else {
        return;
    };
    let bed = Bed::new(ns).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;
    // This host sees everything down: it is presumed cut off, its votes do not count.
    for a in [A, B, C] {
        bed.api(a).set_mode(Mode::Refuse);
    }
    for a in [A, B, C] {
        bed.published("node-1", a, Verdict::Down).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    bed.vip(&[A, B, C]).await;

    // Two other hosts that see A and B down (not everything): a majority for A and B, and C,
    // which node-1 alone sees down, is kept. The VIP never empties.
    bed.ballot("node-2", &[A, B]).await;
    bed.ballot("node-3", &[A, B]).await;
    bed.vip(&[C]).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_ready_apiserver_is_never_evicted() {
    let Some(ns) = netns::enter("eviction::the_last_ready_apiserver_is_never_evicted") else {
        return;
    };
    let bed = Bed::new(ns).await;
    // node-2 and node-3 see everything but one down, each a different one: every apiserver has
    // a majority down and no host is cut off.
    bed.ballot("node-2", &[A, B]).await;
    bed.ballot("node-3", &[B, C]).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.api(A).set_mode(Mode::Refuse);
    bed.api(C).set_mode(Mode::Refuse);
    // node-1 sees A and C down, B up. Down votes: A 2, B 2, C 2 of 3: all evicted but one —
    // the fewest votes, then the lowest address: A stays.
    bed.published("node-1", A, Verdict::Down).await;
    bed.published("node-1", C, Verdict::Down).await;
    bed.vip(&[A]).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_apiserver_does_not_flap_the_vip() {
    let Some(ns) = netns::enter("eviction::a_flapping_apiserver_does_not_flap_the_vip") else {
        return;
    };
    let bed = Bed::new(ns).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;
    bed.published("node-1", B, Verdict::Up).await;
    let writes = bed.slice_writes();
    // Every other probe fails: never failure_threshold (2) failures in a row.
    bed.api(B).set_mode(Mode::Flap);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bed.api(B).request_count() > 10, "B kept being probed");
    bed.vip(&[A, B, C]).await;
    assert_eq!(bed.slice_writes(), writes, "the flapping wrote nothing");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leaders_own_apiserver_dies_with_it_a_follower_evicts_it() {
    let Some(ns) =
        netns::enter("eviction::when_the_leaders_own_apiserver_dies_with_it_a_follower_evicts_it")
    else {
        return;
    };
    let bed = Bed::new(ns).await;
    // The leader is a process of its own, so that killing it kills all of it (its Lease
    // renewals, its probes, its member Lease) as a host dying would.
    let dir = bed.binary_config("node-1");
    let mut leader = crate::binary::spawn_run(dir.path());
    bed.vip(&[A, B, C]).await;
    bed.published("node-1", A, Verdict::Up).await;
    let followers = [
        Daemon::start(bed.config("node-2")),
        Daemon::start(bed.config("node-3")),
    ];
    bed.published("node-2", A, Verdict::Up).await;
    bed.published("node-3", A, Verdict::Up).await;
    // node-1's host dies: its daemon and its apiserver (A) at once. Its member Lease still
    // looks live (30 s) with A up; node-2 and node-3 see A down: two of three.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(leader.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    leader.wait().unwrap();
    bed.api(A).set_mode(Mode::Refuse);
    bed.vip(&[B, C]).await;
    for f in followers {
        f.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_readyz_through_the_vip_and_shows_each_hosts_view() {
    let Some(ns) =
        netns::enter("eviction::check_probes_readyz_through_the_vip_and_shows_each_hosts_view")
    else {
        return;
    };
    let bed = Bed::new(ns).await;
    // MetalLB gave the target an address: a stand-in for the VIP answering as the apiservers do.
    const VIP: &str = "198.51.100.100";
    let tb = bed.world.testbed().unwrap();
    let vip = bed.ns.listener(ip(VIP), 6443, Some(tb)).await;
    tb.store()
        .replace_status(
            endpoint_copier_testbed::store::resource("", "v1", "services").unwrap(),
            Some(&bed.world.ns),
            "vip",
            serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": VIP}]}}}),
            &Default::default(),
        )
        .unwrap();
    bed.ballot("node-2", &[B]).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;
    bed.published("node-1", B, Verdict::Up).await;

    let report = endpoint_copier::inspect::check_report(&bed.config("node-1"))
        .await
        .unwrap();
    let pair = &report.pairs[0];
    assert_eq!(pair.probe.as_deref(), Some("{ https = \"/readyz\" }"));
    assert_eq!(pair.vip.len(), 1);
    assert!(pair.vip[0].ok, "{:?}", pair.vip[0]);
    assert_eq!(pair.vip[0].probe, format!("https://{VIP}:6443/readyz"));
    let b = pair.endpoints.iter().find(|e| e.address == B).unwrap();
    assert_eq!(
        (b.decision.as_str(), b.down.as_slice()),
        ("ready", &["node-2".to_owned()][..])
    );
    let members = report.group.as_ref().unwrap().members.as_ref().unwrap();
    let node2 = members.iter().find(|m| m.identity == "node-2").unwrap();
    assert!(
        node2
            .verdicts
            .iter()
            .any(|v| v.endpoint == bed.target(B).to_string() && v.verdict == "down")
    );

    // The VIP stops answering: a problem, named with what happened.
    vip.set_mode(Mode::Status(503));
    let report = endpoint_copier::inspect::check_report(&bed.config("node-1"))
        .await
        .unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("does not answer through the VIP") && p.contains("HTTP 503")),
        "{:?}",
        report.problems
    );
    daemon.stop().await;
}
