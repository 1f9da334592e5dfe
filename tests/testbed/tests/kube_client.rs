//! kube-rs works against the test bed unmodified, through the kubeconfig file the test bed wrote:
//! `Api<…>` get/list/watch/create/replace/patch/delete for Service, EndpointSlice, Lease and
//! events.k8s.io Event, and `kube::runtime::watcher` across closed watches and compaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use endpoint_copier_testbed::{TestBed, Verb};

use common::{client, slice, vip_service};

#[tokio::test]
async fn fresh_test_bed_has_the_namespaces_and_kubernetes_service_of_a_new_cluster() {
    // matches: https://kubernetes.io/docs/concepts/services-networking/cluster-ip-allocation/ (the
    // apiserver creates default/kubernetes with port https 443 → 6443) and
    // https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/#initial-namespaces
    let bed = TestBed::start().await;
    let c = client(bed.kubeconfig()).await;
    let names: Vec<String> = Api::<Namespace>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            names.contains(&ns.to_string()),
            "missing namespace {ns}: {names:?}"
        );
    }
    let svc = Api::<Service>::namespaced(c.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.1"));
    assert_eq!(spec.selector, None);
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("https"), 443));
    // No EndpointSlice until a test seeds one.
    let slices = Api::<EndpointSlice>::namespaced(c, "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(slices.items.is_empty());
}

#[tokio::test]
async fn service_create_get_replace_patch_delete_round_trip_through_kube() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#api-verbs
    let bed = TestBed::start().await;
    let api: Api<Service> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let created = api
        .create(&PostParams::default(), &vip_service("kubernetes-vip"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.resource_version.is_some());
    let mut got = api.get("kubernetes-vip").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    got.labels_mut().insert("tier".into(), "edge".into());
    let replaced = api
        .replace("kubernetes-vip", &PostParams::default(), &got)
        .await
        .unwrap();
    assert_eq!(
        replaced.labels().get("tier").map(String::as_str),
        Some("edge")
    );
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    let patched = api
        .patch(
            "kubernetes-vip",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.annotations().get("a").map(String::as_str),
        Some("b")
    );
    assert_eq!(
        patched.labels().get("tier").map(String::as_str),
        Some("edge")
    );
    api.delete("kubernetes-vip", &DeleteParams::default())
        .await
        .unwrap();
    let err = api.get("kubernetes-vip").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn endpointslice_crud_and_label_selected_list_work_through_kube() {
    // matches: https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/ and
    // https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#list-and-watch-filtering
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    api.create(
        &PostParams::default(),
        &slice("kubernetes", "kubernetes", &["198.51.100.10"]),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &slice("other-abc", "other", &["203.0.113.7"]),
    )
    .await
    .unwrap();
    let listed = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await
        .unwrap();
    let names: Vec<String> = listed.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, vec!["kubernetes".to_string()]);
    let mut s = api.get("kubernetes").await.unwrap();
    s.endpoints[0].addresses = vec!["198.51.100.11".into()];
    let replaced = api
        .replace("kubernetes", &PostParams::default(), &s)
        .await
        .unwrap();
    assert_eq!(
        replaced.endpoints[0].addresses,
        vec!["198.51.100.11".to_string()]
    );
    api.delete("kubernetes", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn stale_resource_version_on_replace_is_a_409_conflict_through_kube() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions
    // (optimistic concurrency: an update with an old resourceVersion fails with 409 Conflict)
    let bed = TestBed::start().await;
    let api: Api<Lease> = Api::namespaced(client(bed.kubeconfig()).await, "kube-system");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "endpoint-copier"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 15}}))
    .unwrap();
    let first = api.create(&PostParams::default(), &lease).await.unwrap();
    let mut second = first.clone();
    second.spec.as_mut().unwrap().holder_identity = Some("node-2".into());
    api.replace("endpoint-copier", &PostParams::default(), &second)
        .await
        .unwrap();
    let mut stale = first.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("node-3".into());
    let err = api
        .replace("endpoint-copier", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
        }
        other => panic!("expected a 409, got {other:?}"),
    }
    let now = api.get("endpoint-copier").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("node-2"));
}

#[tokio::test]
async fn events_k8s_io_v1_events_can_be_created_and_listed() {
    // matches: https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/
    let bed = TestBed::start().await;
    let api: Api<Event> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"name": "kubernetes-vip.1"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "endpoint-copier", "reportingInstance": "node-1",
        "action": "Sync", "reason": "SourceMissing", "type": "Warning",
        "note": "source Service default/kubernetes not found",
        "regarding": {"kind": "Service", "namespace": "default", "name": "kubernetes-vip", "apiVersion": "v1"},
    })).unwrap();
    api.create(&PostParams::default(), &ev).await.unwrap();
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].reason.as_deref(), Some("SourceMissing"));
}

#[tokio::test]
async fn raw_watch_from_a_list_resource_version_sees_later_changes_and_deleted_last_state() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(
        &PostParams::default(),
        &slice("kubernetes", "kubernetes", &["198.51.100.10"]),
    )
    .await
    .unwrap();
    api.delete("kubernetes", &DeleteParams::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(s)) => seen.push(("ADDED", s)),
            Some(WatchEvent::Deleted(s)) => seen.push(("DELETED", s)),
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen[0].0, "ADDED");
    assert_eq!(seen[1].0, "DELETED");
    assert_eq!(
        seen[1].1.endpoints[0].addresses,
        vec!["198.51.100.10".to_string()]
    );
}

/// Next watcher event that is not Init/InitDone bookkeeping, within 10 s.
async fn next_apply<S>(stream: &mut S) -> watcher::Event<EndpointSlice>
where
    S: futures::Stream<Item = Result<watcher::Event<EndpointSlice>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn kube_runtime_watcher_sees_initial_objects_then_changes() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes
    // (list, then watch from the list's resourceVersion)
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    api.create(
        &PostParams::default(),
        &slice("kubernetes", "kubernetes", &["198.51.100.10"]),
    )
    .await
    .unwrap();
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next_apply(&mut w).await, watcher::Event::Init));
    match next_apply(&mut w).await {
        watcher::Event::InitApply(s) => assert_eq!(s.name_any(), "kubernetes"),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(next_apply(&mut w).await, watcher::Event::InitDone));
    api.create(
        &PostParams::default(),
        &slice("kubernetes-2", "kubernetes", &["198.51.100.11"]),
    )
    .await
    .unwrap();
    match next_apply(&mut w).await {
        watcher::Event::Apply(s) => assert_eq!(s.name_any(), "kubernetes-2"),
        other => panic!("expected Apply, got {other:?}"),
    }
}

/// Runs a watcher in its own task (so it keeps polling, as the daemon's does) and forwards its items.
fn spawn_watcher(
    api: Api<EndpointSlice>,
) -> tokio::sync::mpsc::UnboundedReceiver<Result<watcher::Event<EndpointSlice>, watcher::Error>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut w = watcher(api, watcher::Config::default()).boxed();
        while let Some(item) = w.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (up to 10 s) until the request log holds `n` watch requests.
async fn wait_for_watches(bed: &TestBed, n: usize) {
    for _ in 0..200 {
        let watches = bed
            .requests()
            .iter()
            .filter(|r| r.verb == Verb::Watch)
            .count();
        if watches >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "fewer than {n} watch requests after 10 s: {:#?}",
        bed.requests()
    );
}

#[tokio::test]
async fn kube_runtime_watcher_rewatches_after_close_watches_without_missing_changes() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes
    // (a watch may end at any time; clients resume from the last resourceVersion they saw)
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let mut events = spawn_watcher(api.clone());
    wait_for_watches(&bed, 1).await;
    bed.close_watches();
    api.create(
        &PostParams::default(),
        &slice("kubernetes", "kubernetes", &["198.51.100.10"]),
    )
    .await
    .unwrap();
    wait_for_watches(&bed, 2).await;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = item {
            assert_eq!(s.name_any(), "kubernetes");
            break;
        }
    }
}

#[tokio::test]
async fn kube_runtime_watcher_relists_after_compaction_makes_its_resource_version_gone() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#410-gone-responses
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let mut events = spawn_watcher(api.clone());
    wait_for_watches(&bed, 1).await;
    // Drop the watch, change something the watcher has not seen, forget history: its
    // resourceVersion is now too old, the re-watch gets 410 and the watcher lists again. (No await in
    // between: the watcher's task cannot re-watch before compaction.)
    bed.close_watches();
    bed.store()
        .create(
            endpoint_copier_testbed::store::resource("discovery.k8s.io", "v1", "endpointslices")
                .unwrap(),
            Some("default"),
            serde_json::to_value(slice("kubernetes", "kubernetes", &["198.51.100.10"])).unwrap(),
            &Default::default(),
        )
        .unwrap();
    bed.compact();
    let mut saw_gone = false;
    let mut relisted = false;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        match item {
            Err(e) => saw_gone |= format!("{e:?}").contains("410"),
            Ok(watcher::Event::Init) => relisted = true,
            Ok(watcher::Event::InitApply(s)) if relisted => {
                assert_eq!(s.name_any(), "kubernetes");
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(saw_gone, "the watcher relisted without a 410");
}

#[tokio::test]
async fn kube_runtime_watcher_with_streaming_lists_gets_initial_events_then_changes() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#streaming-lists
    // (sendInitialEvents=true: synthetic ADDED events, then a BOOKMARK annotated
    // k8s.io/initial-events-end, then changes)
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    api.create(
        &PostParams::default(),
        &slice("kubernetes", "kubernetes", &["198.51.100.10"]),
    )
    .await
    .unwrap();
    let mut w = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(next_apply(&mut w).await, watcher::Event::Init));
    match next_apply(&mut w).await {
        watcher::Event::InitApply(s) => assert_eq!(s.name_any(), "kubernetes"),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(next_apply(&mut w).await, watcher::Event::InitDone));
    // No list: the initial state came on the watch itself.
    let verbs: Vec<Verb> = bed.requests().iter().map(|r| r.verb).collect();
    assert_eq!(verbs, vec![Verb::Create, Verb::Watch]);
    api.create(
        &PostParams::default(),
        &slice("kubernetes-2", "kubernetes", &["198.51.100.11"]),
    )
    .await
    .unwrap();
    match next_apply(&mut w).await {
        watcher::Event::Apply(s) => assert_eq!(s.name_any(), "kubernetes-2"),
        other => panic!("expected Apply, got {other:?}"),
    }
}
