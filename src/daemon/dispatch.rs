//! Steps 3 and 4 of the five from a change to a write: which work is due now (`dispatch`), and
//! turning a due pair into a plan and a write task (`start_write`) — or into a hold, when nothing
//! may be written.

use tokio::time::Instant;
use tracing::{debug, warn};

use super::engine::Engine;
use super::jobs::{self, Job, Outcome, WriteContext};
use super::pair::Standing;
use super::schedule::Schedule;
use crate::desired::step::{Facts, plan_for};
use crate::desired::{self, Hold};
use crate::events::EventReason;
use crate::group::Wanted;
use crate::names::ServiceRef;
use crate::source::Source;

impl Engine {
    /// Step 3 of five: starts every task that is due, the leader's only.
    pub(super) fn dispatch(&mut self) {
        if !self.caches.services.is_ready() || !self.is_leader() {
            return;
        }
        // The fence closes by itself at the renew deadline, a moment before the elector says it
        // stepped down: starting writes in that gap would only fail (and retry) at once.
        if self.io.fence.remaining().is_zero() {
            return;
        }
        let now = Instant::now();
        self.report_refusals();
        if self.members.due.is_some_and(|t| t <= now) {
            // A member turned stale or gone by time alone (or this copy just became leader).
            self.members_changed(now);
        }
        if self.nodes.drain_due.is_some_and(|t| t <= now) {
            // A drain expired: its endpoints are ready again in every target.
            self.nodes_changed();
        }
        // The scan reads the API, not the slice cache: a namespace whose list keeps failing must
        // not stop it (each retired pair it finds still waits for its own namespace's list).
        if self.scan.is_due(now) && self.tasks.has_room() {
            let (client, group) = (self.io.client.clone(), self.settings.group.clone());
            let gone = self.members.live.gone_for_good(now);
            let outcome = async move { Outcome::Scan(jobs::scan(client, group, gone).await) };
            self.spawn(Job::Scan, outcome, now);
        }
        // Until the Node list arrives, a plan would drop derived slices and drains (a new
        // leader's caches are warm; this waits only at start): the watch's arrival, or its
        // failure, touches the pairs again.
        if !self.nodes_settled() {
            return;
        }
        let due: Vec<ServiceRef> = self
            .pairs
            .iter()
            .filter(|(target, s)| {
                s.write.is_due(now)
                    && self.caches.slices.is_ready_for(target)
                    && s.phase
                        .sources()
                        .iter()
                        .filter_map(Source::local_service)
                        .all(|src| self.caches.slices.is_ready_for(src))
            })
            .map(|(t, _)| t.clone())
            .collect();
        for target in due {
            if !self.tasks.has_room() {
                return;
            }
            self.start_write(&target, now);
        }
        let legacy: Vec<ServiceRef> = self
            .pairs
            .iter()
            .filter(|(_, s)| {
                matches!(s.standing, Standing::Synced { .. })
                    && s.phase.active().is_some_and(|a| a.legacy.is_due(now))
            })
            .map(|(t, _)| t.clone())
            .collect();
        for target in legacy {
            if !self.tasks.has_room() {
                return;
            }
            let (client, fence, t) = (
                self.io.client.clone(),
                self.io.fence.clone(),
                target.clone(),
            );
            let outcome = async move { Outcome::Legacy(jobs::legacy(client, t, fence).await) };
            self.spawn(Job::Legacy(target), outcome, now);
        }
    }

    /// Reports each refusal once per leadership term as an Event.
    pub(super) fn report_refusals(&mut self) {
        let unreported: Vec<(ServiceRef, String)> = self
            .refusals
            .now
            .iter()
            .map(|(t, r)| (t.clone(), r.reason.to_string()))
            .filter(|k| !self.refusals.reported.contains(k))
            .collect();
        for (target, note) in unreported {
            self.report(&target, EventReason::Refused, note.clone());
            self.refusals.reported.insert((target, note));
        }
    }

    /// Step 4 of five: plans one pair from the caches and spawns its write, or settles it.
    pub(super) fn start_write(&mut self, target: &ServiceRef, now: Instant) {
        let Some(state) = self.pairs.get(target) else {
            return;
        };
        let actual = self.caches.slices.slices_of(target);
        if state.phase.is_retired() && self.refusals.now.contains_key(target) {
            // Removed, then annotated again with values we refuse: held as they are, like any
            // refused pair, until the annotation is fixed or removed (both touch it again).
            return self.hold(target, Hold::Refused, &actual);
        }
        let probes = state.phase.probe().is_some();
        let ballots = probes.then(|| self.ballots(now));
        let Some(state) = self.pairs.get(target) else {
            return;
        };
        let derive = state.phase.active().is_some_and(|a| a.derive);
        let planned = plan_for(
            state.phase.intent(),
            target,
            self.caches.services.objects(),
            &|source| self.read_source(source),
            &actual,
            &self.settings.owner,
            &Facts {
                probe: state
                    .phase
                    .probe()
                    .zip(ballots.as_ref().map(super::members::verdicts)),
                nodes: self.node_view(derive),
                nodes_unknown: self.nodes_unknown(state),
            },
        );
        self.note_foreign(target, &actual);
        let mut step = match planned {
            Err(hold) => return self.hold(target, hold, &actual),
            Ok(step) => step,
        };
        // Evictions kept as written are no decision of this term: nothing to report.
        if let (Some(decision), Some(Ok(b))) = (step.decision.take(), ballots.as_ref()) {
            self.note_decision(target, decision, b.all.as_ref().unwrap_or(&b.confirmed));
        }
        self.note_nodes(target, std::mem::take(&mut step.nodes));
        self.note_sources(target, &std::mem::take(&mut step.held));
        if step.plan.is_empty() {
            return self.settled(target, step.clears_target, &actual, now);
        }
        if self.pairs.get(target).is_some_and(|s| s.phase.is_retired())
            && self.held_for_members(target, now)
        {
            return;
        }
        debug!(service = %target, creates = step.plan.creates.len(), updates = step.plan.updates.len(), deletes = step.plan.deletes.len(), "applying plan");
        let cx = WriteContext {
            target: target.clone(),
            configured: self.settings.is_configured(target),
            annotations_enabled: self.settings.rules.annotations_enabled(),
        };
        let (client, fence, metrics) = (
            self.io.client.clone(),
            self.io.fence.clone(),
            self.io.metrics.clone(),
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

    /// The target already equals desired: the pair is synced — or, for an active pair whose
    /// target Service does not exist (yet), held so that STATUS says why rather than "synced";
    /// a retired pair whose slices are all gone is forgotten.
    fn settled(
        &mut self,
        target: &ServiceRef,
        clears_target: bool,
        actual: &[k8s_openapi::api::discovery::v1::EndpointSlice],
        now: Instant,
    ) {
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        state.write.settle();
        if state.phase.is_retired() {
            // Every slice of a removed pair is gone: forget it (and stop watching its slices on
            // the next Service change).
            self.pairs.remove(target);
            self.io.metrics.forget_pair(&target.to_string());
            return;
        }
        let first = !matches!(state.standing, Standing::Synced { .. });
        state.standing = if clears_target {
            Standing::Held(Hold::TargetMissing)
        } else {
            Standing::Synced {
                at: now,
                endpoints: desired::ready_endpoints(actual),
            }
        };
        if first && let Some(active) = state.phase.active_mut() {
            active.legacy.touch();
        }
        self.io.metrics.writes_skipped();
        self.record_endpoints(target, actual);
    }

    /// Whether the retired pair `target` is held because another live member of the group
    /// still configures it (deleting what it wants would blank its pair whenever leadership
    /// moves there), or because nobody can be ruled out yet (the member list not read).
    fn held_for_members(&mut self, target: &ServiceRef, now: Instant) -> bool {
        let wanted_by = match self.wanted(target, now) {
            Wanted::Nobody => Vec::new(),
            Wanted::Unknown => {
                // The member list's arrival touches this pair again.
                if let Some(state) = self.pairs.get_mut(target) {
                    state.write.settle();
                }
                debug!(service = %target, "holding a removed pair's slices until the group's member list is read");
                return true;
            }
            Wanted::Live(ids) | Wanted::Stale(ids) => ids,
        };
        let Some(state) = self.pairs.get_mut(target) else {
            return true;
        };
        let news = state.said.wanted_by.change(wanted_by.clone()).is_some();
        if wanted_by.is_empty() {
            return false;
        }
        state.write.settle();
        if news {
            let note = format!(
                "not configured here, but still configured on {}; its EndpointSlices are kept",
                wanted_by.join(", ")
            );
            warn!(service = %target, "{note}");
            self.report(target, EventReason::ConfiguredElsewhere, note);
        }
        true
    }

    /// Fail-static: nothing is written for `target`; say why once per change.
    pub(super) fn hold(
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
        if state.standing != Standing::Held(hold) && hold != Hold::Refused {
            let source = crate::source::describe(state.phase.sources());
            warn!(service = %target, source = %source, endpoints = kept, reason = %hold, "holding the target's EndpointSlices as they are");
        }
        state.standing = Standing::Held(hold);
        let reason = match hold {
            Hold::NoSourceSlices => Some(EventReason::SourceMissing),
            Hold::NoEndpoints => Some(EventReason::SourceEmpty),
            _ => None,
        };
        if let Some(reason) = reason {
            let note = format!("{hold}; keeping the {kept} ready endpoints of {target}");
            self.report(target, reason, note);
        }
    }

    /// Starts `work` as a run of `job`'s schedule.
    pub(super) fn spawn(
        &mut self,
        job: Job,
        work: impl std::future::Future<Output = Outcome> + Send + 'static,
        now: Instant,
    ) {
        let task = self.tasks.next_id();
        let Some(schedule) = self.schedule_of(&job) else {
            return;
        };
        if !schedule.start(task, now) {
            return;
        }
        self.tasks.spawn(task, job, work);
    }

    /// The schedule `job` runs on.
    pub(super) fn schedule_of(&mut self, job: &Job) -> Option<&mut Schedule> {
        match job {
            Job::Scan => Some(&mut self.scan),
            Job::Write(t) => self.pairs.get_mut(t).map(|s| &mut s.write),
            Job::Legacy(t) => self
                .pairs
                .get_mut(t)
                .and_then(|s| s.phase.active_mut())
                .map(|a| &mut a.legacy),
        }
    }
}
