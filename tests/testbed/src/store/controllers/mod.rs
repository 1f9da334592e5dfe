//! The two kube-controller-manager controllers that write EndpointSlices, run inside the store:
//! the **endpointslice** controller (slices for Services with a selector, `endpointslice.rs`) and
//! the **endpointslice-mirroring** controller (slices mirrored from the core/v1 Endpoints of
//! Services without one, `mirroring.rs`). Each is switchable and on by default, like the garbage
//! collector.
//!
//! This file owns what both share: the switches, the work queue (which Service / Endpoints names a
//! change concerns, a restarted controller's full resync), the labels and constants of upstream's
//! discovery API, listing a controller's own slices, and carrying the writes out through the
//! store's own write path (so they get real resourceVersions, uids, creationTimestamps,
//! generations, managedFields for manager `kube-controller-manager`, and watches see them). The
//! two children decide, from the stored Services, Endpoints and EndpointSlices, which slices their
//! controller would create, update or delete. Leaves validation and defaults to `validate.rs`, and
//! storage, history and garbage collection to the rest of the store (`store/mod.rs`,
//! `watch_cache.rs`, `gc.rs`).
//!
//! Simplifications (docs/development/testing.md lists them too): the controllers act synchronously,
//! right after the write that changed their inputs (the real ones work from informers, usually well
//! within a second, the endpointslice controller batching slice-triggered syncs by 1 s); Pods are not
//! modelled, so a Service with a selector only ever gets the controller's *placeholder* slice (no
//! endpoints, no ports); the order of ports and endpoints in a mirrored slice, which upstream takes
//! from hashes and sets, is sorted here; no Events are recorded for skipped addresses; writes that
//! fail (a namespace being deleted, an invalid address) are dropped instead of retried.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::watch_cache::Change;
use super::writes::prepare_body;
use super::{Inner, ObjKey, Resource, WriteParams, has_finalizers, obj_key, str_at};
use crate::meta;

mod endpointslice;
mod mirroring;

/// `endpointslice.kubernetes.io/managed-by` of the endpointslice controller's slices
/// (pkg/controller/endpointslice: `ControllerName`).
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// `endpointslice.kubernetes.io/managed-by` of mirrored slices
/// (pkg/controller/endpointslicemirroring: `ControllerName`).
pub const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// discovery.LabelManagedBy.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// discovery.LabelServiceName.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// discovery.LabelSkipMirror: Endpoints carrying it with value "true" are not mirrored (the
/// apiserver's own `default/kubernetes` Endpoints do, pkg/controlplane/reconcilers).
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// v1.IsHeadlessService: set (empty value) on the slices of a Service without a cluster IP.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// v1.EndpointsLastChangeTriggerTime.
const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The field manager the real controllers' writes are recorded under (their user agent).
const FIELD_MANAGER: &str = "kube-controller-manager";

/// Storage identity of Services.
const SERVICES: (&str, &str) = ("", "services");
/// Storage identity of core/v1 Endpoints.
const ENDPOINTS: (&str, &str) = ("", "endpoints");
/// Storage identity of EndpointSlices.
const SLICES: (&str, &str) = ("discovery.k8s.io", "endpointslices");

/// The controllers' switches and work queue.
#[derive(Debug, Default)]
pub(super) struct Controllers {
    /// The endpointslice controller is off (default: on).
    endpointslice_off: bool,
    /// The endpointslice-mirroring controller is off (default: on).
    mirroring_off: bool,
    /// (namespace, name) of Services / Endpoints whose inputs changed since the last run.
    pending: BTreeSet<(String, String)>,
    /// Set while the controllers write, so that their own writes do not queue more work (each run
    /// converges in one pass, as the real controllers' syncs do).
    running: bool,
    /// Services the endpointslice controller has synced since it (re)started: upstream's
    /// TriggerTimeTracker, which sets the last-change-trigger-time annotation on the first sync.
    known: HashSet<(String, String)>,
}

impl Controllers {
    /// Queues the Service / Endpoints a change concerns (informer event handlers, simplified: any
    /// change to a Service, an Endpoints or a slice labelled with a service name queues that name).
    pub(super) fn note(&mut self, c: &Change) {
        if self.running {
            return;
        }
        let mut queue = |o: &Value, name: &str| {
            let ns = str_at(o, "/metadata/namespace");
            if !ns.is_empty() && !name.is_empty() {
                self.pending.insert((ns.to_string(), name.to_string()));
            }
        };
        if c.res == SERVICES || c.res == ENDPOINTS {
            queue(&c.obj, str_at(&c.obj, "/metadata/name"));
        } else if c.res == SLICES {
            // A change of the service-name label concerns both names (onEndpointSliceUpdate).
            for o in std::iter::once(&c.obj).chain(c.prev.iter()) {
                queue(o, label(o, LABEL_SERVICE_NAME).unwrap_or(""));
            }
        }
    }
}

/// The value of label `key`, if set.
fn label<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o.pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}

/// The string map at `ptr` (labels, annotations, selector); absent or null is empty.
fn string_map(o: &Value, ptr: &str) -> BTreeMap<String, String> {
    o.pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A string map as a JSON object.
fn to_json(m: &BTreeMap<String, String>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// `service.Spec.Selector == nil` as the controllers see it: they read through protobuf, where an
/// empty map is not encoded, so `{}` is no selector either.
fn has_selector(svc: &Value) -> bool {
    svc.pointer("/spec/selector")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
}

/// metav1.NewControllerRef.
fn controller_ref(owner: &Value, kind: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": kind,
        "name": str_at(owner, "/metadata/name"), "uid": str_at(owner, "/metadata/uid"),
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// getEndpointSlicePrefix: "<name>-" (always a valid prefix for a Service or Endpoints name).
fn slice_prefix(name: &str) -> String {
    format!("{name}-")
}

/// Orders objects by metadata.name.
fn by_name(a: &Arc<Value>, b: &Arc<Value>) -> std::cmp::Ordering {
    str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name"))
}

/// A slice's addressType ("IPv4", "IPv6", "FQDN").
fn address_type(s: &Value) -> &str {
    str_at(s, "/addressType")
}

/// A list field, absent and null being empty (`endpoints` and `ports` read back as null).
fn list(o: &Value, key: &str) -> Vec<Value> {
    o.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A slice write the controllers decided on.
enum Write {
    Create(Value),
    /// The full new object (no resourceVersion: an unconditional update, as client-go's Update of
    /// an object built from scratch).
    Update(Value),
    Delete(String),
}

impl Inner {
    /// Turns the endpointslice controller on or off; on catches up at once.
    pub(super) fn set_endpointslice_controller(&mut self, on: bool) {
        self.controllers.endpointslice_off = !on;
        // A restarted controller has no TriggerTimeTracker state.
        self.controllers.known.clear();
        if on {
            self.queue_everything();
            self.run_controllers();
        }
    }

    /// Turns the endpointslice-mirroring controller on or off; on catches up at once.
    pub(super) fn set_endpointslice_mirroring(&mut self, on: bool) {
        self.controllers.mirroring_off = !on;
        if on {
            self.queue_everything();
            self.run_controllers();
        }
    }

    /// What a (re)started controller's initial list does: every Service and Endpoints, and every
    /// name a slice is labelled with, is synced.
    fn queue_everything(&mut self) {
        let mut all = BTreeSet::new();
        for res in [SERVICES, ENDPOINTS] {
            for o in self.objects.get(&res).into_iter().flat_map(|m| m.values()) {
                all.insert((
                    str_at(o, "/metadata/namespace").to_string(),
                    str_at(o, "/metadata/name").to_string(),
                ));
            }
        }
        for o in self
            .objects
            .get(&SLICES)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if let Some(svc) = label(o, LABEL_SERVICE_NAME) {
                all.insert((
                    str_at(o, "/metadata/namespace").to_string(),
                    svc.to_string(),
                ));
            }
        }
        self.controllers.pending.extend(all);
    }

    /// Syncs everything queued since the last run. Called by every store write after it is done
    /// (inside the same lock: the controllers' writes follow the write that caused them).
    pub(super) fn run_controllers(&mut self) {
        if self.controllers.running {
            return;
        }
        self.controllers.running = true;
        let pending = std::mem::take(&mut self.controllers.pending);
        for (ns, name) in pending {
            if !self.controllers.endpointslice_off {
                self.sync_service(&ns, &name);
            }
            if !self.controllers.mirroring_off {
                self.sync_mirroring(&ns, &name);
            }
        }
        self.controllers.running = false;
    }

    fn object(&self, res: (&'static str, &'static str), key: &str) -> Option<Arc<Value>> {
        self.objects.get(&res)?.get(key).cloned()
    }

    /// Slices in `ns` labelled `kubernetes.io/service-name=<service>` and managed by `manager`,
    /// sorted by name.
    fn managed_slices(&self, ns: &str, service: &str, manager: &str) -> Vec<Arc<Value>> {
        let prefix = format!("{ns}/");
        let mut out: Vec<Arc<Value>> = self
            .objects
            .get(&SLICES)
            .map(|m| {
                m.range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, o)| o)
                    .filter(|o| {
                        label(o, LABEL_SERVICE_NAME) == Some(service)
                            && label(o, LABEL_MANAGED_BY) == Some(manager)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(by_name);
        out
    }

    /// Carries out the writes as the controllers' clients would, through the store's own create,
    /// update and delete; a failed write is dropped (the real controller retries and logs).
    fn write_slices(&mut self, ns: &str, writes: Vec<Write>) {
        let Some(r) = super::resource_by_key(SLICES) else {
            return;
        };
        let p = WriteParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            dry_run: false,
        };
        for w in writes {
            match w {
                Write::Create(mut body) => {
                    if prepare_body(r, Some(ns), &mut body).is_ok() {
                        let _ = self.create(r, Some(ns), body, &p);
                    }
                }
                Write::Update(mut body) => {
                    let name = str_at(&body, "/metadata/name").to_string();
                    let Some(old) = self.object(SLICES, &obj_key(Some(ns), &name)) else {
                        continue;
                    };
                    if prepare_body(r, Some(ns), &mut body).is_ok() {
                        let _ = self.update(r, Some(ns), &name, body, old, &p, "Update");
                    }
                }
                Write::Delete(name) => self.delete_slice(r, ns, &name),
            }
        }
    }

    /// A DELETE without preconditions, as the store's delete does it: an object with finalizers
    /// is only marked.
    fn delete_slice(&mut self, r: &Resource, ns: &str, name: &str) {
        let key: ObjKey = obj_key(Some(ns), name);
        let Some(old) = self.object(SLICES, &key) else {
            return;
        };
        if has_finalizers(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_none() {
                let mut marked = (*old).clone();
                marked["metadata"]["deletionTimestamp"] = json!(meta::now());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                self.put(r.key(), key, marked, Some(old));
            }
            return;
        }
        self.remove(SLICES, &key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_selector_is_no_selector() {
        // The controllers read Services through protobuf, where an empty map is nil.
        assert!(!has_selector(&json!({"spec": {"selector": {}}})));
        assert!(!has_selector(&json!({"spec": {}})));
        assert!(has_selector(&json!({"spec": {"selector": {"app": "web"}}})));
    }
}
