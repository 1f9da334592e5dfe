//! The engine's side of a pair's sources: what each gives a plan ([`Engine::read_source`]: a
//! Service of this cluster from the slice cache, a remote Service from the views `remote`
//! sends), the remote views' arrival (`on_remote`), and the report of sources that fail
//! (`note_sources`: journal, Event, metric, STATUS, once per change).
//!
//! Fail-static per source is decided in `desired::union` (pure); this file only says so.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::engine::Engine;
use crate::desired::Hold;
use crate::desired::step::{Freshness, Given};
use crate::events::EventReason;
use crate::names::ServiceRef;
use crate::remote::{self, View};
use crate::source::{RemoteSource, Source};

/// What this copy knows of each remote source, as `remote::spawn` sends it.
pub struct RemoteState {
    /// The views, by source.
    pub views: BTreeMap<RemoteSource, View>,
    /// The views as they change; the sender is kept so that a daemon without remote sources
    /// waits on it forever rather than seeing it closed.
    pub updates: (
        tokio::sync::mpsc::Sender<remote::Update>,
        tokio::sync::mpsc::Receiver<remote::Update>,
    ),
}

impl RemoteState {
    /// No view yet.
    pub fn new() -> RemoteState {
        RemoteState {
            views: BTreeMap::new(),
            updates: tokio::sync::mpsc::channel(64),
        }
    }
}

impl Engine {
    /// Where `remote::spawn` sends the remote sources' views.
    pub fn remote_sender(&self) -> tokio::sync::mpsc::Sender<remote::Update> {
        self.remote.updates.0.clone()
    }

    /// What `source` gives a plan now. A remote Service's last known slices count while its
    /// cluster fails (they are what the target holds), as [`Freshness::LastKnown`], and
    /// [`Freshness::Expired`] once it has failed for `[sync] keep_last_known_secs`; it has
    /// nothing to give before its first list, or once its Service is gone there, and then
    /// `desired::union` keeps its slices in the target as they are.
    pub(super) fn read_source(&self, source: &Source) -> Given {
        match source {
            Source::Service(service) => Ok(self.caches.slices.slices_of(service)).into(),
            Source::Remote(r) => {
                let view = self.remote.views.get(r);
                let slices = match view {
                    Some(View {
                        service_exists: Some(false),
                        ..
                    }) => Err(Hold::NoSourceSlices),
                    Some(View {
                        slices: Some(slices),
                        ..
                    }) => Ok(slices.clone()),
                    _ => Err(Hold::NoSourceSlices),
                };
                let freshness = match view {
                    Some(v) if v.expired => Freshness::Expired,
                    Some(v) if v.trouble.is_some() => Freshness::LastKnown,
                    _ => Freshness::Fresh,
                };
                Given { slices, freshness }
            }
            // Made from the config by `pair::prepare`.
            Source::Static(_) => Ok(Vec::new()).into(),
        }
    }

    /// A remote source's view changed: the pairs reading it are planned again.
    pub(super) fn on_remote(&mut self, update: remote::Update) {
        let source = Source::Remote(update.source.clone());
        self.remote.views.insert(update.source, update.view);
        let mut probed = false;
        for state in self.pairs.values_mut() {
            if state.phase.sources().contains(&source) {
                state.write.touch();
                probed |= state.phase.probe().is_some();
            }
        }
        if probed {
            self.reprobe();
        }
    }

    /// Reports which sources of `target` fail now, given the sources its last plan `held`: a
    /// remote cluster in trouble (its last endpoints are written all the same) or a source with
    /// nothing to give (its slices kept as they are). Each change once: a warning and an Event
    /// when a source starts failing or fails differently, an info line when it recovers; the
    /// `source_up` gauge always.
    pub(super) fn note_sources(&mut self, target: &ServiceRef, held: &[(Source, Hold)]) {
        let Some(state) = self.pairs.get(target) else {
            return;
        };
        let sources = state.phase.sources().to_vec();
        let probes = state.phase.probe().is_some();
        if sources.len() < 2 && !sources.iter().any(|s| matches!(s, Source::Remote(_))) {
            // One Service of this cluster: its hold is the pair's, reported as it always was.
            return;
        }
        let mut failing: BTreeMap<Source, String> = BTreeMap::new();
        for source in &sources {
            let view = match source {
                Source::Remote(r) => self.remote.views.get(r),
                _ => None,
            };
            let trouble = view
                .and_then(|v| v.trouble.as_ref())
                .map(ToString::to_string);
            let expired = view.is_some_and(|v| v.expired) && !probes;
            let hold = held.iter().find(|(s, _)| s == source).map(|(_, h)| *h);
            let why = match (trouble, hold) {
                (Some(t), _) if expired => Some(format!(
                    "{t}; for longer than [sync] keep_last_known_secs, so its endpoints in the target are not ready any more (never the last ready one)"
                )),
                (Some(t), Some(_)) => Some(format!(
                    "{t}; its endpoints in the target are kept as they are"
                )),
                (Some(t), None) => Some(format!("{t}; its last known endpoints are kept")),
                (None, Some(h)) => Some(format!(
                    "{}; its endpoints in the target are kept as they are",
                    describe_hold(source, h)
                )),
                (None, None) => None,
            };
            if let Some(why) = why {
                failing.insert(source.clone(), why);
            }
        }
        let pair = target.to_string();
        for source in &sources {
            self.io.metrics.set_source_up(
                &pair,
                &source.to_string(),
                source.kind(),
                !failing.contains_key(source),
            );
        }
        let Some(before) = self
            .pairs
            .get_mut(target)
            .and_then(|s| s.said.sources_failing.change(failing.clone()))
        else {
            return;
        };
        for (source, why) in &failing {
            if before.get(source) != Some(why) {
                warn!(service = %target, source = %source, reason = %why, "a source of the pair fails; the other sources keep syncing");
                self.report(
                    target,
                    EventReason::SourceUnavailable,
                    format!("source {source}: {why}"),
                );
            }
        }
        for source in before.keys().filter(|s| !failing.contains_key(*s)) {
            info!(service = %target, source = %source, "a source of the pair gives its endpoints again");
        }
    }
}

/// Why `source` has nothing to give, in its own terms.
fn describe_hold(source: &Source, hold: Hold) -> String {
    match (source, hold) {
        (Source::Service(s), Hold::NoSourceSlices) => {
            format!("the Service {s} has no EndpointSlices (missing, or not read yet)")
        }
        (Source::Remote(_), Hold::NoSourceSlices) => {
            "the Service has no EndpointSlices there (missing, or not read yet)".to_owned()
        }
        (_, Hold::NoEndpoints) => {
            "it holds no endpoints in the families the target serves".to_owned()
        }
        (_, other) => other.to_string(),
    }
}
