//! The test bed's object store: objects, the global resourceVersion, history, watch fan-out,
//! garbage collection and the EndpointSlice controllers, with kube-apiserver's semantics and errors.
//!
//! Owns: what the registry (k8s.io/apiserver/pkg/registry/generic/registry/store.go), etcd3 storage,
//! the watch cache and the garbage collector would do for the resources in [`RESOURCES`]; the
//! endpointslice and endpointslice-mirroring controllers live in [`controllers`]. Purely
//! synchronous, no network: `server.rs` turns HTTP requests into calls here and writes the returned
//! values / [`ApiError::status`] out. Validation and defaults live in `validate.rs`, system metadata
//! in `meta.rs`, selectors in `selector.rs`, patch application in `patch.rs`.
//!
//! Simplifications (each also said where it is made): one Mutex around everything (writes are
//! serialized as etcd serializes them); core/v1 and events.k8s.io/v1 Events are stored separately
//! (the real server shares one storage); namespace deletion is immediate while the garbage
//! collector is on, and the namespace's contents go even if they carry finalizers; the garbage
//! collector acts synchronously, inside the write that orphaned a dependent; a future
//! resourceVersion is refused at once (the real watch cache waits up to 3 s first); managedFields
//! are recorded only when a fieldManager is given, one entry per manager and operation; Event TTL
//! is not modelled; strategic merge patch and server-side apply are answered with 415.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::meta;
use crate::patch;

mod allocator;
mod continue_tokens;
pub mod controllers;
mod errors;
#[cfg(test)]
mod fixtures;
mod gc;
mod list;
mod namespaces;
mod resources;
mod watch_cache;

use crate::selector::{FieldSelector, LabelSelector};
use crate::validate::{self, FieldError, bad_request, invalid_error};
pub use errors::ApiError;
use errors::{
    MODIFIED_MSG, already_exists, conflict, details, expired, list_options_invalid, not_found,
    too_large,
};
pub use resources::{RESOURCES, Resource, resource};
use resources::{ResKey, resource_by_key};
pub use watch_cache::HISTORY_CAPACITY;
use watch_cache::{Change, EvType, WatchCache};

/// List parameters.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    /// labelSelector (None = everything).
    pub label_selector: Option<String>,
    /// fieldSelector (None = everything).
    pub field_selector: Option<String>,
    /// limit: at most this many items per page (None or 0 = all).
    pub limit: Option<usize>,
    /// continue: the token of the previous page.
    pub continue_token: Option<String>,
    /// resourceVersion ("" / None = most recent, "0" = any, "N").
    pub resource_version: Option<String>,
    /// resourceVersionMatch ("Exact" or "NotOlderThan").
    pub resource_version_match: Option<String>,
}

/// Watch parameters.
#[derive(Debug, Default, Clone)]
pub struct WatchParams {
    /// labelSelector (None = everything).
    pub label_selector: Option<String>,
    /// fieldSelector (None = everything).
    pub field_selector: Option<String>,
    /// resourceVersion ("" / None = current state then changes, "0" = same, "N" = changes after N).
    pub resource_version: Option<String>,
    /// resourceVersionMatch (only "NotOlderThan", only with sendInitialEvents).
    pub resource_version_match: Option<String>,
    /// allowWatchBookmarks (default: false).
    pub allow_bookmarks: bool,
    /// sendInitialEvents (streaming list).
    pub send_initial_events: Option<bool>,
}

/// Write parameters.
#[derive(Debug, Default, Clone)]
pub struct WriteParams {
    /// fieldManager: recorded in managedFields when given.
    pub field_manager: Option<String>,
    /// dryRun=All: validate and answer, store nothing.
    pub dry_run: bool,
}

/// Delete parameters.
#[derive(Debug, Default, Clone)]
pub struct DeleteParams {
    /// preconditions.uid.
    pub precondition_uid: Option<String>,
    /// preconditions.resourceVersion.
    pub precondition_resource_version: Option<String>,
    /// dryRun=All.
    pub dry_run: bool,
}

/// Patch types.
#[derive(Debug, Clone, Copy)]
pub enum PatchKind {
    /// application/merge-patch+json (RFC 7386).
    Merge,
    /// application/json-patch+json (RFC 6902).
    Json,
    /// application/strategic-merge-patch+json (not implemented: 415).
    StrategicMerge,
    /// application/apply-patch+yaml (not implemented: 415).
    Apply {
        /// force=true.
        force: bool,
    },
}

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

fn obj_key(ns: Option<&str>, name: &str) -> ObjKey {
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn set_rv(o: &mut Value, rv: u64) {
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

fn rv_of(o: &Value) -> &str {
    o.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn str_at<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

#[derive(Debug, Default)]
struct Inner {
    objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
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

fn has_finalizers(o: &Value) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>().map_err(|_| {
        bad_request(format!(
            "resourceVersion: Invalid value: {s:?}: strconv.ParseUint: parsing {s:?}: invalid syntax"
        ))
    })
}

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
    /// 400 BadRequest for a malformed selector or continue token; 410 Expired for a continue token
    /// or Exact resourceVersion older than the history kept.
    pub fn list(&self, r: &Resource, ns: Option<&str>, p: &ListParams) -> Result<Value, ApiError> {
        let req = list::Request::new(r, ns, p)?;
        lock(&self.inner).list(r, &req)
    }

    /// Opens a watch (see [`Watch`] for what `initial` holds).
    ///
    /// # Errors
    /// 400 BadRequest for malformed selectors or resourceVersion; 422 Invalid for inconsistent
    /// sendInitialEvents / resourceVersionMatch / allowWatchBookmarks, as ValidateListOptions.
    /// A too old resourceVersion is not an error here: it is the ERROR event in `initial`.
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
        let body_name = str_at(&body, "/metadata/name");
        if body_name != name {
            return Err(bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let mut inner = lock(&self.inner);
        let out = match inner.get(r, &obj_key(ns, name)) {
            Some(old) => inner.update(r, ns, name, body, old, p, "Update"),
            // AllowCreateOnUpdate kinds (Services, Endpoints, Leases) create on PUT, whatever
            // resourceVersion the body carries (registry Store.Update: no precondition applies to
            // an object that does not exist; storage drops the field).
            None if r.allow_create_on_update() => {
                if let Some(m) = body["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                inner.create(r, ns, body, p)
            }
            None => Err(not_found(r, name)),
        };
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
        let old = inner
            .get(r, &obj_key(ns, name))
            .ok_or_else(|| not_found(r, name))?;
        let mut doc = apply_patch(&old, kind, &patch)?;
        prepare_body(r, ns, &mut doc)?;
        if str_at(&doc, "/metadata/name") != name {
            return Err(bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                str_at(&doc, "/metadata/name")
            )));
        }
        let out = inner.update(r, ns, name, doc, old, p, "Update");
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
        let old = inner
            .get(r, &obj_key(ns, name))
            .ok_or_else(|| not_found(r, name))?;
        let out = inner.update_status(r, ns, name, &body, old, p);
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
        let old = inner
            .get(r, &obj_key(ns, name))
            .ok_or_else(|| not_found(r, name))?;
        let doc = apply_patch(&old, kind, &patch)?;
        let out = inner.update_status(r, ns, name, &doc, old, p);
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
        let key = obj_key(ns, name);
        let old = inner.get(r, &key).ok_or_else(|| not_found(r, name))?;
        if let Some(uid) = &p.precondition_uid {
            let have = str_at(&old, "/metadata/uid");
            if uid != have {
                return Err(conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(rv) = &p.precondition_resource_version {
            let have = rv_of(&old);
            if rv != have {
                return Err(conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                    ),
                ));
            }
        }
        if p.dry_run {
            return Ok((*old).clone());
        }
        if r.group.is_empty() && r.plural == "namespaces" {
            let out = inner.delete_namespace(name);
            inner.run_controllers();
            return Ok(out);
        }
        // An object with finalizers is only marked (deletionTimestamp); the update that removes
        // the last finalizer deletes it (registry store.Delete / updateForGracefulDeletionAndFinalizers).
        if has_finalizers(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((*old).clone());
            }
            let mut marked = (*old).clone();
            marked["metadata"]["deletionTimestamp"] = json!(meta::now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let out = (*inner.put(r.key(), key, marked, Some(old))).clone();
            inner.run_controllers();
            return Ok(out);
        }
        let out = inner.remove(r.key(), &key);
        inner.run_controllers();
        Ok(out)
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

/// The 415 for patch types the test bed does not implement (endpoint-copier sends neither
/// strategic merge nor apply patches; docs/development/testing.md says so too).
fn unsupported_patch(kind: PatchKind) -> Option<ApiError> {
    let ct = match kind {
        PatchKind::StrategicMerge => "application/strategic-merge-patch+json",
        PatchKind::Apply { .. } => "application/apply-patch+yaml",
        PatchKind::Merge | PatchKind::Json => return None,
    };
    Some(ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the test bed does not implement {ct} patches (endpoint-copier does not send them); use application/merge-patch+json or application/json-patch+json"
        ),
        None,
    ))
}

/// Applies a merge or JSON patch to a copy of `old`.
fn apply_patch(old: &Value, kind: PatchKind, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = old.clone();
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(bad_request(
                    "json: cannot unmarshal into Go value of type map[string]interface {}",
                ));
            }
            patch::merge(&mut doc, patch);
        }
        PatchKind::Json => patch::json_patch(&mut doc, patch).map_err(|e| match e {
            patch::Error::Malformed(m) => bad_request(m),
            patch::Error::Failed(m) => ApiError::new(422, "Invalid", m, None),
        })?,
        PatchKind::StrategicMerge | PatchKind::Apply { .. } => {
            if let Some(e) = unsupported_patch(kind) {
                return Err(e);
            }
        }
    }
    Ok(doc)
}

/// Decodes and checks a request body against the request's resource and namespace
/// (what the handler and decoder do before the registry sees the object).
fn prepare_body(r: &Resource, ns: Option<&str>, body: &mut Value) -> Result<(), ApiError> {
    validate::decode(r, body)?;
    let av = r.api_version();
    match body.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != av => {
            return Err(bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({av})"
            )));
        }
        _ => {}
    }
    match body.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != r.kind => {
            return Err(bad_request(format!(
                "{k} in version {:?} cannot be handled as a {}: no kind {k:?} is registered for the expected kind",
                r.version, r.kind
            )));
        }
        _ => {}
    }
    body["apiVersion"] = json!(av);
    body["kind"] = json!(r.kind);
    if !body.get("metadata").is_some_and(Value::is_object) {
        body["metadata"] = json!({});
    }
    let meta = &mut body["metadata"];
    match ns {
        Some(ns) => {
            let given = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            if !given.is_empty() && given != ns {
                return Err(bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta["namespace"] = json!(ns);
        }
        None => {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
        }
    }
    // Empty maps and lists in ObjectMeta are omitempty: they read back absent.
    if let Some(m) = meta.as_object_mut() {
        m.retain(|_, v| match v {
            Value::Null => false,
            Value::Object(o) => !o.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        });
    }
    Ok(())
}

/// Whether two objects are equal when the top-level keys in `skip` are ignored (no clones: this
/// runs on every update).
fn eq_without(a: &Value, b: &Value, skip: &[&str]) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let keys = |m: &'_ serde_json::Map<String, Value>| {
                m.iter()
                    .filter(|(k, _)| !skip.contains(&k.as_str()))
                    .count()
            };
            keys(a) == keys(b)
                && a.iter()
                    .filter(|(k, _)| !skip.contains(&k.as_str()))
                    .all(|(k, v)| b.get(k) == Some(v))
        }
        _ => a == b,
    }
}

/// Everything outside metadata/status is equal (what decides a generation bump).
fn same_spec(a: &Value, b: &Value) -> bool {
    eq_without(a, b, &["metadata", "status"])
}

/// Equal but for what a no-op write changes anyway (resourceVersion, managedFields timestamps),
/// for detecting writes that change nothing.
fn same_content(a: &Value, b: &Value) -> bool {
    if !eq_without(a, b, &["metadata"]) {
        return false;
    }
    let (Some(ma), Some(mb)) = (a.get("metadata"), b.get("metadata")) else {
        return a.get("metadata") == b.get("metadata");
    };
    if !eq_without(ma, mb, &["resourceVersion", "managedFields"]) {
        return false;
    }
    let mf = |m: &Value| m.get("managedFields").and_then(Value::as_array).cloned();
    match (mf(ma), mf(mb)) {
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(e, f)| eq_without(e, f, &["time"]))
        }
        (x, y) => x == y,
    }
}

impl Inner {
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

    fn create(
        &mut self,
        r: &Resource,
        ns: Option<&str>,
        mut body: Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let res = r.key();
        let mut name = str_at(&body, "/metadata/name").to_string();
        let gen_name = str_at(&body, "/metadata/generateName").to_string();
        if name.is_empty() && !gen_name.is_empty() {
            // names.SimpleNameGenerator; retry locally instead of failing on the rare collision.
            loop {
                name = meta::generate_name(&gen_name);
                if !self
                    .objects
                    .get(&res)
                    .is_some_and(|m| m.contains_key(&obj_key(ns, &name)))
                {
                    break;
                }
            }
            body["metadata"]["name"] = json!(name);
        }
        if !rv_of(&body).is_empty() {
            // etcd3 store.Create refuses objects that carry a resourceVersion.
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created".into(),
                None,
            ));
        }
        self.check_namespace(r, ns, &name)?;
        {
            let m = &mut body["metadata"];
            m["uid"] = json!(meta::new_uid());
            m["creationTimestamp"] = json!(meta::now());
            if let Some(o) = m.as_object_mut() {
                o.remove("deletionTimestamp");
                o.remove("deletionGracePeriodSeconds");
                o.remove("generation");
                o.remove("managedFields");
            }
            if r.has_generation() {
                m["generation"] = json!(1);
            }
        }
        if res == ("", "services") {
            // svcStrategy.PrepareForCreate: a new Service starts with an empty status.
            if let Some(m) = body.as_object_mut() {
                m.remove("status");
            }
        }
        validate::default_object(r, &mut body);
        let mut errs = Vec::new();
        if res == ("", "services") {
            errs.extend(self.alloc.allocate(&mut body, None));
        }
        errs.extend(validate::validate(r, &body, None));
        if !errs.is_empty() {
            return Err(invalid_error(r, &name, &errs));
        }
        let key = obj_key(ns, &name);
        if self.objects.get(&res).is_some_and(|m| m.contains_key(&key)) {
            return Err(already_exists(r, &name));
        }
        if let Some(mgr) = &p.field_manager {
            meta::record_manager(&mut body, mgr, "Update", &r.api_version());
        }
        if p.dry_run {
            return Ok(body);
        }
        if res == ("", "services") {
            self.alloc.commit(&body);
        }
        let stored = self.put(res, key.clone(), body, None);
        let out = (*stored).clone();
        if self.gc.is_on() {
            self.gc_check(res, &key);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        old: Arc<Value>,
        p: &WriteParams,
        operation: &str,
    ) -> Result<Value, ApiError> {
        let res = r.key();
        let want_rv = rv_of(&body);
        if want_rv.is_empty() && !r.allow_unconditional_update() {
            // registry Store.Update: the Invalid error names the resource, not the kind.
            let qualified = Resource {
                kind: r.plural,
                ..*r
            };
            return Err(invalid_error(
                &qualified,
                name,
                &[FieldError::invalid(
                    "metadata.resourceVersion",
                    &json!(0),
                    "must be specified for an update",
                )],
            ));
        }
        if !want_rv.is_empty() && want_rv != rv_of(&old) {
            return Err(conflict(r, name, MODIFIED_MSG));
        }
        let mut errs = Vec::new();
        let old_uid = str_at(&old, "/metadata/uid").to_string();
        let new_uid = str_at(&body, "/metadata/uid").to_string();
        if !new_uid.is_empty() && new_uid != old_uid {
            errs.push(FieldError::invalid(
                "metadata.uid",
                &json!(new_uid),
                "field is immutable",
            ));
        }
        {
            // rest.BeforeUpdate: uid, creationTimestamp, generation and deletion fields come from
            // the stored object whatever the client sent.
            let m = &mut body["metadata"];
            m["uid"] = json!(old_uid);
            for k in ["creationTimestamp", "generation", "deletionTimestamp"] {
                match old["metadata"].get(k) {
                    Some(v) => m[k] = v.clone(),
                    None => {
                        if let Some(o) = m.as_object_mut() {
                            o.remove(k);
                        }
                    }
                }
            }
            // A body without managedFields keeps the stored ones (the field manager's rule).
            if m.get("managedFields").is_none()
                && let Some(mf) = old["metadata"].get("managedFields")
            {
                m["managedFields"] = mf.clone();
            }
        }
        if res == ("", "services") {
            allocator::carry_allocations(&mut body, &old);
        }
        if res == ("", "namespaces") || res == ("", "services") || res == ("", "nodes") {
            // status is a subresource: an update of the main resource keeps the stored status
            // (namespace, Service and Node strategies' PrepareForUpdate).
            body["status"] = old["status"].clone();
        }
        if res == ("", "namespaces")
            && body
                .get("spec")
                .is_none_or(|v| v.is_object() || v.is_null())
            && let Some(f) = old.pointer("/spec/finalizers")
        {
            // namespaceStrategy.PrepareForUpdate: spec.finalizers change only through /finalize.
            body["spec"]["finalizers"] = f.clone();
        }
        validate::default_object(r, &mut body);
        if res == ("", "services") {
            errs.extend(self.alloc.allocate(&mut body, Some(&old)));
        }
        errs.extend(validate::validate(r, &body, Some(&old)));
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            // ValidateObjectMetaUpdate: a terminating object may lose finalizers, not gain them.
            let fins = |o: &Value| -> Vec<Value> {
                o.pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            let before = fins(&old);
            if fins(&body).iter().any(|f| !before.contains(f)) {
                errs.push(FieldError::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if !errs.is_empty() {
            return Err(invalid_error(r, name, &errs));
        }
        // EndpointSlice PrepareForUpdate: anything outside metadata, or the labels, changed.
        if r.has_generation()
            && (!same_spec(&body, &old)
                || body.pointer("/metadata/labels") != old.pointer("/metadata/labels"))
        {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            body["metadata"]["generation"] = json!(g + 1);
        }
        if let Some(mgr) = &p.field_manager {
            meta::record_manager(&mut body, mgr, operation, &r.api_version());
        }
        // A write that changes nothing is not written: no new resourceVersion, no watch event
        // (etcd3 GuaranteedUpdate short-circuits identical bytes).
        if same_content(&body, &old) {
            return Ok((*old).clone());
        }
        if p.dry_run {
            set_rv(&mut body, rv_of(&old).parse().unwrap_or(0));
            return Ok(body);
        }
        if res == ("", "services") {
            self.alloc.release(&old, Some(&body));
            self.alloc.commit(&body);
        }
        let key = obj_key(ns, name);
        let stored = self.put(res, key.clone(), body, Some(old));
        let out = (*stored).clone();
        if out.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&out) {
            // The last finalizer is gone: the object goes now.
            self.remove(res, &key);
            return Ok(out);
        }
        if self.gc.is_on() {
            self.gc_check(res, &key);
        }
        Ok(out)
    }

    /// The status subresource write: only `.status` of `body` is taken.
    fn update_status(
        &mut self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        body: &Value,
        old: Arc<Value>,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let want_rv = rv_of(body);
        if !want_rv.is_empty() && want_rv != rv_of(&old) {
            return Err(conflict(r, name, MODIFIED_MSG));
        }
        let mut new = (*old).clone();
        match body.get("status") {
            Some(st) => new["status"] = st.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        validate::default_object(r, &mut new);
        if let Some(mgr) = &p.field_manager {
            meta::record_manager(&mut new, mgr, "Update", &r.api_version());
        }
        if same_content(&new, &old) {
            return Ok((*old).clone());
        }
        if p.dry_run {
            return Ok(new);
        }
        let stored = self.put(r.key(), obj_key(ns, name), new, Some(old));
        Ok((*stored).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#resourceversion-in-metadata and https://kubernetes.io/docs/concepts/overview/working-with-objects/names/#uids
    #[test]
    fn create_fills_uid_creation_timestamp_resource_version_and_type_meta() {
        let s = store();
        let o = create_slice(&s, "a", json!({}));
        assert_eq!(o["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(o["kind"], "EndpointSlice");
        assert_eq!(o["metadata"]["namespace"], "default");
        assert_eq!(str_at(&o, "/metadata/uid").len(), 36);
        assert!(
            o["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(o["metadata"]["generation"], 1);
        assert_eq!(rv(&o), s.resource_version());
        assert_eq!(s.get(slices(), Some("default"), "a").unwrap(), o);
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions (one etcd revision for every kind)
    #[test]
    fn resource_version_is_one_global_counter_shared_by_all_kinds() {
        let s = store();
        let a = create_slice(&s, "a", json!({}));
        let l = s
            .create(
                leases(),
                Some("kube-system"),
                lease("l", "n1"),
                &WriteParams::default(),
            )
            .unwrap();
        let b = create_slice(&s, "b", json!({}));
        assert_eq!(rv(&l), rv(&a) + 1);
        assert_eq!(rv(&b), rv(&l) + 1);
        assert!(
            l["metadata"]["generation"].is_null(),
            "Leases carry no generation"
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#generated-values
    #[test]
    fn generate_name_gets_a_random_suffix_and_missing_names_are_invalid() {
        let s = store();
        let mut body = slice("", json!({}), &["198.51.100.1"]);
        body["metadata"] = json!({"generateName": "kubernetes-vip-"});
        let o = s
            .create(
                slices(),
                Some("default"),
                body.clone(),
                &WriteParams::default(),
            )
            .unwrap();
        let name = str_at(&o, "/metadata/name");
        assert!(
            name.starts_with("kubernetes-vip-") && name.len() == 20,
            "{name}"
        );
        assert_eq!(o["metadata"]["generateName"], "kubernetes-vip-");
        body["metadata"] = json!({});
        let e = s
            .create(slices(), Some("default"), body, &WriteParams::default())
            .unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .ends_with("metadata.name: Required value: name or generateName is required"),
            "{}",
            e.message
        );
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go (NewAlreadyExists)
    #[test]
    fn creating_an_existing_object_is_already_exists() {
        let s = store();
        s.create(
            leases(),
            Some("kube-system"),
            lease("l", "a"),
            &WriteParams::default(),
        )
        .unwrap();
        let e = s
            .create(
                leases(),
                Some("kube-system"),
                lease("l", "b"),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
        assert_eq!(e.message, "leases.coordination.k8s.io \"l\" already exists");
        let st = e.status();
        assert_eq!(st["kind"], "Status");
        assert_eq!(st["status"], "Failure");
        assert_eq!(
            st["details"],
            json!({"name": "l", "group": "coordination.k8s.io", "kind": "leases"})
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#concurrency-control-and-consistency
    #[test]
    fn replace_with_a_stale_resource_version_conflicts() {
        let s = store();
        let l = s
            .create(
                leases(),
                Some("kube-system"),
                lease("l", "a"),
                &WriteParams::default(),
            )
            .unwrap();
        let mut first = l.clone();
        first["spec"]["holderIdentity"] = json!("b");
        let updated = s
            .replace(
                leases(),
                Some("kube-system"),
                "l",
                first,
                &WriteParams::default(),
            )
            .unwrap();
        assert!(rv(&updated) > rv(&l));
        let mut second = l.clone();
        second["spec"]["holderIdentity"] = json!("c");
        let e = s
            .replace(
                leases(),
                Some("kube-system"),
                "l",
                second,
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"l\": the object has been modified; please apply your changes to the latest version and try again"
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#concurrency-control-and-consistency (unconditional update when resourceVersion is unset)
    #[test]
    fn replace_without_a_resource_version_is_unconditional_and_keeps_system_fields() {
        let s = store();
        let o = create_slice(&s, "a", json!({}));
        let mut body = slice("a", json!({"v": "2"}), &["198.51.100.9"]);
        body["metadata"]["creationTimestamp"] = json!("2000-01-01T00:00:00Z");
        let put = |b: Value| s.replace(slices(), Some("default"), "a", b, &WriteParams::default());
        let u = put(body).unwrap();
        assert_eq!(u["endpoints"][0]["addresses"][0], "198.51.100.9");
        assert_eq!(u["metadata"]["uid"], o["metadata"]["uid"]);
        assert_eq!(
            u["metadata"]["creationTimestamp"],
            o["metadata"]["creationTimestamp"]
        );
        let mut bad = u.clone();
        bad["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
        let e = put(bad).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("metadata.uid: Invalid value: \"00000000-0000-0000-0000-000000000000\": field is immutable"), "{}", e.message);
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/registry/coordination/lease/strategy.go (AllowUnconditionalUpdate false)
    #[test]
    fn a_lease_replace_must_carry_a_resource_version() {
        let s = store();
        s.create(
            leases(),
            Some("kube-system"),
            lease("l", "a"),
            &WriteParams::default(),
        )
        .unwrap();
        let e = s
            .replace(
                leases(),
                Some("kube-system"),
                "l",
                lease("l", "b"),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
        assert_eq!(
            e.message,
            "leases.coordination.k8s.io \"l\" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update"
        );
        // A merge patch applies to the stored object, whose resourceVersion it keeps.
        let p = s
            .patch(
                leases(),
                Some("kube-system"),
                "l",
                PatchKind::Merge,
                json!({"spec": {"holderIdentity": "b"}}),
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(p["spec"]["holderIdentity"], "b");
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/registry/discovery/endpointslice/strategy.go (AllowCreateOnUpdate false) and pkg/registry/coordination/lease/strategy.go (true)
    #[test]
    fn replacing_a_missing_slice_is_not_found_but_a_lease_put_creates_it() {
        let s = store();
        let e = s
            .replace(
                slices(),
                Some("default"),
                "a",
                slice("a", json!({}), &["198.51.100.1"]),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "endpointslices.discovery.k8s.io \"a\" not found")
        );
        let mut body = lease("l", "a");
        body["metadata"]["resourceVersion"] = json!("12");
        let l = s
            .replace(
                leases(),
                Some("kube-system"),
                "l",
                body,
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(l["spec"]["holderIdentity"], "a");
        assert_eq!(rv(&l), s.resource_version());
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apiserver/pkg/endpoints/handlers/update.go (name on URL must match)
    #[test]
    fn replace_with_another_name_in_the_body_is_a_bad_request() {
        let s = store();
        s.create(
            leases(),
            Some("kube-system"),
            lease("l", "a"),
            &WriteParams::default(),
        )
        .unwrap();
        let e = s
            .replace(
                leases(),
                Some("kube-system"),
                "l",
                lease("m", "a"),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "the name of the object (m) does not match the name on the URL (l)"
        );
    }

    // matches: https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/delete-options/ (preconditions)
    #[test]
    fn delete_preconditions_that_do_not_hold_conflict() {
        let s = store();
        let o = create_slice(&s, "a", json!({}));
        let p = DeleteParams {
            precondition_uid: Some("x".into()),
            ..DeleteParams::default()
        };
        let e = s.delete(slices(), Some("default"), "a", &p).unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            format!(
                "Operation cannot be fulfilled on endpointslices.discovery.k8s.io \"a\": Precondition failed: UID in precondition: x, UID in object meta: {}",
                str_at(&o, "/metadata/uid")
            )
        );
        let p = DeleteParams {
            precondition_resource_version: Some("1".into()),
            ..DeleteParams::default()
        };
        assert_eq!(
            s.delete(slices(), Some("default"), "a", &p)
                .unwrap_err()
                .code,
            409
        );
        let p = DeleteParams {
            precondition_uid: Some(str_at(&o, "/metadata/uid").into()),
            precondition_resource_version: Some(rv_of(&o).into()),
            ..DeleteParams::default()
        };
        s.delete(slices(), Some("default"), "a", &p).unwrap();
        let e = s.delete(slices(), Some("default"), "a", &p).unwrap_err();
        assert_eq!(e.code, 404);
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes (DELETED carries the last state)
    #[test]
    fn delete_returns_the_last_state_at_the_deletions_resource_version() {
        let s = store();
        let o = create_slice(&s, "a", json!({"x": "y"}));
        let d = s
            .delete(slices(), Some("default"), "a", &DeleteParams::default())
            .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"x": "y"}));
        assert_eq!(rv(&d), rv(&o) + 1);
        assert_eq!(rv(&d), s.resource_version());
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#dry-run
    #[test]
    fn dry_run_validates_but_stores_nothing_and_bumps_nothing() {
        let s = store();
        let before = s.resource_version();
        let p = WriteParams {
            dry_run: true,
            ..WriteParams::default()
        };
        let o = s
            .create(
                slices(),
                Some("default"),
                slice("a", json!({}), &["198.51.100.1"]),
                &p,
            )
            .unwrap();
        assert_eq!(o["metadata"]["name"], "a");
        assert_eq!(s.resource_version(), before);
        assert_eq!(s.get(slices(), Some("default"), "a").unwrap_err().code, 404);
        let e = s
            .create(
                slices(),
                Some("default"),
                slice("a", json!({}), &["127.0.0.1"]),
                &p,
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/pkg/registry/discovery/endpointslice/strategy.go (PrepareForUpdate bumps generation)
    #[test]
    fn slice_generation_bumps_when_content_or_labels_change_but_not_annotations() {
        let s = store();
        let o = create_slice(&s, "a", json!({}));
        let put = |body: Value| {
            s.replace(
                slices(),
                Some("default"),
                "a",
                body,
                &WriteParams::default(),
            )
            .unwrap()
        };
        let mut annotate = o.clone();
        annotate["metadata"]["annotations"] = json!({"k": "v"});
        let o1 = put(annotate);
        assert_eq!(o1["metadata"]["generation"], 1);
        assert!(rv(&o1) > rv(&o));
        let mut relabel = o1.clone();
        relabel["metadata"]["labels"] = json!({"k": "v"});
        let o2 = put(relabel);
        assert_eq!(o2["metadata"]["generation"], 2);
        let mut readdr = o2.clone();
        readdr["endpoints"][0]["addresses"] = json!(["198.51.100.2"]);
        let o3 = put(readdr);
        assert_eq!(o3["metadata"]["generation"], 3);
    }

    // matches: https://github.com/kubernetes/kubernetes/blob/v1.33.0/staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go (GuaranteedUpdate skips identical writes)
    #[test]
    fn a_replace_that_changes_nothing_writes_nothing() {
        let s = store();
        let o = create_slice(&s, "a", json!({}));
        let mut w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    resource_version: Some(rv_of(&o).into()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        let same = s
            .replace(
                slices(),
                Some("default"),
                "a",
                o.clone(),
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(rv(&same), rv(&o));
        assert_eq!(s.resource_version(), rv(&o));
        assert!(drain(&mut w).is_empty());
    }

    // matches: DESIGN.md "Facts to respect": an empty slice comes back as "endpoints": null
    #[test]
    fn an_endpoint_slice_without_endpoints_reads_back_as_null() {
        let s = store();
        let mut body = slice("a", json!({}), &[]);
        body["endpoints"] = json!([]);
        let o = s
            .create(slices(), Some("default"), body, &WriteParams::default())
            .unwrap();
        assert!(o.as_object().unwrap().contains_key("endpoints"));
        assert_eq!(o["endpoints"], Value::Null);
        let l = s.list(slices(), None, &ListParams::default()).unwrap();
        assert_eq!(l["items"][0]["endpoints"], Value::Null);
    }

    // matches: https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/#use-a-json-merge-patch-to-update-a-deployment
    #[test]
    fn a_merge_patch_applies_to_the_stored_object_and_its_resource_version_is_a_precondition() {
        let s = store();
        let l = s
            .create(
                leases(),
                Some("kube-system"),
                lease("l", "a"),
                &WriteParams::default(),
            )
            .unwrap();
        let p = s
            .patch(
                leases(),
                Some("kube-system"),
                "l",
                PatchKind::Merge,
                json!({"spec": {"holderIdentity": "b", "leaseDurationSeconds": null}}),
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(p["spec"], json!({"holderIdentity": "b"}));
        let e = s
            .patch(leases(), Some("kube-system"), "l", PatchKind::Merge, json!({"metadata": {"resourceVersion": rv_of(&l)}, "spec": {"holderIdentity": "c"}}), &WriteParams::default())
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        let e = s
            .patch(
                leases(),
                Some("kube-system"),
                "nope",
                PatchKind::Merge,
                json!({}),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 404);
    }

    // matches: https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/ (JSON patch; a failed test op is 422)
    #[test]
    fn a_json_patch_is_applied_then_validated_like_an_update() {
        let s = store();
        create_slice(&s, "a", json!({}));
        let p = s
            .patch(slices(), Some("default"), "a", PatchKind::Json, json!([{"op": "add", "path": "/endpoints/-", "value": {"addresses": ["198.51.100.5"]}}]), &WriteParams::default())
            .unwrap();
        assert_eq!(p["endpoints"][1]["addresses"][0], "198.51.100.5");
        assert_eq!(p["endpoints"][1]["conditions"], json!({}));
        let e = s
            .patch(
                slices(),
                Some("default"),
                "a",
                PatchKind::Json,
                json!([{"op": "test", "path": "/addressType", "value": "IPv6"}]),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        let e = s
            .patch(slices(), Some("default"), "a", PatchKind::Json, json!([{"op": "replace", "path": "/endpoints/0/addresses/0", "value": "127.0.0.1"}]), &WriteParams::default())
            .unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("loopback"), "{}", e.message);
    }

    // The test bed's own limit (documented in docs/development/testing.md): no strategic merge or apply.
    #[test]
    fn strategic_merge_and_apply_patches_are_unsupported_media_types() {
        let s = store();
        create_slice(&s, "a", json!({}));
        for k in [PatchKind::StrategicMerge, PatchKind::Apply { force: true }] {
            let e = s
                .patch(
                    slices(),
                    Some("default"),
                    "a",
                    k,
                    json!({}),
                    &WriteParams::default(),
                )
                .unwrap_err();
            assert_eq!((e.code, e.reason.as_str()), (415, "UnsupportedMediaType"));
        }
    }

    // matches: kube-runtime 5.0 events::Recorder, which merge-patches a whole events.k8s.io/v1 Event
    #[test]
    fn an_events_v1_event_can_be_created_and_merge_patched_with_its_series() {
        let s = store();
        let ev = res("events.k8s.io", "events");
        let body = json!({"metadata": {"name": "kubernetes-vip.1"}, "eventTime": "2026-11-21T06:03:13.123456Z",
            "reportingController": "endpoint-copier", "reportingInstance": "node-1", "action": "Sync",
            "reason": "SourceMissing", "type": "Warning", "note": "no source",
            "regarding": {"kind": "Service", "namespace": "default", "name": "kubernetes-vip", "apiVersion": "v1"}});
        let o = s
            .create(ev, Some("default"), body.clone(), &WriteParams::default())
            .unwrap();
        assert_eq!(o["eventTime"], "2026-11-21T06:03:13.123456Z");
        let mut patch = body;
        patch["series"] = json!({"count": 2, "lastObservedTime": "2026-11-21T06:03:20.000001Z"});
        let p = s
            .patch(
                ev,
                Some("default"),
                "kubernetes-vip.1",
                PatchKind::Merge,
                patch,
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(p["series"]["count"], 2);
        let mut bad = lease("x", "y");
        bad["spec"]["renewTime"] = json!("2026-11-21T06:03:13Z");
        let e = s
            .create(leases(), Some("kube-system"), bad, &WriteParams::default())
            .unwrap_err();
        assert_eq!(e.code, 400);
    }

    // matches: https://kubernetes.io/docs/reference/using-api/server-side-apply/#field-management (managedFields on update)
    #[test]
    fn a_field_manager_is_recorded_in_managed_fields() {
        let s = store();
        let p = WriteParams {
            field_manager: Some("endpoint-copier".into()),
            ..WriteParams::default()
        };
        let o = s
            .create(
                slices(),
                Some("default"),
                slice("a", json!({}), &["198.51.100.1"]),
                &p,
            )
            .unwrap();
        let mf = &o["metadata"]["managedFields"][0];
        assert_eq!(mf["manager"], "endpoint-copier");
        assert_eq!(mf["operation"], "Update");
        assert_eq!(mf["apiVersion"], "discovery.k8s.io/v1");
        assert!(mf["fieldsV1"]["f:endpoints"].is_object());
        let plain = create_slice(&s, "b", json!({}));
        assert!(plain["metadata"].get("managedFields").is_none());
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/
    #[test]
    fn an_object_with_finalizers_is_marked_on_delete_and_goes_with_its_last_finalizer() {
        let s = store();
        let mut body = slice("f", json!({}), &["198.51.100.1"]);
        body["metadata"]["finalizers"] = json!(["example.com/hold"]);
        s.create(slices(), Some("default"), body, &WriteParams::default())
            .unwrap();
        let marked = s
            .delete(slices(), Some("default"), "f", &DeleteParams::default())
            .unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        let got = s.get(slices(), Some("default"), "f").unwrap();
        assert_eq!(
            got["metadata"]["deletionTimestamp"],
            marked["metadata"]["deletionTimestamp"]
        );
        let mut more = got.clone();
        more["metadata"]["finalizers"] = json!(["example.com/hold", "example.com/other"]);
        let e = s
            .replace(
                slices(),
                Some("default"),
                "f",
                more,
                &WriteParams::default(),
            )
            .unwrap_err();
        assert!(
            e.message
                .contains("no new finalizers can be added if the object is being deleted"),
            "{}",
            e.message
        );
        let mut w = s
            .watch(
                slices(),
                None,
                &WatchParams {
                    resource_version: Some(s.resource_version().to_string()),
                    ..WatchParams::default()
                },
            )
            .unwrap();
        s.patch(
            slices(),
            Some("default"),
            "f",
            PatchKind::Merge,
            json!({"metadata": {"finalizers": null}}),
            &WriteParams::default(),
        )
        .unwrap();
        assert_eq!(s.get(slices(), Some("default"), "f").unwrap_err().code, 404);
        assert_eq!(types(&drain(&mut w)), ["MODIFIED f", "DELETED f"]);
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris (namespaced objects only live under /namespaces/{ns}/)
    #[test]
    fn a_namespaced_object_request_without_namespace_is_not_found() {
        let s = store();
        let e = s.get(slices(), None, "a").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "the server could not find the requested resource")
        );
        let e = s
            .create(
                slices(),
                None,
                slice("a", json!({}), &["198.51.100.1"]),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 404);
        assert_eq!(
            s.list(slices(), None, &ListParams::default()).unwrap()["items"],
            json!([])
        );
    }

    // matches: kubernetes/kubernetes pkg/registry/core/node/strategy.go — nodeStrategy.PrepareForCreate
    // keeps the status a kubelet registers with; PrepareForUpdate sets newNode.Status = oldNode.Status,
    // so only /status changes it afterwards.
    #[test]
    fn a_node_keeps_its_status_on_create_and_only_status_changes_it_later() {
        let s = store();
        let nodes = resource("", "v1", "nodes").unwrap();
        let addresses = json!({"addresses": [{"type": "InternalIP", "address": "198.51.100.7"}]});
        let o = s
            .create(
                nodes,
                None,
                json!({"metadata": {"name": "cp-1"}, "status": addresses}),
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(o["status"]["addresses"], addresses["addresses"]);
        let mut u = o.clone();
        u["metadata"]["annotations"] = json!({"endpoint-copier/drain": "true"});
        u["status"] = json!({"addresses": []});
        let u = s
            .replace(nodes, None, "cp-1", u, &WriteParams::default())
            .unwrap();
        assert_eq!(u["status"]["addresses"], addresses["addresses"]);
        assert_eq!(
            u["metadata"]["annotations"]["endpoint-copier/drain"],
            "true"
        );
    }

    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#status-subresource-for-custom-resources (Service status changes only through /status)
    #[test]
    fn a_service_status_is_not_set_by_create_or_replace() {
        let s = store();
        let lb = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
        let o = s
            .create(
                services(),
                Some("default"),
                json!({"metadata": {"name": "v"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 6443}]}, "status": lb}),
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(o["status"], json!({"loadBalancer": {}}));
        let mut u = o.clone();
        u["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
        let u = s
            .replace(services(), Some("default"), "v", u, &WriteParams::default())
            .unwrap();
        assert_eq!(u["status"], json!({"loadBalancer": {}}));
        assert_eq!(
            rv(&u),
            rv(&o),
            "an update that only touches status changes nothing"
        );
    }

    // matches: https://kubernetes.io/docs/reference/kubernetes-api/service-resources/service-v1/#update-replace-status-of-the-specified-service
    #[test]
    fn the_status_subresource_changes_only_the_status() {
        let s = store();
        let o = s
            .create(
                services(),
                Some("default"),
                json!({"metadata": {"name": "v"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 6443}]}}),
                &WriteParams::default(),
            )
            .unwrap();
        let mut body = o.clone();
        body["spec"]["ports"][0]["port"] = json!(1);
        body["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
        let u = s
            .replace_status(
                services(),
                Some("default"),
                "v",
                body,
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(
            u["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.10"
        );
        assert_eq!(u["spec"]["ports"][0]["port"], 6443);
        assert!(rv(&u) > rv(&o));
        let e = s
            .replace_status(
                services(),
                Some("default"),
                "v",
                o.clone(),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 409);
        let p = s
            .patch_status(
                services(),
                Some("default"),
                "v",
                PatchKind::Merge,
                json!({"status": {"loadBalancer": {"ingress": null}}, "spec": {"type": "ClusterIP"}}),
                &WriteParams::default(),
            )
            .unwrap();
        assert_eq!(p["status"], json!({"loadBalancer": {}}));
        assert_eq!(p["spec"]["type"], "LoadBalancer");
    }

    /// A pseudo-random JSON value shaped roughly like an object of `r` (fields it has, wrong types).
    fn garbage(next: &mut impl FnMut(u64) -> u64, depth: u32) -> Value {
        const KEYS: &[&str] = &[
            "metadata",
            "spec",
            "status",
            "endpoints",
            "ports",
            "addresses",
            "name",
            "labels",
            "port",
            "nodePort",
            "clusterIP",
            "clusterIPs",
            "type",
            "addressType",
            "conditions",
            "finalizers",
            "ownerReferences",
            "renewTime",
            "eventTime",
            "series",
            "regarding",
            "uid",
            "resourceVersion",
            "namespace",
            "generateName",
            "annotations",
            "ipFamilies",
        ];
        match if depth == 0 { next(4) } else { next(7) } {
            0 => Value::Null,
            1 => json!(next(70000)),
            2 => json!(["IPv4", "TCP", "a", "198.51.100.1", "x/y", ""][next(6) as usize]),
            3 => json!(next(2) == 0),
            4 | 5 => {
                let mut m = serde_json::Map::new();
                for _ in 0..next(5) {
                    m.insert(
                        KEYS[next(KEYS.len() as u64) as usize].into(),
                        garbage(next, depth - 1),
                    );
                }
                Value::Object(m)
            }
            _ => Value::Array((0..next(4)).map(|_| garbage(next, depth - 1)).collect()),
        }
    }

    // Robustness: whatever a client sends, the store answers with a value or a Status.
    #[test]
    fn arbitrary_bodies_get_an_answer_and_never_a_panic() {
        let s = store();
        let mut seed: u64 = 42;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n.max(1)
        };
        let mut accepted = 0;
        for _ in 0..3000 {
            let r = &RESOURCES[next(RESOURCES.len() as u64) as usize];
            let mut body = garbage(&mut next, 4);
            if next(2) == 0
                && let Some(m) = body.as_object_mut()
            {
                m.insert("metadata".into(), json!({"name": "g"}));
            }
            let ns = Some("default");
            let w = WriteParams::default();
            let res = match next(4) {
                0 => s.create(r, ns, body, &w),
                1 => s.replace(r, ns, "g", body, &w),
                2 => s.patch(r, ns, "g", PatchKind::Merge, body, &w),
                _ => s.patch(r, ns, "g", PatchKind::Json, body, &w),
            };
            match res {
                Ok(o) => {
                    accepted += 1;
                    assert!(o["metadata"]["uid"].is_string(), "{o}");
                }
                Err(e) => assert!((400..=504).contains(&e.code), "{e:?}"),
            }
        }
        assert!(accepted > 0);
    }
}
