//! Copier groups end to end: two groups never delete each other's slices, a pair configured on
//! one member only is kept while that member lives, slices of older versions are adopted in
//! place, and slices another manager writes on a target are left alone and reported; two daemons
//! under one identity are reported (Event, `check`), and a member publisher that cannot write
//! says so (`endpoint_copier_member_publisher_up`, `/readyz`) and recovers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use endpoint_copier::config::{Config, PairConfig};
use endpoint_copier::names;
use endpoint_copier_testbed::require_testbed;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;

use crate::common::*;
use endpoint_copier::inspect::check_report;

const CONVERGE: Duration = Duration::from_secs(15);

/// Every state of each target's ready endpoint count, in watch order: the "watch history" that
/// shows whether a target ever lost its last ready endpoint, however briefly.
struct History {
    seen: Arc<Mutex<Vec<(String, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    async fn start(world: &World) -> History {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let api: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &world.ns);
        let log = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
            let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
            let mut ready_tx = Some(ready_tx);
            while let Some(Ok(event)) = stream.next().await {
                match event {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                        slices.insert(s.metadata.name.clone().unwrap_or_default(), s);
                    }
                    watcher::Event::Delete(s) => {
                        slices.remove(s.metadata.name.as_deref().unwrap_or_default());
                    }
                    watcher::Event::Init => slices.clear(),
                    watcher::Event::InitDone => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                let mut per_service: BTreeMap<String, usize> = BTreeMap::new();
                for s in slices.values() {
                    let service = s
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(names::SERVICE_NAME_LABEL))
                        .cloned()
                        .unwrap_or_default();
                    *per_service.entry(service).or_default() +=
                        ready_addresses(std::iter::once(s)).len();
                }
                let mut log = log.lock().unwrap();
                for (service, n) in per_service {
                    log.push((service, n));
                }
            }
        });
        ready_rx.await.unwrap();
        History { seen, task }
    }

    /// Panics if `service`, once it had ready endpoints, ever had none.
    fn assert_never_emptied(&self, service: &str) {
        let seen = self.seen.lock().unwrap();
        let counts: Vec<usize> = seen
            .iter()
            .filter(|(s, _)| s == service)
            .map(|(_, n)| *n)
            .collect();
        let first = counts.iter().position(|n| *n > 0);
        assert!(first.is_some(), "{service} never had ready endpoints");
        let after = &counts[first.unwrap_or_default()..];
        assert!(
            after.iter().all(|n| *n > 0),
            "{service} lost every ready endpoint at some point: {counts:?}"
        );
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config of `world` for group `lease_name`, mirroring the world's source into `targets`.
fn group_config(world: &World, identity: &str, lease_name: &str, targets: &[&str]) -> Config {
    let mut c = world.config(identity);
    c.lease.name = lease_name.to_owned();
    c.pairs = targets
        .iter()
        .map(|t| {
            PairConfig::new(
                world.source().parse().unwrap(),
                format!("{}/{t}", world.ns).parse().unwrap(),
            )
        })
        .collect();
    // Short member timings, so "gone for good" happens within a test.
    c.members.heartbeat = Duration::from_secs(1);
    c.members.expiry = Duration::from_secs(2);
    c.members.forget_after = Duration::from_secs(4);
    c
}

#[tokio::test]
async fn two_groups_with_different_pairs_never_delete_each_others_slices() {
    let world = World::new("two-groups").await;
    world.seed(&["198.51.100.1"]).await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip2", &["IPv4"]),
    )
    .await;
    let history = History::start(&world).await;

    // Group a mirrors into vip, group b into vip2; started in both orders and restarted.
    let a = Daemon::start(group_config(&world, "node-a", "copier-a", &["vip"]));
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;
    let b = Daemon::start(group_config(&world, "node-b", "copier-b", &["vip2"]));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip2",
        &["198.51.100.1"],
        CONVERGE,
    )
    .await;
    a.stop().await;
    b.stop().await;
    let b = Daemon::start(group_config(&world, "node-b", "copier-b", &["vip2"]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = Daemon::start(group_config(&world, "node-a", "copier-a", &["vip"]));
    // Each group's orphan scan has run (new leadership terms) and found only its own slices.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;
    wait_for_target(
        &world.client,
        &world.ns,
        "vip2",
        &["198.51.100.1"],
        CONVERGE,
    )
    .await;
    for (target, group) in [("vip", "copier-a"), ("vip2", "copier-b")] {
        let slices = slices_of(&world.client, &world.ns, target).await;
        assert_eq!(slices.len(), 1, "{target}: {slices:?}");
        let labels = slices
            .values()
            .next()
            .unwrap()
            .metadata
            .labels
            .clone()
            .unwrap();
        assert_eq!(
            labels.get(names::GROUP_LABEL),
            Some(&format!("{}.{group}", world.ns))
        );
    }
    a.stop().await;
    b.stop().await;
    history.assert_never_emptied("vip");
    history.assert_never_emptied("vip2");
}

#[tokio::test]
async fn a_pair_configured_on_one_member_only_is_kept_while_it_lives_and_deleted_after_it_is_gone()
{
    let world = World::new("one-member").await;
    world.seed(&["198.51.100.1"]).await;
    // node-1 has the pair; node-2, same group, has none.
    let node1 = Daemon::start(group_config(&world, "node-1", "copier", &["vip"]));
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;
    let node2 = Daemon::start(group_config(&world, "node-2", "copier", &[]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // node-2 leads now and scans: the slices are not its pair's, but node-1 still configures it.
    node1.stop().await;
    let note = eventually("a ConfiguredElsewhere Event on vip", CONVERGE, || async {
        events_on(&world, "vip", "ConfiguredElsewhere").await.pop()
    })
    .await;
    assert!(note.contains("node-1"), "{note}");
    assert_eq!(
        ready_addresses(slices_of(&world.client, &world.ns, "vip").await.values()),
        ["198.51.100.1"],
        "kept while node-1 may come back"
    );
    // node-1 stays away past forget_after (4 s): the pair is gone for good, its slices go.
    eventually("vip's slices deleted", CONVERGE, || async {
        slices_of(&world.client, &world.ns, "vip")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    node2.stop().await;
}

#[tokio::test]
async fn slices_written_before_groups_are_adopted_in_place_without_a_gap() {
    let world = World::new("adopt-legacy").await;
    // The default group (kube-system/endpoint-copier) adopts unlabelled slices: only on the test
    // bed, where no real endpoint-copier holds that Lease.
    require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let vip: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(world.client.clone(), &world.ns);
    let uid = vip.get("vip").await.unwrap().metadata.uid.unwrap();
    // The slice as the previous version wrote it: our labels but no group label.
    let mut old = source_slice(&world.ns, "vip", "vip", "IPv4", &["198.51.100.1"]);
    old.metadata.labels = Some(BTreeMap::from([
        (names::SERVICE_NAME_LABEL.to_owned(), "vip".to_owned()),
        (
            names::MANAGED_BY_LABEL.to_owned(),
            names::MANAGED_BY.to_owned(),
        ),
        (names::SOURCE_LABEL.to_owned(), "apiserver".to_owned()),
    ]));
    old.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: "vip".into(),
            uid,
            controller: Some(false),
            block_owner_deletion: Some(false),
        },
    ]);
    let old = create(&world.client, &world.ns, &old).await;
    let history = History::start(&world).await;
    let mut config = world.config("node-1");
    config.lease.namespace = names::LEASE_NAMESPACE.to_owned();
    config.lease.name = format!("{}-default", world.ns);
    // Not the default Lease name, and no pair: this copy's orphan scan must not see, adopt or
    // delete the unlabelled slice...
    let mut other_config = config.clone();
    other_config.pairs.clear();
    let other = Daemon::start(other_config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = slices_of(&world.client, &world.ns, "vip").await;
    assert_eq!(
        still["vip"].metadata.resource_version, old.metadata.resource_version,
        "a non-default group never adopts an unlabelled slice"
    );
    other.stop().await;
    // ...while the default group adopts it in place: same object, group label added.
    config.lease.name = names::LEASE_NAME.to_owned();
    let daemon = Daemon::start(config);
    let adopted = eventually(
        "the old slice labelled with the default group",
        CONVERGE,
        || async {
            let s = slices_of(&world.client, &world.ns, "vip").await;
            let v = s.get("vip")?;
            (v.metadata.labels.as_ref()?.get(names::GROUP_LABEL)?
                == &format!("{}.{}", names::LEASE_NAMESPACE, names::LEASE_NAME))
                .then(|| s.clone())
        },
    )
    .await;
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(
        adopted["vip"].metadata.uid, old.metadata.uid,
        "updated in place"
    );
    daemon.stop().await;
    history.assert_never_emptied("vip");
}

#[tokio::test]
async fn a_mirrored_slice_on_the_target_is_untouched_and_reported() {
    let world = World::new("foreign").await;
    world.seed(&["198.51.100.1"]).await;
    // A hand-written Endpoints object on the selector-less target: kube-controller-manager's
    // endpointslice-mirroring controller turns it into a slice of the target.
    let endpoints = Endpoints {
        metadata: meta(&world.ns, "vip"),
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress {
                ip: "203.0.113.9".into(),
                ..Default::default()
            }]),
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: 6443,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }]),
    };
    create(&world.client, &world.ns, &endpoints).await;
    let mirrored = eventually("a mirrored slice on vip", CONVERGE, || async {
        slices_of(&world.client, &world.ns, "vip")
            .await
            .into_values()
            .find(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::MANAGED_BY_LABEL))
                    == Some(&"endpointslicemirroring-controller.k8s.io".to_owned())
            })
    })
    .await;
    let daemon = Daemon::start(world.config("node-1"));
    wait_for_target(
        &world.client,
        &world.ns,
        "vip",
        &["198.51.100.1", "203.0.113.9"],
        CONVERGE,
    )
    .await;
    let note = eventually("a ForeignSlices Event on vip", CONVERGE, || async {
        events_on(&world, "vip", "ForeignSlices").await.pop()
    })
    .await;
    assert!(
        note.contains("endpointslicemirroring-controller.k8s.io") && note.contains("203.0.113.9"),
        "{note}"
    );
    let after = slices_of(&world.client, &world.ns, "vip").await;
    let name = mirrored.metadata.name.clone().unwrap();
    assert_eq!(
        after[&name].metadata.resource_version, mirrored.metadata.resource_version,
        "the mirrored slice was never written"
    );
    daemon.stop().await;
}

/// `config` with member timings short enough for a test (1 s heartbeat, 3 s expiry).
fn quick_members(mut config: Config) -> Config {
    config.members.heartbeat = Duration::from_secs(1);
    config.members.expiry = Duration::from_secs(3);
    config.members.forget_after = Duration::from_secs(30);
    config
}

#[tokio::test]
async fn two_daemons_with_one_identity_are_reported_by_an_event_and_check() {
    let world = World::new("twins").await;
    world.seed(&["198.51.100.1"]).await;
    let leader = Daemon::start(quick_members(world.config("node-1")));
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;
    // Two hosts both called node-2 (a cloned disk): two processes, one member Lease.
    let a = Daemon::start(quick_members(world.config("node-2")));
    let b = Daemon::start(quick_members(world.config("node-2")));
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(world.client.clone(), &world.ns);
    let note = eventually("a TwinIdentity Event on the target", CONVERGE, || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("TwinIdentity"))
            .and_then(|e| e.note)
    })
    .await;
    assert!(note.starts_with("two live copies run as node-2"), "{note}");
    // `check` on any host says it as a problem: the record itself says it saw a twin.
    let report = eventually("check to name the twins", CONVERGE, || async {
        let report = check_report(&quick_members(world.config("node-3")))
            .await
            .unwrap();
        report
            .problems
            .iter()
            .any(|p| p.starts_with("two live copies run as node-2"))
            .then_some(report)
    })
    .await;
    assert!(matches!(
        endpoint_copier::inspect::Verdict::of(&report),
        endpoint_copier::inspect::Verdict::Problems(_)
    ));
    b.stop().await;
    a.stop().await;
    leader.stop().await;
}

/// `GET path` on the metrics listener: the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.ok()?;
    let code = raw.split(' ').nth(1)?.parse().ok()?;
    Some((code, raw.split_once("\r\n\r\n")?.1.to_owned()))
}

#[tokio::test]
async fn a_member_publisher_that_cannot_write_says_so_in_its_metric_and_readyz_and_recovers() {
    use endpoint_copier_testbed::{Failure, Match, Scope, Verb};
    let world = World::new("publisher-down").await;
    let tb = require_testbed!(world.cluster);
    world.seed(&["198.51.100.1"]).await;
    let mut config = quick_members(world.config("node-1"));
    let members = format!("{}-m", world.ns);
    config.members.namespace.clone_from(&members);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    config.metrics.listen = Some(addr);
    // The API refuses every record of this copy (a policy, a limit): it keeps mirroring, and says
    // that its ballot is lost.
    for verb in [Verb::Create, Verb::Update] {
        tb.fail_until_healed(
            Match {
                identity: Some("node-1".into()),
                verb: Some(verb),
                resource: Some("leases".into()),
                scope: Some(Scope::Namespace(members.clone())),
            },
            Failure::Status(422),
        );
    }
    let daemon = Daemon::start(config);
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], CONVERGE).await;
    let gauge = |body: &str, value: &str| {
        body.lines()
            .any(|l| l == format!("endpoint_copier_member_publisher_up {value}"))
    };
    // Mirroring and in sync, but its ballot lost: not ready once an expiry has passed (and
    // the one-second status tick after it).
    tokio::time::sleep(Duration::from_secs(3) + Duration::from_millis(2500)).await;
    let (_, metrics) = get(addr, "/metrics").await.unwrap();
    assert!(gauge(&metrics, "0"), "{metrics}");
    assert_eq!(get(addr, "/readyz").await.unwrap().0, 503);
    tb.heal_failures();
    eventually("the gauge at 1 and /readyz ready", CONVERGE, || async {
        let (_, metrics) = get(addr, "/metrics").await?;
        let (ready, _) = get(addr, "/readyz").await?;
        (gauge(&metrics, "1") && ready == 200).then_some(())
    })
    .await;
    daemon.stop().await;
}
