//! The watches' caches: the Services that can take part in a pair ([`ServiceCache`]), the
//! slices of the Services in play by namespace ([`SliceCache`]) and the selected Nodes'
//! projections ([`NodeCache`]). Each applies its watch's events and says what changed.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;

use super::service_ref;
use crate::names::{self, ServiceRef};
use crate::nodes::{NodeFacts, NodeIndex};

/// The watched Nodes, each kept only as its [`NodeFacts`] projection.
#[derive(Debug, Default)]
pub struct NodeCache {
    index: NodeIndex,
    buffer: Option<Vec<NodeFacts>>,
    ready: bool,
}

impl NodeCache {
    /// The Nodes known now (as of the last event; kept as they are while the watch fails).
    pub fn index(&self) -> &NodeIndex {
        &self.index
    }

    /// Whether the first full list has arrived.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Applies one watch event; returns whether any projection changed (a Node's heartbeat or
    /// condition update changes nothing we keep, and touches no pair).
    pub fn apply(&mut self, event: Event<k8s_openapi::api::core::v1::Node>) -> bool {
        match event {
            Event::Init => {
                self.buffer = Some(Vec::new());
                false
            }
            Event::InitApply(node) => {
                if let (Some(facts), Some(buffer)) =
                    (NodeFacts::from_node(&node), self.buffer.as_mut())
                {
                    buffer.push(facts);
                }
                false
            }
            Event::InitDone => {
                let fresh = NodeIndex::new(self.buffer.take().unwrap_or_default());
                self.ready = true;
                if fresh == self.index {
                    return false;
                }
                self.index = fresh;
                true
            }
            Event::Apply(node) => {
                NodeFacts::from_node(&node).is_some_and(|facts| self.index.insert(facts))
            }
            Event::Delete(node) => node
                .metadata
                .name
                .as_deref()
                .is_some_and(|name| self.index.remove(name)),
        }
    }
}

/// The Services the daemon cares about: configured targets and annotated Services.
#[derive(Debug, Default)]
pub struct ServiceCache {
    objects: BTreeMap<ServiceRef, Service>,
    buffer: Option<BTreeMap<ServiceRef, Service>>,
    ready: bool,
    /// Which Services take part in pairs.
    rules: crate::pairs::Rules,
}

impl ServiceCache {
    /// An empty cache that keeps the Services `rules` concern: configured targets and any
    /// annotated Service.
    pub fn new(rules: crate::pairs::Rules) -> ServiceCache {
        ServiceCache {
            rules,
            ..ServiceCache::default()
        }
    }

    /// Whether the first full list has arrived (before that, absence means nothing).
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The kept Services.
    pub fn objects(&self) -> &BTreeMap<ServiceRef, Service> {
        &self.objects
    }

    fn keeps(&self, key: &ServiceRef, svc: &Service) -> bool {
        self.rules.concerns(key, svc)
    }

    /// Applies one watch event; returns the Services whose cached state changed.
    pub fn apply(&mut self, event: Event<Service>) -> BTreeSet<ServiceRef> {
        let mut changed = BTreeSet::new();
        match event {
            Event::Init => self.buffer = Some(BTreeMap::new()),
            Event::InitApply(svc) => {
                if let Some((key, svc)) = self.keyed(svc)
                    && let Some(buffer) = self.buffer.as_mut()
                {
                    buffer.insert(key, svc);
                }
            }
            Event::InitDone => {
                let fresh = self.buffer.take().unwrap_or_default();
                changed = diff_keys(&self.objects, &fresh, |a, b| a == b);
                self.objects = fresh;
                self.ready = true;
            }
            Event::Apply(svc) => {
                let Some(key) = service_ref(&svc) else {
                    return changed;
                };
                let kept = self.keeps(&key, &svc);
                let prev = if kept {
                    self.keyed(svc).and_then(|(k, s)| self.objects.insert(k, s))
                } else {
                    self.objects.remove(&key)
                };
                if kept || prev.is_some() {
                    changed.insert(key);
                }
            }
            Event::Delete(svc) => {
                if let Some(key) = service_ref(&svc)
                    && self.objects.remove(&key).is_some()
                {
                    changed.insert(key);
                }
            }
        }
        changed
    }

    fn keyed(&self, mut svc: Service) -> Option<(ServiceRef, Service)> {
        let key = service_ref(&svc)?;
        if !self.keeps(&key, &svc) {
            return None;
        }
        svc.metadata.managed_fields = None;
        Some((key, svc))
    }
}

/// The EndpointSlices of the Services in play, grouped by Service, filled by one watch per
/// namespace (see [`super::SliceWatches`]); each namespace is ready on its own.
#[derive(Debug, Default)]
pub struct SliceCache {
    by_service: BTreeMap<ServiceRef, BTreeMap<String, EndpointSlice>>,
    /// Per namespace: the list being received (between Init and InitDone).
    buffers: BTreeMap<String, BTreeMap<ServiceRef, BTreeMap<String, EndpointSlice>>>,
    wanted: BTreeSet<ServiceRef>,
    /// Namespaces whose current watch has delivered its first full list.
    ready: BTreeSet<String>,
}

impl SliceCache {
    /// Sets the Services in play; slices of Services no longer wanted are dropped, the others
    /// stay (still true until a new list says otherwise). `restarted` namespaces wait for the
    /// first list of their new watch before they are ready again.
    pub fn rewatch(&mut self, wanted: BTreeSet<ServiceRef>, restarted: &BTreeSet<String>) {
        self.by_service.retain(|k, _| wanted.contains(k));
        let namespaces: BTreeSet<&str> = wanted.iter().map(|s| s.namespace.as_str()).collect();
        self.ready
            .retain(|ns| namespaces.contains(ns.as_str()) && !restarted.contains(ns));
        self.buffers
            .retain(|ns, _| namespaces.contains(ns.as_str()) && !restarted.contains(ns));
        self.wanted = wanted;
    }

    /// The Services whose slices are watched.
    pub fn wanted(&self) -> &BTreeSet<ServiceRef> {
        &self.wanted
    }

    /// Whether the slices of `service` are known: its namespace's watch delivered a full list.
    pub fn is_ready_for(&self, service: &ServiceRef) -> bool {
        self.is_listed(&service.namespace)
    }

    /// Whether the slices of `namespace` are listed.
    pub fn is_listed(&self, namespace: &str) -> bool {
        self.ready.contains(namespace)
    }

    /// Whether every namespace in play has delivered a full list.
    pub fn is_ready(&self) -> bool {
        self.wanted.iter().all(|s| self.is_ready_for(s))
    }

    /// The slices labelled for `service`, in name order.
    pub fn slices_of(&self, service: &ServiceRef) -> Vec<EndpointSlice> {
        self.by_service
            .get(service)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Applies one watch event of `namespace`'s watch; returns the Services whose slices changed.
    pub fn apply(&mut self, namespace: &str, event: Event<EndpointSlice>) -> BTreeSet<ServiceRef> {
        let mut changed = BTreeSet::new();
        match event {
            Event::Init => {
                self.buffers.insert(namespace.to_owned(), BTreeMap::new());
            }
            Event::InitApply(slice) => {
                if let Some((svc, name, slice)) = self.keyed(slice)
                    && let Some(buffer) = self.buffers.get_mut(namespace)
                {
                    buffer.entry(svc).or_default().insert(name, slice);
                }
            }
            Event::InitDone => {
                let fresh = self.buffers.remove(namespace).unwrap_or_default();
                let from = ServiceRef {
                    namespace: namespace.to_owned(),
                    name: String::new(),
                };
                let old: BTreeMap<ServiceRef, BTreeMap<String, EndpointSlice>> = self
                    .by_service
                    .range(from..)
                    .take_while(|(k, _)| k.namespace == namespace)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                changed = diff_keys(&old, &fresh, |a, b| a == b);
                self.by_service.retain(|k, _| k.namespace != namespace);
                self.by_service.extend(fresh);
                self.ready.insert(namespace.to_owned());
            }
            Event::Apply(slice) => {
                let (ns, name) = (
                    slice.metadata.namespace.clone(),
                    slice.metadata.name.clone(),
                );
                let kept = self.keyed(slice);
                // A slice relabelled from one Service in play to another (or out of them) must
                // leave its old group: the object is identified by namespace/name, not label.
                if let (Some(ns), Some(name)) = (ns, name) {
                    let keep_in = kept.as_ref().map(|(svc, _, _)| svc);
                    changed.extend(self.remove_elsewhere(&ns, &name, keep_in));
                }
                if let Some((svc, name, slice)) = kept {
                    let group = self.by_service.entry(svc.clone()).or_default();
                    if group.get(&name) != Some(&slice) {
                        group.insert(name, slice);
                        changed.insert(svc);
                    }
                }
            }
            Event::Delete(slice) => {
                if let (Some(ns), Some(name)) = (&slice.metadata.namespace, &slice.metadata.name) {
                    changed.extend(self.remove_elsewhere(ns, name, None));
                }
            }
        }
        changed
    }

    /// Puts a slice as a fresh read found it (or its absence) into the cache, as a watch event
    /// would; returns the Services whose slices changed. A conflict's re-read goes here, so the
    /// next plan starts from the API's version even while the watch is still re-listing.
    pub fn refresh(
        &mut self,
        namespace: &str,
        name: &str,
        slice: Option<EndpointSlice>,
    ) -> BTreeSet<ServiceRef> {
        match slice {
            Some(slice) => self.apply(namespace, Event::Apply(slice)),
            None => self
                .remove_elsewhere(namespace, name, None)
                .into_iter()
                .collect(),
        }
    }

    /// Removes the slice `ns/name` from every group but `except`; returns the groups it left.
    fn remove_elsewhere(
        &mut self,
        ns: &str,
        name: &str,
        except: Option<&ServiceRef>,
    ) -> Vec<ServiceRef> {
        let mut left = Vec::new();
        let from = ServiceRef {
            namespace: ns.to_owned(),
            name: String::new(),
        };
        for (svc, group) in self.by_service.range_mut(from..) {
            if svc.namespace != ns {
                break;
            }
            if Some(svc) != except && group.remove(name).is_some() {
                left.push(svc.clone());
            }
        }
        left
    }

    fn keyed(&self, mut slice: EndpointSlice) -> Option<(ServiceRef, String, EndpointSlice)> {
        let ns = slice.metadata.namespace.clone()?;
        let name = slice.metadata.name.clone()?;
        let svc = slice
            .metadata
            .labels
            .as_ref()?
            .get(names::SERVICE_NAME_LABEL)?;
        let key = ServiceRef {
            namespace: ns,
            name: svc.clone(),
        };
        if !self.wanted.contains(&key) {
            return None;
        }
        slice.metadata.managed_fields = None;
        Some((key, name, slice))
    }
}

/// Keys present in only one of the maps, or whose values differ.
fn diff_keys<K: Ord + Clone, V>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    eq: impl Fn(&V, &V) -> bool,
) -> BTreeSet<K> {
    let mut out: BTreeSet<K> = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    for (k, v) in b {
        if a.get(k).is_none_or(|old| !eq(old, v)) {
            out.insert(k.clone());
        }
    }
    out
}
