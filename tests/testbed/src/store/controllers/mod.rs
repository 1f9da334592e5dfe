//! The two kube-controller-manager controllers that write EndpointSlices, run inside the store:
//! the **endpointslice** controller (slices for Services with a selector) and the
//! **endpointslice-mirroring** controller (slices mirrored from the core/v1 Endpoints of Services
//! without one). Each is switchable and on by default, like the garbage collector.
//!
//! Owns: deciding, from the stored Services, Endpoints and EndpointSlices, which slices those
//! controllers would create, update or delete, and making those writes through the store's own
//! write path (so they get real resourceVersions, uids, creationTimestamps, generations, managedFields
//! for manager `kube-controller-manager`, and watches see them). Leaves validation and defaults to
//! `validate.rs` and storage, history and garbage collection to `store.rs`.
//!
//! Simplifications (docs/development/testing.md lists them too): the controllers act synchronously,
//! right after the write that changed their inputs (the real ones work from informers, usually well
//! within a second, the endpointslice controller batching slice-triggered syncs by 1 s); Pods are not
//! modelled, so a Service with a selector only ever gets the controller's *placeholder* slice (no
//! endpoints, no ports); the order of ports and endpoints in a mirrored slice, which upstream takes
//! from hashes and sets, is sorted here; no Events are recorded for skipped addresses; writes that
//! fail (a namespace being deleted, an invalid address) are dropped instead of retried.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Change, Inner, ObjKey, Resource, WriteParams, has_finalizers, obj_key, prepare_body};
use crate::meta;
use crate::validate;

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
/// resourcelock.LeaderElectionRecordAnnotationKey: Endpoints used as a leader-election lock are
/// not mirrored.
const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";
/// v1.EndpointsLastChangeTriggerTime.
const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// v1.LastAppliedConfigAnnotation (kubectl apply): never copied onto mirrored slices.
const ANNOTATION_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The mirroring controller's --mirroring-max-endpoints-per-subset default.
const MAX_ENDPOINTS_PER_SUBSET: usize = 1000;
/// The field manager the real controllers' writes are recorded under (their user agent).
const FIELD_MANAGER: &str = "kube-controller-manager";

const SERVICES: (&str, &str) = ("", "services");
const ENDPOINTS: (&str, &str) = ("", "endpoints");
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

fn str_at<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

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

fn by_name(a: &Arc<Value>, b: &Arc<Value>) -> std::cmp::Ordering {
    str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name"))
}

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

    // ---- endpointslice controller ------------------------------------------------------------

    /// pkg/controller/endpointslice/endpointslice_controller.go `syncService` followed by
    /// staging/src/k8s.io/endpointslice/reconciler.go `Reconcile`, with no Pods.
    fn sync_service(&mut self, ns: &str, name: &str) {
        let ns_name = (ns.to_string(), name.to_string());
        let Some(svc) = self.object(SERVICES, &obj_key(Some(ns), name)) else {
            // The Service is gone: its slices go with it through their ownerReference (garbage
            // collector); the controller only forgets it.
            self.controllers.known.remove(&ns_name);
            return;
        };
        // Services of type ExternalName, and Services without a selector, get nothing from this
        // controller — and it leaves the slices it made earlier in place (it returns before
        // listing them): a Service that loses its selector keeps its stale placeholder.
        if str_at(&svc, "/spec/type") == "ExternalName" || !has_selector(&svc) {
            return;
        }
        // TriggerTimeTracker: the first sync of a Service uses its creationTimestamp; later ones
        // have no new trigger time (no Pods), which removes the annotation.
        let trigger_time = self
            .controllers
            .known
            .insert(ns_name)
            .then(|| str_at(&svc, "/metadata/creationTimestamp").to_string());
        // dropEndpointSlicesPendingDeletion.
        let existing: Vec<Arc<Value>> = self
            .managed_slices(ns, name, ENDPOINTSLICE_CONTROLLER)
            .into_iter()
            .filter(|s| s.pointer("/metadata/deletionTimestamp").is_none())
            .collect();
        let families = service_address_types(&svc);
        let mut writes = Vec::new();
        for family in &families {
            let mut to_delete: Vec<Arc<Value>> = existing
                .iter()
                .filter(|s| address_type(s) == family)
                .cloned()
                .collect();
            // No Pods: no endpoints are desired, every existing slice of this family is to be
            // deleted, and a placeholder takes their place ("When no endpoint slices would usually
            // exist, we need to add a placeholder").
            let mut placeholder = placeholder_slice(&svc, family);
            if to_delete.len() == 1 && placeholder_equal(&to_delete[0], &placeholder) {
                continue;
            }
            match trigger_time.as_deref() {
                Some(t) if !t.is_empty() => {
                    placeholder["metadata"]["annotations"] = json!({ANNOTATION_TRIGGER_TIME: t});
                }
                _ => {}
            }
            // finalize: a create becomes an update of a slice that would be deleted, if that one
            // is owned by this Service and has the same addressType.
            match to_delete.iter().position(|s| owned_by(s, &svc)) {
                Some(i) => {
                    let recycled = to_delete.remove(i);
                    placeholder["metadata"]["name"] = json!(str_at(&recycled, "/metadata/name"));
                    writes.push(Write::Update(placeholder));
                }
                // Not while the Service is being deleted (a race with the garbage collector).
                None if svc.pointer("/metadata/deletionTimestamp").is_none() => {
                    writes.push(Write::Create(placeholder));
                }
                None => {}
            }
            writes.extend(
                to_delete
                    .iter()
                    .map(|s| Write::Delete(str_at(s, "/metadata/name").to_string())),
            );
        }
        // Slices of an address type the Service no longer serves are deleted.
        writes.extend(
            existing
                .iter()
                .filter(|s| !families.iter().any(|f| f == address_type(s)))
                .map(|s| Write::Delete(str_at(s, "/metadata/name").to_string())),
        );
        self.write_slices(ns, writes);
    }

    // ---- endpointslice-mirroring controller --------------------------------------------------

    /// pkg/controller/endpointslicemirroring/endpointslicemirroring_controller.go `syncEndpoints`
    /// followed by reconciler.go `reconcile`.
    fn sync_mirroring(&mut self, ns: &str, name: &str) {
        let key = obj_key(Some(ns), name);
        let existing = self.managed_slices(ns, name, MIRRORING_CONTROLLER);
        let endpoints = self.object(ENDPOINTS, &key);
        let svc = self.object(SERVICES, &key);
        let mirror = match (&endpoints, &svc) {
            // shouldMirror: no skip-mirror label, no leader-election annotation; and a Service
            // of that name without a selector exists.
            (Some(ep), Some(svc)) => {
                label(ep, LABEL_SKIP_MIRROR) != Some("true")
                    && ep
                        .pointer("/metadata/annotations")
                        .and_then(|a| a.get(ANNOTATION_LEADER))
                        .is_none()
                    && !has_selector(svc)
            }
            _ => false,
        };
        let Some(ep) = endpoints.filter(|_| mirror) else {
            // deleteMirroredSlices.
            let writes = existing
                .iter()
                .map(|s| Write::Delete(str_at(s, "/metadata/name").to_string()))
                .collect();
            self.write_slices(ns, writes);
            return;
        };
        let desired = desired_mirror(&ep);
        let mut by_key: BTreeMap<PortKey, Vec<Arc<Value>>> = BTreeMap::new();
        for s in &existing {
            by_key.entry(slice_key(s)).or_default().push(s.clone());
        }
        let mut creates = Vec::new();
        let mut updates = Vec::new();
        let mut deletes: Vec<Arc<Value>> = Vec::new();
        for (k, group) in &desired {
            let family = k.0.as_str();
            let current = by_key.remove(k).unwrap_or_default();
            // reconcileByPortMapping.
            if group.endpoints.is_empty() {
                deletes.extend(current);
                continue;
            }
            let Some((first, rest)) = current.split_first() else {
                creates.push(mirrored_slice(&ep, family, group, None));
                continue;
            };
            deletes.extend(rest.iter().cloned());
            if !mirror_up_to_date(first, &ep, &group.endpoints) {
                updates.push(mirrored_slice(
                    &ep,
                    family,
                    group,
                    Some(str_at(first, "/metadata/name")),
                ));
            }
        }
        // Port sets (and address types) no longer desired.
        deletes.extend(by_key.into_values().flatten());
        // recycleSlices: per address type, creates become updates of slices to be deleted.
        let mut kept_creates = Vec::new();
        for mut c in creates {
            match deletes
                .iter()
                .position(|d| address_type(d) == address_type(&c))
            {
                Some(i) => {
                    let d = deletes.remove(i);
                    if let Some(m) = c["metadata"].as_object_mut() {
                        m.remove("generateName");
                    }
                    c["metadata"]["name"] = json!(str_at(&d, "/metadata/name"));
                    updates.push(c);
                }
                None => kept_creates.push(c),
            }
        }
        let mut writes = Vec::new();
        // finalize: no creates while the Endpoints is being deleted.
        if ep.pointer("/metadata/deletionTimestamp").is_none() {
            writes.extend(kept_creates.into_iter().map(Write::Create));
        }
        writes.extend(updates.into_iter().map(Write::Update));
        writes.extend(
            deletes
                .iter()
                .map(|s| Write::Delete(str_at(s, "/metadata/name").to_string())),
        );
        self.write_slices(ns, writes);
    }
}

/// staging/src/k8s.io/endpointslice/utils.go `getAddressTypesForService`: the Service's
/// ipFamilies; without any (an old apiserver), the family of its cluster IP, or both when headless.
fn service_address_types(svc: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in list(&svc["spec"], "ipFamilies") {
        if let Some(f @ ("IPv4" | "IPv6")) = f.as_str()
            && !out.iter().any(|o| o == f)
        {
            out.push(f.to_string());
        }
    }
    if !out.is_empty() {
        return out;
    }
    let ip = str_at(svc, "/spec/clusterIP");
    if !ip.is_empty() && ip != "None" {
        let v6 = ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6());
        return vec![if v6 { "IPv6" } else { "IPv4" }.to_string()];
    }
    vec!["IPv4".to_string(), "IPv6".to_string()]
}

/// staging/src/k8s.io/endpointslice/utils.go `setEndpointSliceLabels`: the Service's labels but
/// the reserved ones, `service.kubernetes.io/headless: ""` when the Service has no cluster IP,
/// then the service name and the manager.
fn service_slice_labels(svc: &Value) -> BTreeMap<String, String> {
    let mut labels = string_map(svc, "/metadata/labels");
    labels.retain(|k, _| {
        ![LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS].contains(&k.as_str())
    });
    let ip = str_at(svc, "/spec/clusterIP");
    if ip.is_empty() || ip == "None" {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    labels.insert(
        LABEL_SERVICE_NAME.to_string(),
        str_at(svc, "/metadata/name").to_string(),
    );
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        ENDPOINTSLICE_CONTROLLER.to_string(),
    );
    labels
}

/// staging/src/k8s.io/endpointslice/utils.go `newEndpointSlice` with the reconciler's placeholder
/// meta: no ports, no endpoints (read back as null), owned by the Service.
fn placeholder_slice(svc: &Value, family: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "generateName": slice_prefix(str_at(svc, "/metadata/name")),
            "namespace": str_at(svc, "/metadata/namespace"),
            "labels": to_json(&service_slice_labels(svc)),
            "ownerReferences": [controller_ref(svc, "Service")],
        },
        "addressType": family,
        "endpoints": [],
        "ports": [],
    })
}

/// reconciler.go `placeholderSliceCompare`: same namespace, exactly the same labels and owner
/// references, no ports, no endpoints, same addressType (other metadata is ignored).
fn placeholder_equal(existing: &Value, placeholder: &Value) -> bool {
    let refs = |o: &Value| -> Vec<Value> {
        list(&o["metadata"], "ownerReferences")
            .iter()
            .map(|r| {
                json!([
                    r["apiVersion"],
                    r["kind"],
                    r["name"],
                    r["uid"],
                    r["controller"],
                    r["blockOwnerDeletion"]
                ])
            })
            .collect()
    };
    str_at(existing, "/metadata/namespace") == str_at(placeholder, "/metadata/namespace")
        && string_map(existing, "/metadata/labels") == string_map(placeholder, "/metadata/labels")
        && refs(existing) == refs(placeholder)
        && list(existing, "ports").is_empty()
        && list(existing, "endpoints").is_empty()
        && address_type(existing) == address_type(placeholder)
}

/// staging/src/k8s.io/endpointslice/utils.go `ownedBy`.
fn owned_by(slice: &Value, svc: &Value) -> bool {
    let uid = str_at(svc, "/metadata/uid");
    list(&slice["metadata"], "ownerReferences").iter().any(|r| {
        r["uid"].as_str() == Some(uid) && r["kind"] == "Service" && r["apiVersion"] == "v1"
    })
}

/// A group of mirrored endpoints: (addressType, the ports in canonical order as JSON), as
/// upstream's addrTypePortMapKey (address type + hash of the ports).
type PortKey = (String, String);

/// The desired ports and endpoints of one [`PortKey`].
#[derive(Debug, Default)]
struct Group {
    ports: Vec<Value>,
    endpoints: Vec<Value>,
}

fn port_key(family: &str, ports: &[Value]) -> PortKey {
    (
        family.to_string(),
        serde_json::to_string(ports).unwrap_or_default(),
    )
}

/// One endpoint port as an EndpointSlice stores it (defaults applied).
fn slice_port(p: &Value) -> Value {
    let mut out = json!({
        "name": p["name"].as_str().unwrap_or(""),
        "port": p["port"],
        "protocol": p["protocol"].as_str().unwrap_or("TCP"),
    });
    if let Some(a) = p.get("appProtocol").filter(|v| !v.is_null()) {
        out["appProtocol"] = a.clone();
    }
    out
}

fn canonical_ports(ports: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = ports.iter().map(slice_port).collect();
    out.sort_by_key(Value::to_string);
    out.dedup();
    out
}

/// The key an existing slice is grouped under (endpointSlicesByKey).
fn slice_key(s: &Value) -> PortKey {
    port_key(address_type(s), &canonical_ports(&list(s, "ports")))
}

/// What the mirroring controller wants for `ep`: endpoints per (address type, ports), every key of
/// every subset present even when empty (initPorts), so that slices for emptied keys are deleted.
///
/// The subsets are canonicalized first as pkg/api/v1/endpoints `RepackSubsets` does: addresses
/// (deduplicated by IP and targetRef uid; not ready wins over ready) are grouped by the exact
/// set of ports they serve. A subset without ports keeps its addresses under a "no port" sentinel
/// (`Port: -1` upstream), so they are mirrored into a slice without ports — current
/// RepackSubsets does this; only releases before 1.4 dropped such subsets.
fn desired_mirror(ep: &Value) -> BTreeMap<PortKey, Group> {
    // port (None: the "no port" sentinel) → (ip, targetRef uid) → (address, ready)
    type Addrs = BTreeMap<(String, String), (Value, bool)>;
    let mut by_port: BTreeMap<String, (Option<Value>, Addrs)> = BTreeMap::new();
    for subset in list(ep, "subsets") {
        let ports: Vec<Option<Value>> = match list(&subset, "ports") {
            p if p.is_empty() => vec![None],
            p => p.iter().map(|port| Some(slice_port(port))).collect(),
        };
        for port in ports {
            let key = port
                .as_ref()
                .map_or_else(|| "-".to_owned(), Value::to_string);
            let entry = by_port
                .entry(key)
                .or_insert_with(|| (port.clone(), BTreeMap::new()));
            for (field, ready) in [("addresses", true), ("notReadyAddresses", false)] {
                for a in list(&subset, field) {
                    let k = (
                        a["ip"].as_str().unwrap_or("").to_string(),
                        a.pointer("/targetRef/uid")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    );
                    let slot = entry.1.entry(k).or_insert((a.clone(), ready));
                    slot.1 &= ready;
                }
            }
        }
    }
    // Ports serving exactly the same addresses (with the same readiness) form one subset.
    // The sentinel adds no port: addresses that only it serves form a subset without ports.
    let mut subsets: BTreeMap<String, (Vec<Value>, Addrs)> = BTreeMap::new();
    for (port, addrs) in by_port.into_values() {
        let k = serde_json::to_string(&addrs.iter().collect::<Vec<_>>()).unwrap_or_default();
        subsets
            .entry(k)
            .or_insert_with(|| (Vec::new(), addrs))
            .0
            .extend(port);
    }
    let mut out: BTreeMap<PortKey, Group> = BTreeMap::new();
    for (ports, addrs) in subsets.into_values() {
        let ports = canonical_ports(&ports);
        for family in ["IPv4", "IPv6"] {
            out.entry(port_key(family, &ports))
                .or_insert_with(|| Group {
                    ports: ports.clone(),
                    endpoints: Vec::new(),
                });
        }
        // Ready addresses first, then not ready ones, at most 1000 per subset.
        let mut ordered: Vec<&(Value, bool)> = addrs.values().filter(|(_, r)| *r).collect();
        ordered.extend(addrs.values().filter(|(_, r)| !*r));
        for (a, ready) in ordered.into_iter().take(MAX_ENDPOINTS_PER_SUBSET) {
            // addressToEndpoint: an address that is not an IP is skipped (upstream records an
            // Event); the IP is re-serialized, and an IPv4-mapped IPv6 address is IPv4.
            let Some(ip) = a["ip"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            };
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            let mut endpoint =
                json!({"addresses": [ip.to_string()], "conditions": {"ready": ready}});
            for (from, to) in [("targetRef", "targetRef"), ("nodeName", "nodeName")] {
                if let Some(v) = a.get(from).filter(|v| !v.is_null()) {
                    endpoint[to] = v.clone();
                }
            }
            if let Some(h) = a["hostname"].as_str().filter(|h| !h.is_empty()) {
                endpoint["hostname"] = json!(h);
            }
            let group = out.entry(port_key(family, &ports)).or_default();
            // An EndpointSet: one endpoint per address.
            if !group
                .endpoints
                .iter()
                .any(|e| e["addresses"] == endpoint["addresses"])
            {
                group.endpoints.push(endpoint);
            }
        }
    }
    for group in out.values_mut() {
        group.endpoints.sort_by_key(|e| e["addresses"].to_string());
    }
    out
}

/// Labels a mirrored slice gets: every label of the Endpoints, then the service name and the
/// manager (utils.go `newEndpointSlice`).
fn mirrored_labels(ep: &Value) -> BTreeMap<String, String> {
    let mut labels = string_map(ep, "/metadata/labels");
    labels.insert(
        LABEL_SERVICE_NAME.to_string(),
        str_at(ep, "/metadata/name").to_string(),
    );
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        MIRRORING_CONTROLLER.to_string(),
    );
    labels
}

/// Annotations a mirrored slice gets: every annotation of the Endpoints but the last change
/// trigger time and kubectl's last-applied configuration.
fn mirrored_annotations(ep: &Value) -> BTreeMap<String, String> {
    let mut a = string_map(ep, "/metadata/annotations");
    a.remove(ANNOTATION_TRIGGER_TIME);
    a.remove(ANNOTATION_LAST_APPLIED);
    a
}

/// utils.go `newEndpointSlice`: named `name` (an update) or generated from "<endpoints>-".
fn mirrored_slice(ep: &Value, family: &str, group: &Group, name: Option<&str>) -> Value {
    let mut metadata = Map::new();
    match name {
        Some(n) => metadata.insert("name".into(), json!(n)),
        None => metadata.insert(
            "generateName".into(),
            json!(slice_prefix(str_at(ep, "/metadata/name"))),
        ),
    };
    metadata.insert("namespace".into(), json!(str_at(ep, "/metadata/namespace")));
    metadata.insert("labels".into(), to_json(&mirrored_labels(ep)));
    metadata.insert("annotations".into(), to_json(&mirrored_annotations(ep)));
    metadata.insert(
        "ownerReferences".into(),
        json!([controller_ref(ep, "Endpoints")]),
    );
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": family,
        "endpoints": group.endpoints,
        "ports": group.ports,
    })
}

/// reconcileByPortMapping's early return: the slice already holds exactly the desired endpoints,
/// and its labels (but the two the controller sets) and annotations are the Endpoints' own.
fn mirror_up_to_date(slice: &Value, ep: &Value, desired: &[Value]) -> bool {
    let Some(r) = super::resource_by_key(SLICES) else {
        return true;
    };
    // Compare with the desired endpoints as the store would keep them (defaults applied).
    let mut want = json!({"endpoints": desired});
    validate::default_object(r, &mut want);
    let sorted = |v: Vec<Value>| {
        let mut v: Vec<String> = v.iter().map(Value::to_string).collect();
        v.sort();
        v
    };
    let mut labels = string_map(slice, "/metadata/labels");
    labels.remove(LABEL_MANAGED_BY);
    labels.remove(LABEL_SERVICE_NAME);
    sorted(list(slice, "endpoints")) == sorted(list(&want, "endpoints"))
        && labels == string_map(ep, "/metadata/labels")
        && string_map(slice, "/metadata/annotations") == mirrored_annotations(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(subsets: Value) -> Value {
        json!({"metadata": {"name": "vip", "namespace": "default"}, "subsets": subsets})
    }

    fn port(name: &str, port: u16) -> Value {
        json!({"name": name, "port": port, "protocol": "TCP"})
    }

    #[test]
    fn subsets_with_the_same_ports_are_merged_and_not_ready_wins() {
        // matches: pkg/api/v1/endpoints/util.go RepackSubsets / mapAddressByPort ("not ready
        // always trumps ready")
        let ep = endpoints(json!([
            {"addresses": [{"ip": "198.51.100.1"}, {"ip": "198.51.100.2"}], "ports": [port("a", 1)]},
            {"notReadyAddresses": [{"ip": "198.51.100.2"}], "ports": [port("a", 1)]},
        ]));
        let d = desired_mirror(&ep);
        let v4: Vec<&Group> = d
            .iter()
            .filter(|(k, g)| k.0 == "IPv4" && !g.endpoints.is_empty())
            .map(|(_, g)| g)
            .collect();
        assert_eq!(v4.len(), 1);
        let ready: Vec<bool> = v4[0]
            .endpoints
            .iter()
            .map(|e| e["conditions"]["ready"] == true)
            .collect();
        assert_eq!(ready, vec![true, false]);
    }

    #[test]
    fn ports_serving_different_addresses_make_separate_groups() {
        // matches: RepackSubsets (ports grouped by the exact address set they serve) and
        // reconciler_helpers.go initPorts (one key per port set and address type)
        let ep = endpoints(json!([
            {"addresses": [{"ip": "198.51.100.1"}], "ports": [port("a", 1), port("b", 2)]},
            {"addresses": [{"ip": "198.51.100.2"}], "ports": [port("a", 1)]},
        ]));
        let groups: Vec<(usize, usize)> = desired_mirror(&ep)
            .values()
            .filter(|g| !g.endpoints.is_empty())
            .map(|g| (g.ports.len(), g.endpoints.len()))
            .collect();
        let mut groups = groups;
        groups.sort();
        // Port a serves both addresses, port b only the first.
        assert_eq!(groups, vec![(1, 1), (1, 2)]);
    }

    #[test]
    fn invalid_ips_are_skipped_and_mapped_ipv4_is_ipv4() {
        // matches: pkg/controller/endpointslicemirroring/utils.go addressToEndpoint
        let ep = endpoints(json!([{
            "addresses": [{"ip": "not-an-ip"}, {"ip": "::ffff:198.51.100.7"}],
            "ports": [port("a", 1)],
        }]));
        let all: Vec<(String, Value)> = desired_mirror(&ep)
            .into_iter()
            .flat_map(|(k, g)| {
                g.endpoints
                    .into_iter()
                    .map(move |e| (k.0.clone(), e["addresses"].clone()))
            })
            .collect();
        assert_eq!(all, vec![("IPv4".to_string(), json!(["198.51.100.7"]))]);
    }

    #[test]
    fn address_types_fall_back_to_the_cluster_ip_family_then_to_both() {
        // matches: staging/src/k8s.io/endpointslice/utils.go getAddressTypesForService
        let svc = |spec: Value| json!({"spec": spec});
        assert_eq!(
            service_address_types(&svc(json!({"ipFamilies": ["IPv6", "IPv4"]}))),
            vec!["IPv6", "IPv4"]
        );
        assert_eq!(
            service_address_types(&svc(json!({"clusterIP": "fd00:43::10"}))),
            vec!["IPv6"]
        );
        assert_eq!(
            service_address_types(&svc(json!({"clusterIP": "None"}))),
            vec!["IPv4", "IPv6"]
        );
    }

    #[test]
    fn an_empty_selector_is_no_selector() {
        // The controllers read Services through protobuf, where an empty map is nil.
        assert!(!has_selector(&json!({"spec": {"selector": {}}})));
        assert!(!has_selector(&json!({"spec": {}})));
        assert!(has_selector(&json!({"spec": {"selector": {"app": "web"}}})));
    }
}
