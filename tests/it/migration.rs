//! Migration from endpoint-copier-operator (ECO): its slice is adopted in place with no moment
//! without ready endpoints, and its v0.2 leftover core/v1 Endpoints is removed — nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use endpoint_copier::names;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, Endpoints};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;

const CONVERGE: Duration = Duration::from_secs(10);

/// The slice ECO wrote for the VIP: named like the target, its own labels.
fn eco_slice(ns: &str, addrs: &[&str]) -> EndpointSlice {
    let mut s = source_slice(ns, "vip", "vip", "IPv4", addrs);
    let labels = s.metadata.labels.as_mut().unwrap();
    labels.insert(names::MANAGED_BY_LABEL.into(), names::ECO_MANAGED_BY.into());
    labels.insert(names::SOURCE_LABEL.into(), "apiserver".into());
    s
}

fn legacy_endpoints(ns: &str, managed_by: Option<&str>) -> Endpoints {
    let mut m = meta(ns, "vip");
    m.labels = managed_by.map(|v| [(names::MANAGED_BY_LABEL.to_owned(), v.to_owned())].into());
    Endpoints {
        metadata: m,
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress {
                ip: "198.51.100.200".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }]),
    }
}

#[tokio::test]
async fn the_operators_slice_is_adopted_in_place_without_a_gap() {
    let world = World::new("eco-adopt").await;
    let addrs = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
    world.seed_source(&addrs).await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv4"]),
    )
    .await;
    let before = create(&world.client, &world.ns, &eco_slice(&world.ns, &addrs)).await;

    // Record the ready endpoint count of the target after every change the API reports.
    let history: Arc<Mutex<Vec<usize>>> = Arc::default();
    let api: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &world.ns);
    let cfg = watcher::Config::default().labels(&format!("{}=vip", names::SERVICE_NAME_LABEL));
    let recorder = {
        let history = history.clone();
        tokio::spawn(async move {
            let mut store = std::collections::BTreeMap::new();
            let mut stream = watcher::watcher(api, cfg).boxed();
            while let Some(Ok(ev)) = stream.next().await {
                match ev {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                        store.insert(s.metadata.name.clone().unwrap(), s);
                    }
                    watcher::Event::Delete(s) => {
                        store.remove(&s.metadata.name.clone().unwrap());
                    }
                    _ => continue,
                }
                history
                    .lock()
                    .unwrap()
                    .push(ready_addresses(store.values()).len());
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let daemon = Daemon::start(world.config("node-1"));
    eventually("the slice relabelled as ours", CONVERGE, || async {
        let s = slices_of(&world.client, &world.ns, "vip").await;
        let s = s.get("vip")?;
        (s.metadata.labels.as_ref()?.get(names::MANAGED_BY_LABEL)? == names::MANAGED_BY)
            .then(|| s.clone())
    })
    .await;
    let after = slices_of(&world.client, &world.ns, "vip").await;
    assert_eq!(
        after.len(),
        1,
        "adopted, not duplicated: {:?}",
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        after["vip"].metadata.uid, before.metadata.uid,
        "updated in place (same uid), not deleted and recreated"
    );
    daemon.stop().await;
    recorder.abort();
    let history = history.lock().unwrap().clone();
    assert!(!history.is_empty());
    assert!(
        history.iter().all(|n| *n == 3),
        "the VIP always had 3 ready endpoints: {history:?}"
    );
}

#[tokio::test]
async fn the_operators_leftover_endpoints_object_is_removed() {
    let world = World::new("eco-legacy").await;
    world.seed(&["198.51.100.1"]).await;
    create(
        &world.client,
        &world.ns,
        &legacy_endpoints(&world.ns, Some(names::ECO_MANAGED_BY)),
    )
    .await;
    let daemon = Daemon::start(world.config("node-1"));
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;
    let endpoints: Api<Endpoints> = Api::namespaced(world.client.clone(), &world.ns);
    eventually("ECO's Endpoints removed", CONVERGE, || async {
        endpoints.get_opt("vip").await.ok()?.is_none().then_some(())
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn an_endpoints_object_that_is_not_the_operators_is_left_alone() {
    let world = World::new("eco-foreign").await;
    world.seed(&["198.51.100.1"]).await;
    create(
        &world.client,
        &world.ns,
        &legacy_endpoints(&world.ns, Some("someone-else")),
    )
    .await;
    let daemon = Daemon::start(world.config("node-1"));
    // kube-controller-manager's mirroring controller also turns that Endpoints object into a
    // slice of the target (a foreign slice: reported, never touched). Our slices hold the source.
    eventually("our slices of vip to hold the source", CONVERGE, || async {
        let ours: Vec<EndpointSlice> = slices_of(&world.client, &world.ns, "vip")
            .await
            .into_values()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::MANAGED_BY_LABEL))
                    .is_some_and(|m| m == names::MANAGED_BY)
            })
            .collect();
        (ready_addresses(&ours) == ["198.51.100.1"]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let endpoints: Api<Endpoints> = Api::namespaced(world.client.clone(), &world.ns);
    assert!(
        endpoints.get_opt("vip").await.unwrap().is_some(),
        "not ours, not ECO's: untouched"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_slice_we_do_not_own_is_never_touched() {
    let world = World::new("foreign").await;
    world.seed(&["198.51.100.1"]).await;
    // Someone else's slice for the same Service (for example a mirroring controller's).
    let mut foreign = source_slice(&world.ns, "vip", "vip-manual", "IPv4", &["203.0.113.50"]);
    foreign
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(names::MANAGED_BY_LABEL.into(), "someone-else".into());
    let foreign = create(&world.client, &world.ns, &foreign).await;
    let daemon = Daemon::start(world.config("node-1"));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "203.0.113.50"],
        CONVERGE,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = slices_of(&world.client, &world.ns, "vip").await;
    assert_eq!(
        now["vip-manual"].metadata.resource_version, foreign.metadata.resource_version,
        "never written"
    );
    daemon.stop().await;
}
