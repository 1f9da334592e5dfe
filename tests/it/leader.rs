//! Leader election against the test bed: three electors with distinct identities (one client
//! certificate each, so the request log tells them apart), each with a writer that patches a probe
//! EndpointSlice whenever its fence allows.
//!
//! Every test checks two things besides its own behaviour: a sampler proves that no two fences were
//! ever valid at the same instant, and the request log proves that no EndpointSlice write came from
//! an identity outside its own leadership window. These tests need the test bed (identities,
//! fault injection, request log), so they do not run against a real cluster. They run in real
//! time with short timings (3 s / 2 s / 0.5 s) and wait for conditions, never for fixed sleeps,
//! except where the behaviour under test is that nothing happens for a while.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use endpoint_copier::lease::{Elector, Fence, Leadership, Settings};
use endpoint_copier_testbed::{Failure, Match, Partition, RequestRecord, TestBed, Verb};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "kube-system";
const LEASE: &str = "endpoint-copier";
const DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(500);
/// Scheduling and request slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(300);

async fn client_for(kubeconfig: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn settings(identity: &str) -> Settings {
    Settings {
        namespace: NAMESPACE.into(),
        name: LEASE.into(),
        identity: identity.into(),
        duration: DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
    }
}

/// One daemon stand-in: an elector and a writer that writes only while its fence allows.
struct Node {
    identity: String,
    rx: watch::Receiver<Leadership>,
    fence: Fence,
    stop: CancellationToken,
    stop_writer: CancellationToken,
    elector: JoinHandle<Result<(), endpoint_copier::lease::Error>>,
    writer: JoinHandle<()>,
}

impl Node {
    async fn start(bed: &TestBed, identity: &str) -> Node {
        let client = client_for(&bed.kubeconfig_for(identity)).await;
        Node::start_with(client, identity)
    }

    /// A node that talks to the API through `client` (for example a [`lossy`] one).
    fn start_with(client: Client, identity: &str) -> Node {
        let (elector, rx, fence) = Elector::new(
            Api::namespaced(client.clone(), NAMESPACE),
            settings(identity),
        );
        let stop = CancellationToken::new();
        let elector = tokio::spawn(elector.run(stop.clone()));
        let stop_writer = CancellationToken::new();
        let writer = tokio::spawn(write_while_fenced(
            Api::namespaced(client, "default"),
            fence.clone(),
            identity.to_owned(),
            stop_writer.clone(),
        ));
        Node {
            identity: identity.to_owned(),
            rx,
            fence,
            stop,
            stop_writer,
            elector,
            writer,
        }
    }

    fn leads(&self) -> bool {
        *self.rx.borrow() == Leadership::Leader
    }

    /// The daemon's graceful stop: writers first, then the elector (which releases).
    async fn stop(self) {
        self.stop_writer.cancel();
        self.writer.await.unwrap();
        self.stop.cancel();
        self.elector.await.unwrap().unwrap();
    }

    /// A crash: both tasks vanish, nothing is released.
    async fn kill(self) {
        self.writer.abort();
        self.elector.abort();
        let _ = self.writer.await;
        let _ = self.elector.await;
    }
}

/// Patches the probe EndpointSlice every 50 ms, after checking the fence (as `apply` does).
async fn write_while_fenced(
    slices: Api<EndpointSlice>,
    fence: Fence,
    identity: String,
    stop: CancellationToken,
) {
    let patch = Patch::Merge(json!({"metadata": {"labels": {"writer": identity}}}));
    let params = PatchParams::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = sleep(Duration::from_millis(50)) => {}
        }
        if fence.check().is_ok() {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = slices.patch("probe", &params, &patch) => {}
            }
        }
    }
}

/// Samples every fence every 2 ms and remembers whether two were ever valid at once.
struct Sampler {
    overlap: Arc<AtomicBool>,
    samples: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sampler {
    fn start(fences: Vec<Fence>) -> Sampler {
        let overlap = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (overlap, samples, stop) = (overlap.clone(), samples.clone(), stop.clone());
            async move {
                while !stop.is_cancelled() {
                    if fences.iter().filter(|f| f.check().is_ok()).count() > 1 {
                        overlap.store(true, Ordering::SeqCst);
                    }
                    samples.fetch_add(1, Ordering::Relaxed);
                    sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Sampler {
            overlap,
            samples,
            stop,
            task,
        }
    }

    async fn assert_never_overlapped(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        assert!(self.samples.load(Ordering::Relaxed) > 20, "sampler starved");
        assert!(
            !self.overlap.load(Ordering::SeqCst),
            "two fences were valid at the same instant"
        );
    }
}

/// Every successful EndpointSlice write by a node must follow (in arrival order) a successful
/// Lease write by that same node, with no other identity's successful Lease write in between.
/// The closing checks every multi-node test shares: the current leader writes, fences never
/// overlapped, no EndpointSlice write fell outside its writer's leadership; then every node stops.
async fn settle_and_check(bed: &TestBed, sampler: Sampler, nodes: Vec<Node>) {
    let leader = leaders(&nodes)[0].to_owned();
    until_written_by(bed, &leader).await;
    sampler.assert_never_overlapped().await;
    assert_writes_inside_leadership(&bed.requests());
    for node in nodes {
        node.stop().await;
    }
}

fn assert_writes_inside_leadership(records: &[RequestRecord]) {
    let mut records = records.to_vec();
    records.sort_by_key(|r| r.seq);
    let mut holder: Option<&str> = None;
    let mut fenced_writes = 0;
    for r in &records {
        let ok = (200..300).contains(&r.code);
        if r.resource == "leases" && r.verb.is_write() && ok {
            holder = Some(&r.identity);
        }
        if r.resource == "endpointslices"
            && r.verb.is_write()
            && ok
            && r.identity.starts_with("node-")
        {
            fenced_writes += 1;
            assert_eq!(
                holder,
                Some(r.identity.as_str()),
                "EndpointSlice write #{} by {} outside its leadership window",
                r.seq,
                r.identity
            );
        }
    }
    assert!(
        fenced_writes > 0,
        "no node ever wrote: the check proves nothing"
    );
}

/// Once `successor` wrote the Lease, `deposed` never wrote it successfully again: it lost
/// leadership and knows it (its held-back renewals, if any, were refused with 409).
fn assert_no_lease_write_after_takeover(records: &[RequestRecord], deposed: &str, successor: &str) {
    let mut records = records.to_vec();
    records.sort_by_key(|r| r.seq);
    let lease_write = |r: &RequestRecord, who: &str| {
        r.identity == who
            && r.resource == "leases"
            && r.verb.is_write()
            && (200..300).contains(&r.code)
    };
    let takeover = records
        .iter()
        .position(|r| lease_write(r, successor))
        .expect("the successor never wrote the Lease");
    let late: Vec<_> = records[takeover..]
        .iter()
        .filter(|r| lease_write(r, deposed))
        .collect();
    assert!(
        late.is_empty(),
        "the deposed leader still wrote the Lease: {late:?}"
    );
}

/// Nobody led, so no node may have written an EndpointSlice.
fn assert_no_fenced_writes(records: &[RequestRecord]) {
    let writes: Vec<_> = records
        .iter()
        .filter(|r| {
            r.identity.starts_with("node-") && r.resource == "endpointslices" && r.verb.is_write()
        })
        .collect();
    assert!(writes.is_empty(), "writes without leadership: {writes:?}");
}

/// Waits until `identity` has written the probe slice, so the log check has a write to judge.
async fn until_written_by(bed: &TestBed, identity: &str) {
    until(
        &format!("a fenced write by {identity}"),
        Duration::from_secs(2),
        || {
            bed.requests().iter().any(|r| {
                r.identity == identity
                    && r.resource == "endpointslices"
                    && r.verb.is_write()
                    && (200..300).contains(&r.code)
            })
        },
    )
    .await;
}

async fn seed_probe_slice(bed: &TestBed) {
    let admin = client_for(bed.kubeconfig()).await;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "probe", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "probe"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.51.100.10"], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(admin, "default")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
}

async fn until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

fn leaders(nodes: &[Node]) -> Vec<&str> {
    nodes
        .iter()
        .filter(|n| n.leads())
        .map(|n| n.identity.as_str())
        .collect()
}

async fn lease(bed: &TestBed) -> Lease {
    let admin = client_for(bed.kubeconfig()).await;
    Api::<Lease>::namespaced(admin, NAMESPACE)
        .get(LEASE)
        .await
        .unwrap()
}

fn holder_of(lease: &Lease) -> Option<String> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

async fn three_nodes(bed: &TestBed) -> Vec<Node> {
    seed_probe_slice(bed).await;
    let mut nodes = Vec::new();
    for identity in ["node-1", "node-2", "node-3"] {
        nodes.push(Node::start(bed, identity).await);
    }
    until("a leader", DURATION, || leaders(&nodes).len() == 1).await;
    nodes
}

fn take_leader(nodes: &mut Vec<Node>) -> Node {
    let i = nodes.iter().position(Node::leads).unwrap();
    nodes.remove(i)
}

#[tokio::test]
async fn exactly_one_of_three_electors_leads_and_the_others_follow_it() {
    let bed = TestBed::start().await;
    let nodes = three_nodes(&bed).await;
    let sampler = Sampler::start(nodes.iter().map(|n| n.fence.clone()).collect());
    let leader = leaders(&nodes)[0].to_owned();
    // Several renewals: leadership must stay put and the followers must name the leader.
    let start = Instant::now();
    while start.elapsed() < 4 * RETRY_PERIOD {
        assert_eq!(leaders(&nodes), vec![leader.as_str()]);
        sleep(Duration::from_millis(20)).await;
    }
    for node in nodes.iter().filter(|n| n.identity != leader) {
        assert_eq!(
            *node.rx.borrow(),
            Leadership::Follower {
                holder: Some(leader.clone())
            }
        );
        assert!(node.fence.check().is_err());
    }
    assert_eq!(holder_of(&lease(&bed).await), Some(leader.clone()));
    settle_and_check(&bed, sampler, nodes).await;
}

#[tokio::test]
async fn the_steady_state_costs_one_lease_write_per_retry_period_and_none_from_followers() {
    let bed = TestBed::start().await;
    let nodes = three_nodes(&bed).await;
    let leader = leaders(&nodes)[0].to_owned();
    sleep(RETRY_PERIOD).await;
    bed.clear_requests();
    let window = Duration::from_secs(3);
    sleep(window).await;
    let lease_writes: Vec<_> = bed
        .requests()
        .into_iter()
        .filter(|r| r.resource == "leases" && r.verb.is_write())
        .collect();
    assert!(
        lease_writes.iter().all(|r| r.identity == leader),
        "a follower wrote the Lease: {lease_writes:?}"
    );
    // 3 s / 0.5 s = 6 renewals; allow one either way for the window edges.
    assert!(
        (5..=7).contains(&lease_writes.len()),
        "{} Lease writes in {window:?}",
        lease_writes.len()
    );
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_graceful_stop_releases_the_lease_and_another_node_leads_within_a_second() {
    let bed = TestBed::start().await;
    let mut nodes = three_nodes(&bed).await;
    let sampler = Sampler::start(nodes.iter().map(|n| n.fence.clone()).collect());
    let before = lease(&bed).await.spec.unwrap().lease_transitions.unwrap();
    let old = take_leader(&mut nodes);
    let old_identity = old.identity.clone();
    let stopped = Instant::now();
    old.stop().await;
    let handover = until("a new leader", Duration::from_secs(1), || {
        leaders(&nodes).len() == 1
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "handover took {took:?} ({handover:?} after release)"
    );
    let new = leaders(&nodes)[0].to_owned();
    assert_ne!(new, old_identity);
    // The new leadership holds through renewals (the fences keep being sampled meanwhile).
    sleep(2 * RETRY_PERIOD).await;
    assert_eq!(leaders(&nodes), vec![new.as_str()]);
    let after = lease(&bed).await.spec.unwrap();
    assert_eq!(after.holder_identity.as_deref(), Some(new.as_str()));
    assert_eq!(
        after.lease_transitions,
        Some(before + 1),
        "release + takeover is one transition"
    );
    // The release went through the API as an update by the old leader.
    assert!(bed.requests().iter().any(|r| r.identity == old_identity
        && r.resource == "leases"
        && r.verb == Verb::Update
        && r.code == 200));
    settle_and_check(&bed, sampler, nodes).await;
}

#[tokio::test]
async fn a_hard_killed_leader_is_replaced_after_expiry_and_not_before() {
    let bed = TestBed::start().await;
    let mut nodes = three_nodes(&bed).await;
    let sampler = Sampler::start(nodes.iter().map(|n| n.fence.clone()).collect());
    let old = take_leader(&mut nodes);
    old.kill().await;
    let took = until(
        "a new leader after expiry",
        DURATION + RETRY_PERIOD + SLACK,
        || leaders(&nodes).len() == 1,
    )
    .await;
    // The last renewal was at most one retry period before the kill, and followers count the
    // duration from when they saw it.
    assert!(
        took >= DURATION - RETRY_PERIOD - Duration::from_millis(100),
        "took over {took:?} after the kill: before the Lease expired"
    );
    assert!(took <= DURATION + RETRY_PERIOD, "took {took:?}");
    settle_and_check(&bed, sampler, nodes).await;
}

#[tokio::test]
async fn a_partitioned_leader_stops_writing_before_its_deadline_and_nobody_takes_over_before_expiry()
 {
    let bed = TestBed::start().await;
    let mut nodes = three_nodes(&bed).await;
    let all_fences: Vec<Fence> = nodes.iter().map(|n| n.fence.clone()).collect();
    let sampler = Sampler::start(all_fences);
    let old = take_leader(&mut nodes);
    bed.partition(&old.identity, Partition::Hang);
    // Its last successful renewal was sent before the cut, so its fence ends within the deadline.
    let fenced = until(
        "the partitioned leader's fence to close",
        RENEW_DEADLINE + SLACK,
        || old.fence.check().is_err(),
    )
    .await;
    assert!(
        fenced <= RENEW_DEADLINE + Duration::from_millis(50),
        "fence closed after {fenced:?}"
    );
    assert!(
        leaders(&nodes).is_empty(),
        "someone took over before expiry"
    );
    let took = until("a new leader", DURATION + RETRY_PERIOD + SLACK, || {
        leaders(&nodes).len() == 1
    })
    .await;
    let took = fenced + took;
    assert!(
        took >= DURATION - RETRY_PERIOD - Duration::from_millis(100),
        "took over {took:?} after the partition"
    );
    let new = leaders(&nodes)[0].to_owned();
    // Healed, the old leader reads the new record and follows.
    bed.heal(&old.identity);
    let mut rx = old.rx.clone();
    until(
        "the old leader to follow the new one",
        DURATION + SLACK,
        || {
            *rx.borrow_and_update()
                == Leadership::Follower {
                    holder: Some(new.clone()),
                }
        },
    )
    .await;
    assert_no_lease_write_after_takeover(&bed.requests(), &old.identity, &new);
    settle_and_check(&bed, sampler, nodes).await;
    old.stop().await;
}

/// A Lease held by "node-9", which the test renews through the admin client, with `renew_time`
/// chosen by the test (another host's clock).
async fn seed_ghost_lease(bed: &TestBed, renew_time: Timestamp) -> Api<Lease> {
    let admin = Api::<Lease>::namespaced(client_for(bed.kubeconfig()).await, NAMESPACE);
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(LEASE.into()),
            ..Default::default()
        },
        spec: Some(ghost_spec(renew_time)),
    };
    admin.create(&PostParams::default(), &lease).await.unwrap();
    admin
}

fn ghost_spec(renew_time: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some("node-9".into()),
        lease_duration_seconds: Some(3),
        acquire_time: Some(MicroTime(renew_time)),
        renew_time: Some(MicroTime(renew_time)),
        lease_transitions: Some(7),
        ..Default::default()
    }
}

/// Renews the ghost's Lease every retry period for `for_how_long`, each time with a renewTime
/// `skew` away from now (a distinct value each time, as a real holder writes).
async fn renew_ghost(admin: &Api<Lease>, skew: jiff::SignedDuration, for_how_long: Duration) {
    let start = Instant::now();
    while start.elapsed() < for_how_long {
        sleep(RETRY_PERIOD).await;
        let mut lease = admin.get(LEASE).await.unwrap();
        lease.spec = Some(ghost_spec(Timestamp::now() + skew));
        admin
            .replace(LEASE, &PostParams::default(), &lease)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_live_holder_whose_clock_is_hours_behind_keeps_the_lease() {
    let bed = TestBed::start().await;
    seed_probe_slice(&bed).await;
    let skew = jiff::SignedDuration::from_hours(-6);
    let admin = seed_ghost_lease(&bed, Timestamp::now() + skew).await;
    let nodes = vec![
        Node::start(&bed, "node-1").await,
        Node::start(&bed, "node-2").await,
    ];
    // Two whole durations: a wall-clock comparison would call the Lease expired at once.
    renew_ghost(&admin, skew, 2 * DURATION).await;
    assert!(leaders(&nodes).is_empty());
    assert_eq!(holder_of(&lease(&bed).await).as_deref(), Some("node-9"));
    for node in &nodes {
        assert_eq!(
            *node.rx.borrow(),
            Leadership::Follower {
                holder: Some("node-9".into())
            }
        );
    }
    assert_no_fenced_writes(&bed.requests());
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_dead_holder_whose_clock_is_hours_ahead_loses_the_lease_after_one_duration() {
    let bed = TestBed::start().await;
    seed_probe_slice(&bed).await;
    let _admin =
        seed_ghost_lease(&bed, Timestamp::now() + jiff::SignedDuration::from_hours(6)).await;
    let started = Instant::now();
    let nodes = vec![
        Node::start(&bed, "node-1").await,
        Node::start(&bed, "node-2").await,
    ];
    let sampler = Sampler::start(nodes.iter().map(|n| n.fence.clone()).collect());
    until("a takeover", DURATION + RETRY_PERIOD + SLACK, || {
        leaders(&nodes).len() == 1
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= DURATION - Duration::from_millis(100),
        "took over after {took:?}"
    );
    let after = lease(&bed).await.spec.unwrap();
    assert_eq!(after.lease_transitions, Some(8));
    settle_and_check(&bed, sampler, nodes).await;
}

#[tokio::test]
async fn a_follower_with_a_stale_resource_version_fails_to_take_the_lease() {
    let bed = TestBed::start().await;
    seed_probe_slice(&bed).await;
    let admin = seed_ghost_lease(&bed, Timestamp::now()).await;
    // node-1 can read the Lease once but never watch it, so it never sees the renewals and its
    // resourceVersion goes stale; when its local expiry comes, it tries to take the Lease.
    bed.fail_next(
        Match {
            identity: Some("node-1".into()),
            verb: Some(Verb::Watch),
            resource: Some("leases".into()),
            ..Match::default()
        },
        usize::MAX / 2,
        Failure::ServiceUnavailable,
    );
    let node = Node::start(&bed, "node-1").await;
    renew_ghost(
        &admin,
        jiff::SignedDuration::ZERO,
        DURATION + 4 * RETRY_PERIOD,
    )
    .await;
    assert!(!node.leads());
    let stale_attempts = bed
        .requests()
        .iter()
        .filter(|r| r.identity == "node-1" && r.resource == "leases" && r.verb == Verb::Update)
        .map(|r| r.code)
        .collect::<Vec<_>>();
    assert!(
        !stale_attempts.is_empty(),
        "node-1 never tried to take the expired-looking Lease"
    );
    assert!(
        stale_attempts.iter().all(|c| *c == 409),
        "a stale write was not refused: {stale_attempts:?}"
    );
    assert_eq!(holder_of(&lease(&bed).await).as_deref(), Some("node-9"));
    assert_no_fenced_writes(&bed.requests());
    node.stop().await;
}

#[tokio::test]
async fn conflicts_and_unavailability_never_yield_two_leaders() {
    let bed = TestBed::start().await;
    let mut nodes = three_nodes(&bed).await;
    let sampler = Sampler::start(nodes.iter().map(|n| n.fence.clone()).collect());
    let lease_writes = |verb| Match {
        identity: None,
        verb: Some(verb),
        resource: Some("leases".into()),
        ..Match::default()
    };
    // Waves of injected 409s and 503s on Lease writes and reads, with a handover in the middle.
    for wave in 0..4 {
        bed.fail_next(lease_writes(Verb::Update), 3, Failure::Conflict);
        bed.fail_next(lease_writes(Verb::Update), 3, Failure::ServiceUnavailable);
        bed.fail_next(lease_writes(Verb::Get), 2, Failure::ServiceUnavailable);
        sleep(2 * RETRY_PERIOD).await;
        if wave == 1 {
            until("a leader to stop", DURATION + RETRY_PERIOD + SLACK, || {
                leaders(&nodes).len() == 1
            })
            .await;
            take_leader(&mut nodes).stop().await;
        }
    }
    until(
        "a leader after the faults",
        DURATION + RETRY_PERIOD + SLACK,
        || leaders(&nodes).len() == 1,
    )
    .await;
    settle_and_check(&bed, sampler, nodes).await;
}

#[tokio::test]
async fn an_identity_forbidden_to_create_the_lease_stops_with_an_error_naming_it() {
    let bed = TestBed::start().await;
    bed.set_allowed("node-1", Verb::Create, "leases", false);
    let client = client_for(&bed.kubeconfig_for("node-1")).await;
    let (elector, rx, fence) = Elector::new(Api::namespaced(client, NAMESPACE), settings("node-1"));
    let result = tokio::time::timeout(DURATION, elector.run(CancellationToken::new()))
        .await
        .expect("a 403 must end the elector, not be retried");
    let error = result.unwrap_err();
    assert!(!error.is_transient());
    assert_eq!(
        error.to_string(),
        "failed to create Lease kube-system/endpoint-copier"
    );
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert!(cause.contains("forbidden"), "{cause}");
    assert!(fence.check().is_err());
    assert_ne!(*rx.borrow(), Leadership::Leader);
}

#[tokio::test]
async fn a_lease_namespace_that_does_not_exist_stops_the_elector() {
    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("node-1")).await;
    let mut settings = settings("node-1");
    settings.namespace = "no-such-namespace".into();
    let (elector, _rx, fence) = Elector::new(Api::namespaced(client, NAMESPACE), settings);
    let result = tokio::time::timeout(DURATION, elector.run(CancellationToken::new()))
        .await
        .expect("a missing namespace must end the elector, not be retried");
    let error = result.unwrap_err();
    assert!(!error.is_transient());
    assert_eq!(
        error.to_string(),
        "failed to create Lease no-such-namespace/endpoint-copier"
    );
    assert!(fence.check().is_err());
}

#[tokio::test]
async fn a_follower_stops_at_once_and_writes_nothing_on_shutdown() {
    let bed = TestBed::start().await;
    let mut nodes = three_nodes(&bed).await;
    let leader = leaders(&nodes)[0].to_owned();
    // The followers' part of the first campaign (a create that lost the race, its re-read) is
    // over once they name the leader; only what comes after is "on the way out".
    let following = Leadership::Follower {
        holder: Some(leader.clone()),
    };
    until("both followers to name the leader", DURATION, || {
        nodes
            .iter()
            .filter(|n| !n.leads())
            .all(|n| *n.rx.borrow() == following)
    })
    .await;
    let follower = nodes.remove(nodes.iter().position(|n| !n.leads()).unwrap());
    let identity = follower.identity.clone();
    bed.clear_requests();
    let stopped = Instant::now();
    follower.stop().await;
    // "At once" means no request and no timeout on the way out; the bound only has to be far
    // below the shortest timeout involved (the 2 s renew deadline), not a speed figure.
    assert!(
        stopped.elapsed() < Duration::from_secs(1),
        "{:?}",
        stopped.elapsed()
    );
    let written: Vec<_> = bed
        .requests()
        .into_iter()
        .filter(|r| r.identity == identity && r.resource == "leases" && r.verb.is_write())
        .collect();
    assert!(
        written.is_empty(),
        "a follower wrote the Lease on its way out: {written:?}"
    );
    assert_eq!(holder_of(&lease(&bed).await), Some(leader));
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn the_elector_reports_progress_on_every_decision_for_the_watchdog() {
    let bed = TestBed::start().await;
    let client = client_for(&bed.kubeconfig_for("node-1")).await;
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = ticks.clone();
    let (elector, rx, _fence) =
        Elector::new(Api::namespaced(client, NAMESPACE), settings("node-1"));
    let elector = elector.with_progress(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(elector.run(stop.clone()));
    until("leadership", DURATION, || {
        *rx.borrow() == Leadership::Leader
    })
    .await;
    let at_leadership = ticks.load(std::sync::atomic::Ordering::Relaxed);
    // A leader decides (renews) every retry period: progress keeps coming while all is well.
    sleep(RETRY_PERIOD * 3).await;
    let later = ticks.load(std::sync::atomic::Ordering::Relaxed);
    assert!(at_leadership >= 1, "{at_leadership}");
    assert!(later >= at_leadership + 2, "{at_leadership} -> {later}");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Drops the reply to the next `armed` Lease writes (create or update) *after* the server
/// committed them, as a connection reset between the server's answer and our read of it would:
/// the write happened, the elector only sees a transport error.
#[derive(Clone, Default)]
struct ReplyLoss {
    armed: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl ReplyLoss {
    fn arm(&self, n: usize) {
        self.armed.store(n, Ordering::SeqCst);
    }

    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    fn take(&self) -> bool {
        let took = self
            .armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if took {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
        took
    }
}

/// `client`, with the replies to Lease writes lost as `loss` says.
fn lossy(client: Client, loss: ReplyLoss) -> Client {
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (client, loss) = (client.clone(), loss.clone());
        async move {
            let lease_write = matches!(*request.method(), http::Method::PUT | http::Method::POST)
                && request.uri().path().contains("/leases");
            let response = client.send(request).await?;
            if lease_write && response.status().is_success() && loss.take() {
                return Err(kube::Error::Service(
                    "connection reset after the server committed the write".into(),
                ));
            }
            Ok::<_, kube::Error>(response)
        }
    });
    Client::new(service, NAMESPACE)
}

/// Counts ERROR events (on this thread: the tests' runtime runs every task on it).
#[derive(Clone, Default)]
struct ErrorCount(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorCount {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl ErrorCount {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Successful Lease writes by `identity`, in arrival order: (verb, code).
fn lease_writes_by(bed: &TestBed, identity: &str) -> Vec<(Verb, u16)> {
    let mut records = bed.requests();
    records.sort_by_key(|r| r.seq);
    records
        .iter()
        .filter(|r| r.identity == identity && r.resource == "leases" && r.verb.is_write())
        .map(|r| (r.verb, r.code))
        .collect()
}

#[tokio::test]
async fn a_leader_whose_renewal_reply_is_lost_keeps_leading_without_a_gap() {
    let errors = ErrorCount::default();
    let _guard = errors.install();
    let bed = TestBed::start().await;
    seed_probe_slice(&bed).await;
    let loss = ReplyLoss::default();
    let client = lossy(
        client_for(&bed.kubeconfig_for("node-1")).await,
        loss.clone(),
    );
    let leader = Node::start_with(client, "node-1");
    until("node-1 to lead", DURATION, || leader.leads()).await;
    let follower = Node::start(&bed, "node-2").await;
    let sampler = Sampler::start(vec![leader.fence.clone(), follower.fence.clone()]);
    let mut rx = leader.rx.clone();
    rx.borrow_and_update();
    let before = lease_writes_by(&bed, "node-1").len();
    loss.arm(1);
    until(
        "a renewal whose reply is lost",
        2 * RETRY_PERIOD + SLACK,
        || loss.dropped() == 1,
    )
    .await;
    // Well past the point where the watch (or a re-read) shows the committed renewal under a
    // resourceVersion we never got back, and past several renewal periods.
    let start = Instant::now();
    while start.elapsed() < 4 * RETRY_PERIOD {
        assert!(leader.leads(), "node-1 stopped leading");
        assert!(leader.fence.check().is_ok(), "node-1's fence closed");
        assert!(!follower.leads(), "node-2 took over");
        sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !rx.has_changed().unwrap(),
        "leadership flapped: {:?}",
        *rx.borrow()
    );
    // The lost renewal committed, and the renewals after it (carrying its resourceVersion,
    // learnt from the watch) succeed too: no 409 and no re-acquisition in between.
    let after = &lease_writes_by(&bed, "node-1")[before..];
    assert!(after.len() >= 4, "{after:?}");
    assert!(
        after
            .iter()
            .all(|(verb, code)| *verb == Verb::Update && *code == 200),
        "{after:?}"
    );
    assert_eq!(errors.get(), 0, "an ERROR was logged");
    assert_eq!(holder_of(&lease(&bed).await).as_deref(), Some("node-1"));
    settle_and_check(&bed, sampler, vec![leader, follower]).await;
}

#[tokio::test]
async fn an_elector_whose_create_reply_is_lost_leads_at_once_not_after_a_lease_duration() {
    let errors = ErrorCount::default();
    let _guard = errors.install();
    let bed = TestBed::start().await;
    seed_probe_slice(&bed).await;
    let loss = ReplyLoss::default();
    loss.arm(1);
    let client = lossy(
        client_for(&bed.kubeconfig_for("node-1")).await,
        loss.clone(),
    );
    let started = Instant::now();
    let node = Node::start_with(client, "node-1");
    let sampler = Sampler::start(vec![node.fence.clone()]);
    until("node-1 to lead", DURATION, || node.leads()).await;
    let took = started.elapsed();
    assert_eq!(loss.dropped(), 1, "the create reply was not dropped");
    // Recognised from the watch during the retry backoff; waiting for "someone else's" record
    // to expire would take a whole duration (3 s).
    assert!(took < DURATION / 2, "led only after {took:?}");
    until("a renewal", 2 * RETRY_PERIOD + SLACK, || {
        lease_writes_by(&bed, "node-1").len() >= 2
    })
    .await;
    let writes = lease_writes_by(&bed, "node-1");
    assert_eq!(writes[0], (Verb::Create, 201), "{writes:?}");
    assert!(
        writes[1..]
            .iter()
            .all(|(verb, code)| *verb == Verb::Update && *code == 200),
        "{writes:?}"
    );
    assert_eq!(errors.get(), 0, "an ERROR was logged");
    settle_and_check(&bed, sampler, vec![node]).await;
}

#[tokio::test]
async fn an_elector_whose_claim_reply_is_lost_leads_at_once_not_after_a_lease_duration() {
    let errors = ErrorCount::default();
    let _guard = errors.install();
    let bed = TestBed::start().await;
    seed_probe_slice(&bed).await;
    // A released Lease: anyone may claim it at once.
    let admin = seed_ghost_lease(&bed, Timestamp::now()).await;
    let mut released = admin.get(LEASE).await.unwrap();
    released.spec = Some(LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        lease_transitions: Some(7),
        ..LeaseSpec::default()
    });
    admin
        .replace(LEASE, &PostParams::default(), &released)
        .await
        .unwrap();
    let loss = ReplyLoss::default();
    loss.arm(1);
    let client = lossy(
        client_for(&bed.kubeconfig_for("node-1")).await,
        loss.clone(),
    );
    let started = Instant::now();
    let node = Node::start_with(client, "node-1");
    let sampler = Sampler::start(vec![node.fence.clone()]);
    until("node-1 to lead", DURATION, || node.leads()).await;
    let took = started.elapsed();
    assert_eq!(loss.dropped(), 1, "the claim reply was not dropped");
    assert!(took < DURATION / 2, "led only after {took:?}");
    until("a renewal", 2 * RETRY_PERIOD + SLACK, || {
        lease_writes_by(&bed, "node-1").len() >= 2
    })
    .await;
    let writes = lease_writes_by(&bed, "node-1");
    assert!(
        writes
            .iter()
            .all(|(verb, code)| *verb == Verb::Update && *code == 200),
        "one claim, then renewals, none refused: {writes:?}"
    );
    let spec = lease(&bed).await.spec.unwrap();
    assert_eq!(
        spec.lease_transitions,
        Some(8),
        "one transition for one claim"
    );
    assert_eq!(errors.get(), 0, "an ERROR was logged");
    settle_and_check(&bed, sampler, vec![node]).await;
}

// --- Twins: two live processes under one identity (issue 20, finding 4) --------------------------

/// An elector for `identity` through the client certificate `cn` (so the request log tells the
/// processes apart), holding `lock`, watching for twins with its own nonce.
async fn twin_elector(
    bed: &TestBed,
    cn: &str,
    identity: &str,
    lock: endpoint_copier::lease::RuntimeLock,
) -> (
    watch::Receiver<Leadership>,
    endpoint_copier::group::SelfHealth,
    CancellationToken,
    JoinHandle<Result<(), endpoint_copier::lease::Error>>,
) {
    let client = client_for(&bed.kubeconfig_for(cn)).await;
    let health = endpoint_copier::group::SelfHealth::new(Duration::from_secs(60));
    let (elector, rx, _fence) =
        Elector::new(Api::namespaced(client, NAMESPACE), settings(identity));
    let elector = elector.with_runtime_lock(lock).with_twin_watch(
        &endpoint_copier::group::twins::fresh_nonce(),
        health.clone(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(elector.run(stop.clone()));
    (rx, health, stop, task)
}

#[tokio::test]
async fn two_copies_sharing_an_identity_and_a_runtime_lock_token_do_not_flip_the_lease() {
    let bed = TestBed::start().await;
    // A cloned machine with a persistent runtime directory: two lock files, one token.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lock_a = endpoint_copier::lease::RuntimeLock::acquire(dir_a.path()).unwrap();
    std::fs::write(
        dir_b.path().join("claim.lock"),
        format!("{} 1\n", lock_a.token()),
    )
    .unwrap();
    let lock_b = endpoint_copier::lease::RuntimeLock::acquire(dir_b.path()).unwrap();
    assert_eq!(lock_a.token(), lock_b.token());
    let (rx_a, health_a, stop_a, task_a) = twin_elector(&bed, "clone-a", "node-1", lock_a).await;
    until("the first copy to lead", DURATION, || {
        *rx_a.borrow() == Leadership::Leader
    })
    .await;
    let since = bed.requests().len();
    let (_rx_b, health_b, stop_b, task_b) = twin_elector(&bed, "clone-b", "node-1", lock_b).await;
    // Two Lease durations: before, each copy took the other's claim at once, at API speed.
    sleep(2 * DURATION).await;
    let writers: Vec<String> = bed.requests()[since..]
        .iter()
        .filter(|r| r.resource == "leases" && r.verb == Verb::Update && r.code == 200)
        .map(|r| r.identity.clone())
        .collect();
    let handovers = writers.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!(
        "twins: {handovers} handovers in {:?} ({} Lease writes)",
        2 * DURATION,
        writers.len()
    );
    assert!(
        handovers <= 1,
        "the Lease changed hands {handovers} times: {writers:?}"
    );
    // The copy whose Lease was taken after its own write knows a twin runs: reported, and it
    // no longer takes a claim of its identity over at once.
    let now = Instant::now();
    assert!(
        health_a.twin(now).is_some() || health_b.twin(now).is_some(),
        "no copy saw its twin"
    );
    stop_b.cancel();
    stop_a.cancel();
    task_b.await.unwrap().unwrap();
    task_a.await.unwrap().unwrap();
}

// --- The leader's own host (issue 11, item 4) ----------------------------------------------------
//
// These run the real binary, one process per copy, and kill it with SIGKILL: only a real process
// death shows what the kernel does with the runtime lock, and the daemon's tasks do not all die
// with an aborted in-process task. They use the *default* Lease timings (4 s / 2 s / 1 s): the
// drop-in sets no timing key.

mod own_host {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Api;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use tokio::time::Instant;

    use crate::binary::{BIN, wait_exit};
    use crate::common::*;
    use endpoint_copier::names;

    /// The goal of issue 11 for a dead leader host: out of the VIP within 5 s.
    const HOST_DEATH_BUDGET: Duration = Duration::from_secs(5);
    /// The goal for a leader restarted on its own host: writing again within 2 s of the restart.
    const RESTART_BUDGET: Duration = Duration::from_secs(2);

    /// A config directory for `identity` in `world` with the default Lease timings and the runtime
    /// directory `runtime`.
    fn config_dir(world: &World, identity: &str, runtime: &Path) -> tempfile::TempDir {
        drop_in_dir(
            world,
            identity,
            "",
            &format!("runtime_dir = \"{}\"", runtime.display()),
        )
    }

    /// One running copy: the process and every line it logged (drained so the pipe never fills).
    struct Copy {
        child: Child,
        lines: Arc<Mutex<Vec<String>>>,
    }

    impl Copy {
        fn start(dir: &Path) -> Copy {
            let mut child = Command::new(BIN)
                .args(["--config-dir", dir.to_str().unwrap(), "run"])
                .env("ENDPOINT_COPIER_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let lines = Arc::new(Mutex::new(Vec::new()));
            let stderr = child.stderr.take().unwrap();
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            Copy { child, lines }
        }

        fn pid(&self) -> Pid {
            Pid::from_raw(i32::try_from(self.child.id()).unwrap())
        }

        fn logged(&self, needle: &str) -> bool {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
        }

        /// The host dies or the process crashes: SIGKILL, nothing released.
        async fn kill(mut self) {
            kill(self.pid(), Signal::SIGKILL).unwrap();
            tokio::task::spawn_blocking(move || wait_exit(&mut self.child, Duration::from_secs(5)))
                .await
                .unwrap();
        }

        async fn stop(mut self) {
            kill(self.pid(), Signal::SIGTERM).unwrap();
            let code = tokio::task::spawn_blocking(move || {
                wait_exit(&mut self.child, Duration::from_secs(15))
            })
            .await
            .unwrap();
            assert_eq!(code, 0);
        }
    }

    async fn holder(world: &World) -> Option<String> {
        let api: Api<Lease> = Api::namespaced(world.client.clone(), &world.ns);
        api.get_opt(names::LEASE_NAME)
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }

    async fn wait_holder(world: &World, identity: &str, limit: Duration) {
        eventually(&format!("{identity} to hold the Lease"), limit, || async {
            (holder(world).await.as_deref() == Some(identity)).then_some(())
        })
        .await;
    }

    #[tokio::test]
    async fn a_dead_leader_host_is_replaced_and_a_change_mirrored_within_five_seconds_with_default_timings()
     {
        let world = World::new("hostdeath").await;
        world.seed(&["198.51.100.1"]).await;
        let (run1, run2) = (runtime_dir(), runtime_dir());
        let (dir1, dir2) = (
            config_dir(&world, "node-1", &run1),
            config_dir(&world, "node-2", &run2),
        );
        let leader = Copy::start(dir1.path());
        wait_for_target(
            &world.client,
            &world.ns,
            "vip",
            &["198.51.100.1"],
            Duration::from_secs(15),
        )
        .await;
        wait_holder(&world, "node-1", Duration::from_secs(5)).await;
        let follower = Copy::start(dir2.path());
        eventually(
            "node-2 to follow node-1",
            Duration::from_secs(10),
            || async { follower.logged("following").then_some(()) },
        )
        .await;
        // Kill right after a renewal was seen: the worst case (the follower's clock started then).
        let api: Api<Lease> = Api::namespaced(world.client.clone(), &world.ns);
        let rv = api
            .get(names::LEASE_NAME)
            .await
            .unwrap()
            .metadata
            .resource_version;
        eventually("a renewal", Duration::from_secs(3), || {
            let (api, rv) = (api.clone(), rv.clone());
            async move {
                let now = api
                    .get(names::LEASE_NAME)
                    .await
                    .unwrap()
                    .metadata
                    .resource_version;
                (now != rv).then_some(())
            }
        })
        .await;
        let killed = Instant::now();
        leader.kill().await;
        world.set_source(&["198.51.100.1", "198.51.100.2"]).await;
        wait_for_target(
            &world.client,
            &world.ns,
            "vip",
            &["198.51.100.1", "198.51.100.2"],
            Duration::from_secs(15),
        )
        .await;
        let took = killed.elapsed();
        assert_eq!(holder(&world).await.as_deref(), Some("node-2"));
        eprintln!("host death: the change was mirrored {took:?} after the leader was killed");
        // The 5 s goal is measured by `bench_lease` (worst case 4.0 s); here a loaded CI machine
        // gets slack, and the bound still fails a successor that waited for the old 15 s Lease.
        assert!(took <= HOST_DEATH_BUDGET * 2, "took {took:?}");
        follower.stop().await;
    }

    /// A world with one source address and `node-1` running as a process (its own runtime
    /// directory) with the target in sync.
    async fn one_copy_in_sync(
        prefix: &str,
    ) -> (World, std::path::PathBuf, tempfile::TempDir, Copy) {
        let world = World::new(prefix).await;
        world.seed(&["198.51.100.1"]).await;
        let run = runtime_dir();
        let dir = config_dir(&world, "node-1", &run);
        let first = Copy::start(dir.path());
        wait_for_target(
            &world.client,
            &world.ns,
            "vip",
            &["198.51.100.1"],
            Duration::from_secs(15),
        )
        .await;
        (world, run, dir, first)
    }

    #[tokio::test]
    async fn a_leader_killed_and_restarted_on_its_host_writes_again_within_two_seconds_of_the_restart()
     {
        let (world, _, dir, first) = one_copy_in_sync("restart").await;
        wait_holder(&world, "node-1", Duration::from_secs(5)).await;
        let api: Api<Lease> = Api::namespaced(world.client.clone(), &world.ns);
        let before = api.get(names::LEASE_NAME).await.unwrap().spec.unwrap();
        first.kill().await;
        // As systemd would: the same config, the same runtime directory, a new process.
        let restarted = Instant::now();
        let second = Copy::start(dir.path());
        world.set_source(&["198.51.100.1", "198.51.100.2"]).await;
        wait_for_target(
            &world.client,
            &world.ns,
            "vip",
            &["198.51.100.1", "198.51.100.2"],
            Duration::from_secs(15),
        )
        .await;
        let took = restarted.elapsed();
        eprintln!("restart: the change was mirrored {took:?} after the restart");
        assert!(
            took <= RESTART_BUDGET,
            "writing again only {took:?} after the restart (waiting out the old claim takes up to 4 s)"
        );
        assert!(
            second.logged("taking it over now"),
            "the restarted copy did not recognise its predecessor's claim"
        );
        // The same holder kept it: no transition, as for a renewal.
        let after = api.get(names::LEASE_NAME).await.unwrap().spec.unwrap();
        assert_eq!(after.holder_identity.as_deref(), Some("node-1"));
        assert_eq!(after.lease_transitions, before.lease_transitions);
        second.stop().await;
    }

    #[tokio::test]
    async fn a_second_live_copy_with_the_same_identity_and_runtime_dir_is_refused_naming_the_lock()
    {
        let (world, run, dir, first) = one_copy_in_sync("twinlock").await;
        let mut twin = Copy::start(dir.path());
        let code = {
            let child = &mut twin.child;
            wait_exit(child, Duration::from_secs(10))
        };
        assert_eq!(code, 1, "refused as a runtime failure (systemd retries it)");
        // The reader thread may lag the exit by a moment.
        eventually(
            "the refusal to be logged",
            Duration::from_secs(2),
            || async { twin.logged("holds the runtime lock").then_some(()) },
        )
        .await;
        let lock = run.join("claim.lock").display().to_string();
        let pid = format!("pid {}", first.child.id());
        let lines = twin.lines.lock().unwrap().join("\n");
        assert!(lines.contains(&lock), "{lines}");
        assert!(lines.contains(&pid), "{lines}");
        // The first copy was not disturbed.
        assert_eq!(holder(&world).await.as_deref(), Some("node-1"));
        first.stop().await;
    }
}
