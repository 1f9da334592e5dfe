//! Copier groups against the test bed: member Leases published by each copy, renewed per
//! heartbeat through conflicts, watched into `Members` (stale when a publisher stops, live again
//! when it restarts), and invisible across groups; and the precondition delete of a member gone
//! for good.
//!
//! These tests need the test bed (identities, fault injection, request log), so they do not run
//! against a real cluster. They run in real time with short settings (200 ms heartbeats, 1 s
//! expiry) and wait for conditions, never for fixed sleeps, except where the behaviour under test
//! is that something stops happening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endpoint_copier::group::live::{self, Wanted};
use endpoint_copier::group::member::{self, MemberRecord, member_name};
use endpoint_copier::group::{Group, Members, Settings};
use endpoint_copier::names::{self, ServiceRef};
use endpoint_copier_testbed::{Failure, Match, TestBed, Verb};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "kube-system";
const SETTINGS: Settings = Settings {
    heartbeat: Duration::from_millis(200),
    expiry: Duration::from_secs(1),
    forget_after: Duration::from_secs(3),
};
/// Generous bound for anything that should happen within a heartbeat or two on a loaded machine.
const LIMIT: Duration = Duration::from_secs(10);

async fn client_for(kubeconfig: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn svc(s: &str) -> ServiceRef {
    s.parse().unwrap()
}

fn record(identity: &str, targets: &[&str]) -> MemberRecord {
    MemberRecord::new(
        identity,
        targets
            .iter()
            .map(|t| (svc("default/kubernetes"), svc(&format!("default/{t}")))),
    )
}

/// One copy's publisher, with its own client identity (so faults and the request log tell
/// copies apart) and a sender to change its record.
struct Publisher {
    record: watch::Sender<MemberRecord>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), member::Error>>,
}

impl Publisher {
    async fn start(bed: &TestBed, group: &Group, record: MemberRecord) -> Publisher {
        let client = client_for(&bed.kubeconfig_for(&record.identity)).await;
        let (tx, rx) = watch::channel(record);
        let stop = CancellationToken::new();
        let task = tokio::spawn(member::publish(
            Api::namespaced(client, NAMESPACE),
            group.clone(),
            rx,
            SETTINGS,
            stop.clone(),
        ));
        Publisher {
            record: tx,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("the publisher stops at once")
            .unwrap()
            .unwrap();
    }
}

/// A member watch of `group` applied into `Members` as its events arrive, as the engine does.
struct Observer {
    members: Arc<Mutex<Members>>,
    task: JoinHandle<()>,
}

impl Observer {
    async fn start(bed: &TestBed, group: &Group, identity: &str) -> Observer {
        let client = client_for(&bed.kubeconfig_for(identity)).await;
        let members = Arc::new(Mutex::new(Members::new(SETTINGS, identity)));
        let mut events = live::watch(&client, group);
        let task = tokio::spawn({
            let members = members.clone();
            async move {
                while let Some(event) = events.next().await {
                    if let Ok(event) = event {
                        members.lock().unwrap().apply(event, Instant::now());
                    }
                }
            }
        });
        Observer { members, task }
    }

    /// Waits until `check` holds for the members as seen now.
    async fn until(&self, what: &str, check: impl Fn(&Members, Instant) -> bool) {
        let deadline = Instant::now() + LIMIT;
        loop {
            if check(&self.members.lock().unwrap(), Instant::now()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn member_lease(client: &Client, group: &Group, identity: &str) -> Option<Lease> {
    Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get_opt(&member_name(group, identity))
        .await
        .unwrap()
}

/// Waits until `identity`'s member Lease exists and satisfies `check`.
async fn until_lease(
    client: &Client,
    group: &Group,
    identity: &str,
    check: impl Fn(&Lease) -> bool,
) -> Lease {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(lease) = member_lease(client, group, identity).await
            && check(&lease)
        {
            return lease;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the member Lease of {identity}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Successful member Lease updates sent by `identity` so far.
fn renewals(bed: &TestBed, identity: &str) -> usize {
    bed.requests()
        .iter()
        .filter(|r| {
            r.identity == identity
                && r.resource == "leases"
                && r.verb == Verb::Update
                && r.code == 200
        })
        .count()
}

#[tokio::test]
async fn two_publishers_create_two_member_leases_with_labels_and_pairs() {
    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("tester")).await;
    let group = Group::default_group();
    let one = Publisher::start(&bed, &group, record("node-1", &["kubernetes-vip"])).await;
    let two = Publisher::start(&bed, &group, record("node-2", &["kubernetes-vip", "b"])).await;

    for (identity, pairs) in [
        (
            "node-1",
            r#"[{"source":"default/kubernetes","target":"default/kubernetes-vip"}]"#,
        ),
        (
            "node-2",
            r#"[{"source":"default/kubernetes","target":"default/b"},{"source":"default/kubernetes","target":"default/kubernetes-vip"}]"#,
        ),
    ] {
        let lease = until_lease(&client, &group, identity, |_| true).await;
        let labels = lease.metadata.labels.clone().unwrap();
        assert_eq!(labels[names::GROUP_LABEL], "kube-system.endpoint-copier");
        assert_eq!(labels[names::MEMBER_LABEL], "true");
        assert_eq!(
            lease.metadata.annotations.as_ref().unwrap()[names::MEMBER_PAIRS_ANNOTATION],
            pairs
        );
        let spec = lease.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(identity));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert!(spec.renew_time.is_some());
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn the_member_lease_is_renewed_every_heartbeat_and_survives_a_conflict() {
    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("tester")).await;
    let group = Group::default_group();
    let one = Publisher::start(&bed, &group, record("node-1", &["kubernetes-vip"])).await;
    until_lease(&client, &group, "node-1", |_| true).await;

    // About five renewals a second at a 200 ms heartbeat.
    let before = renewals(&bed, "node-1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = renewals(&bed, "node-1") - before;
    assert!(
        (2..=8).contains(&per_second),
        "{per_second} renewals in 1 s"
    );

    bed.fail_next(
        Match {
            identity: Some("node-1".into()),
            verb: Some(Verb::Update),
            resource: Some("leases".into()),
            ..Match::default()
        },
        1,
        Failure::Conflict,
    );
    let conflicted = bed.requests().len();
    let deadline = Instant::now() + LIMIT;
    // The conflict was answered, then renewals go on.
    loop {
        let log = bed.requests();
        let after: Vec<_> = log[conflicted..]
            .iter()
            .filter(|r| r.identity == "node-1" && r.resource == "leases")
            .collect();
        let conflict = after
            .iter()
            .position(|r| r.verb == Verb::Update && r.code == 409);
        if let Some(at) = conflict
            && after[at..]
                .iter()
                .filter(|r| r.verb == Verb::Update && r.code == 200)
                .count()
                >= 2
        {
            break;
        }
        assert!(Instant::now() < deadline, "no renewal after the conflict");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one.stop().await;
}

#[tokio::test]
async fn a_changed_record_is_written_at_once() {
    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("tester")).await;
    let group = Group::default_group();
    let one = Publisher::start(&bed, &group, record("node-1", &["kubernetes-vip"])).await;
    until_lease(&client, &group, "node-1", |_| true).await;
    one.record.send_replace(record("node-1", &[]));
    until_lease(&client, &group, "node-1", |l| {
        l.metadata.annotations.as_ref().unwrap()[names::MEMBER_PAIRS_ANNOTATION] == "[]"
    })
    .await;
    one.stop().await;
}

#[tokio::test]
async fn the_watcher_sees_a_member_go_stale_when_its_publisher_stops_and_live_when_it_restarts() {
    let bed = TestBed::start().await;
    let group = Group::default_group();
    let target = svc("default/kubernetes-vip");
    let leader = Observer::start(&bed, &group, "node-1").await;
    let two = Publisher::start(&bed, &group, record("node-2", &["kubernetes-vip"])).await;
    leader
        .until("node-2 live", |m, now| {
            m.who_wants(&target, now) == Wanted::Live(vec!["node-2".into()])
        })
        .await;

    // Stopping leaves the object in place: node-2 turns stale, and still holds its target.
    two.stop().await;
    leader
        .until("node-2 stale", |m, now| {
            m.who_wants(&target, now) == Wanted::Stale(vec!["node-2".into()])
        })
        .await;
    assert!(
        leader
            .members
            .lock()
            .unwrap()
            .live(Instant::now())
            .is_empty()
    );

    let two = Publisher::start(&bed, &group, record("node-2", &["kubernetes-vip"])).await;
    leader
        .until("node-2 live again", |m, now| {
            m.live(now).contains_key("node-2")
        })
        .await;
    two.stop().await;
}

#[tokio::test]
async fn a_member_gone_for_good_is_forgotten_only_if_unchanged() {
    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("tester")).await;
    let group = Group::default_group();
    let target = svc("default/kubernetes-vip");
    let leader = Observer::start(&bed, &group, "node-1").await;
    let two = Publisher::start(&bed, &group, record("node-2", &["kubernetes-vip"])).await;
    leader
        .until("node-2 live", |m, now| m.live(now).contains_key("node-2"))
        .await;
    two.stop().await;
    leader
        .until("node-2 gone for good", |m, now| {
            m.gone_for_good(now).len() == 1 && m.who_wants(&target, now) == Wanted::Nobody
        })
        .await;
    let gone = leader.members.lock().unwrap().gone_for_good(Instant::now())[0].clone();
    let api = Api::<Lease>::namespaced(client.clone(), NAMESPACE);
    let uid = gone.uid.clone().unwrap();
    // A stale resourceVersion (the member came back in between) is refused.
    assert!(!member::forget(&api, &gone.name, &uid, "1").await.unwrap());
    assert!(member_lease(&client, &group, "node-2").await.is_some());
    let rv = gone.resource_version.clone().unwrap();
    assert!(member::forget(&api, &gone.name, &uid, &rv).await.unwrap());
    assert!(member_lease(&client, &group, "node-2").await.is_none());
    leader
        .until("node-2 dropped", |m, now| m.gone_for_good(now).is_empty())
        .await;
}

#[tokio::test]
async fn a_publisher_of_one_group_is_invisible_to_another_groups_watcher() {
    let bed = TestBed::start().await;
    let a = Group::new(NAMESPACE, "endpoint-copier");
    let b = Group::new(NAMESPACE, "edge-copier");
    let target = svc("default/kubernetes-vip");
    let watcher_b = Observer::start(&bed, &b, "node-b").await;
    let watcher_a = Observer::start(&bed, &a, "node-x").await;
    let one = Publisher::start(&bed, &a, record("node-1", &["kubernetes-vip"])).await;
    watcher_a
        .until("node-1 live in group A", |m, now| {
            m.live(now).contains_key("node-1")
        })
        .await;
    watcher_b.until("group B listed", |m, _| m.is_ready()).await;
    // What must not happen is an event reaching B: give it the time one would take.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let members_b = watcher_b.members.lock().unwrap().clone();
    let now = Instant::now();
    assert!(members_b.live(now).is_empty());
    assert_eq!(members_b.who_wants(&target, now), Wanted::Nobody);
    one.stop().await;
}

#[tokio::test]
async fn the_group_selectors_list_exactly_the_slices_the_group_owns() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::api::{ListParams, PostParams};
    use std::collections::{BTreeMap, BTreeSet};

    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("tester")).await;
    let api = Api::<EndpointSlice>::namespaced(client, "default");
    let default = Group::default_group();
    let edge = Group::new(NAMESPACE, "edge-copier");
    let managed = (names::MANAGED_BY_LABEL, names::MANAGED_BY);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("old", vec![managed]),
        (
            "ours",
            vec![managed, (names::GROUP_LABEL, default.label_value())],
        ),
        (
            "edges",
            vec![managed, (names::GROUP_LABEL, edge.label_value())],
        ),
        (
            "controllers",
            vec![(names::MANAGED_BY_LABEL, "endpointslice-controller.k8s.io")],
        ),
    ];
    for (name, labels) in &cases {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some((*name).to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Vec::new(),
            ports: None,
        };
        api.create(&PostParams::default(), &slice).await.unwrap();
    }
    for group in [&default, &edge] {
        let mut listed = BTreeSet::new();
        for selector in group.label_selectors() {
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .unwrap();
            for slice in list.items {
                // The selectors never overlap: each slice is listed once.
                assert!(listed.insert(slice.metadata.name.clone().unwrap()));
            }
        }
        let owned: BTreeSet<String> = cases
            .iter()
            .filter(|(_, labels)| {
                // The one ownership rule the plan uses: `desired::manager_of` says `Us`.
                let slice = k8s_openapi::api::discovery::v1::EndpointSlice {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        labels: Some(
                            labels
                                .iter()
                                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                                .collect(),
                        ),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                endpoint_copier::desired::manager_of(&slice, &group.owner())
                    == endpoint_copier::desired::Manager::Us
            })
            .map(|(name, _)| (*name).to_owned())
            .collect();
        assert!(!owned.is_empty());
        assert_eq!(listed, owned, "group {group}");
    }
}
