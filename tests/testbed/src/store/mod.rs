//! The test bed's object store: the objects of the resources in [`RESOURCES`], one global
//! resourceVersion, and what kube-apiserver and kube-controller-manager do around them, with their
//! semantics and errors. Purely synchronous, no network: `server.rs` turns HTTP requests into calls
//! here and writes the returned values / [`ApiError::status`] out.
//!
//! This file is the front door and the registry core: [`Store`] with every method the server and
//! the tests call, the shared state (`Inner`, one sub-state per job), and
//! the storage primitives every job writes through (`put`, `take`, `remove`: a fresh
//! resourceVersion, the garbage collector's indexes, the change handed to the watch cache and the
//! controllers), as etcd3 storage under the generic registry keeps them
//! (k8s.io/apiserver/pkg/registry/generic/registry/store.go, k8s.io/apiserver/pkg/storage/etcd3).
//! One file per job beside it:
//!
//! | file | job |
//! |---|---|
//! | `writes.rs` | the write path: decoding, patches, create / update / status / delete rules, preconditions, dry run |
//! | `list.rs` | lists: which revision is served, selectors, key order, paging |
//! | `continue_tokens.rs` | the continue token's format |
//! | `watch_cache.rs` | history, opening watches, fan-out, bookmarks |
//! | `gc.rs` | the garbage collector |
//! | `namespaces.rs` | the namespace lifecycle |
//! | `allocator.rs` | cluster IPs and NodePorts |
//! | `controllers.rs` | the endpointslice and endpointslice-mirroring controllers |
//! | `params.rs` | the parameters the [`Store`] methods take |
//! | `resources.rs`, `errors.rs` | the served resources; [`ApiError`] and its common constructors |
//! | `tests.rs`, `fixtures.rs` | the registry's tests; fixtures shared by every job's tests |
//!
//! Leaves validation and defaults to `validate.rs`, system metadata to `meta.rs`, selectors to
//! `selector.rs`, patch mechanics to `patch.rs`.
//!
//! Simplifications (each is also described in the file that makes it): one Mutex around
//! everything (writes are serialized as etcd serializes them); core/v1 and events.k8s.io/v1 Events
//! are stored separately, the real server sharing one storage (`resources.rs`); namespace deletion
//! is immediate while the garbage collector is on, and the namespace's contents go even if they
//! carry finalizers (`namespaces.rs`); the garbage collector and the controllers act synchronously,
//! inside the write that gave them work (`gc.rs`, `controllers.rs`); a future resourceVersion is
//! refused at once, where the real watch cache waits up to 3 s first (`list.rs`,
//! `watch_cache.rs`); managedFields are recorded only when a fieldManager is given, one entry per
//! manager and operation, and strategic merge patch and server-side apply are answered with 415
//! (`writes.rs`); Event TTL is not modelled.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::meta;

mod allocator;
mod continue_tokens;
pub mod controllers;
mod errors;
#[cfg(test)]
mod fixtures;
mod gc;
mod list;
mod namespaces;
mod params;
mod resources;
mod watch_cache;
mod writes;

use crate::selector::{FieldSelector, LabelSelector};
use crate::validate::bad_request;
pub use errors::ApiError;
use errors::{
    MODIFIED_MSG, already_exists, conflict, details, expired, list_options_invalid, not_found,
    too_large,
};
pub use params::{DeleteParams, ListParams, PatchKind, WatchParams, WriteParams};
pub use resources::{RESOURCES, Resource, resource};
use resources::{ResKey, resource_by_key};
pub use watch_cache::HISTORY_CAPACITY;
use watch_cache::{Change, EvType, WatchCache};
use writes::{check_url_name, prepare_body, unsupported_patch};

/// An open watch: initial events, then a stream of events.
#[derive(Debug)]
pub struct Watch {
    /// Whole watch events to write first (synthetic ADDED, history replay, or one ERROR).
    pub initial: Vec<Value>,
    /// Later events; ends when the store drops the sender (close_watches, or after an ERROR).
    pub events: UnboundedReceiver<Value>,
    /// This watch's id, for [`Store::request_bookmark`].
    pub id: u64,
}

/// Storage key of an object: "ns/name" (namespaced) or "name", so iteration order is etcd's.
type ObjKey = String;

/// The storage key of `name` in `ns` (None: cluster-scoped).
fn obj_key(ns: Option<&str>, name: &str) -> ObjKey {
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Sets metadata.resourceVersion (when `o` has metadata).
fn set_rv(o: &mut Value, rv: u64) {
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// metadata.resourceVersion, "" when unset.
fn rv_of(o: &Value) -> &str {
    o.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The string at JSON pointer `ptr`, "" when absent or not a string.
fn str_at<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Everything the store holds, behind its one lock.
#[derive(Debug, Default)]
struct Inner {
    /// The objects, per resource, in etcd's key order.
    objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    /// The global resourceVersion: that of the last write (starts at 1).
    rv: u64,
    /// History and open watches (watch_cache.rs).
    watch: WatchCache,
    /// The garbage collector: its switch and its ownerReference indexes (gc.rs).
    gc: gc::Gc,
    /// The endpointslice and endpointslice-mirroring controllers (controllers.rs).
    controllers: controllers::Controllers,
    /// Cluster IPs and NodePorts held by Services (allocator.rs).
    alloc: allocator::Allocator,
}

/// The object store; cheap to clone (all clones share one state).
#[derive(Debug, Clone)]
pub struct Store {
    // One Mutex for everything: writes are totally ordered by resourceVersion, as etcd orders
    // them, and every critical section is short (no I/O, no await).
    inner: Arc<Mutex<Inner>>,
}

/// The namespace of a single-object request: required for namespaced resources (the real router
/// has no such path without one), ignored for cluster-scoped ones.
fn object_scope<'a>(r: &Resource, ns: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    match (r.namespaced, ns.filter(|n| !n.is_empty())) {
        (false, _) => Ok(None),
        (true, Some(ns)) => Ok(Some(ns)),
        (true, None) => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            None,
        )),
    }
}

/// The namespace key part for `r` (None for cluster-scoped resources, whatever was passed).
fn scope<'a>(r: &Resource, ns: Option<&'a str>) -> Option<&'a str> {
    if r.namespaced { ns } else { None }
}

/// Whether metadata.finalizers is non-empty (a delete then only marks the object).
fn has_finalizers(o: &Value) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// A resourceVersion parameter as a number.
///
/// # Errors
/// 400 BadRequest, worded as the real server's strconv error.
fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>().map_err(|_| {
        bad_request(format!(
            "resourceVersion: Invalid value: {s:?}: strconv.ParseUint: parsing {s:?}: invalid syntax"
        ))
    })
}

/// The labelSelector and fieldSelector parameters, parsed for `r`.
///
/// # Errors
/// 400 BadRequest for a malformed selector or a field `r` cannot be selected by.
fn selectors(
    r: &Resource,
    label: Option<&str>,
    field: Option<&str>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(label.unwrap_or("")).map_err(|e| bad_request(e.to_string()))?;
    let f = FieldSelector::parse(field.unwrap_or(""), r.group, r.kind)
        .map_err(|e| bad_request(e.to_string()))?;
    Ok((l, f))
}

/// Takes the store's lock.
fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock (a bug in a test) must not wedge every later request.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for Store {
    /// Same as [`Store::new`] (the counters must not start at zero).
    fn default() -> Store {
        Store::new()
    }
}

impl Store {
    /// An empty store: no namespaces at all (the server's TestBed seeds what a fresh cluster has).
    pub fn new() -> Store {
        let inner = Inner {
            rv: 1,
            watch: WatchCache::new(1),
            ..Inner::default()
        };
        Store {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// Reads one object.
    ///
    /// # Errors
    /// 404 NotFound (`services "x" not found`).
    pub fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let ns = object_scope(r, ns)?;
        let inner = lock(&self.inner);
        inner
            .get(r, &obj_key(ns, name))
            .map(|o| (*o).clone())
            .ok_or_else(|| not_found(r, name))
    }

    /// Lists objects as a full `<Kind>List`, sorted as etcd keys are (namespace, then name); items
    /// carry no apiVersion/kind, as in a typed list.
    ///
    /// # Errors
    /// 400 BadRequest for a malformed selector or continue token; 422 Invalid for inconsistent
    /// resourceVersion / resourceVersionMatch / continue; 410 Expired for a continue token or Exact
    /// resourceVersion older than the history kept; 504 for a resourceVersion from the future.
    pub fn list(&self, r: &Resource, ns: Option<&str>, p: &ListParams) -> Result<Value, ApiError> {
        let req = list::Request::new(r, ns, p)?;
        lock(&self.inner).list(r, &req)
    }

    /// Opens a watch (see [`Watch`] for what `initial` holds).
    ///
    /// # Errors
    /// 400 BadRequest for malformed selectors or resourceVersion; 422 Invalid for inconsistent
    /// sendInitialEvents / resourceVersionMatch / allowWatchBookmarks, as ValidateListOptions;
    /// 504 for a resourceVersion from the future. A too old resourceVersion is not an error here:
    /// it is the ERROR event in `initial`.
    pub fn watch(
        &self,
        r: &Resource,
        ns: Option<&str>,
        p: &WatchParams,
    ) -> Result<Watch, ApiError> {
        let req = watch_cache::Request::new(r, ns, p)?;
        lock(&self.inner).open_watch(r, req)
    }

    /// Creates an object; returns it as stored.
    ///
    /// # Errors
    /// 400 (undecodable body, namespace mismatch), 404 (namespace missing), 403 (namespace
    /// terminating), 409 AlreadyExists, 422 Invalid.
    pub fn create(
        &self,
        r: &Resource,
        ns: Option<&str>,
        mut body: Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let ns = object_scope(r, ns)?;
        prepare_body(r, ns, &mut body)?;
        let mut inner = lock(&self.inner);
        let out = inner.create(r, ns, body, p);
        inner.run_controllers();
        out
    }

    /// Replaces an object (PUT).
    ///
    /// # Errors
    /// 400 (name/namespace mismatch, undecodable), 404 NotFound, 409 Conflict on a stale
    /// metadata.resourceVersion, 422 Invalid.
    pub fn replace(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let ns = object_scope(r, ns)?;
        prepare_body(r, ns, &mut body)?;
        check_url_name(&body, name)?;
        let mut inner = lock(&self.inner);
        let out = inner.replace(r, ns, name, body, p);
        inner.run_controllers();
        out
    }

    /// Patches an object: the patch is applied to the stored object, then the result is handled
    /// like a replace (a resourceVersion put in by the patch is a precondition).
    ///
    /// # Errors
    /// 404 NotFound, 400 for a malformed merge patch, 422 for a JSON patch that does not apply or
    /// an invalid result, 409 Conflict, 415 for strategic merge and apply patches (not modelled:
    /// endpoint-copier does not send them).
    pub fn patch(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let ns = object_scope(r, ns)?;
        if let Some(e) = unsupported_patch(kind) {
            return Err(e);
        }
        let mut inner = lock(&self.inner);
        let out = inner.patch(r, ns, name, kind, &patch, p);
        inner.run_controllers();
        out
    }

    /// Replaces only `.status` (PUT `.../{name}/status`): everything else in `body` is ignored, as
    /// the status strategies do; `metadata.resourceVersion` in `body` is a precondition.
    ///
    /// # Errors
    /// 404 NotFound, 409 Conflict, 400 for a body that does not decode.
    pub fn replace_status(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let ns = object_scope(r, ns)?;
        prepare_body(r, ns, &mut body)?;
        let mut inner = lock(&self.inner);
        let out = inner.replace_status(r, ns, name, &body, p);
        inner.run_controllers();
        out
    }

    /// Patches only `.status` (PATCH `.../{name}/status`): the patch is applied to the whole
    /// object and only the resulting status is kept.
    ///
    /// # Errors
    /// As [`Store::patch`].
    pub fn patch_status(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let ns = object_scope(r, ns)?;
        if let Some(e) = unsupported_patch(kind) {
            return Err(e);
        }
        let mut inner = lock(&self.inner);
        let out = inner.patch_status(r, ns, name, kind, &patch, p);
        inner.run_controllers();
        out
    }

    /// Deletes an object and returns its last state (at the deletion's resourceVersion), as the real
    /// server does for objects without finalizers. With garbage collection on, dependents go too.
    ///
    /// # Errors
    /// 404 NotFound; 409 Conflict when a precondition fails.
    pub fn delete(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        p: &DeleteParams,
    ) -> Result<Value, ApiError> {
        let ns = object_scope(r, ns)?;
        namespaces::admit_delete(r, name)?;
        let mut inner = lock(&self.inner);
        let out = inner.delete(r, ns, name, p);
        inner.run_controllers();
        out
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner).rv
    }

    /// A BOOKMARK watch event at the current resourceVersion.
    pub fn bookmark(&self, r: &Resource) -> Value {
        watch_cache::bookmark_for(r, lock(&self.inner).rv)
    }

    /// Queues a BOOKMARK at the current resourceVersion into watch `id`'s own event stream, behind
    /// every event already sent to it. Prefer this to [`Store::bookmark`] for periodic bookmarks:
    /// a bookmark written ahead of queued events would let a client resume past events it never
    /// received. Returns false when that watch is gone.
    pub fn request_bookmark(&self, r: &Resource, id: u64) -> bool {
        let inner = lock(&self.inner);
        let b = watch_cache::bookmark_for(r, inner.rv);
        inner.watch.send_bookmark(id, b)
    }

    /// Forgets all history: watches and continue tokens from an older resourceVersion get 410.
    pub fn compact(&self) {
        let mut inner = lock(&self.inner);
        let rv = inner.rv;
        inner.watch.compact(rv);
    }

    /// Drops every open watch's sender, so the server ends those responses.
    pub fn close_watches(&self) {
        lock(&self.inner).watch.close_all();
    }

    /// Turns the garbage collector (and namespace finalization) on or off (default: on). Off models
    /// a dead kube-controller-manager; turning it back on catches up at once, as a restarted one does.
    pub fn set_garbage_collection(&self, on: bool) {
        let mut inner = lock(&self.inner);
        inner.gc.set_on(on);
        if on {
            inner.gc_sweep();
            inner.finalize_terminating_namespaces();
            inner.run_controllers();
        }
    }

    /// Turns kube-controller-manager's endpointslice controller on or off (default: on): a
    /// Service with a selector gets a placeholder EndpointSlice (see `store/controllers.rs`). Off
    /// models a controller that is not running; turning it back on catches up at once.
    pub fn set_endpointslice_controller(&self, on: bool) {
        lock(&self.inner).set_endpointslice_controller(on);
    }

    /// Turns kube-controller-manager's endpointslice-mirroring controller on or off (default:
    /// on): the core/v1 Endpoints of a Service without a selector are mirrored into
    /// EndpointSlices (see `store/controllers.rs`). Turning it back on catches up at once.
    pub fn set_endpointslice_mirroring(&self, on: bool) {
        lock(&self.inner).set_endpointslice_mirroring(on);
    }

    /// Number of open watches (closed receivers are not counted).
    pub fn watcher_count(&self) -> usize {
        lock(&self.inner).watch.open_count()
    }
}

impl Inner {
    /// The stored object `key` of `r`.
    fn get(&self, r: &Resource, key: &str) -> Option<Arc<Value>> {
        self.objects.get(&r.key())?.get(key).cloned()
    }

    /// Stores `obj` under a fresh resourceVersion, indexes it and tells the watchers.
    fn put(
        &mut self,
        res: ResKey,
        key: ObjKey,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        let obj = Arc::new(obj);
        if let Some(p) = &prev {
            self.gc.unindex(res, &key, p);
        }
        self.gc.index(res, &key, &obj);
        self.objects
            .entry(res)
            .or_default()
            .insert(key.clone(), Arc::clone(&obj));
        let ty = if prev.is_some() {
            EvType::Modified
        } else {
            EvType::Added
        };
        self.emit(Change {
            rv: self.rv,
            res,
            key,
            ty,
            obj: Arc::clone(&obj),
            prev,
        });
        obj
    }

    /// Removes an object (no GC); returns its last state at the deletion's resourceVersion.
    fn take(&mut self, res: ResKey, key: &str) -> Option<Value> {
        let old = self.objects.get_mut(&res)?.remove(key)?;
        self.gc.unindex(res, key, &old);
        if res == ("", "services") {
            self.alloc.release(&old, None);
        }
        self.rv += 1;
        let mut last = (*old).clone();
        set_rv(&mut last, self.rv);
        self.emit(Change {
            rv: self.rv,
            res,
            key: key.to_string(),
            ty: EvType::Deleted,
            obj: Arc::new(last.clone()),
            prev: Some(old),
        });
        Some(last)
    }

    /// Deletes an object, then (GC on) what it owned.
    fn remove(&mut self, res: ResKey, key: &str) -> Value {
        let uid = self
            .objects
            .get(&res)
            .and_then(|m| m.get(key))
            .map(|o| str_at(o, "/metadata/uid").to_string());
        let last = self.take(res, key).unwrap_or(Value::Null);
        if let Some(uid) = uid
            && self.gc.is_on()
        {
            self.collect_dependents(&uid);
        }
        last
    }

    /// Records a change and fans it out.
    fn emit(&mut self, c: Change) {
        // Queue the controllers' work; they run when the write that caused it is done.
        self.controllers.note(&c);
        // Then the watchers and the history (watch_cache.rs).
        self.watch.record(c);
    }
}

#[cfg(test)]
mod tests;
