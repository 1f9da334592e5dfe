//! Tests of the registry through the Store API: reads, the write path (`writes.rs`: create,
//! replace, patch, status, delete, preconditions, dry run, generation, managedFields, no-op
//! writes), and robustness against malformed bodies. Each other job's tests sit at the bottom of
//! that job's file; the shared fixtures are in `fixtures.rs`.

use serde_json::{Value, json};

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
        .patch(
            leases(),
            Some("kube-system"),
            "l",
            PatchKind::Merge,
            json!({"metadata": {"resourceVersion": rv_of(&l)}, "spec": {"holderIdentity": "c"}}),
            &WriteParams::default(),
        )
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
        .patch(
            slices(),
            Some("default"),
            "a",
            PatchKind::Json,
            json!([{"op": "replace", "path": "/endpoints/0/addresses/0", "value": "127.0.0.1"}]),
            &WriteParams::default(),
        )
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
