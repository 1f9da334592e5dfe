//! What the engine tells people: the STATUS line and /readyz, Events on target Services (only
//! transitions, only by the leader), per-pair endpoint metrics, and the report of slices on a
//! target that another manager writes.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::time::Instant;
use tracing::warn;

use super::engine::{Engine, Host};
use super::pair::Phase;
use crate::desired::{self, ForeignSlice};
use crate::events::{EventReason, Report};
use crate::lease::Leadership;
use crate::names::ServiceRef;
use crate::notify::{self, PairStatus, Standing, StatusView};

impl Engine {
    /// Refreshes STATUS and /readyz.
    pub(super) fn publish_status(&self, host: &Host<'_>) {
        let role = match &self.leader {
            // Neither the Lease nor the first list came back yet: say what we wait for.
            Leadership::Starting if !self.services.is_ready() => Standing::Waiting(format!(
                "the API server at {}",
                host.credentials.loaded.server
            )),
            Leadership::Starting => Standing::Starting,
            Leadership::Leader => Standing::Leader,
            Leadership::Follower { holder } => Standing::Follower(holder.clone()),
        };
        let now = Instant::now();
        // Per-pair counts are the leader's: a follower does not sync, and its line says who does.
        let pairs: Vec<PairStatus> = self
            .pairs
            .iter()
            .filter(|_| self.is_leader())
            .filter(|(_, s)| s.phase != Phase::Retired)
            .map(|(target, s)| {
                let evicted = self
                    .probes
                    .decided
                    .get(target)
                    .map(|d| &d.evicted)
                    .cloned()
                    .unwrap_or_default();
                let drained = &s.nodes.withheld.drained;
                // Evicted and drained endpoints are still in the target (not ready): "3
                // endpoints, 1 evicted" / "3 endpoints, 1 drained". An endpoint both drained and
                // evicted is one endpoint, counted once (as drained: the cause an operator set).
                let evicted_only = evicted.difference(drained).count();
                PairStatus {
                    target: target.to_string(),
                    endpoints: s.endpoints + evicted_only + drained.len(),
                    drained: drained.len(),
                    synced_ago: s.synced_at.map(|t| now.duration_since(t)),
                    holding: s.hold.as_ref().map(ToString::to_string),
                    evicted: evicted_only,
                    failing_sources: s.sources_failing.keys().map(ToString::to_string).collect(),
                }
            })
            .collect();
        // An API that does not answer is said first, then a failing watch scope (while it fails,
        // the pairs it feeds do not follow), then a member view that cannot be counted.
        let link = host.credentials.reloadable.link().health();
        let unanswered = link.trouble_since.map(|t| now.duration_since(t));
        self.metrics.set_link(
            unanswered.unwrap_or_default(),
            link.longest_silence.unwrap_or_default(),
        );
        let last_error = unanswered
            .map(|d| format!("the API server does not answer ({} s)", d.as_secs()))
            .or_else(|| {
                self.watch_errors
                    .iter()
                    .next()
                    .map(|(scope, e)| format!("{scope} watch: {e}"))
            })
            .or_else(|| {
                self.is_leader()
                    .then(|| self.members_incomplete(now))
                    .flatten()
                    .map(|why| format!("member view not complete, evictions as written: {why}"))
            })
            .or_else(|| self.pairs.values().find_map(|s| s.last_error.clone()));
        let mut line = notify::status_line(&StatusView {
            role,
            pairs,
            last_error,
        });
        // What the probes need a look at (targets over the cap, endpoints this host cannot
        // judge), on every copy: each host probes for itself.
        if let Some(note) = self.probes.status_note() {
            line.push_str("; ");
            line.push_str(&note);
        }
        host.notifier.status(&line);
        let in_sync = self
            .pairs
            .values()
            .filter(|s| s.phase != Phase::Retired)
            .all(|s| s.last_error.is_none() && (s.is_in_sync() || s.hold.is_some()));
        let watching = self.services.is_ready() && self.slices.is_ready();
        let ready = match self.leader {
            Leadership::Leader => watching && in_sync,
            Leadership::Follower { .. } => watching,
            Leadership::Starting => false,
        };
        host.health.set_ready(ready);
    }

    /// Reports `note` for `target` as an Event, once per change of (reason, note), leader only.
    pub(super) fn report(&mut self, target: &ServiceRef, reason: EventReason, note: String) {
        if !self.is_leader() {
            return;
        }
        if let Some(state) = self.pairs.get_mut(target) {
            let key = (reason, note.clone());
            if state.reported.as_ref() == Some(&key) {
                return;
            }
            state.reported = Some(key);
        }
        let uid = self
            .services
            .objects()
            .get(target)
            .and_then(|s| s.metadata.uid.clone());
        self.events.send(Report {
            target: target.clone(),
            uid,
            reason,
            note,
        });
    }

    /// Per-family ready/not-ready endpoint gauges of `target`.
    pub(super) fn record_endpoints(&self, target: &ServiceRef, slices: &[EndpointSlice]) {
        record_endpoints_of(&self.metrics, target, slices);
    }

    /// Slices on `target` that this group does not manage: never touched, always reported (the
    /// VIP serves them too). Logged, raised as an Event and counted when the set changes.
    pub(super) fn note_foreign(&mut self, target: &ServiceRef, actual: &[EndpointSlice]) {
        let foreign = desired::foreign_slices(actual, &self.owner);
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        if state.foreign == foreign {
            return;
        }
        self.metrics
            .set_foreign_slices(&target.to_string(), foreign.len());
        state.foreign = foreign.clone();
        if foreign.is_empty() {
            return;
        }
        let text = describe_foreign(&foreign);
        warn!(service = %target, slices = %text, "the target has EndpointSlices that endpoint-copier does not manage; the VIP serves their addresses too");
        self.report(
            target,
            EventReason::ForeignSlices,
            format!("EndpointSlices not managed by this copier group also reach {target}: {text}"),
        );
    }
}

/// One line naming each foreign slice, its manager and its ready addresses.
pub fn describe_foreign(foreign: &[ForeignSlice]) -> String {
    foreign
        .iter()
        .map(|f| {
            format!(
                "{} (managed by {}; ready: {})",
                f.name,
                f.manager,
                if f.ready_addresses.is_empty() {
                    "none".to_owned()
                } else {
                    f.ready_addresses.join(", ")
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Per-family ready/not-ready endpoint gauges of `target`, from its slices.
pub fn record_endpoints_of(
    metrics: &crate::metrics::Metrics,
    target: &ServiceRef,
    slices: &[EndpointSlice],
) {
    for family in [desired::IPV4, desired::IPV6] {
        let of_family: Vec<EndpointSlice> = slices
            .iter()
            .filter(|s| s.address_type == family)
            .cloned()
            .collect();
        let total: usize = of_family.iter().map(|s| s.endpoints.len()).sum();
        let ready = desired::ready_endpoints(&of_family);
        metrics.set_endpoints(&target.to_string(), family, ready, total - ready);
    }
}
