//! The watch cache: the history of changes, the open watches and what each one is sent, as
//! k8s.io/apiserver/pkg/storage/cacher (watch_cache.go, cache_watcher.go) does it.
//!
//! Owns: the bounded history of changes (what a watch from an older resourceVersion replays, what
//! an Exact list or a continue token rolls back to, and the 410 for what has fallen out of it), the
//! watch options' validation, opening a watch (current state as synthetic ADDED events, the
//! KEP-3157 initial-events-end bookmark, or a replay), fan-out of each change to the watchers whose
//! selectors match (an object entering or leaving a selector is ADDED or DELETED for that watcher),
//! and bookmarks. Leaves to the registry (`mod.rs`) the objects, the global resourceVersion and
//! when a change is recorded; leaves lists to `list.rs`, and the HTTP side of a watch (framing,
//! timeouts, periodic bookmarks) to `server.rs`.
//!
//! Simplifications: history is one window shared by all resources (the real cache keeps one per
//! resource); a future resourceVersion is refused at once with the 504 the real cache sends after
//! waiting up to 3 s; dropped receivers are noticed lazily, at the next change or count.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{
    ApiError, Inner, ObjKey, ResKey, Resource, Watch, WatchParams, expired, list_options_invalid,
    parse_rv, scope, selectors, set_rv, too_large,
};
use crate::selector::{FieldSelector, LabelSelector};
use crate::validate::FieldError;

/// How many changes the store remembers (the watch cache's default capacity order of magnitude):
/// a watch or Exact list from before the oldest one gets 410.
pub const HISTORY_CAPACITY: usize = 10_000;

/// What a change did to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EvType {
    /// The object was created.
    Added,
    /// The object was updated.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// One change, kept for watches from an older resourceVersion and for Exact lists.
#[derive(Debug)]
pub(super) struct Change {
    /// The resourceVersion the change was written at.
    pub(super) rv: u64,
    /// The changed object's resource.
    pub(super) res: ResKey,
    /// The changed object's storage key.
    pub(super) key: ObjKey,
    /// What the change did.
    pub(super) ty: EvType,
    /// New state (Added/Modified) or last state with the deletion's resourceVersion (Deleted).
    pub(super) obj: Arc<Value>,
    /// State before the change (Modified, Deleted).
    pub(super) prev: Option<Arc<Value>>,
}

/// One open watch, as the cache sees it.
#[derive(Debug)]
struct Watcher {
    /// Its id (from 1; 0 until it is registered).
    id: u64,
    /// The watched resource.
    res: ResKey,
    /// The watched namespace (None: all, or a cluster-scoped resource).
    ns: Option<String>,
    /// Its labelSelector.
    labels: LabelSelector,
    /// Its fieldSelector.
    fields: FieldSelector,
    /// Where its events go; the server holds the receiver.
    tx: UnboundedSender<Value>,
}

impl Watcher {
    /// Whether `o` is in this watch's namespace and matches its selectors.
    fn matches(&self, o: &Value) -> bool {
        if let Some(ns) = &self.ns
            && o.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns.as_str())
        {
            return false;
        }
        self.labels.matches(o) && self.fields.matches(o)
    }

    /// The event this watcher sees for `c`, as the watch cache's cacheWatcher computes it:
    /// an object that starts matching is ADDED, one that stops matching is DELETED (its previous
    /// state, at the change's resourceVersion).
    fn event_for(&self, c: &Change) -> Option<Value> {
        if self.res != c.res {
            return None;
        }
        let (cur, old) = match c.ty {
            EvType::Added => (Some(&c.obj), None),
            EvType::Modified => (Some(&c.obj), c.prev.as_ref()),
            EvType::Deleted => (None, Some(&c.obj)),
        };
        let cur_m = cur.is_some_and(|o| self.matches(o));
        let old_m = old.is_some_and(|o| self.matches(o));
        match (cur_m, old_m) {
            (true, true) => Some(event("MODIFIED", (*c.obj).clone())),
            (true, false) => Some(event("ADDED", (*c.obj).clone())),
            (false, true) => {
                let mut o = (**old?).clone();
                set_rv(&mut o, c.rv);
                Some(event("DELETED", o))
            }
            (false, false) => None,
        }
    }
}

/// A watch event: `{"type": ty, "object": object}`.
fn event(ty: &str, object: Value) -> Value {
    json!({"type": ty, "object": object})
}

/// A BOOKMARK event for `r` at resourceVersion `rv` (an object with only kind, apiVersion and
/// metadata.resourceVersion).
pub(super) fn bookmark_for(r: &Resource, rv: u64) -> Value {
    event(
        "BOOKMARK",
        json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

/// The history and the open watches.
#[derive(Debug, Default)]
pub(super) struct WatchCache {
    /// The last changes, oldest first, at most [`HISTORY_CAPACITY`].
    history: VecDeque<Change>,
    /// Every change with rv > floor is in `history`.
    floor: u64,
    /// The open watches (closed ones are dropped lazily).
    watchers: Vec<Watcher>,
    /// Last watch id handed out (ids start at 1; 0 is a watch that already ended).
    next_watch_id: u64,
}

impl WatchCache {
    /// An empty cache that can answer from resourceVersion `floor` on.
    pub(super) fn new(floor: u64) -> WatchCache {
        WatchCache {
            floor,
            ..WatchCache::default()
        }
    }

    /// The oldest resourceVersion the history can still answer from: a watch, Exact list or
    /// continue token from before it gets 410.
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// Sends `c` to every watcher that sees it, then keeps it in the history (dropping the
    /// oldest change past [`HISTORY_CAPACITY`]).
    pub(super) fn record(&mut self, c: Change) {
        // Each watcher gets its own copy only when its selector matches; a closed receiver is
        // dropped here, lazily, instead of being tracked separately.
        self.watchers.retain(|w| match w.event_for(&c) {
            Some(ev) => w.tx.send(ev).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.history.push_back(c);
        while self.history.len() > HISTORY_CAPACITY {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
    }

    /// The objects of `res` as they were at resourceVersion `rv`: `current` (the objects now)
    /// with the later changes of the history rolled back.
    pub(super) fn snapshot(
        &self,
        current: Option<&BTreeMap<ObjKey, Arc<Value>>>,
        res: ResKey,
        rv: u64,
    ) -> BTreeMap<ObjKey, Arc<Value>> {
        let mut objs = current.cloned().unwrap_or_default();
        for c in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if c.res != res {
                continue;
            }
            match (&c.ty, &c.prev) {
                (EvType::Added, _) => {
                    objs.remove(&c.key);
                }
                (_, Some(prev)) => {
                    objs.insert(c.key.clone(), Arc::clone(prev));
                }
                (_, None) => {}
            }
        }
        objs
    }

    /// Forgets all history up to `rv` (the current resourceVersion): watches and continue tokens
    /// from an older one get 410.
    pub(super) fn compact(&mut self, rv: u64) {
        self.floor = rv;
        self.history.clear();
    }

    /// Queues `bookmark` into watch `id`'s own stream, behind what it was already sent; false when
    /// that watch is gone.
    pub(super) fn send_bookmark(&self, id: u64, bookmark: Value) -> bool {
        self.watchers
            .iter()
            .find(|w| w.id == id)
            .is_some_and(|w| w.tx.send(bookmark).is_ok())
    }

    /// Drops every watcher's sender, so the server ends those responses.
    pub(super) fn close_all(&mut self) {
        self.watchers.clear();
    }

    /// Number of open watches, after dropping those whose receiver is gone.
    pub(super) fn open_count(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }
}

/// A checked watch request, ready to be opened under the store's lock.
#[derive(Debug)]
pub(super) struct Request {
    /// The watcher to register (id 0 until then).
    watcher: Watcher,
    /// The receiving end of its stream, for the [`Watch`].
    events: UnboundedReceiver<Value>,
    /// The resourceVersion to replay from (None: unset or "0").
    from: Option<u64>,
    /// sendInitialEvents.
    send_initial_events: Option<bool>,
}

impl Request {
    /// Parses the selectors and resourceVersion and checks the options, as ValidateListOptions
    /// does for a watch (no lock needed).
    ///
    /// # Errors
    /// 400 BadRequest for malformed selectors or resourceVersion; 422 Invalid for inconsistent
    /// sendInitialEvents / resourceVersionMatch / allowWatchBookmarks.
    pub(super) fn new(
        r: &Resource,
        ns: Option<&str>,
        p: &WatchParams,
    ) -> Result<Request, ApiError> {
        let (labels, fields) =
            selectors(r, p.label_selector.as_deref(), p.field_selector.as_deref())?;
        validate_options(p)?;
        let rv_param = p.resource_version.as_deref().unwrap_or("");
        let from = if rv_param.is_empty() || rv_param == "0" {
            None
        } else {
            Some(parse_rv(rv_param)?)
        };
        let (tx, rx) = unbounded_channel();
        let watcher = Watcher {
            id: 0,
            res: r.key(),
            ns: scope(r, ns).map(str::to_string),
            labels,
            fields,
            tx,
        };
        Ok(Request {
            watcher,
            events: rx,
            from,
            send_initial_events: p.send_initial_events,
        })
    }
}

/// ValidateListOptions for a watch (k8s.io/apiserver/pkg/apis/meta/internalversion/validation).
fn validate_options(p: &WatchParams) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    match p.send_initial_events {
        Some(_) => {
            if p.resource_version_match.as_deref() != Some("NotOlderThan") {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if p.send_initial_events == Some(true) && !p.allow_bookmarks {
                errs.push(FieldError::forbidden(
                    "allowWatchBookmarks",
                    "allowWatchBookmarks must be set to true when sendInitialEvents is true",
                ));
            }
        }
        None => {
            if p.resource_version_match
                .as_deref()
                .is_some_and(|m| !m.is_empty())
            {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
        }
    }
    if let Some(m) = p
        .resource_version_match
        .as_deref()
        .filter(|m| !m.is_empty())
        && m != "NotOlderThan"
    {
        errs.push(FieldError::not_supported(
            "resourceVersionMatch",
            &json!(m),
            &["NotOlderThan"],
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(list_options_invalid(&errs))
    }
}

impl Inner {
    /// Opens the watch `req` on `r`: its initial events, then registers it for later changes.
    ///
    /// # Errors
    /// 504 for a resourceVersion from the future. A too old resourceVersion is not an error here:
    /// it is the ERROR event in `initial`, and the watch is not registered.
    pub(super) fn open_watch(&mut self, r: &Resource, req: Request) -> Result<Watch, ApiError> {
        let Request {
            watcher: w,
            events: rx,
            from,
            send_initial_events,
        } = req;
        if let Some(f) = from
            && f > self.rv
        {
            return Err(too_large(f, self.rv));
        }
        // sendInitialEvents=true, or (unset with rv unset/"0"): the current state as ADDED events.
        let synthetic = match send_initial_events {
            Some(s) => s,
            None => from.is_none(),
        };
        let mut initial = Vec::new();
        if synthetic {
            if let Some(objs) = self.objects.get(&r.key()) {
                for o in objs.values() {
                    if w.matches(o) {
                        initial.push(event("ADDED", (**o).clone()));
                    }
                }
            }
            if send_initial_events == Some(true) {
                // matches: KEP-3157, the bookmark marking the end of the initial events.
                let mut b = bookmark_for(r, self.rv);
                b["object"]["metadata"]["annotations"] =
                    json!({"k8s.io/initial-events-end": "true"});
                initial.push(b);
            }
        } else if let Some(from) = from {
            let cache = &self.watch;
            if from < cache.floor {
                // watch_cache.go getAllEventsSinceLocked: "(oldest-1)", the newest gone revision.
                let e = expired(format!(
                    "too old resource version: {from} ({})",
                    cache.floor
                ));
                // The real server writes this ERROR event and ends the watch: drop the sender.
                initial.push(event("ERROR", e.status()));
                return Ok(Watch {
                    initial,
                    events: rx,
                    id: 0,
                });
            }
            for c in cache.history.iter().filter(|c| c.rv > from) {
                if let Some(ev) = w.event_for(c) {
                    initial.push(ev);
                }
            }
        }
        let cache = &mut self.watch;
        cache.next_watch_id += 1;
        let id = cache.next_watch_id;
        cache.watchers.push(Watcher { id, ..w });
        Ok(Watch {
            initial,
            events: rx,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::HISTORY_CAPACITY;
    use crate::store::fixtures::*;
    use crate::store::{
        DeleteParams, ListParams, PatchKind, Watch, WatchParams, WriteParams, rv_of, str_at,
    };

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#semantics-for-watch ("Get State and Start at Most Recent")
    #[test]
    fn a_watch_without_resource_version_sends_the_current_state_then_changes() {
        let s = store();
        create_slice(&s, "a", json!({}));
        let mut w = s
            .watch(slices(), Some("default"), &WatchParams::default())
            .unwrap();
        assert_eq!(types(&w.initial), ["ADDED a"]);
        assert_eq!(w.initial[0]["object"]["kind"], "EndpointSlice");
        create_slice(&s, "b", json!({}));
        s.create(
            leases(),
            Some("kube-system"),
            lease("l", "x"),
            &WriteParams::default(),
        )
        .unwrap();
        s.delete(slices(), Some("default"), "a", &DeleteParams::default())
            .unwrap();
        assert_eq!(types(&drain(&mut w)), ["ADDED b", "DELETED a"]);
        let w0 = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    resource_version: Some("0".into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert_eq!(types(&w0.initial), ["ADDED b"]);
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#semantics-for-watch ("Start at Exact")
    #[test]
    fn a_watch_from_a_resource_version_replays_later_changes_without_synthetic_events() {
        let s = store();
        let a = create_slice(&s, "a", json!({}));
        create_slice(&s, "b", json!({}));
        s.delete(slices(), Some("default"), "a", &DeleteParams::default())
            .unwrap();
        let w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    resource_version: Some(rv_of(&a).into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert_eq!(types(&w.initial), ["ADDED b", "DELETED a"]);
        let w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    resource_version: Some(s.resource_version().to_string()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert!(w.initial.is_empty());
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#410-gone-responses
    #[test]
    fn a_watch_from_a_compacted_resource_version_gets_one_410_error_event_and_ends() {
        let s = store();
        let a = create_slice(&s, "a", json!({}));
        create_slice(&s, "b", json!({}));
        s.compact();
        let mut w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    resource_version: Some(rv_of(&a).into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert_eq!(w.initial.len(), 1);
        let ev = &w.initial[0];
        assert_eq!(ev["type"], "ERROR");
        assert_eq!(ev["object"]["code"], 410);
        assert_eq!(ev["object"]["reason"], "Expired");
        assert_eq!(
            ev["object"]["message"],
            format!(
                "too old resource version: {} ({})",
                rv(&a),
                s.resource_version()
            )
        );
        assert!(w.events.try_recv().is_err());
        assert_eq!(s.watcher_count(), 0);
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#streaming-lists
    #[test]
    fn send_initial_events_ends_the_initial_state_with_an_annotated_bookmark() {
        let s = store();
        create_slice(&s, "a", json!({}));
        let p = WatchParams {
            send_initial_events: Some(true),
            resource_version_match: Some("NotOlderThan".into()),
            allow_bookmarks: true,
            ..WatchParams::default()
        };
        let w = s.watch(slices(), None, &p).unwrap();
        assert_eq!(types(&w.initial), ["ADDED a", "BOOKMARK "]);
        let b = &w.initial[1]["object"];
        assert_eq!(
            b["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        assert_eq!(
            b["metadata"]["resourceVersion"],
            s.resource_version().to_string()
        );
        assert_eq!(b["apiVersion"], "discovery.k8s.io/v1");
        let e = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    send_initial_events: Some(true),
                    ..WatchParams::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .starts_with("ListOptions.meta.k8s.io \"\" is invalid"),
            "{}",
            e.message
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#streaming-lists (sendInitialEvents=false: start at most recent)
    #[test]
    fn send_initial_events_false_skips_the_current_state() {
        let s = store();
        create_slice(&s, "a", json!({}));
        let mut w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    send_initial_events: Some(false),
                    resource_version_match: Some("NotOlderThan".into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert!(w.initial.is_empty());
        create_slice(&s, "b", json!({}));
        assert_eq!(types(&drain(&mut w)), ["ADDED b"]);
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#list-and-watch-filtering (the initial state is filtered too)
    #[test]
    fn a_selective_watch_sends_only_matching_objects_in_its_initial_state() {
        let s = store();
        create_slice(&s, "a", json!({"kubernetes.io/service-name": "kubernetes"}));
        create_slice(&s, "b", json!({"kubernetes.io/service-name": "other"}));
        s.create(
            slices(),
            Some("kube-system"),
            slice(
                "c",
                json!({"kubernetes.io/service-name": "kubernetes"}),
                &["198.51.100.4"],
            ),
            &WriteParams::default(),
        )
        .unwrap();
        let w = s
            .watch(
                slices(),
                Some("default"),
                &WatchParams {
                    label_selector: Some("kubernetes.io/service-name=kubernetes".into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert_eq!(types(&w.initial), ["ADDED a"]);
        let w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    field_selector: Some("metadata.name=c".into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert_eq!(types(&w.initial), ["ADDED c"]);
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apiserver/pkg/storage/cacher/cache_watcher.go (convertToWatchEvent)
    #[test]
    fn objects_entering_or_leaving_a_watch_selector_are_added_or_deleted() {
        let s = store();
        let mut w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    label_selector: Some("app=x".into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        let o = create_slice(&s, "a", json!({"app": "y"}));
        let mut m = o.clone();
        m["metadata"]["labels"] = json!({"app": "x"});
        let m = s
            .replace(slices(), Some("default"), "a", m, &WriteParams::default())
            .unwrap();
        let mut n = m.clone();
        n["endpoints"][0]["addresses"] = json!(["198.51.100.3"]);
        let n = s
            .replace(slices(), Some("default"), "a", n, &WriteParams::default())
            .unwrap();
        let mut out = n.clone();
        out["metadata"]["labels"] = json!({"app": "z"});
        let out = s
            .replace(slices(), Some("default"), "a", out, &WriteParams::default())
            .unwrap();
        let evs = drain(&mut w);
        assert_eq!(types(&evs), ["ADDED a", "MODIFIED a", "DELETED a"]);
        // The DELETED object is the last matching state, at the change's resourceVersion.
        assert_eq!(evs[2]["object"]["metadata"]["labels"]["app"], "x");
        assert_eq!(rv(&evs[2]["object"]), rv(&out));
    }

    // Fan-out: every watcher whose selector matches gets each event, in order.
    #[test]
    fn ten_watchers_each_receive_every_matching_event_in_order() {
        let s = store();
        let mut ws: Vec<Watch> = (0..10)
            .map(|_| s.watch(leases(), None, &WatchParams::default()).unwrap())
            .collect();
        let mut other = s.watch(slices(), None, &WatchParams::default()).unwrap();
        s.create(
            leases(),
            Some("kube-system"),
            lease("l", "a"),
            &WriteParams::default(),
        )
        .unwrap();
        for i in 0..100 {
            s.patch(
                leases(),
                Some("kube-system"),
                "l",
                PatchKind::Merge,
                json!({"spec": {"holderIdentity": format!("h{i}")}}),
                &WriteParams::default(),
            )
            .unwrap();
        }
        for w in &mut ws {
            let evs = drain(w);
            assert_eq!(evs.len(), 101);
            let rvs: Vec<u64> = evs.iter().map(|e| rv(&e["object"])).collect();
            assert!(rvs.windows(2).all(|p| p[1] == p[0] + 1));
        }
        assert!(drain(&mut other).is_empty());
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#watch-bookmarks
    #[test]
    fn bookmarks_carry_the_current_resource_version() {
        let s = store();
        create_slice(&s, "a", json!({}));
        let b = s.bookmark(slices());
        assert_eq!(b["type"], "BOOKMARK");
        assert_eq!(b["object"]["kind"], "EndpointSlice");
        assert_eq!(
            b["object"]["metadata"]["resourceVersion"],
            s.resource_version().to_string()
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#watch-bookmarks (a bookmark promises every change up to its resourceVersion was sent)
    #[test]
    fn a_requested_bookmark_arrives_after_the_events_already_queued() {
        let s = store();
        let mut w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    allow_bookmarks: true,
                    ..WatchParams::default()
                },
            )
            .unwrap();
        create_slice(&s, "a", json!({}));
        assert!(s.request_bookmark(slices(), w.id));
        create_slice(&s, "b", json!({}));
        let evs = drain(&mut w);
        assert_eq!(types(&evs), ["ADDED a", "BOOKMARK ", "ADDED b"]);
        assert_eq!(rv(&evs[1]["object"]), rv(&evs[0]["object"]));
        drop(w);
        assert!(!s.request_bookmark(slices(), 999));
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes (a dropped watch ends its stream)
    #[test]
    fn close_watches_ends_every_stream_and_dropped_receivers_are_not_counted() {
        let s = store();
        let mut w1 = s.watch(slices(), None, &WatchParams::default()).unwrap();
        let w2 = s.watch(leases(), None, &WatchParams::default()).unwrap();
        assert_eq!(s.watcher_count(), 2);
        drop(w2);
        assert_eq!(s.watcher_count(), 1);
        s.close_watches();
        assert_eq!(s.watcher_count(), 0);
        assert!(matches!(
            w1.events.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ));
    }

    // History is bounded (the watch cache keeps a window of events): older starting points get 410.
    #[test]
    fn history_keeps_a_bounded_window_of_changes() {
        let s = store();
        let first = s
            .create(
                leases(),
                Some("kube-system"),
                lease("l", "0"),
                &WriteParams::default(),
            )
            .unwrap();
        for i in 0..HISTORY_CAPACITY + 5 {
            s.patch(
                leases(),
                Some("kube-system"),
                "l",
                PatchKind::Merge,
                json!({"spec": {"holderIdentity": i.to_string()}}),
                &WriteParams::default(),
            )
            .unwrap();
        }
        let w = s
            .watch(
                leases(),
                None,
                &WatchParams {
                    resource_version: Some(rv_of(&first).into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert_eq!(w.initial[0]["type"], "ERROR");
        let recent = (s.resource_version() - 10).to_string();
        let w = s
            .watch(
                leases(),
                None,
                &WatchParams {
                    resource_version: Some(recent),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        assert_eq!(w.initial.len(), 10);
    }

    /// Applies watch events to a name → object map, as an informer does.
    fn apply_events(state: &mut BTreeMap<String, Value>, evs: &[Value]) {
        for e in evs {
            let o = &e["object"];
            let key = format!(
                "{}/{}",
                str_at(o, "/metadata/namespace"),
                str_at(o, "/metadata/name")
            );
            match e["type"].as_str().unwrap() {
                "ADDED" | "MODIFIED" => {
                    let mut o = o.clone();
                    o.as_object_mut().unwrap().remove("apiVersion");
                    o.as_object_mut().unwrap().remove("kind");
                    state.insert(key, o);
                }
                "DELETED" => {
                    state.remove(&key);
                }
                other => panic!("unexpected {other}"),
            }
        }
    }

    fn list_state(l: &Value) -> BTreeMap<String, Value> {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    format!(
                        "{}/{}",
                        str_at(o, "/metadata/namespace"),
                        str_at(o, "/metadata/name")
                    ),
                    o.clone(),
                )
            })
            .collect()
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes (list at N, then watch from N, reproduces every later state)
    #[test]
    fn a_list_then_a_watch_from_its_resource_version_always_reproduces_the_current_state() {
        let s = store();
        // A fixed linear congruential sequence: random-looking, reproducible.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut checkpoints = Vec::new();
        // Successful writes per kind (create, replace, patch, delete); failures (409, 404) are part
        // of the sequence and change nothing.
        let mut ok = [0usize; 4];
        for step in 0..400 {
            let ns = if next(2) == 0 {
                "default"
            } else {
                "kube-system"
            };
            let name = format!("s{}", next(6));
            let labels = json!({"app": format!("a{}", next(3))});
            let addr = format!("198.51.100.{}", next(200) + 1);
            let w = WriteParams::default();
            let op = next(4) as usize;
            let done = match op {
                0 => s
                    .create(slices(), Some(ns), slice(&name, labels, &[&addr]), &w)
                    .is_ok(),
                1 => s
                    .replace(
                        slices(),
                        Some(ns),
                        &name,
                        slice(&name, labels, &[&addr]),
                        &w,
                    )
                    .is_ok(),
                2 => s
                    .patch(
                        slices(),
                        Some(ns),
                        &name,
                        PatchKind::Merge,
                        json!({"metadata": {"labels": labels}}),
                        &w,
                    )
                    .is_ok(),
                _ => s
                    .delete(slices(), Some(ns), &name, &DeleteParams::default())
                    .is_ok(),
            };
            ok[op] += usize::from(done);
            if step % 37 == 0 {
                let l = s.list(slices(), None, &ListParams::default()).unwrap();
                checkpoints.push(l);
            }
        }
        assert!(
            ok.iter().all(|n| *n > 10),
            "every kind of write happened: {ok:?}"
        );
        assert!(checkpoints.len() > 5);
        let now = list_state(&s.list(slices(), None, &ListParams::default()).unwrap());
        assert!(!now.is_empty());
        for l in &checkpoints {
            let rv = l["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string();
            let exact = s
                .list(
                    slices(),
                    None,
                    &ListParams {
                        resource_version: Some(rv.clone()),
                        resource_version_match: Some("Exact".into()),
                        ..ListParams::default()
                    },
                )
                .unwrap();
            assert_eq!(list_state(&exact), list_state(l), "Exact list at {rv}");
            let w = s
                .watch(
                    slices(),
                    None,
                    &WatchParams {
                        resource_version: Some(rv.clone()),
                        ..WatchParams::default()
                    },
                )
                .unwrap();
            let mut state = list_state(l);
            apply_events(&mut state, &w.initial);
            assert_eq!(state, now, "list at {rv} + watch from {rv}");
            // The same through a selective watch: only app=a1 objects, entering and leaving.
            let w = s
                .watch(
                    slices(),
                    None,
                    &WatchParams {
                        resource_version: Some(rv.clone()),
                        label_selector: Some("app=a1".into()),
                        ..WatchParams::default()
                    },
                )
                .unwrap();
            let mut state: BTreeMap<String, Value> = list_state(l)
                .into_iter()
                .filter(|(_, o)| o["metadata"]["labels"]["app"] == "a1")
                .collect();
            apply_events(&mut state, &w.initial);
            let want: BTreeMap<String, Value> = now
                .iter()
                .filter(|(_, o)| o["metadata"]["labels"]["app"] == "a1")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(state, want, "selective watch from {rv}");
        }
    }
}
