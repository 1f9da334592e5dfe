//! Each injected fault, seen from a kube-rs client: go down / come up on the same port with the
//! same data, fail_next with each Failure (real Status bodies, Retry-After on 429), failures of one
//! scope until healed, lost replies after a committed write, latency, partitions (hang, refuse) of
//! one identity while others carry on, and garbage collection off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use endpoint_copier_testbed::{Failure, Match, Partition, Scope, TestBed, Verb};

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
            ..Match::any()
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
async fn a_black_hole_leaves_the_connections_it_touched_silent_after_the_heal() {
    // matches: ha-kill.sh N --partition then ha-revive.sh N on three real kube-apiservers (v1.28)
    // with a kube-rs client: after the heal the open watch stays "established" on the client and
    // delivers nothing again, and never ends; a request sent during the cut is never answered;
    // new connections are served.
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
    bed.partition("node-1", Partition::BlackHole);
    let during = tokio::spawn({
        let node1 = node1.clone();
        async move { node1.list(&ListParams::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    bed.heal("node-1");
    node2
        .create(
            &PostParams::default(),
            &slice("kubernetes", "kubernetes", &["198.51.100.1"]),
        )
        .await
        .unwrap();
    let silent = tokio::time::timeout(Duration::from_millis(700), watch.try_next()).await;
    assert!(silent.is_err(), "the frozen watch delivered {silent:?}");
    assert!(
        !during.is_finished(),
        "the request sent into the black hole was answered"
    );
    // A new client (new connections) of the same identity is served at once.
    let fresh: Api<EndpointSlice> =
        Api::namespaced(client(&bed.kubeconfig_for("node-1")).await, "default");
    let listed = tokio::time::timeout(Duration::from_secs(2), fresh.list(&ListParams::default()))
        .await
        .expect("answered after the heal")
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    during.abort();
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

#[tokio::test]
async fn commit_then_drop_writes_the_object_but_the_client_gets_no_answer() {
    // matches: a reply lost after the apiserver committed the write to etcd (apiserver crash or
    // network cut between the write and the response): the client cannot tell the write happened
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> =
        Api::namespaced(client(&bed.kubeconfig_for("node-1")).await, "default");
    bed.commit_then_drop_next(
        Match::any()
            .identity("node-1")
            .verb(Verb::Create)
            .resource("endpointslices"),
        1,
    );
    // Not matching: a read goes through and does not use the rule up.
    api.list(&ListParams::default()).await.unwrap();
    let e = api
        .create(
            &PostParams::default(),
            &slice("lost-reply", "kubernetes", &["198.51.100.1"]),
        )
        .await
        .unwrap_err();
    assert!(
        !matches!(e, kube::Error::Api(_)),
        "expected a transport error, got {e:?}"
    );
    // The write happened: the object is there, and a retried create is AlreadyExists.
    let stored = api.get("lost-reply").await.unwrap();
    assert_eq!(stored.endpoints[0].addresses, vec!["198.51.100.1"]);
    let again = api
        .create(
            &PostParams::default(),
            &slice("lost-reply", "kubernetes", &["198.51.100.1"]),
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(again).code, 409);
    // The log shows the code the server committed, though the client never saw it.
    let creates: Vec<u16> = bed
        .requests()
        .iter()
        .filter(|r| r.verb == Verb::Create)
        .map(|r| r.code)
        .collect();
    assert_eq!(creates, vec![201, 409]);
}

#[tokio::test]
async fn commit_then_drop_of_an_update_applies_the_update() {
    let bed = TestBed::start().await;
    let api: Api<EndpointSlice> = Api::namespaced(client(bed.kubeconfig()).await, "default");
    let mut s = api
        .create(
            &PostParams::default(),
            &slice("upd", "kubernetes", &["198.51.100.1"]),
        )
        .await
        .unwrap();
    s.endpoints[0].addresses = vec!["198.51.100.2".into()];
    bed.commit_then_drop_next(Match::any().verb(Verb::Update), 1);
    assert!(
        api.replace("upd", &PostParams::default(), &s)
            .await
            .is_err()
    );
    let now = api.get("upd").await.unwrap();
    assert_eq!(now.endpoints[0].addresses, vec!["198.51.100.2"]);
    // The stale resourceVersion the client still holds now conflicts, as on a real cluster.
    let e = api
        .replace("upd", &PostParams::default(), &s)
        .await
        .unwrap_err();
    assert_eq!(status_of(e).code, 409);
}

#[tokio::test]
async fn a_cluster_wide_failure_lasts_until_healed_while_namespaced_lists_succeed() {
    // matches: one scope failing, e.g. RBAC that grants list/watch in one namespace only
    // (https://kubernetes.io/docs/reference/access-authn-authz/rbac/#rolebinding-and-clusterrolebinding)
    let bed = TestBed::start().await;
    let c = client(bed.kubeconfig()).await;
    let all: Api<EndpointSlice> = Api::all(c.clone());
    let default: Api<EndpointSlice> = Api::namespaced(c, "default");
    bed.fail_until_healed(
        Match::any().resource("endpointslices").cluster_wide(),
        Failure::Status(403),
    );
    for _ in 0..5 {
        assert_eq!(
            status_of(all.list(&ListParams::default()).await.unwrap_err()).code,
            403
        );
        default.list(&ListParams::default()).await.unwrap();
    }
    let e = all.watch(&WatchParams::default(), "0").await;
    match e {
        Err(e) => assert_eq!(status_of(e).code, 403),
        Ok(stream) => {
            let first = stream.boxed().try_next().await;
            assert!(first.is_err(), "a cluster-wide watch was served: {first:?}");
        }
    }
    bed.heal_failures();
    all.list(&ListParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_failure_scoped_to_one_namespace_leaves_the_others_alone() {
    let bed = TestBed::start().await;
    let c = client(bed.kubeconfig()).await;
    let default: Api<Service> = Api::namespaced(c.clone(), "default");
    let kube_system: Api<Service> = Api::namespaced(c.clone(), "kube-system");
    let all: Api<Service> = Api::all(c);
    bed.fail_until_healed(
        Match {
            scope: Some(Scope::Namespace("default".into())),
            ..Match::any()
        },
        // Not 503: a default kube-rs client retries that by itself (docs/development/testing.md).
        Failure::InternalError,
    );
    let e = default.get("kubernetes").await.unwrap_err();
    assert_eq!(status_of(e).code, 500);
    kube_system.list(&ListParams::default()).await.unwrap();
    all.list(&ListParams::default()).await.unwrap();
    bed.heal_failures();
    default.get("kubernetes").await.unwrap();
}
