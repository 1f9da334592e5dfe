//! The endpointslice controller (pkg/controller/endpointslice, with the reconciler of
//! staging/src/k8s.io/endpointslice): EndpointSlices for Services with a selector.
//!
//! Owns: syncing one Service (which families it serves, the placeholder slice it gets with no
//! Pods, recycling a slice it owns, the last-change-trigger-time annotation on a first sync) and
//! the helpers that follow upstream's utils.go. Leaves the switch, the work queue, listing the
//! managed slices and carrying the writes out to `controllers/mod.rs`.
//!
//! Simplification: Pods are not modelled, so a Service with a selector only ever gets the
//! controller's *placeholder* slice (no endpoints, no ports).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    ANNOTATION_TRIGGER_TIME, ENDPOINTSLICE_CONTROLLER, LABEL_HEADLESS, LABEL_MANAGED_BY,
    LABEL_SERVICE_NAME, SERVICES, Write, address_type, controller_ref, has_selector, list,
    slice_prefix, str_at, string_map, to_json,
};
use crate::store::{Inner, obj_key};

impl Inner {
    /// pkg/controller/endpointslice/endpointslice_controller.go `syncService` followed by
    /// staging/src/k8s.io/endpointslice/reconciler.go `Reconcile`, with no Pods.
    pub(super) fn sync_service(&mut self, ns: &str, name: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
