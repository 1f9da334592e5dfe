//! The kube-controller-manager controllers the test bed runs besides the garbage collector, seen
//! through the API as a client sees them: the endpointslice controller
//! (pkg/controller/endpointslice, staging/src/k8s.io/endpointslice) and the endpointslice-mirroring
//! controller (pkg/controller/endpointslicemirroring). Each test cites the upstream file whose
//! behaviour it pins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use endpoint_copier_testbed::TestBed;
use endpoint_copier_testbed::store::{self, ListParams};

use common::client;

const CONTROLLER: &str = "endpointslice-controller.k8s.io";
const MIRRORING: &str = "endpointslicemirroring-controller.k8s.io";

/// The slices of `service` in `default` managed by `manager`, as stored (raw JSON, sorted by name).
fn slices_of(bed: &TestBed, service: &str, manager: &str) -> Vec<Value> {
    let r = store::resource("discovery.k8s.io", "v1", "endpointslices").unwrap();
    let p = ListParams {
        label_selector: Some(format!(
            "kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by={manager}"
        )),
        ..ListParams::default()
    };
    let list = bed.store().list(r, Some("default"), &p).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn service(v: Value) -> Service {
    serde_json::from_value(v).unwrap()
}

/// A Service with selector app=web.
fn web(name: &str) -> Service {
    service(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"team": "a"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
}

/// A Service without selector, like kubernetes-vip.
fn vip(name: &str) -> Service {
    service(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "k8s-api", "port": 6443}]},
    }))
}

fn endpoints(v: Value) -> Endpoints {
    serde_json::from_value(v).unwrap()
}

/// Endpoints `name` with one subset: `ready` and `not_ready` addresses, port https 6443.
fn eps(name: &str, ready: &[&str], not_ready: &[&str]) -> Endpoints {
    let addrs = |a: &[&str]| a.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>();
    endpoints(json!({
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [{
            "addresses": addrs(ready), "notReadyAddresses": addrs(not_ready),
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        }],
    }))
}

async fn apis(bed: &TestBed) -> (Api<Service>, Api<Endpoints>, Api<EndpointSlice>) {
    let c = client(bed.kubeconfig()).await;
    (
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c.clone(), "default"),
        Api::namespaced(c, "default"),
    )
}

fn ready_of(slice: &Value) -> Vec<(String, bool)> {
    slice["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .map(|e| {
                    (
                        e["addresses"][0].as_str().unwrap().to_string(),
                        e["conditions"]["ready"].as_bool().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---- endpointslice controller -------------------------------------------------------------------

#[tokio::test]
async fn a_service_with_a_selector_gets_a_placeholder_slice_from_the_endpointslice_controller() {
    // matches: staging/src/k8s.io/endpointslice/reconciler.go (no Pods: "When no endpoint slices
    // would usually exist, we need to add a placeholder", ports [] and endpoints []) and utils.go
    // newEndpointSlice (generateName "<svc>-", controller ownerReference, setEndpointSliceLabels)
    let bed = TestBed::start().await;
    let (services, _, _) = apis(&bed).await;
    let mut svc = web("web");
    svc.metadata.labels.as_mut().unwrap().extend([
        // Reserved labels on the Service are not copied.
        (
            "kubernetes.io/service-name".to_string(),
            "other".to_string(),
        ),
        (
            "endpointslice.kubernetes.io/managed-by".to_string(),
            "someone".to_string(),
        ),
    ]);
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let slices = slices_of(&bed, "web", CONTROLLER);
    assert_eq!(slices.len(), 1, "{slices:#?}");
    let s = &slices[0];
    let md = &s["metadata"];
    assert_eq!(md["generateName"], "web-");
    assert!(md["name"].as_str().unwrap().starts_with("web-"));
    assert_eq!(md["name"].as_str().unwrap().len(), "web-".len() + 5);
    assert_eq!(
        md["labels"],
        json!({"team": "a", "kubernetes.io/service-name": "web",
            "endpointslice.kubernetes.io/managed-by": CONTROLLER})
    );
    assert_eq!(
        md["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Service", "name": "web",
            "uid": svc.metadata.uid.unwrap(), "controller": true, "blockOwnerDeletion": true}])
    );
    // TriggerTimeTracker: a Service's first sync uses its creationTimestamp.
    assert_eq!(
        md["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"],
        json!(svc.metadata.creation_timestamp.unwrap().0.to_string())
    );
    assert_eq!(s["addressType"], "IPv4");
    assert_eq!(
        s["endpoints"],
        Value::Null,
        "an empty slice reads back as null"
    );
    assert_eq!(s["ports"], Value::Null);
    // Written through the store like any object.
    assert!(!md["uid"].as_str().unwrap().is_empty());
    assert!(md["creationTimestamp"].is_string());
    assert_eq!(md["generation"], 1);
    assert!(
        md["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(md["managedFields"][0]["manager"], "kube-controller-manager");
}

#[tokio::test]
async fn a_watch_sees_the_controllers_slice_added_after_the_service() {
    let bed = TestBed::start().await;
    let (services, _, slices) = apis(&bed).await;
    let mut stream = slices
        .watch(&WatchParams::default().timeout(10), "0")
        .await
        .unwrap()
        .boxed();
    let svc = services
        .create(&PostParams::default(), &web("web"))
        .await
        .unwrap();
    let ev = stream.try_next().await.unwrap().unwrap();
    let WatchEvent::Added(s) = ev else {
        panic!("expected ADDED, got {ev:?}")
    };
    assert_eq!(
        s.metadata.labels.unwrap()["kubernetes.io/service-name"],
        "web"
    );
    let (svc_rv, slice_rv): (u64, u64) = (
        svc.metadata.resource_version.unwrap().parse().unwrap(),
        s.metadata.resource_version.unwrap().parse().unwrap(),
    );
    assert!(
        slice_rv > svc_rv,
        "the slice follows the Service that caused it"
    );
}

#[tokio::test]
async fn a_dual_stack_service_gets_one_placeholder_per_address_type() {
    // matches: staging/src/k8s.io/endpointslice/utils.go getAddressTypesForService (ipFamilies)
    let bed = TestBed::start().await;
    let (services, _, _) = apis(&bed).await;
    let mut svc = web("web");
    svc.spec.as_mut().unwrap().ip_family_policy = Some("RequireDualStack".into());
    services.create(&PostParams::default(), &svc).await.unwrap();
    let mut types: Vec<String> = slices_of(&bed, "web", CONTROLLER)
        .iter()
        .map(|s| s["addressType"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    assert_eq!(types, vec!["IPv4", "IPv6"]);
}

#[tokio::test]
async fn a_headless_services_slice_carries_the_headless_label() {
    // matches: staging/src/k8s.io/endpointslice/utils.go setEndpointSliceLabels (isServiceIPSet)
    let bed = TestBed::start().await;
    let (services, _, _) = apis(&bed).await;
    let mut svc = web("web");
    svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    services.create(&PostParams::default(), &svc).await.unwrap();
    let slices = slices_of(&bed, "web", CONTROLLER);
    assert_eq!(
        slices[0]["metadata"]["labels"]["service.kubernetes.io/headless"],
        ""
    );
}

#[tokio::test]
async fn service_label_changes_are_copied_onto_the_same_slice() {
    // matches: staging/src/k8s.io/endpointslice/reconciler.go finalize (the replacement placeholder
    // becomes an update of the slice it replaces) and addTriggerTimeAnnotation (no new trigger time:
    // the annotation goes)
    let bed = TestBed::start().await;
    let (services, _, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &web("web"))
        .await
        .unwrap();
    let before = slices_of(&bed, "web", CONTROLLER).remove(0);
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "b", "tier": "front"}}})),
        )
        .await
        .unwrap();
    let after = slices_of(&bed, "web", CONTROLLER);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(after[0]["metadata"]["labels"]["team"], "b");
    assert_eq!(after[0]["metadata"]["labels"]["tier"], "front");
    assert_eq!(after[0]["metadata"]["generation"], 2);
    assert!(after[0]["metadata"]["annotations"].is_null());
}

#[tokio::test]
async fn a_service_that_loses_its_selector_keeps_its_stale_slice_until_it_is_deleted() {
    // matches: pkg/controller/endpointslice/endpointslice_controller.go syncService (returns before
    // listing slices when Spec.Selector == nil: "services without a selector receive no endpoint
    // slices from this controller"), then the garbage collector through the ownerReference
    let bed = TestBed::start().await;
    let (services, _, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &web("web"))
        .await
        .unwrap();
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": null}})),
        )
        .await
        .unwrap();
    assert_eq!(slices_of(&bed, "web", CONTROLLER).len(), 1);
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert!(slices_of(&bed, "web", CONTROLLER).is_empty());
}

#[tokio::test]
async fn a_service_without_selector_or_of_type_external_name_gets_no_slice() {
    // matches: pkg/controller/endpointslice/endpointslice_controller.go syncService
    let bed = TestBed::start().await;
    let (services, _, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    let mut ext = web("ext");
    let spec = ext.spec.as_mut().unwrap();
    spec.type_ = Some("ExternalName".into());
    spec.external_name = Some("example.org".into());
    spec.ports = None;
    services.create(&PostParams::default(), &ext).await.unwrap();
    assert!(slices_of(&bed, "vip", CONTROLLER).is_empty());
    assert!(slices_of(&bed, "ext", CONTROLLER).is_empty());
    assert!(slices_of(&bed, "kubernetes", CONTROLLER).is_empty());
}

#[tokio::test]
async fn a_managed_slice_changed_by_someone_else_is_reset_in_place() {
    // matches: pkg/controller/endpointslice/endpointslice_controller.go onEndpointSliceUpdate
    // (a managed slice the controller did not write is resynced) and reconciler.go (endpoints
    // nobody wants are removed)
    let bed = TestBed::start().await;
    let (services, _, slices) = apis(&bed).await;
    services
        .create(&PostParams::default(), &web("web"))
        .await
        .unwrap();
    let name = slices_of(&bed, "web", CONTROLLER)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    slices
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [{"addresses": ["198.51.100.9"]}]})),
        )
        .await
        .unwrap();
    let now = slices_of(&bed, "web", CONTROLLER);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["metadata"]["name"], json!(name));
    assert_eq!(now[0]["endpoints"], Value::Null);
}

#[tokio::test]
async fn endpointslice_controller_off_writes_nothing_and_catches_up_when_back_on() {
    let bed = TestBed::start().await;
    let (services, _, _) = apis(&bed).await;
    bed.set_endpointslice_controller(false);
    services
        .create(&PostParams::default(), &web("web"))
        .await
        .unwrap();
    assert!(slices_of(&bed, "web", CONTROLLER).is_empty());
    bed.set_endpointslice_controller(true);
    assert_eq!(slices_of(&bed, "web", CONTROLLER).len(), 1);
}

// ---- endpointslice-mirroring controller ---------------------------------------------------------

#[tokio::test]
async fn the_endpoints_of_a_selectorless_service_are_mirrored() {
    // matches: pkg/controller/endpointslicemirroring/utils.go newEndpointSlice (labels copied, then
    // service-name and managed-by; annotations but the trigger time and last-applied; controller
    // ownerReference to the Endpoints; generateName "<name>-") and addressToEndpoint (ready
    // addresses ready: true, notReadyAddresses ready: false, nodeName and hostname kept)
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    let ep = endpoints(json!({
        "metadata": {"name": "vip", "namespace": "default",
            "labels": {"serviceType": "kubernetes-vip"},
            "annotations": {"note": "kept",
                "endpoints.kubernetes.io/last-change-trigger-time": "2025-01-01T00:00:00Z",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "subsets": [{
            "addresses": [{"ip": "198.51.100.1", "nodeName": "node-1", "hostname": "cp1"}],
            "notReadyAddresses": [{"ip": "198.51.100.2"}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        }],
    }));
    let ep = endpoints_api
        .create(&PostParams::default(), &ep)
        .await
        .unwrap();
    let slices = slices_of(&bed, "vip", MIRRORING);
    assert_eq!(slices.len(), 1, "{slices:#?}");
    let s = &slices[0];
    let md = &s["metadata"];
    assert_eq!(md["generateName"], "vip-");
    assert_eq!(
        md["labels"],
        json!({"serviceType": "kubernetes-vip", "kubernetes.io/service-name": "vip",
            "endpointslice.kubernetes.io/managed-by": MIRRORING})
    );
    assert_eq!(md["annotations"], json!({"note": "kept"}));
    assert_eq!(
        md["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Endpoints", "name": "vip",
            "uid": ep.metadata.uid.unwrap(), "controller": true, "blockOwnerDeletion": true}])
    );
    assert_eq!(s["addressType"], "IPv4");
    assert_eq!(
        s["ports"],
        json!([{"name": "https", "port": 6443, "protocol": "TCP"}])
    );
    assert_eq!(
        s["endpoints"],
        json!([
            {"addresses": ["198.51.100.1"], "conditions": {"ready": true}, "nodeName": "node-1",
                "hostname": "cp1"},
            {"addresses": ["198.51.100.2"], "conditions": {"ready": false}},
        ])
    );
    assert_eq!(md["generation"], 1);
}

#[tokio::test]
async fn addresses_of_two_families_are_mirrored_into_one_slice_each() {
    // matches: pkg/controller/endpointslicemirroring/reconciler_helpers.go initPorts/addAddress
    // (one addrTypePortMapKey per address type)
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(
            &PostParams::default(),
            &eps("vip", &["198.51.100.1", "2001:db8::1"], &[]),
        )
        .await
        .unwrap();
    let mut got: Vec<(String, Vec<(String, bool)>)> = slices_of(&bed, "vip", MIRRORING)
        .iter()
        .map(|s| (s["addressType"].as_str().unwrap().to_string(), ready_of(s)))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("IPv4".to_string(), vec![("198.51.100.1".to_string(), true)]),
            ("IPv6".to_string(), vec![("2001:db8::1".to_string(), true)]),
        ]
    );
}

#[tokio::test]
async fn a_changed_endpoints_object_updates_its_mirrored_slice_in_place() {
    // matches: pkg/controller/endpointslicemirroring/reconciler.go reconcileByPortMapping (the first
    // existing slice of a port mapping is updated under its own name)
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("vip", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    let before = slices_of(&bed, "vip", MIRRORING).remove(0);
    endpoints_api
        .replace(
            "vip",
            &PostParams::default(),
            &eps("vip", &["198.51.100.1"], &["198.51.100.3"]),
        )
        .await
        .unwrap();
    let after = slices_of(&bed, "vip", MIRRORING);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        ready_of(&after[0]),
        vec![
            ("198.51.100.1".to_string(), true),
            ("198.51.100.3".to_string(), false)
        ]
    );
}

#[tokio::test]
async fn an_unchanged_endpoints_write_leaves_the_mirrored_slice_alone() {
    // matches: pkg/controller/endpointslicemirroring/reconciler.go reconcileByPortMapping ("Return
    // early if first slice matches desired endpoints, labels and annotations")
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("vip", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    let before = slices_of(&bed, "vip", MIRRORING).remove(0);
    endpoints_api
        .patch(
            "vip",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time": "2025-01-01T00:00:00Z"}}})),
        )
        .await
        .unwrap();
    let after = slices_of(&bed, "vip", MIRRORING).remove(0);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn deleting_the_endpoints_deletes_the_mirrored_slices() {
    // matches: pkg/controller/endpointslicemirroring/endpointslicemirroring_controller.go
    // syncEndpoints ("Endpoints not found, cleaning up any mirrored EndpointSlices")
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("vip", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    bed.set_garbage_collection(false); // the controller itself deletes them, not only the GC
    endpoints_api
        .delete("vip", &DeleteParams::default())
        .await
        .unwrap();
    assert!(slices_of(&bed, "vip", MIRRORING).is_empty());
}

#[tokio::test]
async fn labelling_the_endpoints_skip_mirror_deletes_the_mirrored_slices() {
    // matches: pkg/controller/endpointslicemirroring/utils.go skipMirror and
    // endpointslicemirroring_controller.go syncEndpoints ("Endpoints should not be mirrored")
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("vip", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    assert_eq!(slices_of(&bed, "vip", MIRRORING).len(), 1);
    endpoints_api
        .patch(
            "vip",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "endpointslice.kubernetes.io/skip-mirror": "true"}}})),
        )
        .await
        .unwrap();
    assert!(slices_of(&bed, "vip", MIRRORING).is_empty());
}

#[tokio::test]
async fn endpoints_with_skip_mirror_or_a_leader_election_record_are_never_mirrored() {
    // matches: pkg/controller/endpointslicemirroring/endpointslicemirroring_controller.go
    // shouldMirror (skip-mirror label; resourcelock.LeaderElectionRecordAnnotationKey) — the
    // apiserver's own default/kubernetes Endpoints carries skip-mirror (pkg/controlplane/reconcilers)
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    for name in ["skip", "leader"] {
        services
            .create(&PostParams::default(), &vip(name))
            .await
            .unwrap();
    }
    let mut skip = eps("skip", &["198.51.100.1"], &[]);
    skip.metadata.labels = Some(
        [(
            "endpointslice.kubernetes.io/skip-mirror".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let mut leader = eps("leader", &["198.51.100.1"], &[]);
    leader.metadata.annotations = Some(
        [(
            "control-plane.alpha.kubernetes.io/leader".to_string(),
            "{}".to_string(),
        )]
        .into(),
    );
    endpoints_api
        .create(&PostParams::default(), &skip)
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &leader)
        .await
        .unwrap();
    assert!(slices_of(&bed, "skip", MIRRORING).is_empty());
    assert!(slices_of(&bed, "leader", MIRRORING).is_empty());
}

#[tokio::test]
async fn endpoints_without_a_selectorless_service_are_not_mirrored() {
    // matches: pkg/controller/endpointslicemirroring/endpointslicemirroring_controller.go
    // syncEndpoints ("Service not found", "Service now has selector")
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    endpoints_api
        .create(
            &PostParams::default(),
            &eps("lonely", &["198.51.100.1"], &[]),
        )
        .await
        .unwrap();
    services
        .create(&PostParams::default(), &web("web"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("web", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    assert!(slices_of(&bed, "lonely", MIRRORING).is_empty());
    assert!(slices_of(&bed, "web", MIRRORING).is_empty());
    // The Service appearing later starts the mirroring.
    services
        .create(&PostParams::default(), &vip("lonely"))
        .await
        .unwrap();
    assert_eq!(slices_of(&bed, "lonely", MIRRORING).len(), 1);
}

#[tokio::test]
async fn a_service_that_gets_a_selector_loses_its_mirrored_slices() {
    // matches: pkg/controller/endpointslicemirroring/endpointslicemirroring_controller.go
    // syncEndpoints ("Service now has selector, cleaning up any mirrored EndpointSlices")
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("vip", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    services
        .patch(
            "vip",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"app": "web"}}})),
        )
        .await
        .unwrap();
    assert!(slices_of(&bed, "vip", MIRRORING).is_empty());
    // ... and gets the endpointslice controller's placeholder instead.
    assert_eq!(slices_of(&bed, "vip", CONTROLLER).len(), 1);
}

#[tokio::test]
async fn deleting_the_service_deletes_the_mirrored_slices() {
    // matches: pkg/controller/endpointslicemirroring/endpointslicemirroring_controller.go
    // onServiceDelete + syncEndpoints ("Service not found")
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("vip", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    services
        .delete("vip", &DeleteParams::default())
        .await
        .unwrap();
    assert!(slices_of(&bed, "vip", MIRRORING).is_empty());
}

#[tokio::test]
async fn a_subset_without_ports_is_mirrored_into_a_slice_without_ports() {
    // matches: pkg/api/v1/endpoints/util.go RepackSubsets (a subset without ports maps its
    // addresses to the sentinel EndpointPort{Port: -1}, kept with nil ports), which the mirroring
    // reconciler applies first; seen on a real 1.28 control plane, where such an Endpoints object
    // put its address on the VIP
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    let ep = endpoints(json!({
        "metadata": {"name": "vip", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "198.51.100.200"}]}],
    }));
    endpoints_api
        .create(&PostParams::default(), &ep)
        .await
        .unwrap();
    let mirrored = slices_of(&bed, "vip", MIRRORING);
    assert_eq!(mirrored.len(), 1, "{mirrored:?}");
    let slice = &mirrored[0];
    assert_eq!(slice["addressType"], "IPv4");
    assert!(
        slice["ports"].as_array().is_none_or(Vec::is_empty),
        "no ports: {slice}"
    );
    assert_eq!(slice["endpoints"][0]["addresses"][0], "198.51.100.200");
}

#[tokio::test]
async fn mirroring_off_writes_nothing_and_catches_up_when_back_on() {
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    bed.set_endpointslice_mirroring(false);
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("vip", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    assert!(slices_of(&bed, "vip", MIRRORING).is_empty());
    bed.set_endpointslice_mirroring(true);
    assert_eq!(slices_of(&bed, "vip", MIRRORING).len(), 1);
}

#[tokio::test]
async fn a_dead_controller_manager_leaves_every_slice_where_it_is() {
    let bed = TestBed::start().await;
    let (services, endpoints_api, _) = apis(&bed).await;
    services
        .create(&PostParams::default(), &web("web"))
        .await
        .unwrap();
    services
        .create(&PostParams::default(), &vip("vip"))
        .await
        .unwrap();
    endpoints_api
        .create(&PostParams::default(), &eps("vip", &["198.51.100.1"], &[]))
        .await
        .unwrap();
    bed.set_controller_manager(false);
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    endpoints_api
        .delete("vip", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(slices_of(&bed, "web", CONTROLLER).len(), 1);
    assert_eq!(slices_of(&bed, "vip", MIRRORING).len(), 1);
    bed.set_controller_manager(true);
    assert!(slices_of(&bed, "web", CONTROLLER).is_empty());
    assert!(slices_of(&bed, "vip", MIRRORING).is_empty());
}
