//! The engine: one task owning every cache and every pair's state, driven by one `select!` over
//! shutdown, leadership, the watches, finished tasks and timers. It decides nothing by itself
//! (`pairs`, `pair::plan_for` and `schedule` do) and writes nothing itself (the tasks of `jobs`
//! do, through `apply`).
//!
//! Concurrency choices, each at the line that makes it: one task owns all state (no locks around
//! caches); writes run as tasks so a slow write never stalls the watches, at most one per pair
//! (a pair's writes are ordered) and at most [`MAX_IN_FLIGHT`] in all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Error;
use super::jobs::{Done, Job};
use super::kubeconfig::Credentials;
use super::pair::{PairState, Phase};
use super::probes::ProbeState;
use super::schedule::{Schedule, TaskId};
use crate::config::Config;
use crate::desired::Owner;
use crate::error::chain;
use crate::events::{self};
use crate::group::{Group, Members, Mismatch};
use crate::lease::{self, Fence, Leadership};
use crate::metrics::{Health, Metrics};
use crate::names::ServiceRef;
use crate::notify::{Beat, Notifier};
use crate::pairs::{self, Refusal};
use crate::remote;
use crate::shutdown::Shutdown;
use crate::source::{RemoteSource, Source};
use crate::watch::{self, NodeCache, ServiceCache, SliceCache, SliceWatches};

/// At most this many tasks (writes, checks) run at once: enough to bring 1,000 annotated pairs
/// in sync in well under a second, few enough not to look like a flood to API Priority and
/// Fairness.
pub const MAX_IN_FLIGHT: usize = 16;
/// First retry delay after a failure; doubles per attempt up to the cap of the work.
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// How often the kubeconfig file is checked for a rewrite (certificate rotation).
const KUBECONFIG_POLL: Duration = Duration::from_secs(5);
/// How often STATUS, metrics and the heartbeat are refreshed.
const TICK: Duration = Duration::from_secs(1);

/// Borrowed pieces of the host the loop reports to, and the credentials it may reload.
pub struct Host<'a> {
    /// sd-notify.
    pub notifier: &'a Notifier,
    /// /readyz.
    pub health: &'a Health,
    /// The engine loop's watchdog heartbeat.
    pub beat: &'a Beat,
    /// The kubeconfig and the client it feeds.
    pub credentials: Credentials,
}

/// The state the engine owns.
pub struct Engine {
    pub(super) client: kube::Client,
    pub(super) fence: Fence,
    pub(super) metrics: Arc<Metrics>,
    pub(super) events: events::Sender,
    /// The copier group (the Lease that elects its writer) whose slices these are.
    pub(super) group: Group,
    /// The group as the pure core needs it.
    pub(super) owner: Owner,
    pub(super) config_pairs: Vec<(Vec<Source>, ServiceRef)>,
    pub(super) configured: BTreeSet<ServiceRef>,
    pub(super) annotations_enabled: bool,
    pub(super) allowed_sources: Vec<ServiceRef>,
    /// Cap of a pair's write backoff (`[sync] max_backoff_secs`).
    pub(super) max_backoff: Duration,
    /// Cap of the background checks' backoff: a check that keeps failing runs once per resync.
    pub(super) chore_backoff: Duration,
    pub(super) services: ServiceCache,
    pub(super) slices: SliceCache,
    pub(super) watches: SliceWatches,
    pub(super) pairs: BTreeMap<ServiceRef, PairState>,
    pub(super) refused: BTreeMap<ServiceRef, Refusal>,
    /// Refusals already reported as an Event during this leadership term.
    pub(super) refusals_reported: BTreeSet<(ServiceRef, String)>,
    pub(super) leader: Leadership,
    pub(super) tasks: JoinSet<Done>,
    /// The run each task belongs to, by tokio's id (a panicked task has no outcome of its own).
    pub(super) running: HashMap<tokio::task::Id, (TaskId, Job)>,
    pub(super) next_task: u64,
    /// The scan for slices of pairs removed while this copy did not lead.
    pub(super) scan: Schedule,
    /// Watches failing now, by scope ("services", "endpointslices in <ns>"), until they deliver.
    pub(super) watch_errors: BTreeMap<String, String>,
    /// The group's member Leases: who is live and which pairs each has configured.
    pub(super) members: Members,
    /// When an answer of `members` changes by time alone (a member turning stale or gone).
    pub(super) members_due: Option<Instant>,
    /// When the member watch last delivered: whether ballots can be counted.
    pub(super) member_view: super::view::MemberView,
    /// Pairs configured on some live members and not on others, as last reported.
    pub(super) mismatches: Vec<Mismatch>,
    /// Pairs configured differently on live copies, as last reported (`group::skew`).
    pub(super) skew: crate::group::Skew,
    /// The configured pairs with their probes.
    pub(super) pair_configs: Vec<crate::config::PairConfig>,
    /// What this copy probes, its verdicts, and the leader's last decisions.
    pub(super) probes: ProbeState,
    /// The watched Nodes' projections (`[nodes] selector`).
    pub(super) nodes: NodeCache,
    /// The Node watch's label selector (`None`: every Node).
    pub(super) node_selector: Option<String>,
    /// When the earliest active drain expires (the pairs are planned again then).
    pub(super) drain_due: Option<Instant>,
    /// When this copy first saw each timed drain (a drain lasts from then, by our clock).
    pub(super) drains: crate::nodes::DrainClock,
    /// What this copy knows of each remote source (`remote::spawn` sends it).
    pub(super) remote: BTreeMap<RemoteSource, remote::View>,
    /// The remote sources' views as they change; the sender is kept so that a daemon without
    /// remote sources waits on it forever rather than seeing it closed.
    pub(super) remote_updates: (
        tokio::sync::mpsc::Sender<remote::Update>,
        tokio::sync::mpsc::Receiver<remote::Update>,
    ),
}

impl Engine {
    /// An engine for `config`, writing through `client` behind `fence`.
    pub fn new(
        config: &Config,
        client: kube::Client,
        fence: Fence,
        metrics: Arc<Metrics>,
        events: events::Sender,
        members: Members,
        probes: ProbeState,
    ) -> Engine {
        let config_pairs: Vec<(Vec<Source>, ServiceRef)> = config
            .pairs
            .iter()
            .map(|p| (p.sources.clone(), p.target.clone()))
            .collect();
        let configured: BTreeSet<ServiceRef> =
            config_pairs.iter().map(|(_, t)| t.clone()).collect();
        Engine {
            client,
            fence,
            metrics,
            events,
            group: super::group_of(config),
            owner: Group::new(&config.lease.namespace, &config.lease.name).owner(),
            config_pairs,
            services: ServiceCache::new(configured.clone()),
            configured,
            annotations_enabled: config.annotations.enabled,
            allowed_sources: config.annotations.allowed_sources.clone(),
            max_backoff: config.sync.max_backoff,
            chore_backoff: config.sync.resync_interval.max(config.sync.max_backoff),
            slices: SliceCache::default(),
            watches: SliceWatches::default(),
            pairs: BTreeMap::new(),
            refused: BTreeMap::new(),
            refusals_reported: BTreeSet::new(),
            leader: Leadership::Starting,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            next_task: 0,
            scan: Schedule::Idle,
            watch_errors: BTreeMap::new(),
            members,
            members_due: None,
            member_view: super::view::MemberView::new(config.members.heartbeat, Instant::now()),
            mismatches: Vec::new(),
            skew: crate::group::Skew::default(),
            pair_configs: config.pairs.clone(),
            probes,
            nodes: NodeCache::default(),
            node_selector: config.nodes.selector.clone(),
            drain_due: None,
            drains: crate::nodes::DrainClock::default(),
            remote: BTreeMap::new(),
            remote_updates: tokio::sync::mpsc::channel(64),
        }
    }

    pub(super) fn is_leader(&self) -> bool {
        self.leader == Leadership::Leader
    }

    /// The loop, until shutdown (→ `Ok`) or a fatal error.
    pub async fn run(
        &mut self,
        config: &Config,
        shutdown: &Shutdown,
        mut leadership: tokio::sync::watch::Receiver<Leadership>,
        services: &mut JoinSet<Result<(), Error>>,
        elector_task: &mut tokio::task::JoinHandle<Result<(), lease::Error>>,
        host: &mut Host<'_>,
    ) -> Result<(), Error> {
        let mut service_events = watch::services(&self.client);
        let mut member_events = crate::group::live::watch(&self.client, &self.group);
        let mut node_events = watch::nodes(&self.client, self.node_selector.as_deref());
        let mut resync = tokio::time::interval_at(
            Instant::now() + config.sync.resync_interval,
            config.sync.resync_interval,
        );
        let mut tick = tokio::time::interval(TICK);
        let mut kubeconfig_poll = tokio::time::interval(KUBECONFIG_POLL);
        let never = Instant::now() + Duration::from_secs(86_400 * 365);

        loop {
            let wakeup = self.next_wakeup().unwrap_or(never);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = leadership.changed() => {
                    if changed.is_err() {
                        // The elector dropped its sender: it ended; its JoinHandle says why.
                        return match elector_task.await {
                            Ok(Err(e)) => Err(Error::Lease(e)),
                            _ => Err(Error::TaskEnded("leader election")),
                        };
                    }
                    let now = leadership.borrow_and_update().clone();
                    self.set_leadership(now);
                }
                Some(event) = service_events.next() => self.on_services(event),
                Some(event) = node_events.next() => self.on_nodes(event),
                Some(report) = self.probes.reports.recv() => self.on_report(report),
                Some(update) = self.remote_updates.1.recv() => self.on_remote(update),
                Some(event) = member_events.next() => match event {
                    Ok(event) => {
                        self.member_view.heard(Instant::now());
                        if watch::is_progress(&event) {
                            self.watch_errors.remove("members");
                        }
                        if self.members.apply(event, Instant::now()) {
                            self.members_due = Some(Instant::now());
                        }
                    }
                    Err(e) => self.watch_error("members".to_owned(), &e),
                },
                (namespace, generation, event) = self.watches.next() => {
                    self.on_slices(&namespace, generation, event);
                }
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.joined(done);
                }
                Some(done) = services.join_next(), if !services.is_empty() => {
                    return match done {
                        Ok(Err(e)) => Err(e),
                        Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
                        _ => Err(Error::TaskEnded("metrics or watchdog")),
                    };
                }
                // A backoff ended: dispatch below starts what is due.
                () = tokio::time::sleep_until(wakeup) => {}
                _ = resync.tick() => self.resync(),
                _ = kubeconfig_poll.tick() => host.credentials.reload(config, false).await,
                () = host.credentials.reloadable.unauthorized() => {
                    warn!(path = %host.credentials.loaded.path.display(), "the API server answered 401 Unauthorized; re-reading the kubeconfig");
                    host.credentials.reload(config, true).await;
                }
                _ = tick.tick() => {
                    host.beat.tick();
                    let now = Instant::now();
                    if self.member_view.restart_due(now) {
                        // Our own member Lease changes every heartbeat: a watch that brought
                        // none of it is on a dead connection. Start it over; until it delivers,
                        // ballots are not counted.
                        warn!(watch = "members", "the member watch brought nothing for two heartbeats; starting it over");
                        member_events = crate::group::live::watch(&self.client, &self.group);
                        self.member_view.restarted(now);
                        self.metrics.watch_restart("services");
                        self.touch_probing();
                    }
                    self.publish_status(host);
                }
            }
            self.dispatch();
        }
    }

    fn set_leadership(&mut self, now: Leadership) {
        if now == self.leader {
            return;
        }
        let instant = Instant::now();
        match &now {
            Leadership::Leader => {
                // Events are the leader's job: a new leader reports the standing refusals again.
                self.refusals_reported.clear();
                // Pairs may have been removed while another copy (or none) led.
                self.scan.reset();
                // Evictions are decided afresh, and reported, by each leadership term.
                self.probes.decided.clear();
                // A new leader plans every pair from its (warm) caches before its first write;
                // preconditions on every write catch anything the caches have not seen yet.
                for state in self.pairs.values_mut() {
                    state.write.reset();
                    state.legacy = Schedule::Idle;
                    state.synced_at = None;
                    state.reported = None;
                }
            }
            _ => {
                // Writers check the fence before every request; aborting them also stops
                // retries. Their late outcomes carry task ids no schedule runs any more.
                self.tasks.abort_all();
                for (task, job) in std::mem::take(&mut self.running).into_values() {
                    if let Some(s) = self.schedule_of(&job) {
                        s.abort(task, instant);
                    }
                }
            }
        }
        let holder = |l: &Leadership| match l {
            Leadership::Leader => Some(None),
            Leadership::Follower { holder } => Some(holder.clone()),
            Leadership::Starting => None,
        };
        // A transition is a change of holder we can see: us ↔ someone, or one peer to another.
        if let (Some(before), Some(after)) = (holder(&self.leader), holder(&now))
            && (before != after
                || (self.leader == Leadership::Leader) != (now == Leadership::Leader))
        {
            self.metrics.lease_transition();
        }
        self.metrics.set_leader(now == Leadership::Leader);
        self.leader = now;
    }

    fn on_services(
        &mut self,
        event: Result<watcher::Event<k8s_openapi::api::core::v1::Service>, watcher::Error>,
    ) {
        match event {
            Ok(event) => {
                // `Init` comes before a list that may still fail: not yet a recovery.
                if watch::is_progress(&event) {
                    self.watch_errors.remove("services");
                }
                let changed = self.services.apply(event);
                if self.services.is_ready() {
                    self.resolve(&changed);
                    self.rewatch_slices();
                }
            }
            Err(e) => self.watch_error("services".to_owned(), &e),
        }
    }

    /// Step 2 of five: a slice event updates the cache and touches the pairs that read it.
    fn on_slices(
        &mut self,
        namespace: &str,
        generation: u64,
        event: Result<
            watcher::Event<k8s_openapi::api::discovery::v1::EndpointSlice>,
            watcher::Error,
        >,
    ) {
        if !self.watches.is_current(namespace, generation) {
            return;
        }
        let scope = format!("endpointslices in {namespace}");
        match event {
            Ok(event) => {
                if watch::is_progress(&event) {
                    self.watch_errors.remove(&scope);
                }
                let changed = self.slices.apply(namespace, event);
                let mut probed = false;
                for (target, state) in &mut self.pairs {
                    let reads =
                        changed.contains(target) || changed.iter().any(|s| state.phase.reads(s));
                    if reads {
                        state.write.touch();
                        probed |= state.probe.is_some();
                    }
                }
                if probed {
                    self.reprobe();
                }
            }
            Err(e) => self.watch_error(scope, &e),
        }
    }

    /// Recomputes the pairs after Services changed.
    fn resolve(&mut self, changed: &BTreeSet<ServiceRef>) {
        let resolution = pairs::resolve(
            &self.config_pairs,
            self.annotations_enabled,
            &self.allowed_sources,
            self.services.objects(),
        );
        let active: BTreeMap<ServiceRef, pairs::Pair> = resolution
            .pairs
            .into_iter()
            .map(|p| (p.target.clone(), p))
            .collect();
        let refused: BTreeMap<ServiceRef, Refusal> = resolution
            .refusals
            .into_iter()
            .map(|r| (r.target.clone(), r))
            .collect();
        for (target, state) in &mut self.pairs {
            let probe = active
                .get(target)
                .and_then(|p| pairs::probe_of(p, &self.pair_configs, self.services.objects()));
            if probe != state.probe {
                state.probe = probe;
                state.write.touch();
            }
            let derive = active
                .get(target)
                .is_some_and(|p| super::pair::derives(p, &self.pair_configs));
            if derive != state.derive {
                state.derive = derive;
                state.write.touch();
            }
            let next = match (
                &state.phase,
                active.get(target),
                refused.contains_key(target),
            ) {
                (_, Some(pair), _) => Phase::Active {
                    sources: pair.sources.clone(),
                },
                // A pair refused now is not removed: it is held, its slices untouched, until the
                // refusal is fixed ("never half-applied" — and never a VIP blanked by a typo).
                (Phase::Active { sources } | Phase::Refused { sources }, None, true) => {
                    Phase::Refused {
                        sources: sources.clone(),
                    }
                }
                (Phase::Retired, None, true) => Phase::Retired,
                (_, None, false) => Phase::Retired,
            };
            if next != state.phase {
                match &next {
                    Phase::Active { sources } => {
                        info!(service = %target, source = %crate::source::describe(sources), "pair active");
                    }
                    Phase::Refused { .. } => {}
                    Phase::Retired => {
                        info!(service = %target, "pair removed; its EndpointSlices go once a fresh read confirms it")
                    }
                }
                state.phase = next;
                state.hold = None;
                state.write.touch();
            } else if changed.contains(target) {
                state.write.touch();
            }
        }
        for (target, pair) in &active {
            if !self.pairs.contains_key(target) {
                info!(service = %target, source = %crate::source::describe(&pair.sources), origin = %pair.origin, "pair active");
                let mut state = PairState::new(Phase::Active {
                    sources: pair.sources.clone(),
                });
                state.probe = pairs::probe_of(pair, &self.pair_configs, self.services.objects());
                state.derive = super::pair::derives(pair, &self.pair_configs);
                if self.is_leader() {
                    state.legacy = Schedule::Idle;
                }
                self.pairs.insert(target.clone(), state);
            }
        }
        for (target, refusal) in &refused {
            let is_new = self
                .refused
                .get(target)
                .is_none_or(|old| old.reason.to_string() != refusal.reason.to_string());
            if is_new {
                warn!(service = %target, reason = %refusal.reason, "pair refused; nothing is written for it");
            }
        }
        self.refused = refused;
        self.reprobe();
        let active_count = self
            .pairs
            .values()
            .filter(|s| matches!(s.phase, Phase::Active { .. }))
            .count();
        self.metrics.set_pairs(active_count, self.refused.len());
    }

    /// Starts, restarts or stops the per-namespace slice watches for the Services in play.
    pub(super) fn rewatch_slices(&mut self) {
        let wanted = self.wanted_services();
        if &wanted == self.slices.wanted() && !wanted.is_empty() {
            return;
        }
        let restarted = self.watches.ensure(&self.client, &wanted);
        if !restarted.is_empty() {
            debug!(
                namespaces = restarted.len(),
                "watching EndpointSlices of a new set of Services"
            );
        }
        self.watch_errors.retain(|scope, _| {
            scope == "services" || !restarted.iter().any(|ns| scope.ends_with(ns.as_str()))
        });
        self.slices.rewatch(wanted, &restarted);
    }

    /// Every Service whose slices we need: sources and targets of the pairs.
    fn wanted_services(&self) -> BTreeSet<ServiceRef> {
        let mut wanted = BTreeSet::new();
        for (target, state) in &self.pairs {
            wanted.insert(target.clone());
            wanted.extend(
                state
                    .phase
                    .sources()
                    .iter()
                    .filter_map(Source::local_service)
                    .cloned(),
            );
        }
        wanted
    }

    fn resync(&mut self) {
        debug!("periodic resync");
        self.scan.touch();
        for state in self.pairs.values_mut() {
            state.write.touch();
            if matches!(state.phase, Phase::Active { .. }) {
                state.legacy.touch();
            }
        }
    }

    pub(super) fn watch_error(&mut self, scope: String, e: &watcher::Error) {
        self.metrics.watch_restart(match scope.as_str() {
            "services" | "members" => "services",
            super::nodes::NODES_SCOPE => "nodes",
            _ => "endpointslices",
        });
        if let Some(cut) = crate::client::link::cut_of(e) {
            // The link started it over on purpose (after a network cut, or silent too long):
            // it re-lists at once; nothing failed that a person must look at.
            debug!(watch = %scope, reason = %cut, "watch started over on a new connection");
            return;
        }
        // kube's watcher re-lists on 410 and backs off on failures by itself; we count and say,
        // once per failing streak at warn (the backoff keeps it to a few lines a minute anyway).
        if let watcher::Error::WatchError(s)
        | watcher::Error::InitialListFailed(kube::Error::Api(s)) = e
        {
            self.metrics.record_api_error(s.code);
        }
        let message = chain(e);
        if self.watch_errors.contains_key(&scope) {
            debug!(watch = %scope, error = %message, "watch still failing; retrying with backoff");
        } else {
            warn!(watch = %scope, error = %message, "watch failed; retrying with backoff");
        }
        self.watch_errors.insert(scope, message);
    }

    /// The next instant a timer must wake the loop: the earliest *future* backoff end or
    /// member-liveness change. Work already due but not started (not leader, its namespace
    /// re-listing, every task slot busy) is started by the event that lifts the block, so a past
    /// instant here would only spin the loop.
    fn next_wakeup(&self) -> Option<Instant> {
        let now = Instant::now();
        self.pairs
            .values()
            .flat_map(|s| [s.write.wakeup(), s.legacy.wakeup()])
            .chain([self.scan.wakeup(), self.members_due, self.drain_due])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }
}
