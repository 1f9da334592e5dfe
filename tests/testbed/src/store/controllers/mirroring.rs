//! The endpointslice-mirroring controller (pkg/controller/endpointslicemirroring): the core/v1
//! Endpoints of a Service without a selector, mirrored into EndpointSlices.
//!
//! Owns: whether an Endpoints is mirrored (skip-mirror label, leader-election annotation, a
//! Service without a selector), what is desired (addresses grouped by address type and port set,
//! as RepackSubsets groups them), reconciling the existing mirrored slices with that (updates,
//! recycled slices, deletes), and the labels and annotations a mirrored slice gets. Leaves the
//! switch, the work queue, listing the managed slices and carrying the writes out to
//! `controllers/mod.rs`.
//!
//! Simplifications: the order of ports and endpoints in a mirrored slice, which upstream takes
//! from hashes and sets, is sorted here; no Events are recorded for skipped addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{
    ANNOTATION_TRIGGER_TIME, ENDPOINTS, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_SKIP_MIRROR,
    MIRRORING_CONTROLLER, SERVICES, SLICES, Write, address_type, controller_ref, has_selector,
    label, list, slice_prefix, str_at, string_map, to_json,
};
use crate::store::{Inner, obj_key, resource_by_key};
use crate::validate;

/// resourcelock.LeaderElectionRecordAnnotationKey: Endpoints used as a leader-election lock are
/// not mirrored.
const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";
/// v1.LastAppliedConfigAnnotation (kubectl apply): never copied onto mirrored slices.
const ANNOTATION_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The mirroring controller's --mirroring-max-endpoints-per-subset default.
const MAX_ENDPOINTS_PER_SUBSET: usize = 1000;

impl Inner {
    /// pkg/controller/endpointslicemirroring/endpointslicemirroring_controller.go `syncEndpoints`
    /// followed by reconciler.go `reconcile`.
    pub(super) fn sync_mirroring(&mut self, ns: &str, name: &str) {
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

/// A group of mirrored endpoints: (addressType, the ports in canonical order as JSON), as
/// upstream's addrTypePortMapKey (address type + hash of the ports).
type PortKey = (String, String);

/// The desired ports and endpoints of one [`PortKey`].
#[derive(Debug, Default)]
struct Group {
    /// The slice's ports (canonical order).
    ports: Vec<Value>,
    /// The slice's endpoints (empty: slices of this key are to be deleted).
    endpoints: Vec<Value>,
}

/// The key of `ports` (already canonical) in `family`.
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

/// Endpoint ports as slice ports, sorted and deduplicated (upstream orders them by hash).
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
    let Some(r) = resource_by_key(SLICES) else {
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
}
