//! The request log: every request after authentication, in arrival order, with the verb and
//! resource as kube-apiserver's RequestInfo computes them (the same attributes its audit log and
//! RBAC use), and the code answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use serde_json::json;

use endpoint_copier_testbed::{Cluster, RequestRecord, TestBed, Verb, require_testbed};

use common::{client, slice};

fn summary(r: &RequestRecord) -> (String, Verb, String, Option<String>, Option<String>, u16) {
    (
        r.identity.clone(),
        r.verb,
        r.resource.clone(),
        r.namespace.clone(),
        r.name.clone(),
        r.code,
    )
}

#[tokio::test]
async fn request_log_records_identity_verb_resource_namespace_name_and_code_in_order() {
    // matches: k8s.io/apiserver/pkg/endpoints/request/requestinfo.go (verb, resource, namespace and
    // name as the audit log records them; a create has no name in its RequestInfo)
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> =
        Api::namespaced(client(&bed.kubeconfig_for("node-1")).await, "default");
    api.list(&ListParams::default()).await.unwrap();
    api.create(
        &PostParams::default(),
        &slice("kubernetes", "kubernetes", &["198.51.100.1"]),
    )
    .await
    .unwrap();
    api.get("kubernetes").await.unwrap();
    api.patch(
        "kubernetes",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    api.delete("kubernetes", &DeleteParams::default())
        .await
        .unwrap();
    assert!(api.get("kubernetes").await.is_err());
    let log = bed.requests();
    let got: Vec<_> = log.iter().map(summary).collect();
    let ns = Some("default".to_string());
    let name = Some("kubernetes".to_string());
    let id = "node-1".to_string();
    let res = "endpointslices".to_string();
    assert_eq!(
        got,
        vec![
            (id.clone(), Verb::List, res.clone(), ns.clone(), None, 200),
            (id.clone(), Verb::Create, res.clone(), ns.clone(), None, 201),
            (
                id.clone(),
                Verb::Get,
                res.clone(),
                ns.clone(),
                name.clone(),
                200
            ),
            (
                id.clone(),
                Verb::Patch,
                res.clone(),
                ns.clone(),
                name.clone(),
                200
            ),
            (
                id.clone(),
                Verb::Delete,
                res.clone(),
                ns.clone(),
                name.clone(),
                200
            ),
            (id, Verb::Get, res, ns, name, 404),
        ]
    );
    assert!(
        log.windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at)
    );
    assert!(log.iter().all(|r| r.group == "discovery.k8s.io"));
}

#[tokio::test]
async fn watch_requests_are_logged_as_watch_when_the_stream_starts() {
    // matches: requestinfo.go (GET on a collection with ?watch=true is the "watch" verb)
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let _stream = api
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .unwrap()
        .boxed();
    let log = bed.requests();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].verb, log[0].code), (Verb::Watch, 200));
}

#[tokio::test]
async fn clear_requests_empties_the_log_and_sequence_numbers_keep_increasing() {
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    api.list(&ListParams::default()).await.unwrap();
    let first = bed.requests()[0].seq;
    bed.clear_requests();
    assert!(bed.requests().is_empty());
    api.list(&ListParams::default()).await.unwrap();
    assert!(bed.requests()[0].seq > first);
}

#[tokio::test]
async fn store_access_bypasses_the_request_log() {
    let bed = TestBed::start().await;
    let r = endpoint_copier_testbed::store::resource("discovery.k8s.io", "v1", "endpointslices")
        .unwrap();
    bed.store()
        .create(
            r,
            Some("default"),
            serde_json::to_value(slice("kubernetes", "kubernetes", &["198.51.100.1"])).unwrap(),
            &Default::default(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(bed.requests().is_empty());
}

#[tokio::test]
async fn cluster_connect_gives_a_test_bed_and_unique_namespaces_through_the_api() {
    // Runs against a real cluster too (ENDPOINT_COPIER_TEST_KUBECONFIG): then the namespace is
    // deleted when the Cluster is dropped.
    let cluster = Cluster::connect().await;
    let a = cluster.unique_namespace("testbed-log").await;
    let b = cluster.unique_namespace("testbed-log").await;
    assert_ne!(a, b);
    assert!(a.starts_with("testbed-log-"));
    let api: Api<EndpointSlice> = Api::namespaced(cluster.client().await, &a);
    let mut s = slice("kubernetes", "kubernetes", &["198.51.100.1"]);
    s.metadata.namespace = Some(a.clone());
    api.create(&PostParams::default(), &s).await.unwrap();
    let bed = require_testbed!(cluster);
    let created = bed
        .requests()
        .iter()
        .filter(|r| r.resource == "namespaces" && r.verb == Verb::Create)
        .count();
    assert_eq!(created, 2);
}
