//! The engine's side of the probes: which targets this copy probes (from the caches), its own
//! verdicts (from the prober's reports, published in its member Lease), and — on the leader —
//! the quorum's decision per pair, reported when it changes (journal, Event, metrics).
//!
//! Probing itself is `probe::run` (tasks of their own, never blocking the loop); deciding is
//! `probe::quorum` (pure). This file only moves facts between them and the engine's state.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::engine::Engine;
use super::pair::Phase;
use crate::desired;
use crate::events::EventReason;
use crate::group::twins::Twin;
use crate::group::{MemberRecord, SelfHealth};
use crate::names::ServiceRef;
use crate::probe::Spec;
use crate::probe::quorum::{Ballot, Count, Decision};
use crate::probe::{Report, Target, Verdict};
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
    /// The targets this copy probes, for the prober.
    pub wanted: watch::Sender<BTreeSet<Target>>,
    /// The prober's reports.
    pub reports: mpsc::Receiver<Report>,
    /// This copy's member record; its verdicts are this copy's ballot.
    pub record: watch::Sender<MemberRecord>,
    /// This copy's verdicts.
    pub own: BTreeMap<Target, Own>,
    /// The quorum's last decision per target Service (leader only), as reported.
    pub decided: BTreeMap<ServiceRef, Decision>,
    /// What this process knows of its own record and identity (publisher, twin sightings).
    pub health: SelfHealth,
    /// The twins as last logged (`daemon/status.rs`), to log each change once.
    pub twins_reported: Vec<Twin>,
    /// The twins announced by Events during this leadership term (empty while following), so a
    /// copy that becomes leader announces the twins it already knew of.
    pub twins_announced: Vec<Twin>,
}

impl ProbeState {
    /// The state for a copy publishing `record`; the prober reads `wanted` and sends `reports`.
    pub fn new(
        record: watch::Sender<MemberRecord>,
        reports: mpsc::Receiver<Report>,
        health: SelfHealth,
    ) -> (ProbeState, watch::Receiver<BTreeSet<Target>>) {
        let (wanted, wanted_rx) = watch::channel(BTreeSet::new());
        (
            ProbeState {
                wanted,
                reports,
                record,
                own: BTreeMap::new(),
                decided: BTreeMap::new(),
                health,
                twins_reported: Vec::new(),
                twins_announced: Vec::new(),
            },
            wanted_rx,
        )
    }
}

impl Engine {
    /// Recomputes what this copy probes (every copy probes, leader or not): called when pairs,
    /// Services or slices change. The prober starts and stops tasks from the difference.
    ///
    /// Many pairs may share a source (1,000 annotated VIPs of `default/kubernetes`): its ready
    /// endpoints are read once per call and per set of served families, not once per pair.
    pub(super) fn reprobe(&mut self) {
        let mut wanted = BTreeSet::new();
        // Static addresses take their port from the target Service, so a pair with some is
        // listed on its own; pairs reading only Services share their sources' listing.
        type Key<'a> = (
            &'a [Source],
            Vec<String>,
            bool,
            &'a Spec,
            Option<&'a ServiceRef>,
        );
        let mut listed: BTreeSet<Key<'_>> = BTreeSet::new();
        for (target, state) in &self.pairs {
            let (Phase::Active { sources }, Some(spec)) = (&state.phase, &state.probe) else {
                continue;
            };
            let Some(svc) = self.services.objects().get(target) else {
                continue;
            };
            let own = sources
                .iter()
                .any(|s| matches!(s, Source::Static(_)))
                .then_some(target);
            let key = (
                sources.as_slice(),
                desired::served_families(svc),
                state.derive,
                spec,
                own,
            );
            if !listed.insert(key) {
                continue;
            }
            // Derived endpoints are probed on their own address, as the plan counts them.
            let view = self.node_view(state.derive);
            let (prepared, _) = super::pair::prepare(
                sources,
                target,
                svc,
                &|source| self.read_source(source),
                view.as_ref(),
            );
            wanted.extend(
                super::pair::candidates(spec, target, svc, &prepared)
                    .into_iter()
                    .filter_map(|c| c.target),
            );
        }
        let probes = &mut self.probes;
        probes.wanted.send_if_modified(|current| {
            if *current == wanted {
                return false;
            }
            *current = wanted.clone();
            true
        });
        // Verdicts on targets no longer probed are dropped, so the ballot speaks only of now.
        let gone: Vec<Target> = probes
            .own
            .keys()
            .filter(|t| !wanted.contains(*t))
            .cloned()
            .collect();
        for t in &gone {
            probes.own.remove(t);
            self.metrics.set_probe_verdict(&t.to_string(), None);
        }
        if !gone.is_empty() {
            self.publish_verdicts();
        }
    }

    /// A verdict of this copy's prober: kept, logged, published, and (leader) the pairs that
    /// probe re-planned.
    pub(super) fn on_report(&mut self, report: Report) {
        if !self.probes.wanted.borrow().contains(&report.target) {
            return; // a late report of a target just removed
        }
        let previous = self.probes.own.get(&report.target).map(|o| o.verdict);
        match (previous, report.verdict) {
            (Some(Verdict::Up) | None, Verdict::Down) => {
                warn!(endpoint = %report.target, detail = %report.detail, "probe: endpoint down as seen from this host");
            }
            (Some(Verdict::Down), Verdict::Up) => {
                info!(endpoint = %report.target, detail = %report.detail, "probe: endpoint up again as seen from this host");
            }
            _ => {}
        }
        self.metrics.set_probe_verdict(
            &report.target.to_string(),
            Some(report.verdict == Verdict::Up),
        );
        self.probes.own.insert(
            report.target,
            Own {
                verdict: report.verdict,
                since: report.since,
                changed_at: Timestamp::now(),
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
        self.probes.record.send_if_modified(|record| {
            if record.verdicts == verdicts {
                return false;
            }
            record.verdicts = verdicts;
            record.verdicts_since = since;
            true
        });
    }

    /// Every active pair that probes is planned again (a verdict or a ballot changed).
    pub(super) fn touch_probing(&mut self) {
        if !self.is_leader() {
            return;
        }
        for state in self.pairs.values_mut() {
            if state.probe.is_some() && matches!(state.phase, Phase::Active { .. }) {
                state.write.touch();
            }
        }
    }

    /// The twins known now: identities under which more than one live process writes, as the
    /// member Leases show (`Members::twins`), plus our own when this process saw one itself
    /// (on its member Lease or on the election Lease) before the member watch shows it.
    pub(super) fn twins(&self, now: Instant) -> Vec<Twin> {
        let mut twins = self.members.twins(now);
        if let Some(seen) = self.probes.health.twin(now)
            && !twins.iter().any(|t| t.identity == self.members.own())
        {
            let mut nonces = vec![crate::group::twins::label(&seen.nonce)];
            nonces.extend(self.probes.record.borrow().nonce.clone());
            nonces.sort();
            twins.push(Twin {
                identity: self.members.own().to_owned(),
                nonces,
            });
            twins.sort();
        }
        twins
    }

    /// The ballots as the leader counts them now: its own verdicts, and every other live
    /// member's — none of an identity two live processes share (`twins`), ours included.
    pub(super) fn count(&self, now: Instant) -> Count {
        let own: BTreeMap<Target, Verdict> = self
            .probes
            .own
            .iter()
            .map(|(t, o)| (t.clone(), o.verdict))
            .collect();
        let twins = self.twins(now);
        let others = self.members.ballots(now);
        let own_counts = !twins.iter().any(|t| t.identity == self.members.own());
        let mut ballots = Vec::new();
        if own_counts {
            ballots.push(Ballot {
                voter: self.members.own(),
                live: true,
                verdicts: &own,
            });
        }
        ballots.extend(
            others
                .iter()
                .filter(|(id, _)| id.as_str() != self.members.own())
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
                        "{t}: {} of {} live copies see it down ({})",
                        v.down.len(),
                        count.counted.len(),
                        v.down.join(", ")
                    )
                })
        };
        for address in decision.evicted.difference(&before.evicted) {
            let why = votes(address);
            warn!(service = %target, endpoint = %address, votes = %why, "endpoint evicted: marked not ready in the target");
            self.metrics.probe_eviction(&pair);
            // Time from this copy's first failed probe to the eviction, when it saw one.
            if let Some(own) = self
                .probes
                .own
                .iter()
                .find(|(t, o)| t.address == *address && o.verdict == Verdict::Down)
                .map(|(_, o)| o)
            {
                self.metrics
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
        self.metrics.set_evicted(&pair, decision.evicted.len());
        self.probes.decided.insert(target.clone(), decision);
    }
}
