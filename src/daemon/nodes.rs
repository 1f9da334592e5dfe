//! The engine's side of the Nodes: the Node watch's events (the cache keeps a projection per
//! Node; a change touches every active pair), the view a plan reads (`node_view`), the wake-up
//! at a drain's expiry, and each plan's node report (`note_nodes`: drains, kept endpoints, Nodes
//! lacking an address — journal, Event, metric, once per change).
//!
//! What the facts mean is pure: `nodes` (projection, index, drain expiry) and `desired::nodes`
//! (fill, derive, withhold).

use std::collections::BTreeSet;

use kube::runtime::watcher;
use tokio::time::Instant;
use tracing::{info, warn};

use super::engine::Engine;
use super::scope::Scope;
use crate::desired::step::{NodeOutcome, NodeView};
use crate::events::EventReason;
use crate::names::ServiceRef;
use crate::nodes::{At, DrainClock};
use crate::watch::NodeCache;

/// The Nodes as this copy knows them, and the drains.
#[derive(Debug, Default)]
pub struct NodeState {
    /// The watched Nodes' projections (`[nodes] selector`).
    pub cache: NodeCache,
    /// When the earliest active drain expires (the pairs are planned again then).
    pub drain_due: Option<Instant>,
    /// When this copy first saw each timed drain (a drain lasts from then, by our clock).
    pub drains: DrainClock,
}

impl Engine {
    /// A Node watch event: the projection is updated; a change touches every active pair and
    /// the probes (a derived address is probed too).
    pub(super) fn on_nodes(
        &mut self,
        event: Result<watcher::Event<k8s_openapi::api::core::v1::Node>, watcher::Error>,
    ) {
        match event {
            Ok(event) => {
                // `Init` comes before a list that may still fail: not yet a recovery.
                let listed = matches!(event, watcher::Event::InitDone)
                    && self.caches.relists.listed(&Scope::Nodes);
                if crate::watch::is_progress(&event) && self.caches.errors.recovered(&Scope::Nodes)
                {
                    info!("the Node watch delivers again; node facts and drains apply");
                }
                if self.nodes.cache.apply(event) || listed {
                    self.nodes_changed();
                }
            }
            Err(e) => {
                // Forbidden (RBAC not updated) or failing: mirroring goes on without node facts
                // (or with the last ones known); `watch_error` warns once per failing streak.
                if !self.caches.errors.fails(&Scope::Nodes)
                    && crate::client::link::cut_of(&e).is_none()
                {
                    warn!(
                        "without the Node watch, nodeName and zone are not filled, no family is derived and drains are not seen; `endpoint-copier check` names the missing right"
                    );
                }
                self.watch_error(Scope::Nodes, &e);
            }
        }
    }

    /// The Nodes changed, or a drain expired: every active pair is planned again.
    pub(super) fn nodes_changed(&mut self) {
        // A timed drain lasts from when this copy first saw it: note the new ones now.
        self.nodes
            .drains
            .observe(self.nodes.cache.index(), Instant::now());
        for state in self.pairs.values_mut() {
            if state.phase.active().is_some() {
                state.write.touch();
            }
        }
        self.nodes.drain_due = self.next_drain_expiry();
        self.reprobe();
    }

    /// The Nodes as a plan reads them; `None` while there is no view to read: the watch has
    /// not listed (it fails), or it lists no Node at all — a selector that matches nothing, not
    /// a cluster without control plane. Then [`Engine::nodes_unknown`] keeps what is written.
    pub(super) fn node_view(&self, derive: bool) -> Option<NodeView<'_>> {
        self.has_node_view().then(|| NodeView {
            index: self.nodes.cache.index(),
            at: self.drain_clock(),
            derive,
        })
    }

    /// Now, for judging drains: this copy's clocks and when it first saw each timed drain.
    fn drain_clock(&self) -> At<'_> {
        At {
            wall: self.io.clock.now(),
            mono: Instant::now(),
            seen: Some(&self.nodes.drains),
        }
    }

    /// When the earliest active drain ends, on the monotonic clock (a timed drain counts from
    /// when this copy first saw it; an expiry written as an instant alone is judged by this
    /// host's wall clock).
    pub(super) fn next_drain_expiry(&self) -> Option<Instant> {
        let at = self.nodes.cache.index().next_expiry(self.drain_clock())?;
        // A few milliseconds late, so that the expiry has passed when we look.
        Some(at + std::time::Duration::from_millis(5))
    }

    /// Whether the Node watch gives a view: listed (and not listing again), working, with at
    /// least one Node. A view from before a cut, or of a failing watch, is the past: a plan
    /// keeps the drains and derived families as written instead (`nodes_unknown`).
    fn has_node_view(&self) -> bool {
        self.nodes.cache.is_ready()
            && !self.caches.relists.pending(&Scope::Nodes)
            && !self.caches.errors.fails(&Scope::Nodes)
            && !self.nodes.cache.index().is_empty()
    }

    /// For a plan without a Node view: the endpoints `state` last wrote drained (kept drained),
    /// so that a missing view keeps the drains and the derived family as written.
    pub(super) fn nodes_unknown<'a>(
        &self,
        state: &'a super::pair::PairState,
    ) -> Option<&'a BTreeSet<std::net::IpAddr>> {
        (!self.has_node_view()).then_some(&state.said.nodes.last().withheld.drained)
    }

    /// Whether the Node list arrived (and is not being listed again), or the Node watch fails
    /// (then plans run without it, keeping what is written).
    pub(super) fn nodes_settled(&self) -> bool {
        (self.nodes.cache.is_ready() && !self.caches.relists.pending(&Scope::Nodes))
            || self.caches.errors.fails(&Scope::Nodes)
    }

    /// Reports what changed in the Nodes' effect on `target` since the last plan: drained
    /// endpoints (info, Event `EndpointDrained`, metric), endpoints kept ready although drained
    /// or evicted (warn, Event `EndpointSpared`), and endpoints missing in a derived family
    /// (warn, Event `NodeAddressMissing`).
    pub(super) fn note_nodes(&mut self, target: &ServiceRef, outcome: NodeOutcome) {
        let Some(state) = self.pairs.get_mut(target) else {
            return;
        };
        let Some(before) = state.said.nodes.change(outcome.clone()) else {
            return;
        };
        let pair = target.to_string();
        let new_gaps: Vec<String> = outcome
            .gaps
            .iter()
            .filter(|g| !before.gaps.contains(g))
            .map(ToString::to_string)
            .collect();
        for gap in &new_gaps {
            warn!(service = %target, "{gap}");
        }
        if !new_gaps.is_empty() {
            self.report(target, EventReason::NodeAddressMissing, new_gaps.join("; "));
        }
        let (was, now) = (&before.withheld.drained, &outcome.withheld.drained);
        let went: BTreeSet<_> = now.difference(was).collect();
        let back: BTreeSet<_> = was.difference(now).collect();
        for address in &went {
            info!(service = %target, endpoint = %address, "endpoint drained: marked not ready in the target (its Node is annotated endpoint-copier/drain)");
        }
        for address in &back {
            info!(service = %target, endpoint = %address, "drain over: endpoint ready again in the target");
        }
        if !went.is_empty() || !back.is_empty() {
            let list = |s: &BTreeSet<&std::net::IpAddr>| {
                s.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let note = match (went.is_empty(), back.is_empty()) {
                (false, true) => format!(
                    "drained (Nodes {}): {} marked not ready",
                    outcome.drained_nodes.join(", "),
                    list(&went)
                ),
                (true, false) => format!("drain over: {} ready again", list(&back)),
                _ => format!(
                    "drained: {} marked not ready; drain over: {} ready again",
                    list(&went),
                    list(&back)
                ),
            };
            self.report(target, EventReason::Drained, note);
        }
        let kept: Vec<String> = outcome
            .withheld
            .kept
            .difference(&before.withheld.kept)
            .map(ToString::to_string)
            .collect();
        if !kept.is_empty() {
            let note = format!(
                "drains and probe evictions would leave {target} without a ready endpoint; {} stays ready (never fewer than one ready endpoint)",
                kept.join(", ")
            );
            warn!(service = %target, endpoints = %kept.join(","), "{note}");
            self.report(target, EventReason::Spared, note);
        }
        self.io
            .metrics
            .set_drained(&pair, outcome.withheld.drained.len());
    }
}
