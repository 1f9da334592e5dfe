//! One run: a test bed with `n` apiserver doors, `n` hosts each running the real daemon
//! (`daemon::run_with` over the in-memory network), a seeded fault schedule, and the write
//! observer that feeds every accepted write to the [`Checker`].
//!
//! The cluster: Nodes `node-1`..`node-n` (control-plane, InternalIP = door address), Service
//! `default/kubernetes` whose slice `kubernetes` lists the doors whose apiserver runs (a killed
//! one leaves 7–20 s later, as the real endpoint reconciler does; a hung or unreachable one
//! never leaves), and the target `default/kubernetes-vip`. Every host runs the shipped default
//! pair with the default probe (HTTPS `/readyz`), Lease and member timings.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use endpoint_copier::client::transport::Connector;
use endpoint_copier::clock::{Clock, Drift};
use endpoint_copier::config::{Config, Kubeconfig, PairConfig};
use endpoint_copier::daemon::{self, Environment};
use endpoint_copier::group::MemberRecord;
use endpoint_copier::names;
use endpoint_copier::probe::{Dialer, Verdict};
use endpoint_copier::shutdown::Shutdown;
use endpoint_copier_testbed::store::{self, ListParams, WriteParams};
use endpoint_copier_testbed::{Options, TestBed, Verb};
use jiff::SignedDuration;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::check::{Ballot, Checker, Truth, Violation};
use crate::net::{self, Door, Net};

/// Events kept for a violation's report.
const TRACE_TAIL: usize = 50;

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Hosts (and apiservers): 1–7.
    pub hosts: usize,
    /// Simulated time.
    pub duration: Duration,
    /// A scripted schedule instead of the seed's.
    pub scenario: Option<Vec<crate::faults::Planned>>,
    /// Which hosts configure the extra pair, instead of the seed's choice.
    pub extra: Option<Vec<bool>>,
}

/// What a run found.
pub struct Outcome {
    /// The broken invariants, in order.
    pub violations: Vec<Violation>,
    /// The trace's digest: every event, the daemons' included.
    pub digest: u64,
    /// The fault schedule's and the outcome's digest: the same for the same seed, always.
    pub schedule: u64,
    /// Events traced.
    pub events: u64,
    /// The report to print when something broke: the last events.
    pub tail: Vec<String>,
    /// Faults applied, by kind.
    pub faults: BTreeMap<&'static str, u32>,
    /// The most EndpointSlice writes in any 60 s.
    pub busiest_minute: usize,
    /// The schedule's last lines (`SIM_TRACE=schedule` prints them).
    pub schedule_tail: Vec<String>,
}

/// The trace: every event folded into a digest; the last ones kept for a report.
pub struct Trace {
    /// How many of the last events to keep: `SIM_TAIL`, else [`TRACE_TAIL`].
    keep: usize,
    tail: VecDeque<String>,
    digest: u64,
    count: u64,
}

impl Default for Trace {
    fn default() -> Trace {
        let keep = std::env::var("SIM_TAIL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TRACE_TAIL);
        Trace {
            keep,
            tail: VecDeque::new(),
            digest: 0,
            count: 0,
        }
    }
}

impl Trace {
    fn push(&mut self, at: Duration, text: &str) {
        self.push_line(format!("{:>9.3}s {text}", at.as_secs_f64()));
    }

    /// A line without a time (the end of a run: how long the hosts take to stop varies).
    fn push_line(&mut self, line: String) {
        // FNV-1a: fixed, so digests compare across processes.
        let mut h = if self.count == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.digest
        };
        for b in line.bytes().chain([b'\n']) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.digest = h;
        self.count += 1;
        self.tail.push_back(line);
        if self.tail.len() > self.keep {
            self.tail.pop_front();
        }
    }
}

/// How an apiserver every host sees dead is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dead {
    /// Killed or hung: its host's API requests go unanswered too.
    Silent,
    /// `/readyz` fails, the API serves: its host can still lead and vote.
    ServingApi,
}

/// What the observer, the ticker and the driver share.
pub struct Lab {
    start: Instant,
    pub checker: Checker,
    pub trace: Trace,
    /// The fault schedule and, at the end, the invariants broken: what one seed reproduces
    /// exactly (the trace's interleaving of the daemons' own events may differ, see
    /// docs/development/testing.md).
    schedule: Trace,
    /// Violations already traced.
    reported: usize,
    /// Last ballot traced per member, and last target traced.
    last_ballot: BTreeMap<String, String>,
    /// What the liveness checks need to know of the world.
    pub truth: Truth,
    /// Faults active now, by label: whether each is a crashed host.
    active: BTreeMap<String, bool>,
    /// The labels of the active faults that are drains.
    drain_faults: BTreeSet<String>,
    /// The hosts running now, by index (host `h` talks to apiserver `h`).
    running: BTreeSet<usize>,
    /// Since when the one dead address has been the only fault active but crashes.
    alone_since: Option<Instant>,
    /// When a host last started: a restarted leader weighs the records it has only listed
    /// for a member expiry before they count or go, so the dead-ready bound counts from it.
    pub(crate) last_start: Option<Instant>,
    /// When a fault last healed.
    pub(crate) last_heal: Option<Instant>,
    /// The Nodes' drains as written.
    pub(crate) drains: crate::drains::Drains,
    /// Addresses every host sees dead (killed, hung or unready apiservers), since when, and how.
    dead: BTreeMap<IpAddr, (Instant, Dead)>,
}

impl Lab {
    pub(crate) fn event(&mut self, text: &str) {
        let at = Instant::now().duration_since(self.start);
        self.trace.push(at, text);
    }

    /// The trace's last events, for a run that never ends.
    pub fn tail_report(&self, replay: &str) -> String {
        let mut out = format!(
            "sim: {replay}: the last {} events:\n",
            self.trace.tail.len()
        );
        for line in &self.trace.tail {
            let _ = writeln!(out, "  {line}");
        }
        out
    }

    /// Traces violations the checker found since the last call.
    fn flush(&mut self) {
        while self.reported < self.checker.violations.len() {
            let v = self.checker.violations[self.reported].clone();
            self.reported += 1;
            self.event(&format!("VIOLATION {}: {}", v.invariant, v.detail));
        }
    }

    /// Folds `text` into the schedule digest, at the current virtual time.
    pub(crate) fn schedule(&mut self, text: &str) {
        let at = Instant::now().duration_since(self.start);
        self.schedule.push(at, text);
    }

    pub(crate) fn fault_on(&mut self, label: String) {
        self.schedule(&format!("fault: {label}"));
        self.fault_on_as(label, false);
    }

    /// A fault the caller folds into the schedule digest itself (its label depends on the
    /// daemons: who leads); `crash`: it is a crashed host.
    pub(crate) fn fault_on_as(&mut self, label: String, crash: bool) {
        self.event(&format!("fault: {label}"));
        self.active.insert(label, crash);
        self.truth.calm_since = None;
        self.refresh_alone();
        self.refresh_quiet();
    }

    /// A fault that must change nothing the invariants look at (a host's wall clock stepped):
    /// traced, but the liveness checks go on as if nothing were wrong.
    pub(crate) fn harmless_on(&mut self, label: &str) {
        self.schedule(&format!("fault: {label}"));
        self.event(&format!("fault: {label} (the checks go on)"));
    }

    /// The end of a fault begun with [`Lab::harmless_on`].
    pub(crate) fn harmless_off(&mut self, label: &str) {
        self.schedule(&format!("healed: {label}"));
        self.event(&format!("healed: {label}"));
    }

    /// A drain fault (lasting or timed) begins.
    pub(crate) fn drain_on(&mut self, label: String) {
        self.drain_faults.insert(label.clone());
        self.fault_on(label);
    }

    /// Recomputes `truth.drains_only_since`: whether every active fault is a drain, since when.
    fn refresh_quiet(&mut self) {
        let only_drains = self.active.keys().all(|l| self.drain_faults.contains(l));
        if !only_drains {
            self.truth.drains_only_since = None;
        } else if self.truth.drains_only_since.is_none() {
            self.truth.drains_only_since = Some(Instant::now());
        }
    }

    /// Recomputes `truth.dead_alone`: the one dead address while every other active fault is
    /// a crashed host and some running host can write — its own apiserver serves the API (a
    /// host whose only apiserver is killed or hangs can neither lead nor vote: nobody could
    /// evict then; one whose apiserver only fails `/readyz` still can).
    fn refresh_alone(&mut self) {
        let others = self.active.values().filter(|crash| !**crash).count();
        let can_write = self.running.iter().any(|h| {
            self.dead
                .get(&net::door_address(*h))
                .is_none_or(|(_, dead)| *dead == Dead::ServingApi)
        });
        let alone = self.dead.len() == 1 && others == 1 && can_write;
        if !alone {
            self.alone_since = None;
            self.truth.dead_alone.clear();
            return;
        }
        let since = *self.alone_since.get_or_insert_with(Instant::now);
        let since = self.last_start.map_or(since, |s| since.max(s));
        if let Some((address, (dead_since, _))) = self.dead.iter().next() {
            self.truth.dead_alone = [(*address, since.max(*dead_since))].into();
        }
    }

    /// The hosts running now; `started`: because one just started.
    pub(crate) fn set_running(&mut self, running: BTreeSet<usize>, started: bool) {
        self.running = running;
        if started {
            self.last_start = Some(Instant::now());
        }
        self.refresh_alone();
    }

    /// `address` is seen dead by every host from now on, and how (`None`: not any more).
    pub(crate) fn set_dead(&mut self, address: IpAddr, dead: Option<Dead>) {
        match dead {
            Some(how) => {
                self.dead.insert(address, (Instant::now(), how));
            }
            None => {
                self.dead.remove(&address);
            }
        }
        self.refresh_alone();
    }

    pub(crate) fn fault_off(&mut self, label: &str) {
        self.schedule(&format!("healed: {label}"));
        self.event(&format!("healed: {label}"));
        self.active.remove(label);
        self.drain_faults.remove(label);
        self.refresh_quiet();
        self.last_heal = Some(Instant::now());
        if self.active.is_empty() {
            self.truth.calm_since = Some(Instant::now());
        }
        self.refresh_alone();
    }
}

fn short(a: &IpAddr) -> String {
    match a {
        IpAddr::V4(v4) => format!(".{}", v4.octets()[3]),
        IpAddr::V6(v6) => v6.to_string(),
    }
}

fn show(target: &BTreeMap<IpAddr, bool>) -> String {
    target
        .iter()
        .map(|(a, r)| format!("{}{}", short(a), if *r { "" } else { "(not ready)" }))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn resource(group: &str, version: &str, plural: &str) -> &'static store::Resource {
    store::resource(group, version, plural)
        .unwrap_or_else(|| panic!("the test bed serves {plural}"))
}

/// Target `default/<service>` as the store holds it: address → ready, over the slices of ours.
fn target_of(store: &store::Store, service: &str) -> BTreeMap<IpAddr, bool> {
    let slices = resource("discovery.k8s.io", "v1", "endpointslices");
    let p = ListParams {
        label_selector: Some(format!(
            "kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by={}",
            names::MANAGED_BY
        )),
        ..ListParams::default()
    };
    let mut out = BTreeMap::new();
    let Ok(list) = store.list(slices, Some("default"), &p) else {
        return out;
    };
    for slice in list["items"].as_array().into_iter().flatten() {
        for e in slice["endpoints"].as_array().into_iter().flatten() {
            let ready = e["conditions"]["ready"].as_bool().unwrap_or(true);
            for a in e["addresses"].as_array().into_iter().flatten() {
                if let Some(a) = a.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                    let r = out.entry(a).or_insert(false);
                    *r |= ready;
                }
            }
        }
    }
    out
}

/// The observer's work on one accepted write.
fn observe(
    lab: &Mutex<Lab>,
    a: &endpoint_copier_testbed::server::Accepted<'_>,
    store: &store::Store,
) {
    let mut lab = lock(lab);
    let now = Instant::now();
    let name = a.object["metadata"]["name"].as_str().unwrap_or("");
    match a.resource {
        "leases" if a.namespace == Some("kube-system") && name == "endpoint-copier" => {
            let holder = if a.verb == Verb::Delete {
                None
            } else {
                a.object["spec"]["holderIdentity"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
            };
            if lab.checker.holder_at(now).map(str::to_owned) != holder {
                lab.event(&format!(
                    "lease: {} holds ({} wrote)",
                    holder.as_deref().unwrap_or("nobody"),
                    a.identity
                ));
            }
            lab.checker.on_lease(now, holder);
        }
        "leases" => {
            let Ok(lease) = serde_json::from_value(a.object.clone()) else {
                return;
            };
            let Ok(record) = MemberRecord::from_lease(&lease) else {
                return;
            };
            if a.verb == Verb::Delete {
                // The leader forgot the member: its pairs hold nothing any more.
                lab.checker.on_wants(now, &record.identity, BTreeSet::new());
                return;
            }
            let wants = record
                .pairs
                .iter()
                .map(|(_, target)| target.to_string())
                .collect();
            lab.checker.on_wants(now, &record.identity, wants);
            let ballot: Ballot = record
                .verdicts
                .iter()
                .map(|(t, v)| (t.address, *v == Verdict::Up))
                .collect();
            let shown = ballot
                .iter()
                .map(|(a, up)| format!("{}{}", short(a), if *up { " up" } else { " DOWN" }))
                .collect::<Vec<_>>()
                .join(", ");
            if lab.last_ballot.get(&record.identity) != Some(&shown) {
                lab.event(&format!(
                    "ballot {}: {}",
                    record.identity,
                    if shown.is_empty() { "none" } else { &shown }
                ));
                lab.last_ballot.insert(record.identity.clone(), shown);
            }
            lab.checker.on_member(now, &record.identity, ballot);
        }
        "endpointslices" if a.namespace == Some("default") => {
            let labels = &a.object["metadata"]["labels"];
            let ours = labels["endpointslice.kubernetes.io/managed-by"] == names::MANAGED_BY;
            let service = labels["kubernetes.io/service-name"].as_str().unwrap_or("");
            if ours && service != "kubernetes-vip" {
                let target = format!("default/{service}");
                let deleted = (a.verb == Verb::Delete).then(|| name.to_owned());
                let now_target = target_of(store, service);
                lab.event(&format!(
                    "write {} {:?} {name}: {}",
                    a.identity,
                    a.verb,
                    show(&now_target)
                ));
                lab.checker
                    .on_other_write(now, a.arrived, a.identity, &target, deleted, now_target);
                lab.flush();
                return;
            }
            if service != "kubernetes-vip" {
                return;
            }
            let wanted_delete = if a.verb == Verb::Delete && ours {
                labels["endpoint-copier/source"]
                    .as_str()
                    .and_then(|source| {
                        store
                            .get(
                                resource("discovery.k8s.io", "v1", "endpointslices"),
                                Some("default"),
                                source,
                            )
                            .ok()
                            .map(|_| name.to_owned())
                    })
            } else {
                None
            };
            let target = target_of(store, "kubernetes-vip");
            lab.event(&format!(
                "write {} {:?} {name}: {}",
                a.identity,
                a.verb,
                show(&target)
            ));
            lab.checker
                .on_slice_write(now, a.arrived, a.identity, wanted_delete, target);
        }
        "nodes" => {
            lab.drains.read(store, now);
            lab.refresh_drains();
        }
        _ => {}
    }
    lab.flush();
}

pub(crate) fn lock(lab: &Mutex<Lab>) -> MutexGuard<'_, Lab> {
    lab.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One simulated host.
pub(crate) struct Host {
    pub(crate) identity: String,
    pub(crate) config: Config,
    /// How far its wall clock is off (a fault may step it while the daemon runs).
    pub(crate) drift: Drift,
    /// Its drift when the run began, restored when a clock fault heals.
    pub(crate) usual_drift: SignedDuration,
    /// Whether its config has the pair only some hosts have ([`extra_pair`]).
    pub(crate) extra: bool,
    incarnation: u32,
    running: Option<(Shutdown, tokio::task::JoinHandle<Result<(), daemon::Error>>)>,
}

/// A run in progress.
pub(crate) struct World {
    pub(crate) bed: Arc<TestBed>,
    pub(crate) net: Arc<Net>,
    pub(crate) lab: Arc<Mutex<Lab>>,
    pub(crate) hosts: Vec<Host>,
    pub(crate) rng: fastrand::Rng,
    pub(crate) faults: BTreeMap<&'static str, u32>,
    /// The host a leader crash took down, to restart at its heal.
    pub(crate) leader_crashed: Option<usize>,
    /// Hosts a reconfiguration fault restarted, with whether they had the extra pair before.
    pub(crate) reconfigured: BTreeMap<usize, bool>,
    /// The run's simulated duration.
    duration: Duration,
    /// When the run began: the true wall time is [`EPOCH`] then.
    began: Instant,
    /// The other cluster, whose Service `app/db` the remote source reads.
    pub(crate) remote: Arc<TestBed>,
    /// Bumped whenever a door changes, so a pending reconcile of an older state does nothing.
    door_epoch: Arc<Mutex<Vec<u64>>>,
    _dirs: Vec<tempfile::TempDir>,
}

/// The VIP.
pub(crate) const VIP: &str = "default/kubernetes-vip";
/// The target of the pair only some hosts configure.
pub(crate) const EXTRA_TARGET: &str = "default/api-internal";
/// The remote Service (in the other cluster) and its addresses at the start.
const REMOTE_SERVICE: &str = "app/db";
pub(crate) const REMOTE_ADDRESSES: [IpAddr; 3] = [
    IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 40)),
    IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 41)),
    IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 42)),
];

fn service(name: &str) -> names::ServiceRef {
    name.parse().unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `app/db` in the other cluster → `default/db`, without probes (its addresses are nowhere
/// the hosts could probe), as docs/usage/configuration.md shows a remote source.
fn remote_pair(kubeconfig: &std::path::Path) -> PairConfig {
    PairConfig::of(
        vec![endpoint_copier::source::Source::Remote(
            endpoint_copier::source::RemoteSource {
                kubeconfig: kubeconfig.to_owned(),
                service: service(REMOTE_SERVICE),
            },
        )],
        service(crate::targets::REMOTE_TARGET),
    )
}

/// `default/kubernetes` → `default/api-internal`, without probes: the pair some hosts have and
/// others not (a config that differs by host).
pub(crate) fn extra_pair() -> PairConfig {
    let mut pair = PairConfig::new(service("default/kubernetes"), service(EXTRA_TARGET));
    pair.probe = None;
    pair
}

/// The true wall time when a run begins (every run: a trace shows the same instants).
pub(crate) const EPOCH: jiff::Timestamp = jiff::Timestamp::constant(1_798_761_600, 0);

/// A host's wall clock offset: right in 3 runs of 5, else up to two hours ahead or behind
/// (NTP that never synced, a VM restored from a snapshot).
fn drift_of(rng: &mut fastrand::Rng) -> SignedDuration {
    if rng.u32(0..5) < 3 {
        SignedDuration::ZERO
    } else {
        SignedDuration::from_millis(rng.i64(-7_200_000..=7_200_000))
    }
}

impl World {
    /// Host `h`'s wall clock now.
    pub(crate) fn wall_of(&self, h: usize) -> jiff::Timestamp {
        Clock::simulated(EPOCH, self.began, self.hosts[h].drift.clone()).now()
    }
}

fn runtime_dir(dirs: &mut Vec<tempfile::TempDir>) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("endpoint-copier-sim-run-")
        .tempdir()
        .unwrap_or_else(|e| panic!("sim: a runtime directory: {e}"));
    let path = dir.path().to_owned();
    dirs.push(dir);
    path
}

impl World {
    fn new(seed: u64, opts: &Opts) -> World {
        let bed = Arc::new(TestBed::in_memory(Options {
            // As the real server: a bookmark a minute (1 s would be 60 times the events).
            bookmark_interval: Duration::from_secs(60),
            ..Options::default()
        }));
        let lab = Arc::new(Mutex::new(Lab {
            start: Instant::now(),
            checker: Checker::default(),
            trace: Trace::default(),
            schedule: Trace::default(),
            reported: 0,
            last_ballot: BTreeMap::new(),
            truth: Truth {
                calm_since: Some(Instant::now()),
                drains_only_since: Some(Instant::now()),
                ..Truth::default()
            },
            active: BTreeMap::new(),
            drain_faults: BTreeSet::new(),
            running: BTreeSet::new(),
            alone_since: None,
            last_start: None,
            last_heal: None,
            drains: crate::drains::Drains::default(),
            dead: BTreeMap::new(),
        }));
        {
            let lab = Arc::clone(&lab);
            bed.on_write(Arc::new(move |a, store| observe(&lab, a, store)));
        }
        let remote = Arc::new(TestBed::in_memory(Options {
            bookmark_interval: Duration::from_secs(60),
            ..Options::default()
        }));
        let net = Net::with_remote(opts.hosts, Arc::clone(&bed), Some(Arc::clone(&remote)));
        let remote_kubeconfig = remote.kubeconfig_at(
            "endpoint-copier-reader",
            &format!("https://{}:{}", net::REMOTE_ADDRESS, net::API_PORT),
        );
        let mut dirs = Vec::new();
        // Its own generator: the fault schedule stays what it was whatever the clocks and
        // configs.
        let mut clocks = fastrand::Rng::with_seed(seed ^ 0x434c_4f43_4b53);
        let hosts = (0..opts.hosts)
            .map(|h| {
                let identity = format!("node-{}", h + 1);
                let server = format!("https://{}:{}", net::door_address(h), net::API_PORT);
                let kubeconfig = bed.kubeconfig_at(&identity, &server);
                let mut config = Config {
                    kubeconfig: Kubeconfig::Path(kubeconfig),
                    pairs: vec![
                        PairConfig::new(service("default/kubernetes"), service(VIP)),
                        remote_pair(&remote_kubeconfig),
                    ],
                    ..Config::default()
                };
                // Long enough for most outages, short enough that some outlast it.
                config.sync.keep_last_known = Duration::from_secs(60);
                config.lease.identity = Some(identity.clone());
                config.lease.runtime_dir = Some(runtime_dir(&mut dirs));
                config.metrics.listen = None;
                let usual_drift = drift_of(&mut clocks);
                Host {
                    identity,
                    config,
                    drift: Drift::new(usual_drift),
                    usual_drift,
                    extra: {
                        let drawn = clocks.bool();
                        opts.extra.as_ref().map_or(drawn, |e| e[h])
                    },
                    incarnation: 0,
                    running: None,
                }
            })
            .collect();
        let mut world = World {
            bed,
            net,
            lab,
            hosts,
            rng: fastrand::Rng::with_seed(seed),
            faults: BTreeMap::new(),
            leader_crashed: None,
            reconfigured: BTreeMap::new(),
            duration: opts.duration,
            began: Instant::now(),
            remote,
            door_epoch: Arc::new(Mutex::new(vec![0; opts.hosts])),
            _dirs: dirs,
        };
        world.seed_cluster(opts.hosts);
        world
    }

    pub(crate) fn event(&self, text: &str) {
        lock(&self.lab).event(text);
    }

    fn seed_cluster(&mut self, n: usize) {
        let store = self.bed.store();
        let p = WriteParams::default();
        for h in 0..n {
            let name = format!("node-{}", h + 1);
            let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
                "labels": {names::CONTROL_PLANE_LABEL: "true"}}});
            store
                .create(resource("", "v1", "nodes"), None, node, &p)
                .unwrap_or_else(|e| panic!("sim: Node: {}", e.message));
            let status = json!({"status": {"addresses": [
                {"type": "InternalIP", "address": net::door_address(h).to_string()},
                {"type": "Hostname", "address": name}]}});
            store
                .replace_status(resource("", "v1", "nodes"), None, &name, status, &p)
                .unwrap_or_else(|e| panic!("sim: Node status: {}", e.message));
        }
        let vip = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes-vip", "namespace": "default",
                "labels": {"serviceType": "kubernetes-vip"}},
            "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "k8s-api", "port": 6443, "protocol": "TCP", "targetPort": 6443}]},
        });
        store
            .create(resource("", "v1", "services"), Some("default"), vip, &p)
            .unwrap_or_else(|e| panic!("sim: target Service: {}", e.message));
        for (name, port) in [("db", 5432), ("api-internal", 6443)] {
            let target = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                    "ports": [{"name": "tcp", "port": port, "protocol": "TCP", "targetPort": port}]},
            });
            store
                .create(resource("", "v1", "services"), Some("default"), target, &p)
                .unwrap_or_else(|e| panic!("sim: target Service {name}: {}", e.message));
        }
        let db = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": "app"},
            "spec": {"type": "ClusterIP", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "tcp", "port": 5432, "protocol": "TCP", "targetPort": 5432}]},
        });
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}});
        self.remote
            .store()
            .create(resource("", "v1", "namespaces"), None, ns, &p)
            .unwrap_or_else(|e| panic!("sim: remote namespace: {}", e.message));
        self.remote
            .store()
            .create(resource("", "v1", "services"), Some("app"), db, &p)
            .unwrap_or_else(|e| panic!("sim: remote Service: {}", e.message));
        self.write_remote(&REMOTE_ADDRESSES[..2].iter().copied().collect());
        let source: BTreeSet<IpAddr> = (0..n).map(net::door_address).collect();
        self.write_source(&source);
    }

    /// Writes the `kubernetes` slice with `addresses`, as the apiservers' reconciler does.
    fn write_source(&self, addresses: &BTreeSet<IpAddr>) {
        SourceWriter {
            bed: &self.bed,
            lab: &self.lab,
        }
        .write(addresses);
    }

    /// Writes the remote Service's slice with `addresses`, as that cluster's controller does.
    pub(crate) fn write_remote(&self, addresses: &BTreeSet<IpAddr>) {
        put_slice(
            self.remote.store(),
            ("app", "db-7f3kq", "db"),
            ("tcp", 5432),
            addresses,
        );
        let mut lab = lock(&self.lab);
        lab.truth.remote_source = addresses.clone();
        let shown = addresses.iter().map(short).collect::<Vec<_>>().join(" ");
        lab.event(&format!("remote source: {shown}"));
    }

    fn source(&self) -> BTreeSet<IpAddr> {
        lock(&self.lab).truth.source.clone()
    }

    /// The hosts whose daemon runs, by index.
    fn running_hosts(&self) -> BTreeSet<usize> {
        (0..self.hosts.len())
            .filter(|h| self.hosts[*h].running.is_some())
            .collect()
    }

    pub(crate) fn start(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        let environment = Environment {
            connector: Connector::Dial(self.net.connector(h, host.incarnation, &host.identity)),
            dialer: Dialer::Dial(self.net.dialer(h, host.incarnation)),
            clock: Clock::simulated(EPOCH, self.began, host.drift.clone()),
        };
        let mut config = host.config.clone();
        if host.extra {
            config.pairs.push(extra_pair());
        }
        let shutdown = Shutdown::new();
        // Each daemon's logs (SIM_LOG) carry its host's name.
        let span = tracing::info_span!("host", name = %host.identity);
        let task = tokio::spawn(tracing::Instrument::instrument(
            daemon::run_with(config, shutdown.clone(), environment),
            span,
        ));
        host.running = Some((shutdown, task));
        let text = format!(
            "host {} starts (incarnation {}, clock {:+} s, {})",
            host.identity,
            host.incarnation,
            host.drift.get().as_secs(),
            if host.extra {
                "with api-internal"
            } else {
                "without api-internal"
            }
        );
        let running = self.running_hosts();
        let mut lab = lock(&self.lab);
        lab.set_running(running, true);
        lab.event(&text);
    }

    /// Host `h` dies at once: nothing it had open or in flight reaches anyone any more.
    pub(crate) async fn crash(&mut self, h: usize, keep_runtime_dir: bool) {
        let next = self.net.crash(h);
        let host = &mut self.hosts[h];
        host.incarnation = next;
        if let Some((shutdown, task)) = host.running.take() {
            task.abort();
            let _ = task.await;
            // Only stragglers the aborted future did not own are left to hear this.
            shutdown.cancel();
        }
        if !keep_runtime_dir {
            host.config.lease.runtime_dir = Some(runtime_dir(&mut self._dirs));
        }
        let running = self.running_hosts();
        lock(&self.lab).set_running(running, false);
        let text = format!(
            "host {} crashes ({} its runtime directory)",
            self.hosts[h].identity,
            if keep_runtime_dir {
                "keeping"
            } else {
                "losing"
            }
        );
        self.event(&text);
    }

    /// Host `h` restarted as `systemctl restart` after its config changed: stopped
    /// gracefully (SIGTERM), then started with the extra pair `extra`.
    pub(crate) async fn reconfigure(&mut self, h: usize, extra: bool) {
        if let Some((shutdown, task)) = self.hosts[h].running.take() {
            shutdown.cancel();
            if tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .is_err()
            {
                lock(&self.lab).checker.violate(
                    "stop",
                    format!(
                        "{} did not stop within 30 s of SIGTERM",
                        self.hosts[h].identity
                    ),
                );
            }
        }
        self.hosts[h].extra = extra;
        self.start(h);
    }

    /// Stops every host as systemd would (SIGTERM), at the end of a run.
    async fn stop_all(&mut self) {
        for host in &mut self.hosts {
            if let Some((shutdown, task)) = host.running.take() {
                shutdown.cancel();
                if tokio::time::timeout(Duration::from_secs(30), task)
                    .await
                    .is_err()
                {
                    lock(&self.lab).checker.violations.push(Violation {
                        invariant: "stop",
                        detail: format!("{} did not stop within 30 s of SIGTERM", host.identity),
                    });
                }
            }
        }
    }

    pub(crate) fn leader(&self) -> Option<usize> {
        let lab = lock(&self.lab);
        let holder = lab.checker.holder_at(Instant::now())?.to_owned();
        self.hosts.iter().position(|h| h.identity == holder)
    }

    /// Sets door `j` and models the endpoint reconciler: a killed apiserver leaves the source
    /// 7–20 s later; one that comes back is in again within 1–3 s.
    pub(crate) fn set_door(&mut self, j: usize, door: Door) {
        self.net.set_door(j, door);
        let epoch = {
            let mut epochs = self
                .door_epoch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            epochs[j] += 1;
            epochs[j]
        };
        let (delay, present) = match door {
            Door::Down => (Duration::from_millis(self.rng.u64(7_000..=20_000)), false),
            _ => (Duration::from_millis(self.rng.u64(1_000..=3_000)), true),
        };
        let address = net::door_address(j);
        if self.source().contains(&address) == present {
            return;
        }
        let me = Reconcile {
            lab: Arc::clone(&self.lab),
            bed: Arc::clone(&self.bed),
            epochs: Arc::clone(&self.door_epoch),
            j,
            epoch,
            present,
        };
        // The reconciler runs as its own task: the driver goes on meanwhile.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.apply();
        });
    }
}

/// Writes (creates or replaces) the EndpointSlice `(namespace, name, service)` with `addresses`,
/// all ready, on one port: what a cluster's endpoint controller keeps there.
fn put_slice(
    store: &store::Store,
    (namespace, name, service): (&str, &str, &str),
    (port_name, port): (&str, u16),
    addresses: &BTreeSet<IpAddr>,
) {
    let r = resource("discovery.k8s.io", "v1", "endpointslices");
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
        .collect();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    });
    let p = WriteParams::default();
    let written = match store.get(r, Some(namespace), name) {
        Ok(_) => store.replace(r, Some(namespace), name, slice, &p),
        Err(_) => store.create(r, Some(namespace), slice, &p),
    };
    if let Err(e) = written {
        panic!("sim: slice {namespace}/{name}: {}", e.message);
    }
}

/// A delayed write of the source slice by the apiservers' endpoint reconciler.
struct Reconcile {
    lab: Arc<Mutex<Lab>>,
    bed: Arc<TestBed>,
    epochs: Arc<Mutex<Vec<u64>>>,
    j: usize,
    epoch: u64,
    present: bool,
}

impl Reconcile {
    fn apply(self) {
        let current = self
            .epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)[self.j];
        // Only if the door is still as it was when this was scheduled.
        if current != self.epoch {
            return;
        }
        let mut source = lock(&self.lab).truth.source.clone();
        let address = net::door_address(self.j);
        let changed = if self.present {
            source.insert(address)
        } else {
            source.remove(&address)
        };
        if changed {
            let w = SourceWriter {
                bed: &self.bed,
                lab: &self.lab,
            };
            w.write(&source);
        }
    }
}

struct SourceWriter<'a> {
    bed: &'a TestBed,
    lab: &'a Mutex<Lab>,
}

impl SourceWriter<'_> {
    /// Writes the `kubernetes` slice with `addresses`, as the apiservers' reconciler does.
    fn write(&self, addresses: &BTreeSet<IpAddr>) {
        put_slice(
            self.bed.store(),
            ("default", "kubernetes", "kubernetes"),
            ("https", net::API_PORT),
            addresses,
        );
        let mut lab = lock(self.lab);
        lab.truth.source = addresses.clone();
        let shown = addresses.iter().map(short).collect::<Vec<_>>().join(" ");
        lab.event(&format!("source: {shown}"));
    }
}

/// Runs one seed for `opts.duration` of simulated time.
pub async fn run(seed: u64, opts: &Opts, progress: Arc<crate::Progress>) -> Outcome {
    let mut world = World::new(seed, opts);
    if let Ok(mut lab) = progress.lab.lock() {
        *lab = Some(Arc::clone(&world.lab));
    }
    world.event(&format!(
        "seed {seed}: {} hosts, {} s",
        opts.hosts,
        opts.duration.as_secs()
    ));
    for h in 0..opts.hosts {
        world.start(h);
    }
    let end = Instant::now() + opts.duration;
    let ticker = {
        let lab = Arc::clone(&world.lab);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(500));
            loop {
                every.tick().await;
                progress
                    .beats
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut lab = lock(&lab);
                lab.refresh_drains();
                let truth = lab.truth.clone();
                lab.checker.tick(Instant::now(), &truth);
                lab.flush();
            }
        })
    };
    let plan = match &opts.scenario {
        Some(plan) => plan.clone(),
        None => crate::faults::plan(&mut world.rng, opts),
    };
    world.execute(plan, end).await;
    ticker.abort();
    world.stop_all().await;
    let mut lab = lock(&world.lab);
    lab.checker.finish(Instant::now());
    lab.flush();
    let broken: Vec<&str> = lab.checker.violations.iter().map(|v| v.invariant).collect();
    lab.schedule.push_line(format!("end: broken {broken:?}"));
    Outcome {
        violations: lab.checker.violations.clone(),
        digest: lab.trace.digest,
        schedule: lab.schedule.digest,
        events: lab.trace.count,
        tail: lab.trace.tail.iter().cloned().collect(),
        faults: std::mem::take(&mut world.faults),
        busiest_minute: lab.checker.busiest_minute,
        schedule_tail: lab.schedule.tail.iter().cloned().collect(),
    }
}

impl World {
    pub(crate) fn duration(&self) -> Duration {
        self.duration
    }

    pub(crate) fn count(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    /// Door `j` seen dead by every host (killed, hung or unready), and how — or not any more.
    pub(crate) fn mark_dead(&self, j: usize, dead: Option<Dead>) {
        lock(&self.lab).set_dead(net::door_address(j), dead);
    }
}

/// A report of a run's violations: which run (`replay`: how to replay it), the invariants,
/// the trace's last events.
pub fn report(replay: &str, outcome: &Outcome) -> String {
    let mut out = String::new();
    for v in &outcome.violations {
        let _ = writeln!(
            out,
            "sim: {replay}: invariant {} broken: {}",
            v.invariant, v.detail
        );
    }
    let _ = writeln!(
        out,
        "sim: {replay}: the last {} events:",
        outcome.tail.len()
    );
    for line in &outcome.tail {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "sim: replay with {replay}");
    out
}
