//! The engine: one task owning every cache and every pair's state, driven by one `select!` over
//! shutdown, leadership, the watches, finished tasks and timers. It decides nothing by itself
//! (`pairs`, `desired::step::plan_for` and `schedule` do) and writes nothing itself (the tasks of
//! `jobs` do, through `apply`).
//!
//! Settings apart from state: [`Settings`] is what the engine was told at start; every other
//! field is a sub-state owned by the file whose handlers change it (`caches.rs`: Services,
//! slices and their watches; `members.rs`: the group's members; `nodes.rs`: the Nodes and
//! drains; `sources.rs`: remote views; `probes.rs`: this copy's verdicts and the quorum's
//! decisions; `tasks.rs`: the task table).
//!
//! Concurrency choices, each at the line that makes it: one task owns all state (no locks around
//! caches); writes run as tasks so a slow write never stalls the watches, at most one per pair
//! (a pair's writes are ordered) and at most [`super::tasks::MAX_IN_FLIGHT`] in all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Error;
use super::caches::Caches;
use super::kubeconfig::NodeCredentials;
use super::members::MemberState;
use super::nodes::NodeState;
use super::pair::{Active, PairState, Phase, Standing};
use super::probes::ProbeState;
use super::schedule::Schedule;
use super::scope::Scope;
use super::settings::Settings;
use super::sources::RemoteState;
use super::supervise::Supervised;
use super::tasks::{Joined, Tasks};
use crate::events;
use crate::group::Members;
use crate::lease::{Fence, Leadership};
use crate::metrics::{Health, Metrics};
use crate::names::ServiceRef;
use crate::notify::{Beat, Notifier};
use crate::pairs::Refusal;
use crate::shutdown::Shutdown;
use crate::watch;

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
    pub credentials: NodeCredentials,
}

/// Where the engine reads, writes and reports: handles, not state.
pub struct Io {
    /// The API client (its transport follows a rotated kubeconfig).
    pub client: kube::Client,
    /// Whether this copy may write now (the elector moves it).
    pub fence: Fence,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The Event publisher's queue.
    pub events: events::Sender,
    /// The wall clock (for a drain written as an instant alone).
    pub clock: crate::clock::Clock,
}

/// The targets refused now, and which refusals this leadership term reported.
#[derive(Debug, Default)]
pub struct Refusals {
    /// By target.
    pub now: BTreeMap<ServiceRef, Refusal>,
    /// Reported as an Event during this term, by (target, reason).
    pub reported: BTreeSet<(ServiceRef, String)>,
}

/// The engine: settings, handles and its sub-states.
pub struct Engine {
    /// What the engine was told at start.
    pub(super) settings: Settings,
    /// Where it reads, writes and reports.
    pub(super) io: Io,
    /// Whether this copy leads its group now, as the elector last said.
    pub(super) leader: Leadership,
    /// The Services, the slices in play and their watches.
    pub(super) caches: Caches,
    /// Every pair's state, by target.
    pub(super) pairs: BTreeMap<ServiceRef, PairState>,
    /// The refused targets.
    pub(super) refusals: Refusals,
    /// The writes and checks running.
    pub(super) tasks: Tasks,
    /// The scan for slices of pairs removed while this copy did not lead.
    pub(super) scan: Schedule,
    /// The group's members: who is live, what each configures, whether the view can be counted.
    pub(super) members: MemberState,
    /// What this copy probes, its verdicts, and the leader's last decisions.
    pub(super) probes: ProbeState,
    /// The Nodes and the drains.
    pub(super) nodes: NodeState,
    /// What this copy knows of each remote source.
    pub(super) remote: RemoteState,
}

impl Engine {
    /// An engine with `settings`, reading and writing through `io`, counting `members`' ballots
    /// and publishing its verdicts through `probes`.
    pub fn new(settings: Settings, io: Io, members: Members, probes: ProbeState) -> Engine {
        let now = Instant::now();
        Engine {
            caches: Caches::new(settings.rules.clone()),
            members: MemberState::new(members, settings.heartbeat, now),
            settings,
            io,
            leader: Leadership::Starting,
            pairs: BTreeMap::new(),
            refusals: Refusals::default(),
            tasks: Tasks::default(),
            scan: Schedule::Idle,
            probes,
            nodes: NodeState::default(),
            remote: RemoteState::new(),
        }
    }

    pub(super) fn is_leader(&self) -> bool {
        self.leader == Leadership::Leader
    }

    /// The loop, until shutdown (→ `Ok`) or a fatal error: the elector or another supervised
    /// task ended (the daemon exits non-zero and systemd restarts it rather than letting it
    /// run half-blind).
    pub async fn run(
        &mut self,
        shutdown: &Shutdown,
        mut leadership: tokio::sync::watch::Receiver<Leadership>,
        supervised: &mut Supervised,
        host: &mut Host<'_>,
    ) -> Result<(), Error> {
        let mut service_events = watch::services(&self.io.client);
        let mut member_events = crate::group::live::watch(&self.io.client, &self.settings.group);
        let mut node_events = watch::nodes(&self.io.client, self.settings.node_selector.as_deref());
        let resync_every = self.settings.resync_interval;
        let mut resync = tokio::time::interval_at(Instant::now() + resync_every, resync_every);
        let mut tick = tokio::time::interval(TICK);
        let mut kubeconfig_poll = tokio::time::interval(KUBECONFIG_POLL);
        let never = Instant::now() + Duration::from_secs(86_400 * 365);

        loop {
            let wakeup = self.next_wakeup().unwrap_or(never);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = leadership.changed() => {
                    if changed.is_err() {
                        // The elector dropped its sender: it ended; the supervisor says why.
                        return Err(supervised.elector_ended().await);
                    }
                    let now = leadership.borrow_and_update().clone();
                    self.set_leadership(now);
                    // A new term plans only from views listed since it began: every watch not
                    // listing already starts over (a host whose connections a cut left silent
                    // must not write from what it knew before).
                    for scope in self.caches.relists.take_restart() {
                        match scope {
                            Scope::Services => service_events = watch::services(&self.io.client),
                            Scope::Members => {
                                member_events = crate::group::live::watch(
                                    &self.io.client,
                                    &self.settings.group,
                                );
                                self.members.view.heard(Instant::now());
                            }
                            Scope::Nodes => {
                                node_events = watch::nodes(
                                    &self.io.client,
                                    self.settings.node_selector.as_deref(),
                                );
                            }
                            Scope::Slices(ns) => {
                                self.caches.watches.restart(&self.io.client, &ns);
                            }
                        }
                    }
                }
                Some(event) = service_events.next() => self.on_services(event),
                Some(event) = node_events.next() => self.on_nodes(event),
                Some(report) = self.probes.reports.recv() => self.on_report(report),
                Some(update) = self.remote.updates.1.recv() => self.on_remote(update),
                Some(event) = member_events.next() => self.on_members(event),
                (namespace, generation, event) = self.caches.watches.next() => {
                    self.on_slices(&namespace, generation, event);
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.joined(joined);
                }
                ended = supervised.next_ended() => {
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    return Err(ended);
                }
                // A backoff ended: dispatch below starts what is due.
                () = tokio::time::sleep_until(wakeup) => {}
                _ = resync.tick() => self.resync(),
                _ = kubeconfig_poll.tick() => host.credentials.reload(false).await,
                () = host.credentials.current.reloadable.unauthorized() => {
                    warn!(path = %host.credentials.current.loaded.path.display(), "the API server answered 401 Unauthorized; re-reading the kubeconfig");
                    host.credentials.reload(true).await;
                }
                _ = tick.tick() => {
                    host.beat.tick();
                    if self.member_watch_silent(Instant::now()) {
                        member_events =
                            crate::group::live::watch(&self.io.client, &self.settings.group);
                    }
                    self.publish_status(host);
                }
            }
            self.dispatch();
        }
    }

    /// The elector says who leads now.
    pub(super) fn set_leadership(&mut self, now: Leadership) {
        if now == self.leader {
            return;
        }
        let instant = Instant::now();
        match &now {
            Leadership::Leader => {
                // Events are the leader's job: a new leader reports the standing refusals,
                // and the pairs configured on some members only, again.
                self.refusals.reported.clear();
                self.members.mismatches.forget();
                self.members.skew = crate::group::Skew::default();
                self.members.due = Some(instant);
                // Pairs may have been removed while another copy (or none) led.
                self.scan.reset();
                // Nothing is written until every view is listed again (this term's).
                self.relist_all();
                // Evictions are decided afresh, and reported, by each leadership term.
                self.probes.decided.clear();
                // A new leader plans every pair from its (warm) caches before its first write;
                // preconditions on every write catch anything the caches have not seen yet.
                for state in self.pairs.values_mut() {
                    state.write.reset();
                    if let Some(active) = state.phase.active_mut() {
                        active.legacy = Schedule::Idle;
                    }
                    state.standing = Standing::Unplanned;
                    state.said.event.forget();
                }
            }
            _ => {
                // Writers check the fence before every request; aborting them also stops
                // retries. Their late outcomes carry task ids no schedule runs any more.
                for (task, job) in self.tasks.abort_all() {
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
            self.io.metrics.lease_transition();
        }
        self.io.metrics.set_leader(now == Leadership::Leader);
        self.leader = now;
    }

    /// Recomputes the pairs after Services changed (`changed`: those whose object changed).
    pub(super) fn resolve(&mut self, changed: &BTreeSet<ServiceRef>) {
        let services = self.caches.services.objects();
        let resolution = self.settings.rules.resolve(services);
        let active: BTreeMap<ServiceRef, Active> = resolution
            .pairs
            .iter()
            .map(|p| {
                let probe = self.settings.rules.probe_of(p, services);
                let derive = self.settings.rules.derives(p);
                (
                    p.target.clone(),
                    Active::new(p.sources.clone(), probe, derive),
                )
            })
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
                // Still active: the chore's schedule stays; sources, probe and derive follow.
                (Phase::Active(now), Some(next), _) => Phase::Active(Active {
                    legacy: now.legacy,
                    ..next.clone()
                }),
                (_, Some(next), _) => Phase::Active(next.clone()),
                // A pair refused now is not removed: it is held, its slices untouched, until the
                // refusal is fixed ("never half-applied" — and never a VIP blanked by a typo).
                (
                    Phase::Active(Active { sources, .. }) | Phase::Refused { sources },
                    None,
                    true,
                ) => Phase::Refused {
                    sources: sources.clone(),
                },
                (Phase::Retired, None, true) => Phase::Retired,
                (_, None, false) => Phase::Retired,
            };
            if next == state.phase {
                if changed.contains(target) {
                    state.write.touch();
                }
                continue;
            }
            let (was, is) = (state.phase.intent(), next.intent());
            if was != is {
                match &next {
                    Phase::Active(a) => {
                        info!(service = %target, source = %crate::source::describe(&a.sources), "pair active");
                    }
                    Phase::Refused { .. } => {}
                    Phase::Retired => {
                        info!(service = %target, "pair removed; its EndpointSlices go once a fresh read confirms it")
                    }
                }
                state.standing = Standing::Unplanned;
            }
            state.phase = next;
            state.write.touch();
        }
        for pair in &resolution.pairs {
            if let (false, Some(next)) = (
                self.pairs.contains_key(&pair.target),
                active.get(&pair.target),
            ) {
                info!(service = %pair.target, source = %crate::source::describe(&pair.sources), origin = %pair.origin, "pair active");
                self.pairs.insert(
                    pair.target.clone(),
                    PairState::new(Phase::Active(next.clone())),
                );
            }
        }
        for (target, refusal) in &refused {
            let is_new = self
                .refusals
                .now
                .get(target)
                .is_none_or(|old| old.reason.to_string() != refusal.reason.to_string());
            if is_new {
                warn!(service = %target, reason = %refusal.reason, "pair refused; nothing is written for it");
            }
        }
        self.refusals.now = refused;
        self.reprobe();
        let active_count = self
            .pairs
            .values()
            .filter(|s| s.phase.active().is_some())
            .count();
        self.io
            .metrics
            .set_pairs(active_count, self.refusals.now.len());
    }

    /// The periodic resync: every pair is planned again, the chores and the scan run again.
    pub(super) fn resync(&mut self) {
        debug!("periodic resync");
        self.scan.touch();
        for state in self.pairs.values_mut() {
            state.write.touch();
            if let Some(active) = state.phase.active_mut() {
                active.legacy.touch();
            }
        }
    }

    /// A task ended: its outcome, or why it has none.
    pub(super) fn joined(&mut self, joined: Joined) {
        match joined {
            Joined::Done(done) => self.finish(done),
            Joined::Cancelled(task, job) => {
                if let Some(s) = self.schedule_of(&job) {
                    s.abort(task, Instant::now());
                }
            }
            Joined::Panicked(task, job, e) => {
                // Retried like any failure, after a backoff.
                tracing::error!(job = ?job, error = %e, "task failed");
                let delay = self.backoff_for(&job);
                if let Some(s) = self.schedule_of(&job) {
                    s.finish(task, super::schedule::Finish::Failed(delay), Instant::now());
                }
            }
        }
    }

    /// The next instant a timer must wake the loop: the earliest *future* backoff end or
    /// member-liveness change. Work already due but not started (not leader, its namespace
    /// re-listing, every task slot busy) is started by the event that lifts the block, so a past
    /// instant here would only spin the loop.
    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        let now = Instant::now();
        self.pairs
            .values()
            .flat_map(|s| {
                [
                    s.write.wakeup(),
                    s.phase.active().and_then(|a| a.legacy.wakeup()),
                ]
            })
            .chain([self.scan.wakeup(), self.members.due, self.nodes.drain_due])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }
}
