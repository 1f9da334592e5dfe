//! HTTP semantics of the test bed's front end as kube-apiserver has them: unknown paths, discovery
//! and /version as kube-rs reads them, watch framing (chunked, one JSON event per line), bookmarks,
//! timeoutSeconds, 410 on a compacted resourceVersion, content types, paging, dry run and
//! deletecollection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use endpoint_copier_testbed::TestBed;
use endpoint_copier_testbed::store::{WriteParams, resource};

use common::{Raw, client, raw, slice, token_of};

fn seed_slice(bed: &TestBed, name: &str, address: &str) {
    let r = resource("discovery.k8s.io", "v1", "endpointslices").unwrap();
    let body = serde_json::to_value(slice(name, "kubernetes", &[address])).unwrap();
    bed.store()
        .create(r, Some("default"), body, &WriteParams::default())
        .unwrap();
}

fn lines(r: &Raw) -> Vec<Value> {
    String::from_utf8(r.decoded())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn unknown_path_is_a_404_not_found_status() {
    // matches: k8s.io/apiserver/pkg/endpoints/handlers/responsewriters (NotFound Status for paths no
    // handler serves)
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    for path in [
        "/apis/example.com/v1/widgets",
        "/api/v1/namespaces/default/widgets",
        "/nope",
    ] {
        let r = raw(&bed, "GET", path, Some(&token), None).await;
        assert_eq!(r.code, 404, "{path}");
        let s = r.json();
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(
            s["message"],
            "the server could not find the requested resource"
        );
    }
}

#[tokio::test]
async fn kube_discovery_finds_endpointslices_leases_and_events_with_their_scope() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#discovery-api
    let bed = TestBed::start().await;
    let c = client(bed.kubeconfig()).await;
    let version = c.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    let discovery = Discovery::new(c).run().await.unwrap();
    let find = |group: &str, kind: &str| {
        discovery
            .groups()
            .find(|g| g.name() == group)
            .and_then(|g| {
                g.recommended_resources()
                    .into_iter()
                    .find(|(r, _)| r.kind == kind)
            })
            .unwrap_or_else(|| panic!("{group} {kind} not discovered"))
    };
    let (slices, caps) = find("discovery.k8s.io", "EndpointSlice");
    assert_eq!(slices.plural, "endpointslices");
    assert_eq!(caps.scope, Scope::Namespaced);
    let (_, caps) = find("coordination.k8s.io", "Lease");
    assert_eq!(caps.scope, Scope::Namespaced);
    let (_, caps) = find("", "Namespace");
    assert_eq!(caps.scope, Scope::Cluster);
    find("events.k8s.io", "Event");
}

#[tokio::test]
async fn watch_response_is_chunked_newline_delimited_json_events_ending_at_timeout_seconds() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes
    // (each watch event is a JSON object {type, object}; the server ends the watch after
    // timeoutSeconds with a clean end of the chunked body)
    let bed = TestBed::start().await;
    seed_slice(&bed, "kubernetes", "198.51.100.10");
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    let t = Instant::now();
    let r = raw(
        &bed,
        "GET",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=true&timeoutSeconds=1",
        Some(&token),
        None,
    )
    .await;
    let took = t.elapsed();
    assert_eq!(r.code, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.body.ends_with(b"0\r\n\r\n"),
        "the chunked body was not ended cleanly"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    let events = lines(&r);
    // Unset resourceVersion: synthetic ADDED for the current state.
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "kubernetes");
}

#[tokio::test]
async fn watch_with_allow_watch_bookmarks_gets_periodic_bookmark_events() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#watch-bookmarks
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    let r = raw(
        &bed,
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases?watch=1&allowWatchBookmarks=true&timeoutSeconds=3&resourceVersion=0",
        Some(&token),
        None,
    )
    .await;
    let bookmarks: Vec<Value> = lines(&r)
        .into_iter()
        .filter(|e| e["type"] == "BOOKMARK")
        .collect();
    assert!(bookmarks.len() >= 2, "{bookmarks:?}");
    let rv = bookmarks[0]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap();
    assert!(rv.parse::<u64>().unwrap() > 0);
    assert_eq!(bookmarks[0]["object"]["kind"], "Lease");
}

#[tokio::test]
async fn watch_without_allow_watch_bookmarks_gets_no_bookmarks() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#watch-bookmarks (only
    // clients that ask with allowWatchBookmarks=true get them)
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    let r = raw(
        &bed,
        "GET",
        "/apis/coordination.k8s.io/v1/leases?watch=true&timeoutSeconds=2",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.code, 200);
    assert!(lines(&r).is_empty());
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_gets_a_410_expired_error_event() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#410-gone-responses (the
    // watch is answered 200 and carries one ERROR event whose Status is 410 Expired)
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    let old = bed.store().resource_version();
    seed_slice(&bed, "a", "198.51.100.1");
    seed_slice(&bed, "b", "198.51.100.2");
    bed.compact();
    let path = format!(
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=true&resourceVersion={old}&timeoutSeconds=5"
    );
    let t = Instant::now();
    let r = raw(&bed, "GET", &path, Some(&token), None).await;
    assert_eq!(r.code, 200);
    let events = lines(&r);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    // The stream ends right after the ERROR event.
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn close_watches_ends_open_watch_responses_cleanly() {
    // matches: an apiserver ending watches (e.g. on graceful shutdown): the chunked body ends
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    let closer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        bed.close_watches();
    };
    let (r, ()) = tokio::join!(
        raw(
            &bed,
            "GET",
            "/api/v1/namespaces/default/services?watch=true&timeoutSeconds=30",
            Some(&token),
            None
        ),
        closer
    );
    assert_eq!(r.code, 200);
    assert!(r.body.ends_with(b"0\r\n\r\n"));
}

#[tokio::test]
async fn patch_with_plain_json_content_type_is_415_unsupported_media_type() {
    // matches: k8s.io/apiserver/pkg/endpoints/handlers/patch.go (PATCH needs a patch media type)
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    let r = raw(
        &bed,
        "PATCH",
        "/api/v1/namespaces/default/services/kubernetes",
        Some(&token),
        Some("{}"),
    )
    .await;
    assert_eq!(r.code, 415);
    assert_eq!(r.json()["reason"], "UnsupportedMediaType");
}

#[tokio::test]
async fn json_patch_is_applied_through_kube() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply (RFC 6902)
    let bed = TestBed::start().await;
    let api: Api<Service> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    // json_patch::Patch is not re-exported by kube: let serde infer it.
    let patch = Patch::<()>::Json(
        serde_json::from_value(
            json!([{"op": "add", "path": "/metadata/labels/tier", "value": "edge"}]),
        )
        .unwrap(),
    );
    let s = api
        .patch("kubernetes", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(s.labels().get("tier").map(String::as_str), Some("edge"));
}

#[tokio::test]
async fn create_with_a_body_namespace_unlike_the_path_is_400_bad_request() {
    // matches: k8s.io/apiserver/pkg/endpoints/handlers/rest.go (namespace of the object must match)
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "kube-system"},
        "spec": {"ports": [{"port": 80}]}})
    .to_string();
    let r = raw(
        &bed,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(&token),
        Some(&body),
    )
    .await;
    assert_eq!(r.code, 400);
    assert_eq!(r.json()["reason"], "BadRequest");
}

#[tokio::test]
async fn list_pages_with_limit_and_continue_through_kube() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks
    let bed = TestBed::start().await;
    for i in 0..5 {
        seed_slice(&bed, &format!("s{i}"), &format!("198.51.100.{}", i + 1));
    }
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(2);
    loop {
        let page = api.list(&lp).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|s| s.name_any()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names, vec!["s0", "s1", "s2", "s3", "s4"]);
}

#[tokio::test]
async fn dry_run_create_answers_the_object_but_stores_nothing() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#dry-run
    let bed = TestBed::start().await;
    let api: Api<Lease> = Api::namespaced(client(bed.kubeconfig()).await, "kube-system");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "endpoint-copier"}, "spec": {}}))
            .unwrap();
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let answered = api.create(&pp, &lease).await.unwrap();
    assert_eq!(answered.name_any(), "endpoint-copier");
    assert!(api.get_opt("endpoint-copier").await.unwrap().is_none());
}

#[tokio::test]
async fn delete_collection_deletes_only_the_selected_objects() {
    // matches: https://kubernetes.io/docs/reference/using-api/api-concepts/#api-verbs (deletecollection)
    let bed = TestBed::start().await;
    seed_slice(&bed, "kubernetes", "198.51.100.1");
    let r = resource("discovery.k8s.io", "v1", "endpointslices").unwrap();
    let other = serde_json::to_value(slice("other", "other", &["198.51.100.2"])).unwrap();
    bed.store()
        .create(r, Some("default"), other, &WriteParams::default())
        .unwrap();
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("kubernetes.io/service-name=kubernetes"),
    )
    .await
    .unwrap();
    let left: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(left, vec!["other"]);
}

#[tokio::test]
async fn health_endpoints_answer_ok() {
    // matches: https://kubernetes.io/docs/reference/using-api/health-checks/
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    for path in ["/healthz", "/readyz", "/livez"] {
        let r = raw(&bed, "GET", path, Some(&token), None).await;
        assert_eq!((r.code, r.decoded()), (200, b"ok".to_vec()), "{path}");
    }
}

#[tokio::test]
async fn watch_with_timeout_seconds_zero_stays_open_with_the_server_default() {
    // matches: k8s.io/apiserver/pkg/endpoints/handlers/get.go (only a positive timeoutSeconds
    // shortens the watch; otherwise the server's minRequestTimeout-based default applies)
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    let open = tokio::time::timeout(
        Duration::from_millis(1500),
        raw(
            &bed,
            "GET",
            "/api/v1/namespaces/default/services?watch=true&timeoutSeconds=0",
            Some(&token),
            None,
        ),
    )
    .await;
    assert!(open.is_err(), "the watch ended at once: {open:?}");
}
