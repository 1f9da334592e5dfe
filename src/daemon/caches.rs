//! The engine's view of the cluster's Services and slices, and their watches: the caches, the
//! handlers of their events (step 2 of the five from a change to a write: an event updates the
//! cache and touches the pairs that read it), which namespaces' slices are watched, and the
//! watches failing now ([`WatchErrors`], by [`Scope`]).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use tracing::{debug, warn};

use super::engine::Engine;
use super::scope::{Scope, WatchErrors};
use crate::error::chain;
use crate::names::ServiceRef;
use crate::pairs::Rules;
use crate::source::Source;
use crate::watch::{self, ServiceCache, SliceCache, SliceWatches};

/// The Services and slices the engine plans from, and their watches.
pub struct Caches {
    /// The Services that can take part in a pair (configured targets, annotated Services).
    pub services: ServiceCache,
    /// The slices of the Services in play, by namespace.
    pub slices: SliceCache,
    /// One slice watch per namespace in play.
    pub watches: SliceWatches,
    /// The watches failing now, until they deliver.
    pub errors: WatchErrors,
}

impl Caches {
    /// Empty caches keeping the Services `rules` concern.
    pub fn new(rules: Rules) -> Caches {
        Caches {
            services: ServiceCache::new(rules),
            slices: SliceCache::default(),
            watches: SliceWatches::default(),
            errors: WatchErrors::default(),
        }
    }
}

impl Engine {
    /// A Service watch event: the cache follows, the pairs are resolved again.
    pub(super) fn on_services(&mut self, event: Result<watcher::Event<Service>, watcher::Error>) {
        match event {
            Ok(event) => {
                // `Init` comes before a list that may still fail: not yet a recovery.
                if watch::is_progress(&event) {
                    self.caches.errors.recovered(&Scope::Services);
                }
                let changed = self.caches.services.apply(event);
                if self.caches.services.is_ready() {
                    self.resolve(&changed);
                    self.rewatch_slices();
                }
            }
            Err(e) => self.watch_error(Scope::Services, &e),
        }
    }

    /// Step 2 of five: a slice event updates the cache and touches the pairs that read it.
    pub(super) fn on_slices(
        &mut self,
        namespace: &str,
        generation: u64,
        event: Result<watcher::Event<EndpointSlice>, watcher::Error>,
    ) {
        if !self.caches.watches.is_current(namespace, generation) {
            return;
        }
        let scope = Scope::Slices(namespace.to_owned());
        match event {
            Ok(event) => {
                if watch::is_progress(&event) {
                    self.caches.errors.recovered(&scope);
                }
                let changed = self.caches.slices.apply(namespace, event);
                let mut probed = false;
                for (target, state) in &mut self.pairs {
                    let reads =
                        changed.contains(target) || changed.iter().any(|s| state.phase.reads(s));
                    if reads {
                        state.write.touch();
                        probed |= state.phase.probe().is_some();
                    }
                }
                if probed {
                    self.reprobe();
                }
            }
            Err(e) => self.watch_error(scope, &e),
        }
    }

    /// Starts, restarts or stops the per-namespace slice watches for the Services in play.
    pub(super) fn rewatch_slices(&mut self) {
        let wanted = self.wanted_services();
        if &wanted == self.caches.slices.wanted() && !wanted.is_empty() {
            return;
        }
        let restarted = self.caches.watches.ensure(&self.io.client, &wanted);
        if !restarted.is_empty() {
            debug!(
                namespaces = restarted.len(),
                "watching EndpointSlices of a new set of Services"
            );
        }
        self.caches.errors.restarted(&restarted);
        self.caches.slices.rewatch(wanted, &restarted);
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

    /// A watch failed: counted, and said once per failing streak (kube's watcher re-lists on
    /// 410; every watch backs off by `watch::paced`). A watch the link started over on purpose
    /// (after a network cut, or silent too long) failed nothing a person must look at.
    pub(super) fn watch_error(&mut self, scope: Scope, e: &watcher::Error) {
        self.io.metrics.watch_restart(scope.metric_label());
        if let Some(cut) = crate::client::link::cut_of(e) {
            debug!(watch = %scope, reason = %cut, "watch started over on a new connection");
            return;
        }
        if let watcher::Error::WatchError(s)
        | watcher::Error::InitialListFailed(kube::Error::Api(s)) = e
        {
            self.io.metrics.record_api_error(s.code);
        }
        let message = chain(e);
        if self.caches.errors.failed(scope.clone(), message.clone()) {
            debug!(watch = %scope, error = %message, "watch still failing; retrying with backoff");
        } else {
            warn!(watch = %scope, error = %message, "watch failed; retrying with backoff");
        }
    }
}
