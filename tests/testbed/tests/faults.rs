//! Each injected fault, seen from a kube-rs client: go down / come up on the same port with the
//! same data, fail_next with each Failure (real Status bodies, Retry-After on 429), latency,
//! partitions (hang, refuse) of one identity while others carry on, and garbage collection off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use endpoint_copier_testbed::{Failure, Match, Partition, TestBed, Verb};

use common::{client, raw, slice, token_of, vip_service};

fn status_of(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn go_down_refuses_connections_and_come_up_serves_the_same_data_on_the_same_port() {
    // matches: an apiserver restart as clients see it (connection refused, then the same etcd data)
    let bed = TestBed::start().await;
    let api: Api<Service> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    api.create(&PostParams::default(), &vip_service("kubernetes-vip"))
        .await
        .unwrap();
    let port = bed.port();
    bed.go_down().await;
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(
        refused.is_err(),
        "port {port} still accepts connections while down"
    );
    assert!(api.get("kubernetes-vip").await.is_err());
    bed.come_up().await;
    assert_eq!(bed.port(), port);
    let fresh: Api<Service> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    assert!(fresh.get("kubernetes-vip").await.is_ok());
}

#[tokio::test]
async fn go_down_ends_open_watches() {
    // matches: an apiserver crash drops every open watch connection
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    bed.go_down().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the watch stayed open after go_down");
}

#[tokio::test]
async fn fail_next_conflict_answers_409_then_requests_succeed_again() {
    // matches: apimachinery errors.NewConflict (the Status a stale update gets)
    let bed = TestBed::start().await;
    let api: Api<Service> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    bed.fail_next(
        Match {
            verb: Some(Verb::Get),
            ..Match::any()
        },
        1,
        Failure::Conflict,
    );
    let s = status_of(api.get("kubernetes").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message.contains("the object has been modified"),
        "{}",
        s.message
    );
    api.get("kubernetes").await.unwrap();
}

#[tokio::test]
async fn fail_next_too_many_requests_sets_retry_after_header_and_details() {
    // matches: https://kubernetes.io/docs/concepts/cluster-administration/flow-control/ (429 with
    // Retry-After)
    let bed = TestBed::start().await;
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    bed.fail_next(
        Match::any(),
        1,
        Failure::TooManyRequests {
            retry_after_secs: 2,
        },
    );
    let r = raw(
        &bed,
        "GET",
        "/api/v1/namespaces/default/services",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.code, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    let s = r.json();
    assert_eq!(s["reason"], "TooManyRequests");
    assert_eq!(s["details"]["retryAfterSeconds"], 2);
}

#[tokio::test]
async fn fail_next_internal_error_and_service_unavailable_answer_500_and_503() {
    // matches: apimachinery errors.NewInternalError / NewServiceUnavailable. kube-rs 5 retries 429,
    // 503 and 504 itself (client/retry.rs, server_retry), so only the 500 reaches the caller; the
    // request log still shows every injected answer.
    let bed = TestBed::start().await;
    let api: Api<Service> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    bed.fail_next(Match::any(), 1, Failure::InternalError);
    let s = status_of(api.get("kubernetes").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    bed.fail_next(Match::any(), 1, Failure::ServiceUnavailable);
    bed.fail_next(Match::any(), 1, Failure::Status(504));
    api.get("kubernetes").await.unwrap();
    let codes: Vec<u16> = bed.requests().iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![500, 503, 504, 200]);
    bed.clear_requests();
    let token = token_of(&bed.kubeconfig_with_token("node-1"));
    bed.fail_next(Match::any(), 1, Failure::ServiceUnavailable);
    let r = raw(
        &bed,
        "GET",
        "/api/v1/namespaces/default/services/kubernetes",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.code, 503);
    assert_eq!(r.json()["reason"], "ServiceUnavailable");
}

#[tokio::test]
async fn fail_next_counts_only_requests_matching_identity_verb_and_resource() {
    let bed = TestBed::start().await;
    let node1: Api<EndpointSlice> =
        Api::namespaced(client(&bed.kubeconfig_for("node-1")).await, "default");
    let node2: Api<EndpointSlice> =
        Api::namespaced(client(&bed.kubeconfig_for("node-2")).await, "default");
    bed.fail_next(
        Match {
            identity: Some("node-1".into()),
            verb: Some(Verb::Create),
            resource: Some("endpointslices".into()),
        },
        1,
        Failure::InternalError,
    );
    // Not matching: other identity, other verb.
    node2
        .create(
            &PostParams::default(),
            &slice("a", "kubernetes", &["198.51.100.1"]),
        )
        .await
        .unwrap();
    node1.list(&ListParams::default()).await.unwrap();
    // Matching: fails once, then works.
    assert_eq!(
        status_of(
            node1
                .create(
                    &PostParams::default(),
                    &slice("b", "kubernetes", &["198.51.100.2"])
                )
                .await
                .unwrap_err()
        )
        .code,
        500
    );
    node1
        .create(
            &PostParams::default(),
            &slice("b", "kubernetes", &["198.51.100.2"]),
        )
        .await
        .unwrap();
    let codes: Vec<u16> = bed.requests().iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![201, 200, 500, 201]);
}

#[tokio::test]
async fn latency_delays_every_response() {
    let bed = TestBed::start().await;
    let api: Api<Service> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    api.get("kubernetes").await.unwrap(); // connection set up outside the measurement
    bed.set_latency(Duration::from_secs(1));
    let t = Instant::now();
    api.get("kubernetes").await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "answered after {:?}",
        t.elapsed()
    );
    bed.set_latency(Duration::ZERO);
    let t = Instant::now();
    api.get("kubernetes").await.unwrap();
    // Well below the injected second even on a loaded CI machine.
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn hung_partition_stalls_one_identity_while_others_are_served() {
    // matches: a network partition between one control-plane host and the apiserver: its requests
    // and watch events stop, other hosts are unaffected; after healing, traffic flows again
    let bed = TestBed::start().await;
    let node1: Api<EndpointSlice> =
        Api::namespaced(client(&bed.kubeconfig_for("node-1")).await, "default");
    let node2: Api<EndpointSlice> =
        Api::namespaced(client(&bed.kubeconfig_for("node-2")).await, "default");
    let mut watch = node1
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .unwrap()
        .boxed();
    bed.partition("node-1", Partition::Hang);
    let hung = tokio::time::timeout(
        Duration::from_millis(500),
        node1.list(&ListParams::default()),
    )
    .await;
    assert!(hung.is_err(), "a partitioned request was answered");
    node2
        .create(
            &PostParams::default(),
            &slice("kubernetes", "kubernetes", &["198.51.100.1"]),
        )
        .await
        .unwrap();
    let stalled = tokio::time::timeout(Duration::from_millis(500), watch.try_next()).await;
    assert!(stalled.is_err(), "a partitioned watch delivered an event");
    // The hung request is in the log, unanswered (code 0).
    assert!(
        bed.requests()
            .iter()
            .any(|r| r.identity == "node-1" && r.verb == Verb::List && r.code == 0),
        "{:#?}",
        bed.requests()
    );
    bed.heal("node-1");
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, Some(WatchEvent::Added(_))), "{ev:?}");
    node1.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn refused_partition_drops_the_identity_connections_without_an_answer() {
    // matches: a connection reset seen by one client; others are served
    let bed = TestBed::start().await;
    let node1: Api<Service> =
        Api::namespaced(client(&bed.kubeconfig_for("node-1")).await, "default");
    let node2: Api<Service> =
        Api::namespaced(client(&bed.kubeconfig_for("node-2")).await, "default");
    bed.partition("node-1", Partition::Refuse);
    let e = node1.get("kubernetes").await.unwrap_err();
    assert!(
        !matches!(e, kube::Error::Api(_)),
        "expected a transport error, got {e:?}"
    );
    node2.get("kubernetes").await.unwrap();
    bed.heal("node-1");
    node1.get("kubernetes").await.unwrap();
}

#[tokio::test]
async fn garbage_collection_off_keeps_slices_owned_by_a_deleted_service() {
    // matches: https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents
    // (dependents are deleted by the controller manager's garbage collector, so none while it is down)
    let bed = TestBed::start().await;
    let c = client(bed.kubeconfig()).await;
    let services: Api<Service> = Api::namespaced(c.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(c, "default");
    let svc = services
        .create(&PostParams::default(), &vip_service("kubernetes-vip"))
        .await
        .unwrap();
    let mut owned = slice("kubernetes-vip", "kubernetes-vip", &["198.51.100.1"]);
    owned.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "name": "kubernetes-vip",
        "uid": svc.metadata.uid.clone().unwrap(), "controller": true, "blockOwnerDeletion": true,
    })).unwrap()]);
    slices.create(&PostParams::default(), &owned).await.unwrap();
    bed.set_garbage_collection(false);
    services
        .delete("kubernetes-vip", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        slices.get("kubernetes-vip").await.is_ok(),
        "collected while garbage collection is off"
    );
    bed.set_garbage_collection(true);
    let svc = services
        .create(&PostParams::default(), &vip_service("other"))
        .await
        .unwrap();
    owned.metadata.name = Some("other".into());
    owned.metadata.resource_version = None;
    owned.metadata.owner_references.as_mut().unwrap()[0].name = "other".into();
    owned.metadata.owner_references.as_mut().unwrap()[0].uid = svc.metadata.uid.clone().unwrap();
    slices.create(&PostParams::default(), &owned).await.unwrap();
    services
        .delete("other", &DeleteParams::default())
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if slices.get_opt("other").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "a slice owned by a deleted Service survived with garbage collection on"
    );
}
