//! The registry's write path: what k8s.io/apiserver/pkg/registry/generic/registry/store.go
//! (Create, Update, Delete), rest.BeforeCreate / BeforeUpdate and each resource's strategy do to
//! a write before it is stored.
//!
//! Owns: decoding a body against its URL (apiVersion, kind, namespace, name), applying merge and
//! JSON patches (and the 415 for the patch types not modelled), name generation, system metadata
//! on create and what an update keeps from the stored object, preconditions and the optimistic
//! concurrency conflict, the strategies' rules the test bed models (status as a subresource,
//! generation of EndpointSlices, namespace `spec.finalizers`, Service allocations carried over),
//! managedFields, dropping a write that changes nothing, dry run, and deletion with finalizers.
//! Leaves storage, the global resourceVersion and the watch fan-out to the registry core
//! (`mod.rs`), defaults and validation to `validate.rs`, system metadata values to `meta.rs`,
//! patch mechanics to `patch.rs`, Service IPs and ports to `allocator.rs`, namespace rules to
//! `namespaces.rs`, and dependents to `gc.rs`.
//!
//! Simplifications: managedFields are recorded only when a fieldManager is given, one entry per
//! manager and operation; strategic merge patch and server-side apply are answered with 415.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    ApiError, DeleteParams, Inner, MODIFIED_MSG, PatchKind, Resource, WriteParams, allocator,
    already_exists, conflict, has_finalizers, meta, not_found, obj_key, rv_of, set_rv, str_at,
};
use crate::patch;
use crate::validate::{self, FieldError, bad_request, invalid_error};

/// The 415 for patch types the test bed does not implement (endpoint-copier sends neither
/// strategic merge nor apply patches; docs/development/testing.md says so too).
pub(super) fn unsupported_patch(kind: PatchKind) -> Option<ApiError> {
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
pub(super) fn prepare_body(
    r: &Resource,
    ns: Option<&str>,
    body: &mut Value,
) -> Result<(), ApiError> {
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

/// The 400 for a body (or patched object) whose metadata.name is not the name in the URL.
pub(super) fn check_url_name(doc: &Value, name: &str) -> Result<(), ApiError> {
    let body_name = str_at(doc, "/metadata/name");
    if body_name != name {
        return Err(bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

impl Inner {
    /// PUT: an update of the stored object, or for AllowCreateOnUpdate kinds a create.
    pub(super) fn replace(
        &mut self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        match self.get(r, &obj_key(ns, name)) {
            Some(old) => self.update(r, ns, name, body, old, p, "Update"),
            // AllowCreateOnUpdate kinds (Services, Endpoints, Leases) create on PUT, whatever
            // resourceVersion the body carries (registry Store.Update: no precondition applies to
            // an object that does not exist; storage drops the field).
            None if r.allow_create_on_update() => {
                if let Some(m) = body["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                self.create(r, ns, body, p)
            }
            None => Err(not_found(r, name)),
        }
    }

    /// PATCH: `patch` applied to the stored object, then handled as an update.
    pub(super) fn patch(
        &mut self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(r, &obj_key(ns, name))
            .ok_or_else(|| not_found(r, name))?;
        let mut doc = apply_patch(&old, kind, patch)?;
        prepare_body(r, ns, &mut doc)?;
        check_url_name(&doc, name)?;
        self.update(r, ns, name, doc, old, p, "Update")
    }

    /// PUT `.../status`: only the status of `body` is taken.
    pub(super) fn replace_status(
        &mut self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        body: &Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(r, &obj_key(ns, name))
            .ok_or_else(|| not_found(r, name))?;
        self.update_status(r, ns, name, body, old, p)
    }

    /// PATCH `.../status`: `patch` applied to the whole stored object, only the status kept.
    pub(super) fn patch_status(
        &mut self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        p: &WriteParams,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(r, &obj_key(ns, name))
            .ok_or_else(|| not_found(r, name))?;
        let doc = apply_patch(&old, kind, patch)?;
        self.update_status(r, ns, name, &doc, old, p)
    }

    /// DELETE: preconditions, then namespace deletion, marking an object with finalizers, or
    /// removing it (and, with the garbage collector on, its dependents).
    pub(super) fn delete(
        &mut self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        p: &DeleteParams,
    ) -> Result<Value, ApiError> {
        let key = obj_key(ns, name);
        let old = self.get(r, &key).ok_or_else(|| not_found(r, name))?;
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
        if r.key() == ("", "namespaces") {
            return Ok(self.delete_namespace(name));
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
            return Ok((*self.put(r.key(), key, marked, Some(old))).clone());
        }
        Ok(self.remove(r.key(), &key))
    }

    /// registry Store.Create after decoding: name generation, NamespaceLifecycle, system metadata
    /// (rest.BeforeCreate), defaults, Service allocation, validation, then storage.
    pub(super) fn create(
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

    /// registry Store.Update of an existing object: preconditions, rest.BeforeUpdate, the
    /// strategies' PrepareForUpdate, validation, generation, managedFields, then storage (a write
    /// that changes nothing is not stored).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn update(
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
