//! Shared test fixtures for the store's unit tests (compiled for tests only): a store with the
//! namespaces default and kube-system, resource handles, objects to write, and helpers to read watch
//! streams. Each job's tests sit at the bottom of that job's file and use these; the fixtures
//! themselves test nothing.

use serde_json::{Value, json};

use super::{RESOURCES, Resource, Store, Watch, WriteParams, rv_of, str_at};

/// The served resource `plural` of `group`.
pub(super) fn res(group: &str, plural: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .unwrap()
}
/// core/v1 Namespaces.
pub(super) fn ns_res() -> &'static Resource {
    res("", "namespaces")
}
/// discovery.k8s.io/v1 EndpointSlices.
pub(super) fn slices() -> &'static Resource {
    res("discovery.k8s.io", "endpointslices")
}
/// coordination.k8s.io/v1 Leases.
pub(super) fn leases() -> &'static Resource {
    res("coordination.k8s.io", "leases")
}
/// core/v1 Services.
pub(super) fn services() -> &'static Resource {
    res("", "services")
}

/// A store with namespaces "default" and "kube-system".
pub(super) fn store() -> Store {
    let s = Store::new();
    for n in ["default", "kube-system"] {
        s.create(
            ns_res(),
            None,
            json!({"metadata": {"name": n}}),
            &WriteParams::default(),
        )
        .unwrap();
    }
    s
}

/// An IPv4 EndpointSlice body with one ready endpoint per address and one https port.
pub(super) fn slice(name: &str, labels: Value, addrs: &[&str]) -> Value {
    json!({"metadata": {"name": name, "labels": labels}, "addressType": "IPv4",
           "endpoints": addrs.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
           "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]})
}

/// Creates `slice(name, labels, ["198.51.100.1"])` in "default"; returns it as stored.
pub(super) fn create_slice(s: &Store, name: &str, labels: Value) -> Value {
    s.create(
        slices(),
        Some("default"),
        slice(name, labels, &["198.51.100.1"]),
        &WriteParams::default(),
    )
    .unwrap()
}

/// A Lease body held by `holder` for 15 s.
pub(super) fn lease(name: &str, holder: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
}

/// An object's resourceVersion as a number.
pub(super) fn rv(o: &Value) -> u64 {
    rv_of(o).parse().unwrap()
}

/// Every event queued on `w` so far (the initial ones are in `w.initial`).
pub(super) fn drain(w: &mut Watch) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(ev) = w.events.try_recv() {
        out.push(ev);
    }
    out
}

/// "TYPE name" of each event, to compare streams at a glance.
pub(super) fn types(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                str_at(&e["object"], "/metadata/name")
            )
        })
        .collect()
}
