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
//!   default): each Node is kept only as its [`crate::nodes::NodeFacts`] projection (name, addresses, zone,
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

    /// Starts every namespace's watch over (a new leadership term lists everything anew).
    pub fn restart_all(&mut self, client: &Client) {
        let namespaces: Vec<String> = self.running.keys().cloned().collect();
        for ns in namespaces {
            self.restart(client, &ns);
        }
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

/// The `namespace/name` of a Service object.
pub fn service_ref(svc: &Service) -> Option<ServiceRef> {
    Some(ServiceRef {
        namespace: svc.metadata.namespace.clone()?,
        name: svc.metadata.name.clone()?,
    })
}

mod cache;

pub use cache::{NodeCache, ServiceCache, SliceCache};

/// A watch event of the EndpointSlices of one namespace, tagged with the namespace and the
/// generation of the watch that produced it (an event of a replaced watch is stale).
pub type SliceEvent = (String, u64, Result<Event<EndpointSlice>, watcher::Error>);

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
