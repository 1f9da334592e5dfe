//! Unit tests of the engine's rules on hand-built caches, under paused time (controller-rs
//! style): the engine is built with a fake API behind its client, its caches are filled by
//! calling its handlers with watch events, and the tests call `dispatch` and join its tasks as
//! the loop would. What a rule does is then exact, with no sleep and no test bed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::engine::{Engine, Io};
use super::pair::Standing;
use super::probes::ProbeState;
use super::scope::Scope;
use super::settings::Settings;
use crate::config::{Config, PairConfig as PairConfigOf};
use crate::desired::Hold;
use crate::events::{self, EventReason, Report};
use crate::group::{Group, MemberRecord, Members, Wanted};
use crate::lease::{Fence, Leadership};
use crate::metrics::Metrics;
use crate::names::ServiceRef;

fn r(s: &str) -> ServiceRef {
    s.parse().unwrap()
}

/// How the fake API answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// Never: every request hangs (a black-holed apiserver).
    Hang,
    /// 409 Conflict to writes, 404 to reads.
    Conflict,
    /// Writes echo their body back (created, updated), reads 404.
    Accept,
}

/// A fake API server behind the engine's client: it logs every request and answers as told.
#[derive(Clone)]
struct FakeApi {
    log: Arc<Mutex<Vec<String>>>,
    reply: Arc<Mutex<Reply>>,
    /// The bodies of the writes it accepted, not yet delivered to a watch.
    accepted: Arc<Mutex<Vec<Bytes>>>,
}

impl FakeApi {
    fn new(reply: Reply) -> FakeApi {
        FakeApi {
            log: Arc::default(),
            reply: Arc::new(Mutex::new(reply)),
            accepted: Arc::default(),
        }
    }

    fn answer(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// The requests so far, as "METHOD path".
    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn writes(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| !r.starts_with("GET"))
            .collect()
    }

    fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let method = req.method().clone();
                api.log
                    .lock()
                    .unwrap()
                    .push(format!("{method} {}", req.uri().path()));
                let reply = *api.reply.lock().unwrap();
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let (code, body) = match (reply, method == http::Method::GET) {
                    (Reply::Hang, _) => std::future::pending().await,
                    (_, true) => (404, status(404, "NotFound")),
                    (Reply::Conflict, false) => (409, status(409, "Conflict")),
                    (Reply::Accept, false) => {
                        let body = body.unwrap_or_default();
                        api.accepted.lock().unwrap().push(body.clone());
                        (200, body)
                    }
                };
                let response = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }
}

fn status(code: u16, reason: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"{reason}","code":{code},"message":"{reason}"}}"#
    ))
}

/// What the watches of a [`Bed`] hold, as the API would list them now.
#[derive(Default)]
struct Listed {
    services: Option<Vec<Service>>,
    slices: Option<Vec<EndpointSlice>>,
    nodes: Option<Vec<k8s_openapi::api::core::v1::Node>>,
    members: Option<Vec<k8s_openapi::api::coordination::v1::Lease>>,
}

/// `object` replaces the one of its name in `list`, or joins it.
fn upsert<K: kube::Resource>(list: &mut Option<Vec<K>>, object: K) {
    let list = list.get_or_insert_default();
    list.retain(|o| o.meta().name != object.meta().name);
    list.push(object);
}

/// An engine with `config`, its fake API, and what it reports.
struct Bed {
    engine: Engine,
    api: FakeApi,
    events: mpsc::Receiver<Report>,
    /// What each watch last listed (and what changed since), for a new term to list again.
    stored: Listed,
    /// Keeps the prober's side of the channels open.
    _probe: (
        mpsc::Sender<crate::probe::Report>,
        watch::Receiver<crate::probe::Wanted>,
    ),
}

fn bed(config: &Config, reply: Reply) -> Bed {
    // The backoff's jitter draws from this thread's generator: seeded, every run is the same.
    fastrand::seed(7);
    let api = FakeApi::new(reply);
    let (events, captured) = events::captured();
    let io = Io {
        client: api.client(),
        fence: Fence::open_for("kube-system/endpoint-copier", Duration::from_secs(3600)),
        metrics: Metrics::new(),
        events,
        clock: crate::clock::Clock::System,
    };
    let members = Members::new(super::member_settings(config), "node-1");
    let (record, _) = watch::channel(MemberRecord::new("node-1", []));
    let (report_tx, report_rx) = mpsc::channel(8);
    let health = crate::group::SelfHealth::new(Duration::from_secs(60));
    let (probes, wanted) = ProbeState::new(record, report_rx, 256, health);
    Bed {
        engine: Engine::new(Settings::of(config), io, members, probes),
        api,
        events: captured,
        stored: Listed::default(),
        _probe: (report_tx, wanted),
    }
}

/// A config without pairs: only annotated Services are mirrored.
fn annotations_only() -> Config {
    let mut config = plain();
    config.pairs.clear();
    config
}

/// A leader with `config` whose caches list the default pair with `addrs`.
fn leading(config: &Config, reply: Reply, addrs: &[&str]) -> Bed {
    let mut bed = bed(config, reply);
    bed.listed(addrs);
    bed.lead();
    bed
}

/// The default config without probes: `default/kubernetes` → `default/kubernetes-vip`.
fn plain() -> Config {
    let mut config = Config::default();
    for pair in &mut config.pairs {
        pair.probe = None;
    }
    config
}

fn service(name: &str, annotations: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            annotations: (!annotations.is_empty()).then(|| {
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ip_families: Some(vec!["IPv4".into()]),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn apiservers(addrs: &[&str]) -> EndpointSlice {
    let mut slice = crate::desired::step::tests::apiserver_slice(addrs);
    slice.metadata.labels = Some(
        [(
            crate::names::SERVICE_NAME_LABEL.to_owned(),
            "kubernetes".to_owned(),
        )]
        .into(),
    );
    slice.metadata.resource_version = Some("1".into());
    slice
}

impl Bed {
    /// The Service watch lists `services`.
    fn list_services(&mut self, services: Vec<Service>) {
        self.stored.services = Some(services.clone());
        self.engine.on_services(Ok(Event::Init));
        for s in services {
            self.engine.on_services(Ok(Event::InitApply(s)));
        }
        self.engine.on_services(Ok(Event::InitDone));
    }

    /// The slice watch of `default` lists `slices`.
    fn list_slices(&mut self, slices: Vec<EndpointSlice>) {
        self.stored.slices = Some(slices.clone());
        let generation = self
            .engine
            .caches
            .watches
            .generation_of("default")
            .expect("default is watched");
        self.engine
            .on_slices("default", generation, Ok(Event::Init));
        for s in slices {
            self.engine
                .on_slices("default", generation, Ok(Event::InitApply(s)));
        }
        self.engine
            .on_slices("default", generation, Ok(Event::InitDone));
    }

    /// The Node watch lists `nodes`.
    fn list_nodes(&mut self, nodes: Vec<k8s_openapi::api::core::v1::Node>) {
        self.stored.nodes = Some(nodes.clone());
        self.engine.on_nodes(Ok(Event::Init));
        for n in nodes {
            self.engine.on_nodes(Ok(Event::InitApply(n)));
        }
        self.engine.on_nodes(Ok(Event::InitDone));
    }

    /// The member watch lists `leases`.
    fn list_members(&mut self, leases: Vec<k8s_openapi::api::coordination::v1::Lease>) {
        self.stored.members = Some(leases.clone());
        self.engine.on_members(Ok(Event::Init));
        for l in leases {
            self.engine.on_members(Ok(Event::InitApply(l)));
        }
        self.engine.on_members(Ok(Event::InitDone));
    }

    /// The Service watch brings `service`, changed.
    fn apply_service(&mut self, service: Service) {
        upsert(&mut self.stored.services, service.clone());
        self.engine.on_services(Ok(Event::Apply(service)));
    }

    /// The member watch brings `lease`, changed.
    fn apply_member(&mut self, lease: k8s_openapi::api::coordination::v1::Lease) {
        upsert(&mut self.stored.members, lease.clone());
        self.engine.on_members(Ok(Event::Apply(lease)));
    }

    /// This copy becomes leader: as `Engine::run` does, every watch starts over, and lists
    /// again what the API holds now.
    fn lead(&mut self) {
        self.engine.set_leadership(Leadership::Leader);
        assert!(
            !self.engine.caches.relists.take_restart().is_empty(),
            "a new term lists anew"
        );
        let listed = std::mem::take(&mut self.stored);
        if let Some(services) = listed.services {
            self.list_services(services);
        }
        if let Some(slices) = listed.slices {
            self.list_slices(slices);
        }
        if let Some(nodes) = listed.nodes {
            self.list_nodes(nodes);
        }
        if let Some(members) = listed.members {
            self.list_members(members);
        }
    }

    /// The Node and member watches list nothing.
    fn list_the_rest(&mut self) {
        self.list_nodes(Vec::new());
        self.list_members(Vec::new());
    }

    /// The Services of the default pair, and `addrs` in `default/kubernetes`.
    fn list_pair(&mut self, addrs: &[&str]) {
        self.list_services(vec![
            service("kubernetes", &[]),
            service("kubernetes-vip", &[]),
        ]);
        self.list_slices(vec![apiservers(addrs)]);
    }

    /// Everything listed for the default pair, with `addrs` in `default/kubernetes`.
    fn listed(&mut self, addrs: &[&str]) {
        self.list_pair(addrs);
        self.list_the_rest();
    }

    fn state(&self, target: &str) -> &super::pair::PairState {
        &self.engine.pairs[&r(target)]
    }

    /// Joins every task that ends within `limit` of virtual time, as the loop would.
    async fn join(&mut self, limit: Duration) {
        while let Ok(Some(joined)) =
            tokio::time::timeout(limit, self.engine.tasks.join_next()).await
        {
            self.engine.joined(joined);
        }
    }

    /// The slice watch of `default` brings the slices the fake API accepted since last time, as
    /// a real watch brings our own writes back.
    fn deliver(&mut self) {
        let generation = self.engine.caches.watches.generation_of("default");
        let accepted: Vec<Bytes> = std::mem::take(&mut *self.api.accepted.lock().unwrap());
        for (i, body) in accepted.into_iter().enumerate() {
            let Ok(mut slice) = serde_json::from_slice::<EndpointSlice>(&body) else {
                continue;
            };
            slice.metadata.namespace = Some("default".into());
            slice.metadata.resource_version = Some(format!("{}", 100 + i));
            upsert(&mut self.stored.slices, slice.clone());
            if let Some(generation) = generation {
                self.engine
                    .on_slices("default", generation, Ok(Event::Apply(slice)));
            }
        }
    }

    /// Dispatches, and joins what that started: one turn of the loop after an event.
    async fn write_now(&mut self) {
        self.engine.dispatch();
        self.join(Duration::from_secs(1)).await;
    }

    /// Whether `target` stands synced.
    fn synced(&self, target: &str) -> bool {
        matches!(self.state(target).standing, Standing::Synced { .. })
    }

    /// Runs the loop's timer arm for `span` of virtual time: dispatch, join what ends, sleep to
    /// the next wake-up — as `Engine::run` does when no event comes.
    async fn run_for(&mut self, span: Duration) {
        let end = Instant::now() + span;
        loop {
            self.engine.dispatch();
            self.join(Duration::from_millis(1)).await;
            match self.engine.next_wakeup().filter(|t| *t < end) {
                Some(at) => tokio::time::advance(at - Instant::now()).await,
                None => break,
            }
        }
    }

    /// The Events reported so far: (reason, note).
    fn reported(&mut self) -> Vec<(EventReason, String)> {
        let mut out = Vec::new();
        while let Ok(report) = self.events.try_recv() {
            out.push((report.reason, report.note));
        }
        out
    }
}

#[tokio::test(start_paused = true)]
async fn a_follower_writes_nothing_and_a_leader_writes_only_once_every_view_is_listed() {
    let mut bed = bed(&plain(), Reply::Accept);
    bed.list_pair(&["198.51.100.1", "198.51.100.2"]);
    bed.engine.set_leadership(Leadership::Follower {
        holder: Some("node-2".into()),
    });
    bed.engine.dispatch();
    assert!(bed.engine.tasks.is_empty(), "a follower never writes");

    bed.lead();
    bed.engine.dispatch();
    assert!(
        !bed.state("default/kubernetes-vip").write.is_running(),
        "no write before the Node view is settled: it would drop derived slices and drains"
    );

    bed.list_the_rest();
    bed.engine.dispatch();
    assert!(bed.state("default/kubernetes-vip").write.is_running());
    bed.join(Duration::from_secs(1)).await;
    assert_eq!(
        bed.api.writes(),
        ["POST /apis/discovery.k8s.io/v1/namespaces/default/endpointslices"]
    );
    assert!(bed.synced("default/kubernetes-vip"));
}

#[tokio::test(start_paused = true)]
async fn work_that_is_due_but_blocked_never_makes_the_loop_spin() {
    let mut bed = leading(&plain(), Reply::Conflict, &["198.51.100.1"]);
    bed.write_now().await;
    let backoff = bed
        .engine
        .next_wakeup()
        .expect("a failed write waits out its backoff");
    // The backoff ends while this copy cannot start the write (another copy leads): the next
    // wake-up must not be that past instant, or the loop would wake at once, find nothing to
    // start, and wake again, forever.
    bed.engine
        .set_leadership(Leadership::Follower { holder: None });
    tokio::time::advance(backoff - Instant::now() + Duration::from_millis(1)).await;
    bed.engine.dispatch();
    assert!(
        bed.engine.next_wakeup().is_none_or(|t| t > Instant::now()),
        "next wake-up in the past: {:?} (now {:?})",
        bed.engine.next_wakeup(),
        Instant::now()
    );
}

#[tokio::test(start_paused = true)]
async fn conflicts_are_reported_once_on_the_third_in_a_row_and_a_success_ends_the_streak() {
    let mut bed = leading(&plain(), Reply::Conflict, &["198.51.100.1"]);
    for _ in 0..5 {
        bed.write_now().await;
        // Past any backoff of the first attempts (capped by max_backoff).
        tokio::time::advance(Duration::from_secs(31)).await;
    }
    let failed: Vec<String> = bed
        .reported()
        .into_iter()
        .filter(|(reason, _)| *reason == EventReason::WriteFailed)
        .map(|(_, note)| note)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("3 conflicts in a row"),
        "{}",
        failed[0]
    );
    assert!(matches!(
        bed.state("default/kubernetes-vip").standing,
        Standing::Failing { conflicts: 5, .. }
    ));

    // The backoff keeps growing: the sixth attempt waits 3.2 to 6.4 s (jittered), so the next
    // 5 s of conflicts see two attempts at most.
    let before = bed.api.writes().len();
    bed.run_for(Duration::from_secs(5)).await;
    let attempts = bed.api.writes().len() - before;
    assert!(
        attempts <= 2,
        "{attempts} writes in 5 s after five conflicts"
    );

    bed.api.answer(Reply::Accept);
    tokio::time::advance(Duration::from_secs(31)).await;
    bed.write_now().await;
    assert!(bed.synced("default/kubernetes-vip"));
}

#[tokio::test(start_paused = true)]
async fn conflicts_back_off_from_200_ms_doubling() {
    let mut bed = leading(&plain(), Reply::Conflict, &["198.51.100.1"]);
    bed.run_for(Duration::from_secs(5)).await;
    // 0.2 + 0.4 + 0.8 + 1.6 s (with jitter: each delay between half and all of that): at most
    // six attempts in 5 s, not a loop.
    let attempts = bed.api.writes().len();
    assert!((3..=6).contains(&attempts), "{attempts} writes in 5 s");
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_aborts_the_writes_in_flight_and_a_new_term_plans_again() {
    let mut bed = leading(&plain(), Reply::Hang, &["198.51.100.1"]);
    bed.engine.dispatch();
    assert!(bed.state("default/kubernetes-vip").write.is_running());

    bed.engine.set_leadership(Leadership::Follower {
        holder: Some("node-2".into()),
    });
    assert!(!bed.engine.tasks.has_tracked(), "every write aborted");
    assert!(!bed.state("default/kubernetes-vip").write.is_running());

    bed.api.answer(Reply::Accept);
    bed.lead();
    assert_eq!(
        bed.state("default/kubernetes-vip").standing,
        Standing::Unplanned
    );
    bed.write_now().await;
    assert!(bed.synced("default/kubernetes-vip"));
}

#[tokio::test(start_paused = true)]
async fn a_pair_whose_source_has_no_slices_is_held_and_says_so_once() {
    let mut bed = bed(&plain(), Reply::Accept);
    bed.list_services(vec![
        service("kubernetes", &[]),
        service("kubernetes-vip", &[]),
    ]);
    bed.list_slices(Vec::new());
    bed.list_the_rest();
    bed.lead();
    bed.engine.dispatch();
    bed.engine.resync();
    bed.engine.dispatch();
    assert!(bed.api.writes().is_empty(), "fail-static: nothing written");
    assert_eq!(
        bed.state("default/kubernetes-vip").standing,
        Standing::Held(Hold::NoSourceSlices)
    );
    let missing: Vec<_> = bed
        .reported()
        .into_iter()
        .filter(|(reason, _)| *reason == EventReason::SourceMissing)
        .collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        bed.state("default/kubernetes-vip").is_settled(),
        "a hold keeps the copy ready"
    );
}

#[tokio::test(start_paused = true)]
async fn a_removed_pair_another_live_member_configures_is_kept_and_reported_once() {
    let config = annotations_only();
    let mut bed = bed(&config, Reply::Accept);
    let annotated = service(
        "kubernetes-vip",
        &[
            (crate::names::ANNOTATION_ENABLED, "true"),
            (crate::names::ANNOTATION_SOURCE_NAME, "kubernetes"),
        ],
    );
    bed.list_services(vec![service("kubernetes", &[]), annotated]);
    bed.list_slices(vec![apiservers(&["198.51.100.1"])]);
    bed.list_nodes(Vec::new());
    // node-2 still has the pair in its config.
    let group = Group::configured(&config);
    let record = MemberRecord::new(
        "node-2",
        [(r("default/kubernetes"), r("default/kubernetes-vip"))],
    );
    let lease = crate::group::member::member_lease(
        &group,
        &record,
        Duration::from_secs(30),
        Timestamp::now(),
    )
    .unwrap();
    bed.list_members(vec![lease.clone()]);
    bed.apply_member(lease);
    bed.lead();
    bed.write_now().await;
    bed.api.log.lock().unwrap().clear();

    // The annotation goes: the pair is retired here, but node-2 wants it.
    bed.apply_service(service("kubernetes-vip", &[]));
    assert!(bed.state("default/kubernetes-vip").phase.is_retired());
    for _ in 0..3 {
        bed.write_now().await;
        bed.engine.resync();
    }
    assert!(
        bed.api.writes().is_empty(),
        "nothing deleted: {:?}",
        bed.api.writes()
    );
    let elsewhere: Vec<String> = bed
        .reported()
        .into_iter()
        .filter(|(reason, _)| *reason == EventReason::ConfiguredElsewhere)
        .map(|(_, note)| note)
        .collect();
    assert_eq!(elsewhere.len(), 1, "{elsewhere:?}");
    assert!(elsewhere[0].contains("node-2"), "{}", elsewhere[0]);
}

#[tokio::test(start_paused = true)]
async fn while_the_member_watch_fails_nobody_is_ruled_out_whatever_the_namespaces_are_called() {
    let mut bed = bed(&plain(), Reply::Accept);
    bed.listed(&["198.51.100.1"]);
    let error =
        kube::runtime::watcher::Error::WatchFailed(kube::Error::Service("connection reset".into()));
    bed.engine.watch_error(Scope::Members, &error);
    // A slice watch restarted in a namespace named like the member scope.
    bed.engine.caches.errors.restarted(&["members".to_owned()]);
    assert_eq!(
        bed.engine
            .wanted(&r("default/kubernetes-vip"), Instant::now()),
        Wanted::Unknown
    );
}

#[tokio::test(start_paused = true)]
async fn a_member_event_plans_the_probing_pairs_again_at_once() {
    let mut bed = leading(&Config::default(), Reply::Accept, &["198.51.100.1"]);
    bed.write_now().await;
    let vip = "default/kubernetes-vip";
    assert!(!bed.state(vip).write.is_due(Instant::now()), "settled");

    let group = Group::configured(&Config::default());
    let mut record = MemberRecord::new("node-2", [(r("default/kubernetes"), r(vip))]);
    record.verdicts = BTreeMap::from([(
        "https://198.51.100.1:6443/readyz".parse().unwrap(),
        crate::probe::Verdict::Down,
    )]);
    let lease = crate::group::member::member_lease(
        &group,
        &record,
        Duration::from_secs(30),
        Timestamp::now(),
    )
    .unwrap();
    bed.apply_member(lease);
    assert!(
        bed.state(vip).write.is_due(Instant::now()),
        "the ballot changed: planned again without waiting for a timer"
    );
}

#[tokio::test(start_paused = true)]
async fn events_are_the_leaders_and_each_is_said_once_per_change() {
    let mut bed = bed(&plain(), Reply::Accept);
    bed.listed(&["198.51.100.1"]);
    let vip = r("default/kubernetes-vip");
    bed.engine
        .set_leadership(Leadership::Follower { holder: None });
    bed.engine
        .report(&vip, EventReason::Synced, "as a follower".into());
    assert!(bed.reported().is_empty());
    bed.lead();
    for _ in 0..3 {
        bed.engine.report(&vip, EventReason::Synced, "one".into());
    }
    bed.engine.report(&vip, EventReason::Synced, "two".into());
    let notes: Vec<String> = bed.reported().into_iter().map(|(_, n)| n).collect();
    assert_eq!(notes, ["one", "two"]);
}

/// A Node `name` with the internal address `ip` and these annotations.
fn node(name: &str, ip: &str, annotations: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Node {
    crate::nodes::tests::node(name, &[("InternalIP", ip)], annotations)
}

/// Each endpoint of `slices` with whether it is ready, by address.
fn readiness(slices: &[EndpointSlice]) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| (e.addresses[0].clone(), crate::desired::is_ready(e)))
        .collect();
    out.sort();
    out
}

#[tokio::test(start_paused = true)]
async fn a_timed_drain_wakes_the_loop_when_it_ends_and_its_endpoint_is_ready_again() {
    let mut bed = bed(&plain(), Reply::Accept);
    bed.list_pair(&["198.51.100.1", "198.51.100.2"]);
    bed.list_members(Vec::new());
    bed.list_nodes(vec![
        node(
            "cp-1",
            "198.51.100.1",
            &[
                (crate::names::ANNOTATION_DRAIN, "true"),
                (crate::names::ANNOTATION_DRAIN_DURATION, "60"),
            ],
        ),
        node("cp-2", "198.51.100.2", &[]),
    ]);
    bed.lead();
    bed.engine.dispatch();
    let vip = r("default/kubernetes-vip");
    let plan = |bed: &Bed| {
        let actual = bed.engine.caches.slices.slices_of(&vip);
        let state = &bed.engine.pairs[&vip];
        crate::desired::step::plan_for(
            state.phase.intent(),
            &vip,
            bed.engine.caches.services.objects(),
            &|s| bed.engine.read_source(s),
            &actual,
            &bed.engine.settings.owner,
            &crate::desired::step::Facts {
                probe: None,
                nodes: bed.engine.node_view(true),
                nodes_unknown: None,
            },
        )
        .unwrap()
    };
    assert_eq!(
        readiness(&plan(&bed).plan.creates),
        [
            ("198.51.100.1".to_owned(), false),
            ("198.51.100.2".to_owned(), true)
        ],
        "drained for now"
    );
    let wakeup = bed
        .engine
        .next_wakeup()
        .expect("the drain's end wakes the loop");
    assert!(
        wakeup <= Instant::now() + Duration::from_secs(61),
        "{wakeup:?}"
    );
    bed.join(Duration::from_secs(1)).await;
    bed.engine.pairs.get_mut(&vip).unwrap().write.settle();
    tokio::time::advance(Duration::from_secs(61)).await;
    bed.engine.dispatch();
    assert!(
        bed.state("default/kubernetes-vip").write.is_running(),
        "planned again at the drain's end"
    );
    assert_eq!(
        readiness(&plan(&bed).plan.creates),
        [
            ("198.51.100.1".to_owned(), true),
            ("198.51.100.2".to_owned(), true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_evicts_by_its_own_ballot_only_once_the_member_list_has_arrived() {
    let mut bed = bed(&Config::default(), Reply::Accept);
    bed.list_pair(&["198.51.100.1", "198.51.100.2"]);
    bed.list_nodes(Vec::new());
    // This host sees .1 up and .2 down (a ballot that sees everything down does not count).
    for (address, verdict) in [
        ("198.51.100.1", crate::probe::Verdict::Up),
        ("198.51.100.2", crate::probe::Verdict::Down),
    ] {
        let target: crate::probe::Target =
            format!("https://{address}:6443/readyz").parse().unwrap();
        assert!(
            bed.engine.probes.wanted.borrow().contains_key(&target),
            "the pair's endpoints are probed"
        );
        bed.engine.on_report(crate::probe::Report {
            target,
            finding: crate::probe::Finding::Vote(verdict),
            since: Instant::now(),
            detail: "as probed".into(),
        });
    }
    bed.lead();
    let vip = r("default/kubernetes-vip");
    // A cold leader: the member Leases are not listed yet.
    let ballots = bed.engine.ballots(Instant::now());
    assert!(
        matches!(ballots, Err(super::members::Incomplete::NotListed)),
        "{ballots:?}"
    );
    bed.write_now().await;
    assert_eq!(
        bed.api.writes().len(),
        1,
        "the target is written as it would be written anyway"
    );
    assert!(
        !bed.engine.probes.decided.contains_key(&vip),
        "but nothing is evicted by a ballot counted from an incomplete view"
    );
    bed.list_members(Vec::new());
    let ballots = bed.engine.ballots(Instant::now()).expect("complete now");
    assert_eq!(ballots.confirmed.votes.len(), 2, "{:?}", ballots.confirmed);
    assert!(
        bed.engine.pairs[&vip].write.is_due(Instant::now()),
        "the member list's arrival plans the probing pair again"
    );
    bed.write_now().await;
    assert_eq!(
        bed.engine.probes.decided[&vip].evicted,
        ["198.51.100.2".parse().unwrap()].into(),
        "its own ballot, counted from a complete view, evicts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pair_refused_while_active_keeps_its_slices_and_each_refusal_is_reported_once_a_term() {
    let config = annotations_only();
    let mut bed = bed(&config, Reply::Accept);
    let annotated = |source: &str| {
        service(
            "vip",
            &[
                (crate::names::ANNOTATION_ENABLED, "true"),
                (crate::names::ANNOTATION_SOURCE_NAME, source),
            ],
        )
    };
    bed.list_services(vec![service("kubernetes", &[]), annotated("kubernetes")]);
    bed.list_slices(vec![apiservers(&["198.51.100.1"])]);
    bed.list_the_rest();
    bed.lead();
    bed.write_now().await;
    assert_eq!(bed.api.writes().len(), 1);
    // The annotation now names the target itself: refused, never half-applied.
    bed.apply_service(annotated("vip"));
    assert!(matches!(
        bed.state("default/vip").phase,
        super::pair::Phase::Refused { .. }
    ));
    for _ in 0..3 {
        bed.engine.resync();
        bed.write_now().await;
    }
    assert_eq!(bed.api.writes().len(), 1, "nothing written or deleted");
    let refused = |bed: &mut Bed| {
        bed.reported()
            .into_iter()
            .filter(|(reason, _)| *reason == EventReason::Refused)
            .count()
    };
    assert_eq!(refused(&mut bed), 1);
    bed.engine
        .set_leadership(Leadership::Follower { holder: None });
    bed.lead();
    bed.engine.dispatch();
    assert_eq!(refused(&mut bed), 1, "a new term reports it again, once");
}

#[tokio::test(start_paused = true)]
async fn a_remote_source_in_trouble_is_reported_once_and_its_last_endpoints_are_kept() {
    use crate::remote::{Trouble, Update, View};
    use crate::source::{RemoteSource, Source};
    let db = RemoteSource {
        kubeconfig: "/etc/endpoint-copier/remote.yaml".into(),
        service: r("app/db"),
    };
    let mut config = plain();
    config.pairs = vec![PairConfigOf::of(
        vec![
            Source::Service(r("default/kubernetes")),
            Source::Remote(db.clone()),
        ],
        r("default/kubernetes-vip"),
    )];
    config.pairs[0].probe = None;
    let mut bed = bed(&config, Reply::Accept);
    bed.listed(&["198.51.100.1"]);
    let mut remote = apiservers(&["203.0.113.1"]);
    remote.metadata.namespace = Some("app".into());
    remote.metadata.name = Some("db-1".into());
    remote.metadata.labels =
        Some([(crate::names::SERVICE_NAME_LABEL.to_owned(), "db".to_owned())].into());
    let view = |trouble: Option<Trouble>| Update {
        source: db.clone(),
        view: View {
            slices: Some(vec![remote.clone()]),
            service_exists: Some(true),
            trouble,
            expired: false,
        },
    };
    bed.engine.on_remote(view(None));
    bed.lead();
    bed.write_now().await;
    bed.deliver();
    let written = bed.api.writes().len();
    assert_eq!(written, 2, "one slice per source: {:?}", bed.api.writes());
    bed.write_now().await;
    assert_eq!(bed.api.writes().len(), written, "in sync: nothing more");

    let down = || Some(Trouble::Unreachable("connection refused".into()));
    for _ in 0..3 {
        bed.engine.on_remote(view(down()));
        bed.write_now().await;
    }
    let unavailable: Vec<String> = bed
        .reported()
        .into_iter()
        .filter(|(reason, _)| *reason == EventReason::SourceUnavailable)
        .map(|(_, note)| note)
        .collect();
    assert_eq!(unavailable.len(), 1, "{unavailable:?}");
    assert!(unavailable[0].contains("app/db"), "{}", unavailable[0]);
    assert_eq!(
        bed.api.writes().len(),
        written,
        "its last known endpoints stay as written"
    );
    assert_eq!(
        bed.state("default/kubernetes-vip")
            .said
            .sources_failing
            .last()
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_term_writes_nothing_until_every_view_is_listed_again() {
    let mut bed = bed(&plain(), Reply::Accept);
    bed.listed(&["198.51.100.1"]);
    bed.engine.set_leadership(Leadership::Leader);
    assert!(!bed.engine.caches.relists.take_restart().is_empty());
    let vip = "default/kubernetes-vip";
    bed.write_now().await;
    assert!(
        bed.api.writes().is_empty(),
        "nothing from the last term's views"
    );
    // Each view listed again in turn; the write waits for the last.
    bed.list_services(vec![
        service("kubernetes", &[]),
        service("kubernetes-vip", &[]),
    ]);
    bed.list_members(Vec::new());
    bed.list_nodes(Vec::new());
    bed.write_now().await;
    assert!(
        bed.api.writes().is_empty(),
        "the slices are not listed again yet"
    );
    bed.list_slices(vec![apiservers(&["198.51.100.1"])]);
    assert!(
        bed.state(vip).write.is_due(Instant::now()),
        "the last list touches the pair"
    );
    bed.write_now().await;
    assert_eq!(bed.api.writes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_node_view_of_a_failing_node_watch_never_drains() {
    let mut bed = bed(&plain(), Reply::Accept);
    bed.list_pair(&["198.51.100.1", "198.51.100.2"]);
    bed.list_members(Vec::new());
    // What this host knew of the Nodes before its Node watch started failing: cp-1 drained.
    // The drain has ended since, which the failing watch cannot tell.
    bed.list_nodes(vec![
        node(
            "cp-1",
            "198.51.100.1",
            &[(crate::names::ANNOTATION_DRAIN, "true")],
        ),
        node("cp-2", "198.51.100.2", &[]),
    ]);
    let cut =
        kube::runtime::watcher::Error::WatchFailed(kube::Error::Service("connection reset".into()));
    bed.engine.watch_error(Scope::Nodes, &cut);
    bed.engine.set_leadership(Leadership::Leader);
    assert!(!bed.engine.caches.relists.take_restart().is_empty());
    bed.list_services(vec![
        service("kubernetes", &[]),
        service("kubernetes-vip", &[]),
    ]);
    bed.list_slices(vec![apiservers(&["198.51.100.1", "198.51.100.2"])]);
    bed.list_members(Vec::new());
    bed.write_now().await;
    bed.deliver();
    let written: Vec<EndpointSlice> = bed
        .engine
        .caches
        .slices
        .slices_of(&r("default/kubernetes-vip"));
    assert_eq!(
        readiness(&written),
        [
            ("198.51.100.1".to_owned(), true),
            ("198.51.100.2".to_owned(), true)
        ],
        "no drain from a stale Node view: the target keeps what it has (nothing drained)"
    );
}
