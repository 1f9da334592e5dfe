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
use endpoint_copier::names;
use endpoint_copier::probe::{Spec, Target, Verdict};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

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
        Bed::with_sans(ns, &[]).await
    }

    /// As [`Bed::new`], but the stand-ins named in `sans` serve a certificate for those IP
    /// addresses instead of their own.
    async fn with_sans(ns: Arc<NetNs>, sans: &[(&str, &[&str])]) -> Bed {
        let world = World::new("evict").await;
        let tb = world.testbed().expect("probe tests run on the test bed");
        let mut apis = BTreeMap::new();
        for a in [A, B, C] {
            let names: Vec<IpAddr> = sans.iter().find(|(of, _)| *of == a).map_or_else(
                || vec![ip(a)],
                |(_, names)| names.iter().map(|n| ip(n)).collect(),
            );
            apis.insert(
                a,
                ns.listener_with_sans(ip(a), 6443, Some(tb), &names).await,
            );
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

    /// `identity`'s member record as published now, if readable.
    async fn record(&self, identity: &str) -> Option<MemberRecord> {
        let group = Group::new(&self.world.ns, "endpoint-copier");
        let api: Api<Lease> = Api::namespaced(self.world.client.clone(), &self.world.ns);
        let lease = api.get_opt(&member_name(&group, identity)).await.ok()??;
        MemberRecord::from_lease(&lease).ok()
    }

    /// Creates a selectorless target Service `name` in the world's namespace, annotated to
    /// mirror the world's source with `probe` as its `endpoint-copier/probe`.
    async fn annotated_target(&self, name: &str, probe: &str) {
        self.world
            .create_annotated(
                name,
                &[
                    (names::ANNOTATION_ENABLED, "true"),
                    (names::ANNOTATION_SOURCE_NAME, "apiserver"),
                    (names::ANNOTATION_PROBE, probe),
                ],
            )
            .await;
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

// ---------------------------------------------------------------------------------------------
// Trust: what a probe from an annotation may send; certificate trouble is not a verdict.
// ---------------------------------------------------------------------------------------------

/// Every request each stand-in received, with the stand-in's address.
fn requests(bed: &Bed) -> Vec<(&'static str, netns::Received)> {
    [A, B, C]
        .into_iter()
        .flat_map(|a| bed.api(a).requests().into_iter().map(move |r| (a, r)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pair_probing_an_api_path_is_refused_with_an_event_and_held_as_it_was() {
    let Some(ns) = netns::enter(
        "eviction::an_annotated_pair_probing_an_api_path_is_refused_with_an_event_and_held_as_it_was",
    ) else {
        return;
    };
    let bed = Bed::new(ns).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;
    // A tenant's pair, first with a health path: mirrored.
    bed.annotated_target("tenant", "{ https = \"/livez\" }")
        .await;
    wait_for_target(
        &bed.world.client,
        &bed.world.ns,
        "tenant",
        &[A, B, C],
        WITHIN,
    )
    .await;

    // Then asking every host to LIST every pod on every apiserver with the node's credentials.
    let api: Api<Service> = Api::namespaced(bed.world.client.clone(), &bed.world.ns);
    let patch = serde_json::json!({"metadata": {"annotations": {
        names::ANNOTATION_PROBE: "{ https = \"/api/v1/pods\" }"
    }}});
    api.patch("tenant", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(bed.world.client.clone(), &bed.world.ns);
    let note = eventually("a Refused Event on tenant", WITHIN, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            let about = e.regarding.as_ref().and_then(|r| r.name.clone());
            (e.reason.as_deref() == Some("Refused") && about.as_deref() == Some("tenant"))
                .then(|| e.note.unwrap_or_default())
        })
    })
    .await;
    assert!(
        note.contains("endpoint-copier/probe='{ https = \"/api/v1/pods\" }'")
            && note.contains("is not a health endpoint"),
        "the Event names the Service's annotation and its value: {note}"
    );
    // Held: the tenant's slices stay as they were (never blanked), the VIP's pair goes on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_for_target(
        &bed.world.client,
        &bed.world.ns,
        "tenant",
        &[A, B, C],
        WITHIN,
    )
    .await;
    bed.vip(&[A, B, C]).await;
    daemon.stop().await;
    let paths: BTreeSet<String> = requests(&bed).into_iter().map(|(_, r)| r.path).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["/livez".to_owned(), "/readyz".to_owned()]),
        "no API path was ever probed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_from_annotations_carry_no_credential_and_only_the_configs_carry_the_nodes() {
    let Some(ns) = netns::enter(
        "eviction::probes_from_annotations_carry_no_credential_and_only_the_configs_carry_the_nodes",
    ) else {
        return;
    };
    let bed = Bed::new(ns).await;
    // The config probes /readyz; one tenant asks for /livez, another for /readyz (what the
    // config probes anyway: shared, no request of its own).
    bed.annotated_target("tenant-livez", "{ https = \"/livez\" }")
        .await;
    bed.annotated_target("tenant-readyz", "{ https = \"/readyz\", port = 6443 }")
        .await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;
    let livez = |a: &str| -> Target { format!("https://{a}:6443/livez").parse().unwrap() };
    // The stand-ins refuse anonymous requests, as RKE2's apiservers do: the host abstains on
    // the /livez targets (no vote either way) and says why.
    let record = eventually(
        "node-1 to abstain on every /livez target",
        WITHIN,
        || async {
            let r = bed.record("node-1").await?;
            [A, B, C]
                .iter()
                .all(|a| r.abstained.contains_key(&livez(a)))
                .then_some(r)
        },
    )
    .await;
    for a in [A, B, C] {
        assert!(
            record.abstained[&livez(a)]
                .starts_with("HTTP 401: the endpoint refuses anonymous probes"),
            "{:?}",
            record.abstained
        );
        assert!(!record.verdicts.contains_key(&livez(a)));
        assert_eq!(record.verdicts.get(&bed.target(a)), Some(&Verdict::Up));
    }
    // Abstentions never evict: the tenant's target keeps every endpoint.
    wait_for_target(
        &bed.world.client,
        &bed.world.ns,
        "tenant-livez",
        &[A, B, C],
        WITHIN,
    )
    .await;
    wait_for_target(
        &bed.world.client,
        &bed.world.ns,
        "tenant-readyz",
        &[A, B, C],
        WITHIN,
    )
    .await;
    daemon.stop().await;

    let all = requests(&bed);
    for (a, r) in &all {
        match r.path.as_str() {
            "/livez" => assert!(
                !r.has_credentials() && r.user.is_none(),
                "{a}: a probe from an annotation carried a credential: {r:?}"
            ),
            "/readyz" => assert_eq!(r.user.as_deref(), Some("node-1"), "{a}: {r:?}"),
            other => panic!("{a}: unexpected path {other}"),
        }
    }
    for a in [A, B, C] {
        assert!(all.iter().any(|(at, r)| *at == a && r.path == "/livez"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_the_endpoint_address_makes_the_host_abstain_and_check_names_the_san()
{
    let Some(ns) = netns::enter(
        "eviction::a_certificate_without_the_endpoint_address_makes_the_host_abstain_and_check_names_the_san",
    ) else {
        return;
    };
    // C's apiserver serves a certificate for another address only (a derived IPv6 address or an
    // ExternalIP missing from its SANs).
    const OTHER: &str = "198.51.100.29";
    let bed = Bed::with_sans(ns, &[(C, &[OTHER])]).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;
    let record = eventually("node-1 to abstain on C", WITHIN, || async {
        let r = bed.record("node-1").await?;
        (r.abstained.contains_key(&bed.target(C)) && r.verdicts.len() == 2).then_some(r)
    })
    .await;
    // No vote on C at all, a reason naming what the certificate has instead.
    assert!(!record.verdicts.contains_key(&bed.target(C)), "{record:?}");
    assert_eq!(
        record.abstained[&bed.target(C)],
        format!("TLS: the certificate does not name {C} (its subject alternative names: {OTHER})")
    );
    // Never a vote down: C stays in the VIP (a single host's own view decides here).
    tokio::time::sleep(Duration::from_secs(1)).await;
    bed.vip(&[A, B, C]).await;

    let report = endpoint_copier::inspect::check_report(&bed.config("node-1"))
        .await
        .unwrap();
    let problem = report
        .problems
        .iter()
        .find(|p| p.contains(&format!("this host cannot judge {C}")))
        .unwrap_or_else(|| panic!("no problem about C: {:?}", report.problems));
    assert!(
        problem.contains(&format!(
            "does not name {C} (its subject alternative names: {OTHER})"
        )),
        "{problem}"
    );
    let c = report.pairs[0]
        .endpoints
        .iter()
        .find(|e| e.address == C)
        .unwrap();
    assert!(c.abstains_here.is_some() && c.down.is_empty(), "{c:?}");
    // `status` shows the member's abstention with its reason.
    let status = endpoint_copier::inspect::status_report(&bed.config("node-1"))
        .await
        .unwrap();
    let members = status.group.as_ref().unwrap().members.as_ref().unwrap();
    let node1 = members.iter().find(|m| m.identity == "node-1").unwrap();
    let seen = node1
        .verdicts
        .iter()
        .find(|v| v.endpoint == bed.target(C).to_string())
        .unwrap();
    assert_eq!(seen.verdict, "abstains");
    assert!(seen.reason.as_deref().unwrap().contains(OTHER), "{seen:?}");
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.starts_with("host node-1 cannot judge") && w.contains(OTHER)),
        "{:?}",
        status.warnings
    );
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Flap damping: an evicted endpoint returns only after `min_up` of passing probes, and each host
// writes its member Lease at most about once a second.
// ---------------------------------------------------------------------------------------------

/// Member Lease writes of `identity` the test bed received so far.
fn member_writes(bed: &Bed, identity: &str) -> usize {
    let name = member_name(&Group::new(&bed.world.ns, "endpoint-copier"), identity);
    bed.world
        .testbed()
        .unwrap()
        .requests()
        .iter()
        .filter(|r| r.resource == "leases" && r.verb.is_write())
        .filter(|r| r.name.as_deref() == Some(name.as_str()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_apiserver_is_evicted_once_and_returns_only_after_min_up_of_passing_probes() {
    let Some(ns) = netns::enter(
        "eviction::a_flaky_apiserver_is_evicted_once_and_returns_only_after_min_up_of_passing_probes",
    ) else {
        return;
    };
    let bed = Bed::new(ns).await;
    let daemon = Daemon::start(bed.config("node-1"));
    bed.vip(&[A, B, C]).await;
    bed.published("node-1", B, Verdict::Up).await;
    // 70 % of B's answers fail: two failures in a row come fast, seven passes in a row (2 s of
    // them) almost never (0.3^7).
    bed.api(B).set_mode(Mode::Flaky(70));
    bed.vip(&[A, C]).await;
    let (slices, members) = (bed.slice_writes(), member_writes(&bed, "node-1"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(bed.api(B).request_count() > 20, "B kept being probed");
    bed.vip(&[A, C]).await;
    assert_eq!(bed.slice_writes(), slices, "B stayed out: no slice write");
    // No verdict change, so at most a heartbeat (every 10 s) in these 5 s.
    let more = member_writes(&bed, "node-1") - members;
    assert!(more <= 1, "{more} member writes while B flapped");

    // Steady again: back only after min_up (2 s) of passing probes. (Failing for a moment
    // first, so that no streak of passes began before the heal.)
    bed.api(B).set_mode(Mode::Status(500));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let healed = tokio::time::Instant::now();
    bed.api(B).set_mode(Mode::Ok);
    bed.vip(&[A, B, C]).await;
    let back = healed.elapsed();
    let min_up = endpoint_copier::probe::Timing::default().min_up;
    assert!(
        back >= min_up,
        "back after {back:?}, before min_up {min_up:?}"
    );
    daemon.stop().await;
}

/// A Lease API in memory for the publisher: GET (404 until created), POST and PUT, each write
/// timed on tokio's clock. No sockets, so paused time advances on its own.
fn lease_api(writes: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>) -> kube::Client {
    use http_body_util::BodyExt;
    let stored: Arc<std::sync::Mutex<Option<Lease>>> = Arc::default();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (stored, writes) = (Arc::clone(&stored), Arc::clone(&writes));
        async move {
            let method = request.method().clone();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let (status, answer) = if method == http::Method::GET {
                match stored.lock().unwrap().clone() {
                    Some(lease) => (200, serde_json::to_vec(&lease).unwrap()),
                    None => (
                        404,
                        serde_json::to_vec(&serde_json::json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "not found"
                        }))
                        .unwrap(),
                    ),
                }
            } else {
                writes.lock().unwrap().push(tokio::time::Instant::now());
                let mut lease: Lease = serde_json::from_slice(&body).unwrap();
                let n = writes.lock().unwrap().len();
                lease.metadata.resource_version = Some(n.to_string());
                *stored.lock().unwrap() = Some(lease.clone());
                (200, serde_json::to_vec(&lease).unwrap())
            };
            let response = http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    kube::Client::new(service, "kube-system")
}

#[tokio::test(start_paused = true)]
async fn a_host_writes_its_member_lease_at_most_about_once_a_second_however_fast_verdicts_change() {
    let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = lease_api(Arc::clone(&writes));
    let mut record = MemberRecord::new("node-1", []);
    let (tx, rx) = tokio::sync::watch::channel(record.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn(endpoint_copier::group::publish(
        Api::namespaced(client, "kube-system"),
        Group::default_group(),
        rx,
        endpoint_copier::group::Settings::default(),
        endpoint_copier::group::health::SelfHealth::new(Duration::from_secs(60)),
        endpoint_copier::clock::Clock::System,
        shutdown.clone(),
    ));
    // A verdict flips every 100 ms for 20 s: 200 changes, what a flapping endpoint without
    // damping could cost.
    let target = |up: bool| -> BTreeMap<Target, Verdict> {
        BTreeMap::from([(
            "https://198.51.100.21:6443/readyz".parse().unwrap(),
            if up { Verdict::Up } else { Verdict::Down },
        )])
    };
    let started = tokio::time::Instant::now();
    for i in 0..200 {
        record.verdicts = target(i % 2 == 0);
        tx.send_replace(record.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    publisher.await.unwrap();
    let writes = writes.lock().unwrap().clone();
    // The first write at once, then at most one a second (the heartbeat adds none: a change is
    // always pending sooner).
    let most = 1 + elapsed.as_secs() as usize;
    assert!(
        writes.len() <= most,
        "{} writes in {elapsed:?}, more than {most}",
        writes.len()
    );
    assert!(
        writes.len() >= most - 2,
        "changes kept being written: {}",
        writes.len()
    );
    for pair in writes.windows(2) {
        assert!(
            pair[1] - pair[0] >= endpoint_copier::group::member::MIN_WRITE_GAP,
            "two writes {:?} apart",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_targets_the_rest_is_not_probed_and_check_says_so() {
    let Some(ns) =
        netns::enter("eviction::over_max_targets_the_rest_is_not_probed_and_check_says_so")
    else {
        return;
    };
    let bed = Bed::new(ns).await;
    let mut config = bed.config("node-1");
    config.probe.max_targets = 2;
    let daemon = Daemon::start(config.clone());
    bed.vip(&[A, B, C]).await;
    // The lowest two targets are probed and voted on; C is not probed at all, so it has no
    // vote and stays as its source says.
    let record = eventually("node-1 to vote on A and B", WITHIN, || async {
        let r = bed.record("node-1").await?;
        (r.verdicts.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(
        record.verdicts.keys().cloned().collect::<Vec<_>>(),
        vec![bed.target(A), bed.target(B)]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bed.api(C).request_count(), 0, "C is over the cap");
    bed.vip(&[A, B, C]).await;
    let report = endpoint_copier::inspect::check_report(&config)
        .await
        .unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w
                .contains("3 probe targets, more than [probe] max_targets (2): 1 are not probed")),
        "{:?}",
        report.warnings
    );
    daemon.stop().await;
}
