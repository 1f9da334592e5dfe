//! Steps 3 and 4 of the five from a change to a write: which work is due now (`dispatch`), and
//! turning a due pair into a plan and a write task (`start_write`) — or into a hold, when nothing
//! may be written. Also what the members of the copier group change (`members_changed`).

use std::collections::BTreeSet;

use tokio::time::Instant;
use tracing::{Instrument, debug, warn};

use super::engine::{Engine, MAX_IN_FLIGHT};
use super::jobs::{self, Done, Job, Outcome, WriteContext};
use super::pair::{Facts, Phase, plan_for};
use super::schedule::{Schedule, TaskId};
use crate::desired::{self, Hold};
use crate::events::EventReason;
use crate::group::{Mismatch, Wanted};
use crate::names::ServiceRef;
use crate::source::Source;

impl Engine {
    /// Step 3 of five: starts every task that is due, the leader's only.
    pub(super) fn dispatch(&mut self) {
        if !self.services.is_ready() || !self.is_leader() {
            return;
        }
        // The fence closes by itself at the renew deadline, a moment before the elector says it
        // stepped down: starting writes in that gap would only fail (and retry) at once.
        if self.fence.remaining().is_zero() {
            return;
        }
        let now = Instant::now();
        self.report_refusals();
        if self.members_due.is_some_and(|t| t <= now) {
            self.members_changed(now);
        }
        if self.drain_due.is_some_and(|t| t <= now) {
            // A drain expired: its endpoints are ready again in every target.
            self.nodes_changed();
        }
        // The scan reads the API, not the slice cache: a namespace whose list keeps failing must
        // not stop it (each retired pair it finds still waits for its own namespace's list).
        if self.scan.is_due(now) && self.tasks.len() < MAX_IN_FLIGHT {
            let (client, group) = (self.client.clone(), self.group.clone());
            let gone = self.members.gone_for_good(now);
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
                    && self.slices.is_ready_for(target)
                    && s.phase
                        .sources()
                        .iter()
                        .filter_map(Source::local_service)
                        .all(|src| self.slices.is_ready_for(src))
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

    /// The members' answers may have changed: retired pairs are looked at again, and pairs
    /// configured on some copies only, or differently, are reported.
    pub(super) fn members_changed(&mut self, now: Instant) {
        self.members_due = self.members.next_change(now);
        for state in self.pairs.values_mut() {
            if state.phase == Phase::Retired {
                state.write.touch();
            }
        }
        // A ballot changed, or a member turned stale (its ballot stops counting).
        self.touch_probing();
        for d in self.skew.update(&self.members, &self.pair_configs, now) {
            let note = d.note();
            warn!(service = %d.target, source = %d.source, "{note}");
            self.report(&d.target, EventReason::ConfiguredElsewhere, note);
        }
        let own: BTreeSet<(ServiceRef, ServiceRef)> = self
            .pair_configs
            .iter()
            .map(|p| (p.record_source(), p.target.clone()))
            .collect();
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
            self.report(&m.target, EventReason::ConfiguredElsewhere, note);
        }
        self.mismatches = mismatches;
    }

    /// Reports each refusal once per leadership term as an Event.
    pub(super) fn report_refusals(&mut self) {
        let unreported: Vec<(ServiceRef, String)> = self
            .refused
            .iter()
            .map(|(t, r)| (t.clone(), r.reason.to_string()))
            .filter(|k| !self.refusals_reported.contains(k))
            .collect();
        for (target, note) in unreported {
            self.report(&target, EventReason::Refused, note.clone());
            self.refusals_reported.insert((target, note));
        }
    }

    /// Step 4 of five: plans one pair from the caches and spawns its write, or settles it.
    pub(super) fn start_write(&mut self, target: &ServiceRef, now: Instant) {
        let Some(state) = self.pairs.get(target) else {
            return;
        };
        let actual = self.slices.slices_of(target);
        if state.phase == Phase::Retired && self.refused.contains_key(target) {
            // Removed, then annotated again with values we refuse: held as they are, like any
            // refused pair, until the annotation is fixed or removed (both touch it again).
            return self.hold(target, Hold::Refused, &actual);
        }
        let probes = state.probe.is_some();
        let ballots = probes.then(|| self.ballots(now));
        let Some(state) = self.pairs.get(target) else {
            return;
        };
        let planned = plan_for(
            &state.phase,
            target,
            self.services.objects(),
            &|source| self.read_source(source),
            &actual,
            &self.owner,
            &Facts {
                probe: state
                    .probe
                    .as_ref()
                    .zip(ballots.as_ref().map(super::view::verdicts)),
                nodes: self.node_view(state.derive),
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
            // An active pair whose target Service does not exist (yet): nothing to write, and
            // STATUS says why rather than "synced".
            state.hold = step.clears_target.then_some(Hold::TargetMissing);
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
            // While the member watch fails, a live member may look gone: nobody can be ruled out.
            let wanted = if self.watch_errors.contains_key("members") {
                Wanted::Unknown
            } else {
                self.members.who_wants(target, now)
            };
            let wanted_by = match wanted {
                Wanted::Nobody => Vec::new(),
                Wanted::Unknown => {
                    // Nobody can be ruled out before the member list arrived; its arrival
                    // touches this pair again.
                    state.write.settle();
                    debug!(service = %target, "holding a removed pair's slices until the group's member list is read");
                    return;
                }
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
                    self.report(target, EventReason::ConfiguredElsewhere, note);
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
        if state.hold != Some(hold) && hold != Hold::Refused {
            let source = crate::source::describe(state.phase.sources());
            warn!(service = %target, source = %source, endpoints = kept, reason = %hold, "holding the target's EndpointSlices as they are");
        }
        state.hold = Some(hold);
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

    pub(super) fn spawn(
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

    pub(super) fn schedule_of(&mut self, job: &Job) -> Option<&mut Schedule> {
        match job {
            Job::Scan => Some(&mut self.scan),
            Job::Write(t) => self.pairs.get_mut(t).map(|s| &mut s.write),
            Job::Legacy(t) => self.pairs.get_mut(t).map(|s| &mut s.legacy),
        }
    }
}
