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
use tracing::{Instrument, debug, error, info, warn};

use super::Error;
use super::jobs::{self, Done, Job, Outcome, WriteContext, WriteError};
use super::kubeconfig::Credentials;
use super::pair::{PairState, Phase, plan_for};
use super::schedule::{Finish, Schedule, TaskId};
use crate::apply;
use crate::config::Config;
use crate::desired::{self, Hold, Owner};
use crate::error::chain;
use crate::events::{self, Reason};
use crate::group::{Group, Members, Mismatch, Wanted};
use crate::lease::{self, Fence, Leadership};
use crate::metrics::{Health, Metrics};
use crate::names::ServiceRef;
use crate::notify::{Beat, Notifier};
use crate::pairs::{self, Refusal};
use crate::shutdown::Shutdown;
use crate::watch::{self, ServiceCache, SliceCache, SliceWatches};

/// At most this many tasks (writes, checks) run at once: enough to bring 1,000 annotated pairs
/// in sync in well under a second, few enough not to look like a flood to API Priority and
/// Fairness.
pub const MAX_IN_FLIGHT: usize = 16;
/// First retry delay after a failure; doubles per attempt up to the cap of the work.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
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
    /// The supervisor's watchdog heartbeat.
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
    group: Group,
    /// The group as the pure core needs it.
    pub(super) owner: Owner,
    config_pairs: Vec<(ServiceRef, ServiceRef)>,
    configured: BTreeSet<ServiceRef>,
    annotations_enabled: bool,
    allowed_sources: Vec<ServiceRef>,
    /// Cap of a pair's write backoff (`[sync] max_backoff_secs`).
    max_backoff: Duration,
    /// Cap of the background checks' backoff: a check that keeps failing runs once per resync.
    chore_backoff: Duration,
    pub(super) services: ServiceCache,
    pub(super) slices: SliceCache,
    watches: SliceWatches,
    pub(super) pairs: BTreeMap<ServiceRef, PairState>,
    pub(super) refused: BTreeMap<ServiceRef, Refusal>,
    /// Refusals already reported as an Event during this leadership term.
    refusals_reported: BTreeSet<(ServiceRef, String)>,
    pub(super) leader: Leadership,
    tasks: JoinSet<Done>,
    /// The run each task belongs to, by tokio's id (a panicked task has no outcome of its own).
    running: HashMap<tokio::task::Id, (TaskId, Job)>,
    next_task: u64,
    /// The scan for slices of pairs removed while this copy did not lead.
    scan: Schedule,
    /// Watches failing now, by scope ("services", "endpointslices in <ns>"), until they deliver.
    pub(super) watch_errors: BTreeMap<String, String>,
    /// The group's member Leases: who is live and which pairs each has configured.
    members: Members,
    /// When an answer of `members` changes by time alone (a member turning stale or gone).
    members_due: Option<Instant>,
    /// Pairs configured on some live members and not on others, as last reported.
    pub(super) mismatches: Vec<Mismatch>,
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
    ) -> Engine {
        let config_pairs: Vec<(ServiceRef, ServiceRef)> = config
            .pairs
            .iter()
            .map(|p| (p.source.clone(), p.target.clone()))
            .collect();
        let configured: BTreeSet<ServiceRef> =
            config_pairs.iter().map(|(_, t)| t.clone()).collect();
        Engine {
            client,
            fence,
            metrics,
            events,
            group: Group::new(&config.lease.namespace, &config.lease.name),
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
            mismatches: Vec::new(),
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
                Some(event) = member_events.next() => match event {
                    Ok(event) => {
                        self.watch_errors.remove("members");
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
                self.watch_errors.remove("services");
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
                self.watch_errors.remove(&scope);
                let changed = self.slices.apply(namespace, event);
                for (target, state) in &mut self.pairs {
                    let reads = changed.contains(target)
                        || state.phase.source().is_some_and(|s| changed.contains(s));
                    if reads {
                        state.write.touch();
                    }
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
            let next = match (
                &state.phase,
                active.get(target),
                refused.contains_key(target),
            ) {
                (_, Some(pair), _) => Phase::Active {
                    source: pair.source.clone(),
                },
                // A pair refused now is not removed: it is held, its slices untouched, until the
                // refusal is fixed ("never half-applied" — and never a VIP blanked by a typo).
                (Phase::Active { source } | Phase::Refused { source }, None, true) => {
                    Phase::Refused {
                        source: source.clone(),
                    }
                }
                (Phase::Retired, None, true) => Phase::Retired,
                (_, None, false) => Phase::Retired,
            };
            if next != state.phase {
                match &next {
                    Phase::Active { source } => {
                        info!(service = %target, source = %source, "pair active");
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
                info!(service = %target, source = %pair.source, origin = %pair.origin, "pair active");
                let mut state = PairState::new(Phase::Active {
                    source: pair.source.clone(),
                });
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
        let active_count = self
            .pairs
            .values()
            .filter(|s| matches!(s.phase, Phase::Active { .. }))
            .count();
        self.metrics.set_pairs(active_count, self.refused.len());
    }

    /// Starts, restarts or stops the per-namespace slice watches for the Services in play.
    fn rewatch_slices(&mut self) {
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
            if let Some(source) = state.phase.source() {
                wanted.insert(source.clone());
            }
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

    fn watch_error(&mut self, scope: String, e: &watcher::Error) {
        // kube's watcher re-lists on 410 and backs off on failures by itself; we count and say,
        // once per failing streak at warn (the backoff keeps it to a few lines a minute anyway).
        self.metrics.watch_restart(match scope.as_str() {
            "services" | "members" => "services",
            _ => "endpointslices",
        });
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

    /// Step 3 of five: starts every task that is due, the leader's only.
    fn dispatch(&mut self) {
        if !self.services.is_ready() || !self.is_leader() {
            return;
        }
        let now = Instant::now();
        self.report_refusals();
        if self.members_due.is_some_and(|t| t <= now) {
            self.members_changed(now);
        }
        if self.scan.is_due(now) && self.slices.is_ready() && self.tasks.len() < MAX_IN_FLIGHT {
            let (client, group) = (self.client.clone(), self.group.clone());
            let outcome = async move { Outcome::Scan(jobs::scan(client, group).await) };
            self.spawn(Job::Scan, outcome, now);
        }
        let due: Vec<ServiceRef> = self
            .pairs
            .iter()
            .filter(|(target, s)| {
                s.write.is_due(now)
                    && self.slices.is_ready_for(target)
                    && s.phase
                        .source()
                        .is_none_or(|src| self.slices.is_ready_for(src))
            })
            .map(|(t, _)| t.clone())
            .collect();
        for target in due {
            if self.tasks.len() >= MAX_IN_FLIGHT {
                return;
            }
            self.start_write(&target, now);
        }
        let legacy: Vec<ServiceRef> = self
            .pairs
            .iter()
            .filter(|(_, s)| s.legacy.is_due(now) && s.synced_at.is_some())
            .map(|(t, _)| t.clone())
            .collect();
        for target in legacy {
            if self.tasks.len() >= MAX_IN_FLIGHT {
                return;
            }
            let (client, fence, t) = (self.client.clone(), self.fence.clone(), target.clone());
            let outcome = async move { Outcome::Legacy(jobs::legacy(client, t, fence).await) };
            self.spawn(Job::Legacy(target), outcome, now);
        }
    }

    /// Step 4 of five: plans one pair from the caches and spawns its write, or settles it.
    fn start_write(&mut self, target: &ServiceRef, now: Instant) {
        let Some(state) = self.pairs.get(target) else {
            return;
        };
        let actual = self.slices.slices_of(target);
        let source_slices = state
            .phase
            .source()
            .map(|s| self.slices.slices_of(s))
            .unwrap_or_default();
        let planned = plan_for(
            &state.phase,
            target,
            self.services.objects(),
            &source_slices,
            &actual,
            &self.owner,
        );
        self.note_foreign(target, &actual);
        let step = match planned {
            Err(hold) => return self.hold(target, hold, &actual),
            Ok(step) => step,
        };
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        if step.plan.is_empty() {
            state.write.settle();
            if state.phase == Phase::Retired {
                // Every slice of a removed pair is gone: forget it (and stop watching its
                // slices on the next Service change).
                self.pairs.remove(target);
                self.metrics.forget_pair(&target.to_string());
                return;
            }
            state.hold = None;
            state.last_error = None;
            if state.synced_at.is_none() {
                state.legacy.touch();
            }
            state.synced_at = Some(now);
            state.endpoints = desired::ready_endpoints(&actual);
            self.metrics.writes_skipped();
            self.record_endpoints(target, &actual);
            return;
        }
        if state.phase == Phase::Retired {
            // Deleting what another live copy of the group still wants would blank its pair
            // whenever leadership moves here: hold and say so instead.
            let wanted_by = match self.members.who_wants(target, now) {
                Wanted::Nobody => Vec::new(),
                Wanted::Unknown => vec!["(member list not read yet)".to_owned()],
                Wanted::Live(ids) | Wanted::Stale(ids) => ids,
            };
            if !wanted_by.is_empty() {
                state.write.settle();
                if state.wanted_by != wanted_by {
                    let note = format!(
                        "not configured here, but still configured on {}; its EndpointSlices are kept",
                        wanted_by.join(", ")
                    );
                    warn!(service = %target, "{note}");
                    state.wanted_by = wanted_by;
                    self.report(target, Reason::ConfiguredElsewhere, note);
                }
                return;
            }
            state.wanted_by.clear();
        }
        debug!(service = %target, creates = step.plan.creates.len(), updates = step.plan.updates.len(), deletes = step.plan.deletes.len(), "applying plan");
        let cx = WriteContext {
            target: target.clone(),
            configured: self.configured.contains(target),
            annotations_enabled: self.annotations_enabled,
        };
        let (client, fence, metrics) = (
            self.client.clone(),
            self.fence.clone(),
            self.metrics.clone(),
        );
        // Step 5 of five: `jobs::write` runs `apply::apply`, fenced.
        let outcome = async move {
            Outcome::Write {
                started: now,
                result: jobs::write(client, cx, step, fence, metrics).await,
            }
        };
        self.spawn(Job::Write(target.clone()), outcome, now);
    }

    /// The members' answers may have changed: retired pairs are looked at again, and pairs
    /// configured on some copies only are reported.
    fn members_changed(&mut self, now: Instant) {
        self.members_due = self.members.next_change(now);
        for state in self.pairs.values_mut() {
            if state.phase == Phase::Retired {
                state.write.touch();
            }
        }
        let own: BTreeSet<(ServiceRef, ServiceRef)> = self.config_pairs.iter().cloned().collect();
        let mismatches = self.members.mismatches(&own, now);
        if mismatches == self.mismatches {
            return;
        }
        let new: Vec<Mismatch> = mismatches
            .iter()
            .filter(|m| !self.mismatches.contains(m))
            .cloned()
            .collect();
        for m in &new {
            let note = format!(
                "pair {} -> {} is configured on {} but not on {}; its EndpointSlices are kept, never deleted, while a live copy configures it",
                m.source,
                m.target,
                m.configured_on.join(", "),
                m.missing_on.join(", ")
            );
            warn!(service = %m.target, source = %m.source, "{note}");
            self.report(&m.target, Reason::ConfiguredElsewhere, note);
        }
        self.mismatches = mismatches;
    }

    /// Reports each refusal once per leadership term as an Event.
    fn report_refusals(&mut self) {
        let unreported: Vec<(ServiceRef, String)> = self
            .refused
            .iter()
            .map(|(t, r)| (t.clone(), r.reason.to_string()))
            .filter(|k| !self.refusals_reported.contains(k))
            .collect();
        for (target, note) in unreported {
            self.report(&target, Reason::Refused, note.clone());
            self.refusals_reported.insert((target, note));
        }
    }

    /// Fail-static: nothing is written for `target`; say why once per change.
    fn hold(
        &mut self,
        target: &ServiceRef,
        hold: Hold,
        actual: &[k8s_openapi::api::discovery::v1::EndpointSlice],
    ) {
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        state.write.settle();
        let kept = desired::ready_endpoints(actual);
        if state.hold != Some(hold) && hold != Hold::Refused {
            let source = state
                .phase
                .source()
                .map(ToString::to_string)
                .unwrap_or_default();
            warn!(service = %target, source = %source, endpoints = kept, reason = %hold, "holding the target's EndpointSlices as they are");
        }
        state.hold = Some(hold);
        let reason = match hold {
            Hold::NoSourceSlices => Some(Reason::SourceMissing),
            Hold::NoEndpoints => Some(Reason::SourceEmpty),
            _ => None,
        };
        if let Some(reason) = reason {
            let note = format!("{hold}; keeping the {kept} ready endpoints of {target}");
            self.report(target, reason, note);
        }
    }

    fn spawn(
        &mut self,
        job: Job,
        work: impl std::future::Future<Output = Outcome> + Send + 'static,
        now: Instant,
    ) {
        self.next_task += 1;
        let task = TaskId(self.next_task);
        let Some(schedule) = self.schedule_of(&job) else {
            return;
        };
        if !schedule.start(task, now) {
            return;
        }
        let tagged = job.clone();
        let handle = self.tasks.spawn(
            async move {
                Done {
                    task,
                    job: tagged,
                    outcome: work.await,
                }
            }
            .in_current_span(),
        );
        self.running.insert(handle.id(), (task, job));
    }

    fn schedule_of(&mut self, job: &Job) -> Option<&mut Schedule> {
        match job {
            Job::Scan => Some(&mut self.scan),
            Job::Write(t) => self.pairs.get_mut(t).map(|s| &mut s.write),
            Job::Legacy(t) => self.pairs.get_mut(t).map(|s| &mut s.legacy),
        }
    }

    /// A task ended: its outcome, or why it has none.
    fn joined(&mut self, joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        match joined {
            Ok((id, done)) => {
                self.running.remove(&id);
                self.finish(done);
            }
            Err(e) => {
                let Some((task, job)) = self.running.remove(&e.id()) else {
                    return; // aborted at a leadership change: already accounted for
                };
                if e.is_cancelled() {
                    if let Some(s) = self.schedule_of(&job) {
                        s.abort(task, Instant::now());
                    }
                    return;
                }
                // A panic: retried like any failure, after a backoff.
                error!(job = ?job, error = %e, "task failed");
                let delay = self.backoff_for(&job);
                if let Some(s) = self.schedule_of(&job) {
                    s.finish(task, Finish::Failed(delay), Instant::now());
                }
            }
        }
    }

    /// The delay before the next run of `job` after one more failure.
    fn backoff_for(&mut self, job: &Job) -> Duration {
        let (cap, attempt) = match job {
            Job::Write(_) => (
                self.max_backoff,
                self.schedule_of(job).map_or(0, |s| s.attempt()),
            ),
            _ => (
                self.chore_backoff,
                self.schedule_of(job).map_or(0, |s| s.attempt()),
            ),
        };
        crate::backoff::delay(attempt.saturating_add(1), BACKOFF_BASE, cap)
    }

    fn finish(&mut self, done: Done) {
        let Done { task, job, outcome } = done;
        let now = Instant::now();
        match outcome {
            Outcome::Write { started, result } => {
                let Job::Write(target) = &job else { return };
                self.finish_write(task, target, started, result, now);
            }
            Outcome::Legacy(result) => {
                let Job::Legacy(target) = &job else { return };
                let how = match &result {
                    Ok(_) => Finish::Done,
                    Err(e) => {
                        Finish::Failed(e.retry_after().unwrap_or_else(|| self.backoff_for(&job)))
                    }
                };
                let Some(state) = self.pairs.get_mut(target) else {
                    return;
                };
                if !state.legacy.finish(task, how, now) {
                    return;
                }
                match result {
                    Ok(true) => {
                        info!(service = %target, "removed endpoint-copier-operator's leftover Endpoints")
                    }
                    Ok(false) => {}
                    // One warning per failing streak; the schedule's backoff keeps it rare.
                    Err(e) if state.legacy.attempt() == 1 => {
                        warn!(service = %target, error = %chain(&e), "could not check for endpoint-copier-operator's leftover Endpoints; retrying with backoff")
                    }
                    Err(e) => {
                        debug!(service = %target, attempt = state.legacy.attempt(), error = %chain(&e), "legacy Endpoints check still failing")
                    }
                }
            }
            Outcome::Scan(result) => {
                let how = match &result {
                    Ok(_) => Finish::Done,
                    Err(_) => Finish::Failed(self.backoff_for(&job)),
                };
                if !self.scan.finish(task, how, now) {
                    return;
                }
                match result {
                    Ok(targets) => {
                        self.adopt_orphans(targets);
                        self.rewatch_slices();
                    }
                    Err(e) if self.scan.attempt() == 1 => {
                        warn!(error = %chain(&e), "could not list our EndpointSlices to find removed pairs; retrying with backoff")
                    }
                    Err(e) => {
                        debug!(attempt = self.scan.attempt(), error = %chain(&e), "orphan scan still failing")
                    }
                }
            }
        }
    }

    fn finish_write(
        &mut self,
        task: TaskId,
        target: &ServiceRef,
        started: Instant,
        result: Result<apply::Applied, WriteError>,
        now: Instant,
    ) {
        let job = Job::Write(target.clone());
        let how = match &result {
            Ok(_) => Finish::Done,
            Err(WriteError::Apply(apply::Error::NotLeader { .. })) => Finish::Interrupted,
            Err(WriteError::Apply(e)) => {
                Finish::Failed(e.retry_after().unwrap_or_else(|| self.backoff_for(&job)))
            }
            Err(_) => Finish::Failed(self.backoff_for(&job)),
        };
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        if !state.write.finish(task, how, now) {
            return; // a run aborted at a leadership flap: another one owns the pair now
        }
        match result {
            Ok(applied) => {
                let actual = self.slices.slices_of(target);
                let source = state
                    .phase
                    .source()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                if state.synced_at.is_none() {
                    state.legacy.touch();
                }
                state.synced_at = Some(now);
                state.last_error = None;
                state.endpoints = desired::ready_endpoints(&actual);
                let retired = state.phase == Phase::Retired;
                self.metrics.set_last_sync(&target.to_string());
                if applied.writes() > 0 {
                    self.metrics.observe_sync(now.duration_since(started));
                    info!(service = %target, source = %source, created = applied.created, updated = applied.updated, deleted = applied.deleted, "target EndpointSlices updated");
                    if !retired {
                        let note = format!(
                            "mirrored {source}: {} created, {} updated, {} deleted",
                            applied.created, applied.updated, applied.deleted
                        );
                        self.report(target, Reason::Synced, note);
                    }
                }
            }
            Err(WriteError::Apply(e @ apply::Error::NotLeader { .. })) => {
                debug!(service = %target, error = %chain(&e), "write skipped: not the leader");
            }
            Err(e @ WriteError::StillWanted { .. }) => {
                // The caches lag behind the API: wait for the watch, never delete on a stale view.
                info!(service = %target, error = %chain(&e), "not deleting; waiting for the Service watch to catch up");
            }
            Err(e) => {
                let message = chain(&e);
                let attempt = state.write.attempt();
                state.last_error = Some(message.clone());
                let conflict = matches!(&e, WriteError::Apply(a) if a.is_conflict());
                let transient = matches!(&e, WriteError::Apply(a) if a.is_transient())
                    || matches!(e, WriteError::Confirm { .. });
                if conflict {
                    debug!(service = %target, attempt, error = %message, "conflict; re-planning");
                } else if transient {
                    warn!(service = %target, attempt, error = %message, "write failed; retrying with backoff");
                } else {
                    error!(service = %target, attempt, error = %message, "write refused; retrying with backoff until fixed");
                }
                if !conflict {
                    self.report(target, Reason::WriteFailed, message);
                }
            }
        }
    }

    /// Targets holding this group's slices that no pair claims become retired pairs: their
    /// slices go after a fresh read confirms it.
    fn adopt_orphans(&mut self, targets: BTreeSet<ServiceRef>) {
        for target in targets {
            // A refused target keeps its slices (held), like a pair refused while running.
            if self.pairs.contains_key(&target) || self.refused.contains_key(&target) {
                continue;
            }
            info!(service = %target, "found EndpointSlices of a removed pair; deleting them once a fresh read confirms it");
            self.pairs.insert(target, PairState::new(Phase::Retired));
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.pairs
            .values()
            .flat_map(|s| [s.write.wakeup(), s.legacy.wakeup()])
            .chain([self.scan.wakeup(), self.members_due])
            .flatten()
            .min()
    }

    /// Waits (bounded) for the writes in flight; aborts what is left. Returns until when the
    /// Lease must still be kept when a write was abandoned: its request may still be waiting for
    /// an answer until its own timeout, which the fence bounds ([`apply::outstanding_until`]).
    pub async fn drain(&mut self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        // Background checks are not worth waiting for; writes are.
        let checks: Vec<tokio::task::Id> = self
            .running
            .iter()
            .filter(|(_, (_, job))| matches!(job, Job::Scan))
            .map(|(id, _)| *id)
            .collect();
        self.running.retain(|id, _| !checks.contains(id));
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(done)) => self.joined(done),
                Ok(None) => break,
                Err(_) => {
                    let until = apply::outstanding_until(&self.fence);
                    self.tasks.abort_all();
                    return Some(until);
                }
            }
        }
        self.tasks.abort_all();
        None
    }
}
