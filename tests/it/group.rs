//! Copier groups against the test bed: member Leases published by each copy (in a namespace of
//! their own, created when missing), renewed per heartbeat through conflicts, kept writable by a
//! size budget (3,000 targets) and written again smaller when the API refuses one, watched into
//! `Members` (stale when a publisher stops, live again when it restarts, a forged duration
//! capped, two processes under one identity told apart and not counted, members of an older
//! version read where they kept them), and invisible across groups; and the precondition delete
//! of a member gone for good.
//!
//! These tests need the test bed (identities, fault injection, request log), so they do not run
//! against a real cluster. They run in real time with short settings (200 ms heartbeats, 1 s
//! expiry) and wait for conditions, never for fixed sleeps, except where the behaviour under test
//! is that something stops happening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endpoint_copier::group::health::Publisher as PublisherState;
use endpoint_copier::group::live::{self, Wanted};
use endpoint_copier::group::member::{self, MemberRecord, legacy_member_name, member_name};
use endpoint_copier::group::twins::{Twin, fresh_nonce};
use endpoint_copier::group::wire::{Form, RECORD_BUDGET};
use endpoint_copier::group::{Group, Members, SelfHealth, Settings, publish};
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
/// copies apart), its own process nonce, and a sender to change its record.
struct Publisher {
    record: watch::Sender<MemberRecord>,
    health: SelfHealth,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Publisher {
    async fn start(bed: &TestBed, group: &Group, record: MemberRecord) -> Publisher {
        let client = client_for(&bed.kubeconfig_for(&record.identity)).await;
        Publisher::start_as(client, group, record)
    }

    /// A publisher talking through `client`, as a process of its own (a fresh nonce).
    fn start_as(client: Client, group: &Group, record: MemberRecord) -> Publisher {
        let (tx, rx) = watch::channel(record.with_nonce(&fresh_nonce()));
        let health = SelfHealth::new(2 * SETTINGS.expiry);
        let stop = CancellationToken::new();
        let task = tokio::spawn(publish(
            Api::namespaced(client, NAMESPACE),
            group.clone(),
            rx,
            SETTINGS,
            health.clone(),
            endpoint_copier::clock::Clock::System,
            stop.clone(),
        ));
        Publisher {
            record: tx,
            health,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("the publisher stops at once")
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
    Api::<Lease>::namespaced(client.clone(), group.members_namespace())
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
        // In their own namespace, which the first publisher created.
        assert_eq!(lease.metadata.namespace.as_deref(), Some("endpoint-copier"));
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
    let api = Api::<Lease>::namespaced(client.clone(), &gone.namespace);
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

/// A record of `identity` seeing `n` distinct HTTPS targets, one in seven down.
fn record_with_targets(identity: &str, n: u32) -> MemberRecord {
    use endpoint_copier::probe::{Target, Verdict};
    let mut r = record(identity, &["kubernetes-vip"]);
    for i in 0..n {
        let [a, b] = u16::try_from(i).unwrap().to_be_bytes();
        let target: Target = format!(
            "https://198.51.{}.{b}:{}/readyz",
            100 + a % 3,
            6443 + u32::from(a) / 3
        )
        .parse()
        .unwrap();
        let verdict = if i % 7 == 0 {
            Verdict::Down
        } else {
            Verdict::Up
        };
        r.verdicts_since
            .insert(target.clone(), jiff::Timestamp::now());
        r.verdicts.insert(target, verdict);
    }
    r
}

/// Bytes of a Lease's annotations as the API counts them against its 256 KiB limit.
fn annotation_bytes(lease: &Lease) -> usize {
    lease
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

#[tokio::test]
async fn three_thousand_targets_keep_a_valid_member_record() {
    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("tester")).await;
    let group = Group::default_group();
    let record = record_with_targets("node-1", 3000);
    assert_eq!(record.verdicts.len(), 3000);
    let one = Publisher::start(&bed, &group, record.clone()).await;
    let lease = until_lease(&client, &group, "node-1", |l| {
        l.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(names::MEMBER_VERDICTS_ANNOTATION))
    })
    .await;
    // The whole ballot, read back by any member, within the budget (the API takes 256 KiB).
    let read = MemberRecord::from_lease(&lease).unwrap();
    assert_eq!(read.verdicts, record.verdicts);
    assert!(read.omitted.up + read.omitted.down == 0);
    let bytes = annotation_bytes(&lease);
    assert!(bytes <= RECORD_BUDGET, "{bytes} bytes");
    let whole = endpoint_copier::group::wire::encode(&record, usize::MAX)
        .unwrap()
        .bytes;
    eprintln!(
        "3,000 targets: member record of {bytes} bytes (whole, with times: {whole} bytes; the API refuses more than 262144)"
    );
    // It keeps being renewed, and says so.
    let before = renewals(&bed, "node-1");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(renewals(&bed, "node-1") > before);
    assert!(
        matches!(one.health.publisher(), PublisherState::Up { written, .. } if written.form == Form::Grouped),
        "{:?}",
        one.health.publisher()
    );
    one.stop().await;
}

#[tokio::test]
async fn a_record_the_api_refuses_is_written_again_smaller_and_the_failure_is_said() {
    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("tester")).await;
    let group = Group::default_group();
    let one = Publisher::start(&bed, &group, record("node-1", &["kubernetes-vip"])).await;
    until_lease(&client, &group, "node-1", |_| true).await;
    // A policy (or a limit lower than ours) refuses the next records as they are.
    bed.fail_next(
        Match {
            identity: Some("node-1".into()),
            verb: Some(Verb::Update),
            resource: Some("leases".into()),
            ..Match::default()
        },
        2,
        Failure::Status(422),
    );
    one.record.send_replace(record_with_targets("node-1", 500));
    let deadline = Instant::now() + LIMIT;
    let mut saw_failing = false;
    loop {
        match one.health.publisher() {
            PublisherState::Failing { .. } => saw_failing = true,
            PublisherState::Up { written, .. } if written.budget < RECORD_BUDGET => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no smaller record written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_failing, "the refusal was never visible");
    // The publisher goes on: the record carries the verdicts that fit, renewed as before.
    let lease = until_lease(&client, &group, "node-1", |l| {
        MemberRecord::from_lease(l).is_ok_and(|r| !r.verdicts.is_empty())
    })
    .await;
    let read = MemberRecord::from_lease(&lease).unwrap();
    assert_eq!(
        read.verdicts.len() + read.omitted.up + read.omitted.down,
        500
    );
    let before = renewals(&bed, "node-1");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(renewals(&bed, "node-1") > before);
    one.stop().await;
}

#[tokio::test]
async fn two_copies_with_one_identity_are_reported_and_their_ballot_is_not_counted() {
    let bed = TestBed::start().await;
    let group = Group::default_group();
    let leader = Observer::start(&bed, &group, "node-1").await;
    let three = Publisher::start(&bed, &group, record("node-3", &["kubernetes-vip"])).await;
    // Two processes (two hosts both named node-2), each with its own nonce and credentials.
    let a = Publisher::start_as(
        client_for(&bed.kubeconfig_for("node-2-a")).await,
        &group,
        record("node-2", &["kubernetes-vip"]),
    );
    let b = Publisher::start_as(
        client_for(&bed.kubeconfig_for("node-2-b")).await,
        &group,
        record("node-2", &["kubernetes-vip"]),
    );
    leader
        .until("node-2 reported as twins", |m, now| {
            m.twins(now)
                .iter()
                .any(|t: &Twin| t.identity == "node-2" && t.nonces.len() >= 2)
        })
        .await;
    leader
        .until("node-2 not counted, node-3 counted", |m, now| {
            let ballots = m.ballots(now);
            !ballots.contains_key("node-2") && ballots.contains_key("node-3")
        })
        .await;
    // Each process learns it too (its record says so, and its STATUS will).
    let now = Instant::now();
    assert!(
        a.health.twin(now).is_some() || b.health.twin(now).is_some(),
        "neither process saw the other"
    );
    // Still live for what it configures: its pairs are not deleted under it.
    let target = svc("default/kubernetes-vip");
    assert!(matches!(
        leader.members.lock().unwrap().who_wants(&target, Instant::now()),
        Wanted::Live(ids) if ids.contains(&"node-2".to_owned())
    ));
    // One of them stops: the other's ballot counts again once the window passed.
    b.stop().await;
    leader
        .until("node-2 counted again", |m, now| {
            m.ballots(now).contains_key("node-2")
        })
        .await;
    a.stop().await;
    three.stop().await;
}

#[tokio::test]
async fn a_forged_member_claiming_the_longest_duration_stops_counting_at_the_expiry() {
    let bed = TestBed::start().await;
    let client = client_for(bed.kubeconfig()).await;
    let group = Group::default_group();
    let leader = Observer::start(&bed, &group, "node-1").await;
    // The namespace exists once any copy published (here, the leader's own).
    let own = Publisher::start(&bed, &group, record("node-1", &[])).await;
    until_lease(&client, &group, "node-1", |_| true).await;
    let mut forged = member::member_lease(
        &group,
        &record("forger", &["kubernetes-vip"]),
        SETTINGS.expiry,
        jiff::Timestamp::now(),
    )
    .unwrap();
    forged.spec.as_mut().unwrap().lease_duration_seconds = Some(i32::MAX);
    Api::<Lease>::namespaced(client, group.members_namespace())
        .create(&Default::default(), &forged)
        .await
        .unwrap();
    leader
        .until("the forger counted while fresh", |m, now| {
            m.ballots(now).contains_key("forger")
        })
        .await;
    let seen = Instant::now();
    leader
        .until("the forger no longer counted", |m, now| {
            !m.ballots(now).contains_key("forger")
        })
        .await;
    // Not a day, not 68 years: our expiry (1 s here), plus the time to notice.
    assert!(seen.elapsed() <= SETTINGS.expiry + Duration::from_millis(500));
    own.stop().await;
}

#[tokio::test]
async fn members_of_an_older_version_beside_the_election_lease_are_seen_during_an_upgrade() {
    let bed = TestBed::start().await;
    let admin = client_for(bed.kubeconfig()).await;
    let group = Group::default_group();
    // An older copy: its member Lease in kube-system, under the old name, no nonce.
    let old_layout = Group::new(NAMESPACE, "endpoint-copier");
    let mut old = member::member_lease(
        &old_layout,
        &record("node-old", &["older-vip"]),
        SETTINGS.expiry,
        jiff::Timestamp::now(),
    )
    .unwrap();
    assert_eq!(
        old.metadata.name.as_deref(),
        Some(legacy_member_name(&group, "node-old").as_str())
    );
    old.metadata.namespace = Some(NAMESPACE.into());
    Api::<Lease>::namespaced(admin, NAMESPACE)
        .create(&Default::default(), &old)
        .await
        .unwrap();
    let leader = Observer::start(&bed, &group, "node-1").await;
    let new = Publisher::start(&bed, &group, record("node-new", &["kubernetes-vip"])).await;
    leader
        .until("both members, both places", |m, now| {
            let live = m.live(now);
            live.contains_key("node-old") && live.contains_key("node-new")
        })
        .await;
    assert_eq!(
        leader
            .members
            .lock()
            .unwrap()
            .who_wants(&svc("default/older-vip"), Instant::now()),
        Wanted::Live(vec!["node-old".into()])
    );
    new.stop().await;
}
