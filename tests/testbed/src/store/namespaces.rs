//! Namespaces: their lifecycle around the objects in them, as kube-apiserver's NamespaceLifecycle
//! admission plugin (plugin/pkg/admission/namespace/lifecycle), the namespace REST storage
//! (pkg/registry/core/namespace/storage: a DELETE sets phase Terminating) and kube-controller-manager's
//! namespace controller (pkg/controller/namespace: empty it, then remove it) do it.
//!
//! Owns: refusing to delete the immortal namespaces, refusing writes into a namespace that is
//! missing or Terminating, deleting a namespace with its contents, and finishing the namespaces a
//! dead controller manager left Terminating. Leaves the namespace strategy's update rules (status
//! and `spec.finalizers` kept) to the registry's write path, the storage of the Namespace objects
//! to the registry (`mod.rs`), and whether kube-controller-manager runs to the garbage collector's
//! switch (`gc.rs`).
//!
//! Simplification: while the garbage collector is on, a deleted namespace and its contents go at
//! once, even contents that carry finalizers (the real namespace passes through Terminating while
//! the namespace controller empties it, and waits for those finalizers).

use serde_json::{Value, json};

use super::{ApiError, Inner, ObjKey, ResKey, Resource, details, meta, str_at};

/// Storage identity of Namespaces.
const NAMESPACES: ResKey = ("", "namespaces");

/// Namespaces the NamespaceLifecycle admission plugin never lets go (its immortal set).
const IMMORTAL: [&str; 3] = ["default", "kube-system", "kube-public"];

/// The NamespaceLifecycle admission for a DELETE of `name` of `r`.
///
/// # Errors
/// 403 Forbidden for an immortal namespace.
pub(super) fn admit_delete(r: &Resource, name: &str) -> Result<(), ApiError> {
    if r.key() == NAMESPACES && IMMORTAL.contains(&name) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("namespaces {name:?} is forbidden: this namespace may not be deleted"),
            Some(details(r, name)),
        ));
    }
    Ok(())
}

/// The 404 for a namespace that does not exist (details name the namespace, not the object).
fn namespace_not_found(ns: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("namespaces {ns:?} not found"),
        Some(json!({"name": ns, "kind": "namespaces"})),
    )
}

impl Inner {
    /// Namespace deletion. Simplified: with the GC on, the contents and the namespace go at once
    /// (the real one passes through phase Terminating while the namespace controller empties it);
    /// with the GC off (no kube-controller-manager), it stays Terminating, as for real.
    pub(super) fn delete_namespace(&mut self, name: &str) -> Value {
        let res = NAMESPACES;
        let Some(old) = self.objects.get(&res).and_then(|m| m.get(name)).cloned() else {
            return Value::Null;
        };
        let mut term = (*old).clone();
        if term.pointer("/metadata/deletionTimestamp").is_none() {
            term["metadata"]["deletionTimestamp"] = json!(meta::now());
            term["status"] = json!({"phase": "Terminating"});
        }
        if !self.gc.is_on() {
            if str_at(&old, "/status/phase") == "Terminating" {
                return (*old).clone();
            }
            return (*self.put(res, name.to_string(), term, Some(old))).clone();
        }
        let mut last = self.finalize_namespace(name);
        // The DELETE response shows the namespace as the request left it: Terminating.
        if let Some(m) = last.get_mut("metadata") {
            m["deletionTimestamp"] = term["metadata"]["deletionTimestamp"].clone();
        }
        last["status"] = json!({"phase": "Terminating"});
        last
    }

    /// What a restarted namespace controller does at once: finish every namespace left
    /// Terminating while kube-controller-manager was down.
    pub(super) fn finalize_terminating_namespaces(&mut self) {
        let terminating: Vec<String> = self
            .objects
            .get(&NAMESPACES)
            .map(|m| {
                m.values()
                    .filter(|n| str_at(n, "/status/phase") == "Terminating")
                    .map(|n| str_at(n, "/metadata/name").to_string())
                    .collect()
            })
            .unwrap_or_default();
        for ns in terminating {
            self.finalize_namespace(&ns);
        }
    }

    /// Deletes everything in namespace `name`, then the namespace itself (what the namespace
    /// controller does before it removes the `kubernetes` finalizer); returns its last state.
    fn finalize_namespace(&mut self, name: &str) -> Value {
        let prefix = format!("{name}/");
        let keys: Vec<(ResKey, ObjKey)> = self
            .objects
            .iter()
            .flat_map(|(res, m)| {
                m.range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| (*res, k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (res, key) in keys {
            if self.objects.get(&res).is_some_and(|m| m.contains_key(&key)) {
                self.remove(res, &key);
            }
        }
        self.remove(NAMESPACES, name)
    }

    /// The NamespaceLifecycle admission for creating `name` of `r` in `ns` (None: cluster-scoped,
    /// always admitted).
    ///
    /// # Errors
    /// 404 NotFound (`namespaces "x" not found`) for a missing namespace; 403 Forbidden for one
    /// that is Terminating.
    pub(super) fn check_namespace(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        let Some(ns) = ns else { return Ok(()) };
        match self.objects.get(&NAMESPACES).and_then(|m| m.get(ns)) {
            None => Err(namespace_not_found(ns)),
            Some(n) if str_at(n, "/status/phase") == "Terminating" => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    r.group_resource()
                ),
                Some(details(r, name)),
            )),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::store::fixtures::*;
    use crate::store::{DeleteParams, WriteParams};

    // matches: https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/#namespacelifecycle
    #[test]
    fn create_in_a_missing_namespace_is_not_found() {
        let s = store();
        let e = s
            .create(
                slices(),
                Some("nope"),
                slice("a", json!({}), &["198.51.100.1"]),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
        assert_eq!(e.message, "namespaces \"nope\" not found");
        assert_eq!(e.status()["details"]["kind"], "namespaces");
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/ (deleting a namespace deletes everything in it)
    #[test]
    fn deleting_a_namespace_deletes_its_contents() {
        let s = store();
        s.create(
            ns_res(),
            None,
            json!({"metadata": {"name": "t"}}),
            &WriteParams::default(),
        )
        .unwrap();
        s.create(
            slices(),
            Some("t"),
            slice("a", json!({}), &["198.51.100.1"]),
            &WriteParams::default(),
        )
        .unwrap();
        create_slice(&s, "keep", json!({}));
        let d = s
            .delete(ns_res(), None, "t", &DeleteParams::default())
            .unwrap();
        assert_eq!(d["status"]["phase"], "Terminating");
        assert_eq!(s.get(slices(), Some("t"), "a").unwrap_err().code, 404);
        assert_eq!(s.get(ns_res(), None, "t").unwrap_err().code, 404);
        assert!(s.get(slices(), Some("default"), "keep").is_ok());
        let e = s
            .delete(ns_res(), None, "default", &DeleteParams::default())
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                403,
                "namespaces \"default\" is forbidden: this namespace may not be deleted"
            )
        );
        s.set_garbage_collection(false);
        s.create(
            ns_res(),
            None,
            json!({"metadata": {"name": "u"}}),
            &WriteParams::default(),
        )
        .unwrap();
        s.delete(ns_res(), None, "u", &DeleteParams::default())
            .unwrap();
        let e = s
            .create(
                slices(),
                Some("u"),
                slice("a", json!({}), &["198.51.100.1"]),
                &WriteParams::default(),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
        assert!(e.message.ends_with(
            "unable to create new content in namespace u because it is being terminated"
        ));
    }

    // matches: https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/ (a namespace stays Terminating until the namespace controller has emptied it)
    #[test]
    fn a_namespace_left_terminating_by_a_dead_controller_manager_goes_when_it_restarts() {
        let s = store();
        s.create(
            ns_res(),
            None,
            json!({"metadata": {"name": "t"}}),
            &WriteParams::default(),
        )
        .unwrap();
        s.create(
            slices(),
            Some("t"),
            slice("a", json!({}), &["198.51.100.1"]),
            &WriteParams::default(),
        )
        .unwrap();
        s.set_garbage_collection(false);
        s.delete(ns_res(), None, "t", &DeleteParams::default())
            .unwrap();
        assert_eq!(
            s.get(ns_res(), None, "t").unwrap()["status"]["phase"],
            "Terminating"
        );
        assert!(s.get(slices(), Some("t"), "a").is_ok());
        s.set_garbage_collection(true);
        assert_eq!(s.get(slices(), Some("t"), "a").unwrap_err().code, 404);
        assert_eq!(s.get(ns_res(), None, "t").unwrap_err().code, 404);
    }
}
