//! Read-only watches and the caches they feed: the Services that may be targets, and the
//! EndpointSlices of every source and target Service in play. No writes happen here.
//!
//! The cost follows the pairs, not the cluster:
//!
//! * **Services**, one cluster-wide watch: only configured targets and annotated Services are
//!   kept; the rest pass through without being stored, so 10,000 unrelated Services cost a list,
//!   not memory.
//! * **EndpointSlices**, one watch per namespace in play ([`SliceWatches`]), selected by
//!   `kubernetes.io/service-name in (…)` over the names of that namespace's sources and targets.
//!   A namespace's watch is restarted (one re-list of just those slices) when its set of Services
//!   changes; a namespace whose list keeps failing stalls only its own pairs.
//!
//! * **Nodes**, one cluster-wide watch selected by `[nodes] selector` (control-plane Nodes by
//!   default): each Node is kept only as its [`NodeFacts`] projection (name, addresses, zone,
//!   drain annotations), so neither the Node objects' size nor the workers' count grows memory.
//!
//! `daemon` owns the streams' lifetimes and decides what a change means; `desired` reads the
//! caches. Stored objects drop `managedFields`, which we never read and which dominate their size.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::names::{self, ServiceRef};
use crate::nodes::{NodeFacts, NodeIndex};

/// A stream of watch events with kube's default backoff between failed attempts.
pub type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// The longest wait between two watch attempts. kube's default grows to 30 s, so after a 10 s
/// apiserver restart the VIP could wait half a minute for the re-list; the apiserver is on this
/// host or one hop away, and a retry every few seconds costs it nothing.
pub const WATCH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The wait before retrying a watch the API refused with 403 Forbidden: a missing right (an
/// optional feature's RBAC not granted) does not come back by itself within seconds, so the
/// list is asked for a couple of times a minute, not five times a second.
pub const FORBIDDEN_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Backoff between failed watch attempts: 200 ms doubling, jittered, capped at
/// [`WATCH_BACKOFF_MAX`], reset once a watch makes progress (see [`paced`]).
pub fn watch_backoff() -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(std::time::Duration::from_millis(200), WATCH_BACKOFF_MAX)
}

/// Whether `event` is progress of a watch: anything but `Init`, which kube's watcher yields
/// *before* each (re)list is sent — a list that then fails has delivered nothing.
pub fn is_progress<K>(event: &Event<K>) -> bool {
    !matches!(event, Event::Init)
}

/// `events` with a pause of `backoff` after each error, reset only on progress
/// ([`is_progress`]); after a 403 the pause is at least [`FORBIDDEN_RETRY`].
///
/// Not kube's `.backoff(..)`: it resets on every `Ok`, and the watcher's `Init` comes before the
/// list that fails, so a list failing for good was retried every ~150 ms forever (measured on
/// kube-apiserver 1.28 with the Node rights missing: 65 LISTs in 10 s).
pub fn paced<K, S>(events: S, backoff: crate::backoff::Backoff) -> Events<K>
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let start = (events.boxed(), backoff, None::<std::time::Duration>);
    futures::stream::unfold(start, |(mut events, mut backoff, pause)| async move {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let item = events.next().await?;
        let pause = match &item {
            Err(e) => {
                let next = backoff.next().unwrap_or(WATCH_BACKOFF_MAX);
                Some(if is_forbidden(e) {
                    next.max(FORBIDDEN_RETRY)
                } else {
                    next
                })
            }
            Ok(event) => {
                if is_progress(event) {
                    backoff.reset();
                }
                None
            }
        };
        Some((item, (events, backoff, pause)))
    })
    .boxed()
}

/// Whether a watch failed because the API refused it (403).
pub fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}

/// Watches every Service of the cluster (filtering happens in [`ServiceCache`]).
pub fn services(client: &Client) -> Events<Service> {
    paced(
        watcher::watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
        watch_backoff(),
    )
}

/// Watches the Nodes `selector` picks (`None`: every Node), for [`NodeCache`].
pub fn nodes(client: &Client, selector: Option<&str>) -> Events<k8s_openapi::api::core::v1::Node> {
    let config = match selector {
        Some(s) => watcher::Config::default().labels(s),
        None => watcher::Config::default(),
    };
    paced(
        watcher::watcher(
            Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()),
            config,
        ),
        watch_backoff(),
    )
}

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

/// A watch event of the EndpointSlices of one namespace, tagged with the namespace and the
/// generation of the watch that produced it (an event of a replaced watch is stale).
pub type SliceEvent = (String, u64, Result<Event<EndpointSlice>, watcher::Error>);

/// One EndpointSlice watch per namespace in play, each selecting the slices of the Services of
/// that namespace by a set-based `kubernetes.io/service-name in (…)` selector.
///
/// Per namespace, not one cluster-wide watch: a namespace whose list keeps failing (no right to
/// list there, an admission webhook, a huge namespace timing out) then stalls only the pairs of
/// that namespace, never `kubernetes-vip`; and a namespaced watch needs only namespaced RBAC.
#[derive(Default)]
pub struct SliceWatches {
    streams: futures::stream::SelectAll<BoxStream<'static, SliceEvent>>,
    running: BTreeMap<String, (u64, BTreeSet<String>, tokio_util::sync::CancellationToken)>,
    generation: u64,
}

impl SliceWatches {
    /// Starts, restarts or stops watches so that exactly the namespaces of `services` are watched,
    /// each for exactly its Services' names. Returns the namespaces whose watch (re)started.
    pub fn ensure(&mut self, client: &Client, services: &BTreeSet<ServiceRef>) -> BTreeSet<String> {
        let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in services {
            wanted
                .entry(s.namespace.clone())
                .or_default()
                .insert(s.name.clone());
        }
        self.running.retain(|ns, (_, names, token)| {
            let keep = wanted.get(ns) == Some(names);
            if !keep {
                // The stream ends at its next poll; events it already yielded carry an old
                // generation and are dropped by the caller.
                token.cancel();
            }
            keep
        });
        let mut started = BTreeSet::new();
        for (ns, names) in wanted {
            if self.running.contains_key(&ns) {
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            let token = tokio_util::sync::CancellationToken::new();
            let of_namespace: BTreeSet<ServiceRef> = services
                .iter()
                .filter(|s| s.namespace == ns)
                .cloned()
                .collect();
            let Some(selector) = slice_selector(&of_namespace) else {
                continue;
            };
            let tag = ns.clone();
            let stream = paced(
                watcher::watcher(
                    Api::<EndpointSlice>::namespaced(client.clone(), &ns),
                    watcher::Config::default().labels(&selector),
                ),
                watch_backoff(),
            )
            .take_until(token.clone().cancelled_owned())
            .map(move |e| (tag.clone(), generation, e))
            .boxed();
            self.streams.push(stream);
            self.running.insert(ns.clone(), (generation, names, token));
            started.insert(ns);
        }
        started
    }

    /// Starts `namespace`'s watch over (a re-list on a new connection), for the same Services;
    /// returns whether it was running. Its cache stays ready meanwhile: the new list replaces
    /// the namespace's slices at once when it is complete.
    pub fn restart(&mut self, client: &Client, namespace: &str) -> bool {
        let Some((_, names, token)) = self.running.remove(namespace) else {
            return false;
        };
        token.cancel();
        let services: BTreeSet<ServiceRef> = names
            .into_iter()
            .map(|name| ServiceRef {
                namespace: namespace.to_owned(),
                name,
            })
            .collect();
        // `ensure` with only this namespace would stop every other one: start it on its own.
        let mut others = std::mem::take(&mut self.running);
        self.ensure(client, &services);
        self.running.append(&mut others);
        true
    }

    /// The current watch of `namespace`, if it is watched.
    pub fn generation_of(&self, namespace: &str) -> Option<u64> {
        self.running.get(namespace).map(|(g, _, _)| *g)
    }

    /// Whether `generation` is the current watch of `namespace`.
    pub fn is_current(&self, namespace: &str, generation: u64) -> bool {
        self.running
            .get(namespace)
            .is_some_and(|(g, _, _)| *g == generation)
    }

    /// The next event of any namespace's watch; pending forever while nothing is watched.
    pub async fn next(&mut self) -> SliceEvent {
        loop {
            match self.streams.next().await {
                Some(event) => return event,
                None => futures::future::pending::<()>().await,
            }
        }
    }
}

/// The label selector that picks the slices of `services`: one set-based requirement over their
/// names (namespaces are filtered client-side, in [`SliceCache`]).
pub fn slice_selector(services: &BTreeSet<ServiceRef>) -> Option<String> {
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    if names.is_empty() {
        return None;
    }
    let list: Vec<&str> = names.into_iter().collect();
    Some(format!(
        "{} in ({})",
        names::SERVICE_NAME_LABEL,
        list.join(",")
    ))
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
/// namespace (see [`SliceWatches`]); each namespace is ready on its own.
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
        self.ready.contains(&service.namespace)
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

/// The `namespace/name` of a Service object.
pub fn service_ref(svc: &Service) -> Option<ServiceRef> {
    Some(ServiceRef {
        namespace: svc.metadata.namespace.clone()?,
        name: svc.metadata.name.clone()?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(ns: &str, name: &str, annotated: bool) -> Service {
        let annotations = annotated.then(|| {
            [(names::ANNOTATION_ENABLED.to_owned(), "true".to_owned())]
                .into_iter()
                .collect()
        });
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                annotations,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn slice(ns: &str, svc: &str, name: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some(
                    [(names::SERVICE_NAME_LABEL.to_owned(), svc.to_owned())]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: None,
        }
    }

    fn r(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    #[test]
    fn unrelated_services_are_not_stored() {
        let mut cache = ServiceCache::new(crate::pairs::Rules::new(
            vec![crate::config::PairConfig::new(
                r("default/kubernetes"),
                r("default/kubernetes-vip"),
            )],
            true,
            Vec::new(),
        ));
        cache.apply(Event::Init);
        for i in 0..100 {
            cache.apply(Event::InitApply(svc("apps", &format!("s{i}"), false)));
        }
        cache.apply(Event::InitApply(svc("default", "kubernetes-vip", false)));
        cache.apply(Event::InitApply(svc("team", "vip", true)));
        let changed = cache.apply(Event::InitDone);
        assert!(cache.is_ready());
        assert_eq!(cache.objects().len(), 2);
        assert_eq!(changed, [r("default/kubernetes-vip"), r("team/vip")].into());
    }

    #[test]
    fn removing_the_annotation_drops_the_service() {
        let mut cache = ServiceCache::new(crate::pairs::Rules::default());
        assert_eq!(
            cache.apply(Event::Apply(svc("team", "vip", true))),
            [r("team/vip")].into()
        );
        assert_eq!(
            cache.apply(Event::Apply(svc("team", "vip", false))),
            [r("team/vip")].into()
        );
        assert!(cache.objects().is_empty());
        // An unrelated Service changing reports nothing.
        assert!(
            cache
                .apply(Event::Apply(svc("team", "other", false)))
                .is_empty()
        );
    }

    #[test]
    fn slices_of_other_namespaces_with_the_same_service_name_are_ignored() {
        let mut cache = SliceCache::default();
        cache.rewatch([r("default/kubernetes")].into(), &BTreeSet::new());
        assert!(
            cache
                .apply(
                    "other",
                    Event::Apply(slice("other", "kubernetes", "kubernetes"))
                )
                .is_empty()
        );
        assert_eq!(
            cache.apply(
                "default",
                Event::Apply(slice("default", "kubernetes", "kubernetes"))
            ),
            [r("default/kubernetes")].into()
        );
        assert_eq!(cache.slices_of(&r("default/kubernetes")).len(), 1);
        // The same object again is not a change.
        assert!(
            cache
                .apply(
                    "default",
                    Event::Apply(slice("default", "kubernetes", "kubernetes"))
                )
                .is_empty()
        );
    }

    #[test]
    fn a_slice_relabelled_to_another_service_leaves_its_old_group() {
        let mut cache = SliceCache::default();
        cache.rewatch([r("default/a"), r("default/b")].into(), &BTreeSet::new());
        cache.apply("default", Event::Apply(slice("default", "a", "x")));
        let changed = cache.apply("default", Event::Apply(slice("default", "b", "x")));
        assert_eq!(changed, [r("default/a"), r("default/b")].into());
        assert!(cache.slices_of(&r("default/a")).is_empty());
        assert_eq!(cache.slices_of(&r("default/b")).len(), 1);
        // Deleted with a label of a Service not in play: still removed by name.
        let changed = cache.apply("default", Event::Delete(slice("default", "elsewhere", "x")));
        assert_eq!(changed, [r("default/b")].into());
        assert!(cache.slices_of(&r("default/b")).is_empty());
    }

    #[test]
    fn a_relist_reports_slices_that_vanished_while_the_watch_was_down() {
        let mut cache = SliceCache::default();
        cache.rewatch([r("default/kubernetes")].into(), &BTreeSet::new());
        cache.apply("default", Event::Apply(slice("default", "kubernetes", "a")));
        cache.apply("default", Event::Init);
        let changed = cache.apply("default", Event::InitDone);
        assert_eq!(changed, [r("default/kubernetes")].into());
        assert!(cache.slices_of(&r("default/kubernetes")).is_empty());
    }

    #[test]
    fn watch_retries_back_off_to_at_most_five_seconds_and_reset() {
        let mut b = watch_backoff();
        let first = b.next().unwrap();
        assert!(first <= std::time::Duration::from_millis(200), "{first:?}");
        for _ in 0..50 {
            assert!(b.next().unwrap() <= WATCH_BACKOFF_MAX);
        }
        b.reset();
        assert!(b.next().unwrap() <= std::time::Duration::from_millis(200));
    }

    /// A watch whose every list fails as `error` does: `Init`, then the error, forever.
    fn failing(
        error: fn() -> watcher::Error,
    ) -> impl futures::Stream<Item = Result<Event<Service>, watcher::Error>> {
        futures::stream::iter(
            std::iter::repeat_with(move || [Ok(Event::Init), Err(error())]).flatten(),
        )
    }

    fn api_error(code: u16) -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(
            kube::core::Status::failure("x", "y")
                .with_code(code)
                .boxed(),
        ))
    }

    /// How many attempts `events` makes in `window` of paused time.
    async fn attempts_in(mut events: Events<Service>, window: std::time::Duration) -> usize {
        let end = tokio::time::Instant::now() + window;
        let mut attempts = 0;
        while let Ok(Some(item)) = tokio::time::timeout_at(end, events.next()).await {
            attempts += usize::from(item.is_err());
        }
        attempts
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_that_keeps_failing_backs_off_although_each_attempt_begins_with_init() {
        let events = paced(failing(|| api_error(503)), watch_backoff());
        // 0.2, 0.4, 0.8, 1.6, 3.2, then 5 s apart (jittered down to half): kube's reset on `Init`
        // made it ~150 ms apart, ~400 attempts a minute.
        let n = attempts_in(events, std::time::Duration::from_secs(60)).await;
        assert!((10..=30).contains(&n), "{n} attempts in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_forbidden_list_is_asked_for_a_couple_of_times_a_minute() {
        let events = paced(failing(|| api_error(403)), watch_backoff());
        let n = attempts_in(events, std::time::Duration::from_secs(60)).await;
        assert!((2..=3).contains(&n), "{n} attempts in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_pause() {
        let mut backoff = watch_backoff();
        for _ in 0..5 {
            backoff.next();
        }
        let events = futures::stream::iter([
            Err(api_error(503)),
            Ok(Event::<Service>::InitDone),
            Err(api_error(503)),
        ]);
        let mut events = paced(events, backoff);
        let t0 = tokio::time::Instant::now();
        events.next().await;
        events.next().await;
        events.next().await;
        // The pause after the first error was long (attempt 6), after progress the first again.
        let after_progress = tokio::time::Instant::now();
        assert!(after_progress - t0 >= std::time::Duration::from_millis(2500));
        assert!(events.next().await.is_none());
        assert!(
            tokio::time::Instant::now() - after_progress <= std::time::Duration::from_millis(200)
        );
    }

    #[test]
    fn the_selector_lists_each_service_name_once() {
        let s = slice_selector(&[r("a/kubernetes"), r("b/kubernetes"), r("a/vip")].into()).unwrap();
        assert_eq!(s, "kubernetes.io/service-name in (kubernetes,vip)");
        assert_eq!(slice_selector(&BTreeSet::new()), None);
    }
}
