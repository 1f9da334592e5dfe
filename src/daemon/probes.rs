//! The engine's side of the probes: which targets this copy probes (from the caches), with whose
//! credentials (the node's only for what this host's config names) and how many at most
//! (`[probe] max_targets`), its own verdicts and abstentions (from the prober's reports,
//! published in its member Lease), and — on the leader — the quorum's decision per pair,
//! reported when it changes (journal, Event, metrics).
//!
//! Probing itself is `probe::run` (tasks of their own, never blocking the loop); deciding is
//! `probe::quorum` (pure). This file only moves facts between them and the engine's state.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::engine::Engine;
use crate::desired;
use crate::events::EventReason;
use crate::group::twins::Twin;
use crate::group::{MemberRecord, SelfHealth};
use crate::names::ServiceRef;
use crate::probe::quorum::{Ballot, Count, Decision};
use crate::probe::{Auth, Finding, Report, Spec, Target, Verdict, Wanted};
use crate::source::Source;

/// This copy's verdict on one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Own {
    /// Up or down, after the thresholds.
    pub verdict: Verdict,
    /// When the streak behind it began (local monotonic clock).
    pub since: Instant,
    /// When it last changed, wall clock (for `status`).
    pub changed_at: Timestamp,
    /// The last probe's outcome in words.
    pub detail: String,
}

/// What the engine keeps for the probes.
pub struct ProbeState {
    /// The targets this copy probes, with the credentials each may carry, for the prober.
    pub wanted: watch::Sender<Wanted>,
    /// The prober's reports.
    pub reports: mpsc::Receiver<Report>,
    /// This copy's member record; its verdicts are this copy's ballot.
    pub record: watch::Sender<MemberRecord>,
    /// This copy's verdicts (its votes).
    pub own: BTreeMap<Target, Own>,
    /// The targets this copy cannot judge, with why (the prober's detail): no vote either way.
    pub abstained: BTreeMap<Target, String>,
    /// The quorum's last decision per target Service (leader only), as reported.
    pub decided: BTreeMap<ServiceRef, Decision>,
    /// The most targets probed at once (`[probe] max_targets`).
    pub max_targets: usize,
    /// How many wanted targets are over `max_targets` (not probed), as last reported.
    pub over_cap: usize,
    /// What this process knows of its own record and identity (publisher, twin sightings).
    pub health: SelfHealth,
    /// The twins as last logged (`daemon/status.rs`), to log each change once.
    pub twins_reported: Vec<Twin>,
    /// The twins announced by Events during this leadership term (empty while following), so a
    /// copy that becomes leader announces the twins it already knew of.
    pub twins_announced: Vec<Twin>,
}

impl ProbeState {
    /// The state for a copy publishing `record` and probing at most `max_targets` targets; the
    /// prober reads `wanted` and sends `reports`.
    pub fn new(
        record: watch::Sender<MemberRecord>,
        reports: mpsc::Receiver<Report>,
        max_targets: usize,
        health: SelfHealth,
    ) -> (ProbeState, watch::Receiver<Wanted>) {
        let (wanted, wanted_rx) = watch::channel(Wanted::new());
        (
            ProbeState {
                wanted,
                reports,
                record,
                own: BTreeMap::new(),
                abstained: BTreeMap::new(),
                decided: BTreeMap::new(),
                max_targets,
                over_cap: 0,
                health,
                twins_reported: Vec::new(),
                twins_announced: Vec::new(),
            },
            wanted_rx,
        )
    }

    /// What the STATUS line says about the probes when something needs a look: targets over
    /// the cap, endpoints this host abstains on. `None` when all is well.
    pub fn status_note(&self) -> Option<String> {
        let mut notes = Vec::new();
        if self.over_cap > 0 {
            notes.push(format!(
                "{} targets over max_targets {}",
                self.over_cap, self.max_targets
            ));
        }
        match self.abstained.len() {
            0 => {}
            1 => notes.push("abstaining on 1 endpoint".to_owned()),
            n => notes.push(format!("abstaining on {n} endpoints")),
        }
        (!notes.is_empty()).then(|| format!("probes: {}", notes.join(", ")))
    }
}

impl Engine {
    /// Recomputes what this copy probes (every copy probes, leader or not): called when pairs,
    /// Services or slices change. The prober starts and stops tasks from the difference.
    ///
    /// A target carries the node's credentials when a pair of this host's config probes it
    /// ([`Auth::Node`]), none when only annotated pairs do. At most `[probe] max_targets` are
    /// probed ([`crate::probe::capped`]); going over is reported once (warning, metric, STATUS).
    ///
    /// Many pairs may share a source (1,000 annotated VIPs of `default/kubernetes`): its ready
    /// endpoints are read once per call and per set of served families, not once per pair.
    pub(super) fn reprobe(&mut self) {
        let mut wanted = Wanted::new();
        // Static addresses take their port from the target Service, and the slices a union
        // keeps for a source with nothing to give are the target's, so such a pair is listed
        // on its own; pairs reading one Service share their sources' listing (per kind of
        // credentials: a config pair's listing must not be skipped because an annotated pair
        // with the same sources was listed first).
        type Key<'a> = (
            &'a [Source],
            Vec<String>,
            bool,
            &'a Spec,
            Option<&'a ServiceRef>,
            Auth,
        );
        let mut listed: BTreeSet<Key<'_>> = BTreeSet::new();
        for (target, state) in &self.pairs {
            let Some((active, spec)) = state
                .phase
                .active()
                .and_then(|a| Some((a, a.probe.as_ref()?)))
            else {
                continue;
            };
            let sources = &active.sources;
            let Some(svc) = self.caches.services.objects().get(target) else {
                continue;
            };
            let own = desired::union::is_union(sources).then_some(target);
            // A configured target is never an annotated pair's (`pairs::resolve` refuses that).
            let auth = if self.settings.is_configured(target) {
                Auth::Node
            } else {
                Auth::Anonymous
            };
            let key = (
                sources.as_slice(),
                desired::served_families(svc),
                active.derive,
                spec,
                own,
                auth,
            );
            if !listed.insert(key) {
                continue;
            }
            // Derived endpoints are probed on their own address, as the plan counts them.
            let view = self.node_view(active.derive);
            let (prepared, _) = crate::desired::step::prepare(
                sources,
                target,
                svc,
                &|source| self.read_source(source),
                view.as_ref(),
            );
            for t in crate::desired::step::candidates(spec, target, svc, &prepared)
                .into_iter()
                .chain(crate::desired::step::kept_candidates(
                    spec,
                    target,
                    svc,
                    &prepared,
                    &self.caches.slices.slices_of(target),
                    &self.settings.owner,
                ))
                .filter_map(|c| c.target)
            {
                // The node's credentials win: the host's config probes this target anyway.
                let entry = wanted.entry(t).or_insert(auth);
                *entry = (*entry).min(auth);
            }
        }
        let total = wanted.len();
        let (wanted, over) = crate::probe::capped(wanted, self.probes.max_targets);
        self.note_cap(total, over);
        let probes = &mut self.probes;
        probes.wanted.send_if_modified(|current| {
            if *current == wanted {
                return false;
            }
            *current = wanted.clone();
            true
        });
        // Verdicts on targets no longer probed are dropped, so the ballot speaks only of now;
        // so are abstentions. A target whose credentials changed is probed afresh: its old
        // verdict stands until the new probes report.
        let gone: BTreeSet<Target> = probes
            .own
            .keys()
            .chain(probes.abstained.keys())
            .filter(|t| !wanted.contains_key(*t))
            .cloned()
            .collect();
        for t in &gone {
            probes.own.remove(t);
            probes.abstained.remove(t);
            self.io.metrics.set_probe_verdict(&t.to_string(), None);
            self.io.metrics.set_probe_abstaining(&t.to_string(), false);
        }
        if !gone.is_empty() {
            self.publish_verdicts();
        }
    }

    /// Reports the cap on probe targets when it starts or stops mattering: a warning once when
    /// `over` of `total` wanted targets are left out, a notice when none are any more; the
    /// metric always.
    fn note_cap(&mut self, total: usize, over: usize) {
        self.io.metrics.set_probe_targets(total - over, over);
        let before = self.probes.over_cap;
        self.probes.over_cap = over;
        let max = self.probes.max_targets;
        match (before, over) {
            (0, 0) => {}
            (0, _) => warn!(
                targets = total,
                max_targets = max,
                not_probed = over,
                "more probe targets than [probe] max_targets; the rest are not probed (annotated pairs' first), so this host has no vote on them"
            ),
            (_, 0) => info!(
                targets = total,
                max_targets = max,
                "probe targets within [probe] max_targets again; every target is probed"
            ),
            _ => {}
        }
    }

    /// A finding of this copy's prober: kept, logged, published, and (leader) the pairs that
    /// probe re-planned. An abstention removes this copy's vote on the target (its ballot no
    /// longer names it) and is reported once, with why.
    pub(super) fn on_report(&mut self, report: Report) {
        if !self.probes.wanted.borrow().contains_key(&report.target) {
            return; // a late report of a target just removed
        }
        let verdict = match report.finding {
            Finding::Vote(verdict) => verdict,
            Finding::Abstain => {
                self.probes.own.remove(&report.target);
                let endpoint = report.target.to_string();
                warn!(endpoint = %endpoint, detail = %report.detail, "probe: this host cannot judge the endpoint and abstains (no vote either way); the endpoint's health is not known from here");
                self.io.metrics.set_probe_verdict(&endpoint, None);
                self.io.metrics.set_probe_abstaining(&endpoint, true);
                self.probes.abstained.insert(report.target, report.detail);
                self.publish_verdicts();
                self.touch_probing();
                return;
            }
        };
        if self.probes.abstained.remove(&report.target).is_some() {
            info!(endpoint = %report.target, detail = %report.detail, "probe: this host judges the endpoint again");
            self.io
                .metrics
                .set_probe_abstaining(&report.target.to_string(), false);
        }
        let previous = self.probes.own.get(&report.target).map(|o| o.verdict);
        match (previous, verdict) {
            (Some(Verdict::Up) | None, Verdict::Down) => {
                warn!(endpoint = %report.target, detail = %report.detail, "probe: endpoint down as seen from this host");
            }
            (Some(Verdict::Down), Verdict::Up) => {
                info!(endpoint = %report.target, detail = %report.detail, "probe: endpoint up again as seen from this host");
            }
            _ => {}
        }
        self.io
            .metrics
            .set_probe_verdict(&report.target.to_string(), Some(verdict == Verdict::Up));
        self.probes.own.insert(
            report.target,
            Own {
                verdict,
                since: report.since,
                changed_at: self.io.clock.now(),
                detail: report.detail,
            },
        );
        self.publish_verdicts();
        self.touch_probing();
    }

    /// Puts this copy's verdicts into its member record (the publisher writes it at once, at most
    /// every `group::member::MIN_WRITE_GAP`).
    fn publish_verdicts(&mut self) {
        let verdicts: BTreeMap<Target, Verdict> = self
            .probes
            .own
            .iter()
            .map(|(t, o)| (t.clone(), o.verdict))
            .collect();
        let since: BTreeMap<Target, Timestamp> = self
            .probes
            .own
            .iter()
            .map(|(t, o)| (t.clone(), o.changed_at))
            .collect();
        let abstained = &self.probes.abstained;
        self.probes.record.send_if_modified(|record| {
            if record.verdicts == verdicts && record.abstained == *abstained {
                return false;
            }
            record.verdicts = verdicts;
            record.verdicts_since = since;
            record.abstained = abstained.clone();
            true
        });
    }

    /// Every active pair that probes is planned again (a verdict or a ballot changed).
    pub(super) fn touch_probing(&mut self) {
        if !self.is_leader() {
            return;
        }
        for state in self.pairs.values_mut() {
            if state.phase.probe().is_some() {
                state.write.touch();
            }
        }
    }

    /// The twins known now: identities under which more than one live process writes, as the
    /// member Leases show (`Members::twins`), plus our own when this process saw one itself
    /// (on its member Lease or on the election Lease) before the member watch shows it.
    pub(super) fn twins(&self, now: Instant) -> Vec<Twin> {
        let mut twins = self.members.live.twins(now);
        if let Some(seen) = self.probes.health.twin(now)
            && !twins.iter().any(|t| t.identity == self.members.live.own())
        {
            let mut nonces = vec![crate::group::twins::label(&seen.nonce)];
            nonces.extend(self.probes.record.borrow().nonce.clone());
            nonces.sort();
            twins.push(Twin {
                identity: self.members.live.own().to_owned(),
                nonces,
            });
            twins.sort();
        }
        twins
    }

    /// The ballots as the leader counts them now: its own verdicts, and every other live
    /// member's — none of an identity two live processes share (`twins`), ours included.
    ///
    /// `with_unconfirmed`: whether members not yet seen renewing vote too (`members.rs` decides
    /// from both counts: only where they agree does a decision change what is written).
    pub(super) fn count(&self, now: Instant, with_unconfirmed: bool) -> Count {
        let own: BTreeMap<Target, Verdict> = self
            .probes
            .own
            .iter()
            .map(|(t, o)| (t.clone(), o.verdict))
            .collect();
        let twins = self.twins(now);
        let others = self.members.live.ballots(now);
        let unconfirmed = if with_unconfirmed {
            Vec::new()
        } else {
            self.members.live.unconfirmed(now)
        };
        let own_counts = !twins.iter().any(|t| t.identity == self.members.live.own());
        let mut ballots = Vec::new();
        if own_counts {
            ballots.push(Ballot {
                voter: self.members.live.own(),
                live: true,
                verdicts: &own,
            });
        }
        ballots.extend(
            others
                .iter()
                .filter(|(id, _)| id.as_str() != self.members.live.own())
                .filter(|(id, _)| !unconfirmed.contains(id))
                .map(|(id, record)| Ballot {
                    voter: id,
                    live: true,
                    verdicts: &record.verdicts,
                }),
        );
        Count::of(&ballots)
    }

    /// Reports what changed between the last decision for `target` and `decision`: each
    /// eviction and return in the journal (with the endpoint as a field), as an Event on the
    /// target, and in the metrics.
    pub(super) fn note_decision(&mut self, target: &ServiceRef, decision: Decision, count: &Count) {
        let before = self.probes.decided.get(target).cloned().unwrap_or_default();
        if before == decision {
            return;
        }
        let pair = target.to_string();
        let votes = |address: &std::net::IpAddr| {
            count
                .votes
                .iter()
                .find(|(t, _)| t.address == *address)
                .map_or_else(String::new, |(t, v)| {
                    format!(
                        "{t}: {} of {} live copies with a verdict see it down ({})",
                        v.down.len(),
                        v.voters(),
                        v.down.join(", ")
                    )
                })
        };
        for address in decision.evicted.difference(&before.evicted) {
            let why = votes(address);
            warn!(service = %target, endpoint = %address, votes = %why, "endpoint evicted: marked not ready in the target");
            self.io.metrics.probe_eviction(&pair);
            // Time from this copy's first failed probe to the eviction, when it saw one.
            if let Some(own) = self
                .probes
                .own
                .iter()
                .find(|(t, o)| t.address == *address && o.verdict == Verdict::Down)
                .map(|(_, o)| o)
            {
                self.io
                    .metrics
                    .observe_time_to_evict(Instant::now().duration_since(own.since));
            }
            self.report(
                target,
                EventReason::Evicted,
                format!("endpoint {address} marked not ready: {why}"),
            );
        }
        for address in before.evicted.difference(&decision.evicted) {
            info!(service = %target, endpoint = %address, "endpoint returned: ready again in the target");
            self.report(
                target,
                EventReason::Returned,
                format!("endpoint {address} ready again: a majority of the live copies no longer sees it down"),
            );
        }
        if decision.spared != before.spared
            && let Some(address) = decision.spared
        {
            let why = votes(&address);
            warn!(service = %target, endpoint = %address, votes = %why, "every endpoint looks down; keeping this one ready (fail-static: probes never empty a target)");
            self.report(
                target,
                EventReason::Spared,
                format!("every endpoint of {target} looks down; {address} stays ready so the VIP is never empty ({why})"),
            );
        }
        self.io.metrics.set_evicted(&pair, decision.evicted.len());
        self.probes.decided.insert(target.clone(), decision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(last: u8) -> Target {
        format!("https://198.51.100.{last}:6443/readyz")
            .parse()
            .unwrap()
    }

    #[test]
    fn the_status_note_names_the_cap_and_the_abstentions() {
        let (record, _) = watch::channel(MemberRecord::new("node-1", []));
        let (_, reports) = mpsc::channel(1);
        let health = crate::group::health::SelfHealth::new(std::time::Duration::from_secs(60));
        let (mut state, _) = ProbeState::new(record, reports, 256, health);
        assert_eq!(state.status_note(), None);
        state.over_cap = 12;
        state.abstained.insert(target(1), "TLS: ...".into());
        assert_eq!(
            state.status_note().as_deref(),
            Some("probes: 12 targets over max_targets 256, abstaining on 1 endpoint")
        );
    }
}
