//! The garbage collector: what kube-controller-manager's garbagecollector controller does to
//! dependents whose owners are gone (pkg/controller/garbagecollector, background propagation).
//!
//! Owns: the collector's switch (off models a dead kube-controller-manager), the ownerReference
//! indexes (uid → object, owner uid → dependents), the decision for one dependent (delete it when
//! no owner exists, drop the references to absent owners when some still do), and the sweep of a
//! restarted collector. Leaves to the registry (`mod.rs`) the deletes and updates it asks for and
//! when it runs (after the write that may have orphaned something); leaves the namespace
//! controller's part to `namespaces.rs`.
//!
//! Simplification: the collector acts synchronously, inside the write that orphaned a dependent
//! (the real one works from informers, shortly after); foreground deletion and orphan
//! propagation are not modelled.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{Inner, ObjKey, ResKey, resource_by_key, str_at};

/// The collector's switch and indexes.
#[derive(Debug, Default)]
pub(super) struct Gc {
    /// The collector is off (a dead kube-controller-manager; default: on).
    off: bool,
    /// uid → where the object lives, for ownerReference lookups.
    uids: HashMap<String, (ResKey, ObjKey)>,
    /// owner uid → dependents, so a delete finds its dependents without a scan.
    dependents: HashMap<String, HashSet<(ResKey, ObjKey)>>,
}

impl Gc {
    /// Whether the collector runs (default: yes).
    pub(super) fn is_on(&self) -> bool {
        !self.off
    }

    /// Turns the collector on or off; the caller sweeps when it comes back on.
    pub(super) fn set_on(&mut self, on: bool) {
        self.off = !on;
    }

    /// Indexes a stored object: its uid, and it as a dependent of each of its owners.
    pub(super) fn index(&mut self, res: ResKey, key: &str, o: &Value) {
        self.uids.insert(
            str_at(o, "/metadata/uid").to_string(),
            (res, key.to_string()),
        );
        for u in owner_uids(o) {
            self.dependents
                .entry(u)
                .or_default()
                .insert((res, key.to_string()));
        }
    }

    /// Forgets what [`Gc::index`] recorded for `o` (its previous state, or its last one).
    pub(super) fn unindex(&mut self, res: ResKey, key: &str, o: &Value) {
        self.uids.remove(str_at(o, "/metadata/uid"));
        for u in owner_uids(o) {
            if let Some(set) = self.dependents.get_mut(&u) {
                set.remove(&(res, key.to_string()));
                if set.is_empty() {
                    self.dependents.remove(&u);
                }
            }
        }
    }

    /// Whether an owner with `uid` exists where the GC would look for it: cluster-scoped, or in
    /// the dependent's namespace.
    fn owner_exists(&self, uid: &str, dependent_ns: &str) -> bool {
        match self.uids.get(uid) {
            Some(((g, p), key)) => {
                let namespaced = resource_by_key((g, p)).is_some_and(|r| r.namespaced);
                !namespaced || key.split_once('/').map(|(ns, _)| ns) == Some(dependent_ns)
            }
            None => false,
        }
    }
}

impl Inner {
    /// The garbage collector's decision for one object with ownerReferences
    /// (pkg/controller/garbagecollector attemptToDeleteItem, background propagation): delete it
    /// when no owner exists; drop the references to absent owners when some still exist.
    pub(super) fn gc_check(&mut self, res: ResKey, key: &str) {
        let Some(o) = self.objects.get(&res).and_then(|m| m.get(key)).cloned() else {
            return;
        };
        let owners = owner_uids(&o);
        if owners.is_empty() {
            return;
        }
        let ns = str_at(&o, "/metadata/namespace");
        let alive: Vec<&String> = owners
            .iter()
            .filter(|u| self.gc.owner_exists(u, ns))
            .collect();
        if alive.is_empty() {
            self.remove(res, key);
        } else if alive.len() < owners.len() {
            let mut new = (*o).clone();
            if let Some(refs) = new
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                let alive: HashSet<String> = alive.into_iter().cloned().collect();
                refs.retain(|r| {
                    r.get("uid")
                        .and_then(Value::as_str)
                        .is_some_and(|u| alive.contains(u))
                });
            }
            self.put(res, key.to_string(), new, Some(o));
        }
    }

    /// Checks every dependent of the owner `uid` (after that owner was deleted).
    pub(super) fn collect_dependents(&mut self, uid: &str) {
        let deps: Vec<(ResKey, ObjKey)> = self
            .gc
            .dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for (res, key) in deps {
            self.gc_check(res, &key);
        }
    }

    /// What a restarted garbage collector does at once: check every object with owners (the
    /// namespace controller's part of a restart is [`Inner::finalize_terminating_namespaces`]).
    pub(super) fn gc_sweep(&mut self) {
        let all: Vec<(ResKey, ObjKey)> = self
            .objects
            .iter()
            .flat_map(|(res, m)| m.keys().map(|k| (*res, k.clone())))
            .collect();
        for (res, key) in all {
            self.gc_check(res, &key);
        }
    }
}

/// The uids in `o`'s ownerReferences.
fn owner_uids(o: &Value) -> Vec<String> {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::store::fixtures::*;
    use crate::store::{DeleteParams, WatchParams, WriteParams};

    // matches: https://kubernetes.io/docs/concepts/architecture/garbage-collection/#background-deletion
    #[test]
    fn deleting_an_owner_deletes_its_dependents_unless_garbage_collection_is_off() {
        let s = store();
        let svc = s
            .create(
                services(),
                Some("default"),
                json!({"metadata": {"name": "v"}, "spec": {"ports": [{"port": 1}]}}),
                &WriteParams::default(),
            )
            .unwrap();
        let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": "v", "uid": svc["metadata"]["uid"], "controller": true}]);
        let mut body = slice("v-1", json!({}), &["198.51.100.1"]);
        body["metadata"]["ownerReferences"] = owner.clone();
        s.create(
            slices(),
            Some("default"),
            body.clone(),
            &WriteParams::default(),
        )
        .unwrap();
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
        s.delete(services(), Some("default"), "v", &DeleteParams::default())
            .unwrap();
        assert_eq!(types(&drain(&mut w)), ["DELETED v-1"]);

        s.set_garbage_collection(false);
        let svc = s
            .create(
                services(),
                Some("default"),
                json!({"metadata": {"name": "v"}, "spec": {"ports": [{"port": 1}]}}),
                &WriteParams::default(),
            )
            .unwrap();
        body["metadata"]["ownerReferences"][0]["uid"] = svc["metadata"]["uid"].clone();
        s.create(slices(), Some("default"), body, &WriteParams::default())
            .unwrap();
        s.delete(services(), Some("default"), "v", &DeleteParams::default())
            .unwrap();
        assert!(
            s.get(slices(), Some("default"), "v-1").is_ok(),
            "a dead controller manager leaves dependents"
        );
        s.set_garbage_collection(true);
        assert_eq!(
            s.get(slices(), Some("default"), "v-1").unwrap_err().code,
            404,
            "a restarted one catches up"
        );
    }

    // matches: https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents (a dependent whose owner is absent is collected)
    #[test]
    fn a_dependent_created_with_only_absent_owners_is_collected() {
        let s = store();
        let mut body = slice("orphan", json!({}), &["198.51.100.1"]);
        body["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Service", "name": "gone", "uid": "5b0e9a4e-0000-4000-8000-000000000000"}]);
        let mut w = s.watch(slices(), None, &WatchParams::default()).unwrap();
        s.create(slices(), Some("default"), body, &WriteParams::default())
            .unwrap();
        assert_eq!(types(&drain(&mut w)), ["ADDED orphan", "DELETED orphan"]);
    }
}
