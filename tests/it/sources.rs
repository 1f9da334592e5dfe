//! Pairs with several sources, end to end: the real daemon unites a Service of this cluster, a
//! Service in a second cluster (a test bed of its own, reached through a kubeconfig of its own,
//! even when the suite runs against a real cluster) and static addresses; a failing source
//! keeps its endpoints while the others sync; static addresses are probed (inside the test's
//! network namespace) with kubelet's readiness semantics; bad sources are config errors.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use endpoint_copier::config::{Config, PairConfig};
use endpoint_copier::names;
use endpoint_copier::probe::spec;
use endpoint_copier::source::{RemoteSource, Source, StaticSource};
use endpoint_copier_testbed::{TestBed, Verb};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::common::netns::{self, Mode};
use crate::common::{
    Daemon, World, client_for, create, delete, eventually, slices_of, source_service, source_slice,
    vip_service, wait_for_target,
};

/// How long a test waits for the daemon to bring something about (the speed is not a test's
/// business).
const WITHIN: Duration = Duration::from_secs(15);

/// The identity the daemon reads the remote cluster as.
const READER: &str = "remote-reader";

/// A second cluster holding Service `app/db` with one slice.
struct Remote {
    bed: TestBed,
    client: Client,
    kubeconfig: PathBuf,
}

impl Remote {
    async fn start(addrs: &[&str]) -> Remote {
        let bed = TestBed::start().await;
        let client = client_for(bed.kubeconfig()).await;
        let kubeconfig = bed.kubeconfig_for(READER);
        let remote = Remote {
            bed,
            client,
            kubeconfig,
        };
        create_namespace(&remote.client, "app").await;
        create(&remote.client, "app", &source_service("app", "db")).await;
        create(
            &remote.client,
            "app",
            &source_slice("app", "db", "db-9qz4m", "IPv4", addrs),
        )
        .await;
        remote
    }

    fn source(&self) -> Source {
        Source::Remote(RemoteSource {
            kubeconfig: self.kubeconfig.clone(),
            service: "app/db".parse().unwrap(),
        })
    }

    /// Replaces the remote slice's endpoints with `addrs`.
    async fn set(&self, addrs: &[&str]) {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "app");
        let mut slice = source_slice("app", "db", "db-9qz4m", "IPv4", addrs);
        slice.metadata.resource_version =
            api.get("db-9qz4m").await.unwrap().metadata.resource_version;
        api.replace("db-9qz4m", &Default::default(), &slice)
            .await
            .unwrap();
    }
}

async fn create_namespace(client: &Client, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(ns.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&Default::default(), &namespace).await.unwrap();
}

/// A world whose target reads its own source (198.51.100.1) and `app/db` (198.51.100.3) in a
/// second cluster, in sync.
async fn local_and_remote(prefix: &str) -> (World, Remote, Daemon) {
    let world = World::new(prefix).await;
    world.seed(&["198.51.100.1"]).await;
    let remote = Remote::start(&["198.51.100.3"]).await;
    let sources = vec![
        Source::Service(world.source().parse().unwrap()),
        remote.source(),
    ];
    let daemon = Daemon::start(config_with(&world, "node-1", sources));
    target_holds(&world, &["198.51.100.1", "198.51.100.3"]).await;
    (world, remote, daemon)
}

fn fixed(addrs: &[&str]) -> Source {
    Source::Static(StaticSource::new(
        addrs.iter().map(|a| a.parse::<IpAddr>().unwrap()),
    ))
}

/// `world`'s daemon config with its one pair reading `sources` into `vip`, probes off.
fn config_with(world: &World, identity: &str, sources: Vec<Source>) -> Config {
    let mut c = world.config(identity);
    c.pairs = vec![PairConfig::of(sources, world.target().parse().unwrap())];
    c.pairs[0].probe = None;
    c
}

async fn target_holds(world: &World, want: &[&str]) {
    wait_for_target(&world.client, &world.ns, "vip", want, WITHIN).await;
}

/// Waits for a `SourceUnavailable` Event on the target whose note contains `says`.
async fn source_unavailable(world: &World, says: &str) {
    let api: Api<Event> = Api::namespaced(world.client.clone(), &world.ns);
    eventually(
        &format!("a SourceUnavailable Event saying '{says}'"),
        WITHIN,
        || {
            let api = api.clone();
            async move {
                let list = api.list(&ListParams::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("SourceUnavailable")
                            && e.note.as_deref().is_some_and(|m| m.contains(says))
                    })
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_union_of_three_kinds_writes_every_address_once() {
    let world = World::new("union").await;
    world.seed(&["198.51.100.1", "198.51.100.2"]).await;
    let remote = Remote::start(&["198.51.100.2", "198.51.100.3"]).await;
    let sources = vec![
        Source::Service(world.source().parse().unwrap()),
        remote.source(),
        fixed(&["203.0.113.10", "198.51.100.1"]),
    ];
    let daemon = Daemon::start(config_with(&world, "node-1", sources));
    target_holds(
        &world,
        &[
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "203.0.113.10",
        ],
    )
    .await;
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    let ids: Vec<&str> = slices
        .values()
        .filter_map(|s| s.metadata.labels.as_ref()?.get(names::SOURCE_ID_LABEL))
        .map(String::as_str)
        .collect();
    assert_eq!(ids.len(), 3, "one slice per source: {ids:?}");
    assert!(ids.contains(&"static"), "{ids:?}");
    // Each address once, in one slice.
    let all: Vec<&str> = slices
        .values()
        .flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0].as_str()))
        .collect();
    assert_eq!(all.len(), 4, "{all:?}");

    // Each source keeps syncing on its own.
    world.set_source(&["198.51.100.1", "198.51.100.4"]).await;
    remote.set(&["198.51.100.3"]).await;
    target_holds(
        &world,
        &[
            "198.51.100.1",
            "198.51.100.3",
            "198.51.100.4",
            "203.0.113.10",
        ],
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_remote_cluster_that_goes_down_keeps_its_endpoints_while_the_rest_syncs() {
    let world = World::new("remote-down").await;
    world.seed(&["198.51.100.1"]).await;
    let remote = Remote::start(&["198.51.100.3"]).await;
    // The remote answers slowly at first, so the daemon's first plan comes before the remote's
    // first view: a `SourceUnavailable` saying "not read yet" is raised first (under load that
    // happened by chance, and the "cannot be reached" below was folded into it).
    remote.bed.set_latency(Duration::from_millis(700));
    let sources = vec![
        Source::Service(world.source().parse().unwrap()),
        remote.source(),
    ];
    let daemon = Daemon::start(config_with(&world, "node-1", sources));
    target_holds(&world, &["198.51.100.1", "198.51.100.3"]).await;
    source_unavailable(&world, "not read yet").await;
    remote.bed.set_latency(Duration::ZERO);

    remote.bed.go_down().await;
    world.set_source(&["198.51.100.1", "198.51.100.2"]).await;
    target_holds(&world, &["198.51.100.1", "198.51.100.2", "198.51.100.3"]).await;
    source_unavailable(&world, "cannot be reached").await;

    remote.bed.come_up().await;
    remote.set(&["198.51.100.5"]).await;
    target_holds(&world, &["198.51.100.1", "198.51.100.2", "198.51.100.5"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_remote_cluster_gone_for_longer_than_the_limit_leaves_the_vip() {
    let world = World::new("remote-aged").await;
    world.seed(&["198.51.100.1"]).await;
    let remote = Remote::start(&["198.51.100.3", "198.51.100.4"]).await;
    let sources = vec![
        Source::Service(world.source().parse().unwrap()),
        remote.source(),
    ];
    let mut config = config_with(&world, "node-1", sources);
    config.sync.keep_last_known = Duration::from_secs(2);
    let daemon = Daemon::start(config);
    target_holds(&world, &["198.51.100.1", "198.51.100.3", "198.51.100.4"]).await;
    remote.bed.go_down().await;
    // Kept for 2 s, then not ready: this cluster's endpoint is the VIP's.
    target_holds(&world, &["198.51.100.1"]).await;
    source_unavailable(&world, "keep_last_known_secs").await;
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    let listed = slices.values().flat_map(|s| s.endpoints.iter()).count();
    assert_eq!(listed, 3, "kept in the slices, not ready");
    remote.bed.come_up().await;
    target_holds(&world, &["198.51.100.1", "198.51.100.3", "198.51.100.4"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_remote_only_pair_keeps_one_endpoint_ready_past_the_limit() {
    let world = World::new("remote-last").await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv4"]),
    )
    .await;
    let remote = Remote::start(&["198.51.100.3", "198.51.100.4"]).await;
    let mut config = config_with(&world, "node-1", vec![remote.source()]);
    config.sync.keep_last_known = Duration::from_secs(2);
    let daemon = Daemon::start(config);
    target_holds(&world, &["198.51.100.3", "198.51.100.4"]).await;
    remote.bed.go_down().await;
    // Never the last one: the lowest stays ready.
    target_holds(&world, &["198.51.100.3"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn refused_credentials_and_missing_rights_keep_the_remote_endpoints() {
    let (world, remote, daemon) = local_and_remote("remote-auth").await;

    // 403: the remote identity may no longer list or watch the slices.
    remote
        .bed
        .set_allowed(READER, Verb::List, "endpointslices", false);
    remote
        .bed
        .set_allowed(READER, Verb::Watch, "endpointslices", false);
    remote.bed.close_watches();
    world.set_source(&["198.51.100.2"]).await;
    target_holds(&world, &["198.51.100.2", "198.51.100.3"]).await;
    source_unavailable(&world, "may not read").await;
    remote
        .bed
        .set_allowed(READER, Verb::List, "endpointslices", true);
    remote
        .bed
        .set_allowed(READER, Verb::Watch, "endpointslices", true);
    remote.set(&["198.51.100.4"]).await;
    target_holds(&world, &["198.51.100.2", "198.51.100.4"]).await;

    // 401: its credentials are revoked.
    remote.bed.revoke(READER);
    remote.bed.close_watches();
    world.set_source(&["198.51.100.6"]).await;
    target_holds(&world, &["198.51.100.4", "198.51.100.6"]).await;
    // A second cause of the same source's trouble is an Event of its own, not a repeat of the
    // first one's.
    source_unavailable(&world, "credentials are refused").await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_rotated_remote_kubeconfig_is_picked_up_without_a_restart() {
    let (world, remote, daemon) = local_and_remote("remote-rotate").await;
    remote.bed.rotate_client_certificate(&remote.kubeconfig);
    remote.bed.close_watches();
    remote.set(&["198.51.100.7"]).await;
    target_holds(&world, &["198.51.100.1", "198.51.100.7"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_remote_service_deleted_there_keeps_its_endpoints_here() {
    let (world, remote, daemon) = local_and_remote("remote-gone").await;
    delete::<EndpointSlice>(&remote.client, "app", "db-9qz4m").await;
    delete::<Service>(&remote.client, "app", "db").await;
    world.set_source(&["198.51.100.2"]).await;
    target_holds(&world, &["198.51.100.2", "198.51.100.3"]).await;
    source_unavailable(&world, "app/db").await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_remote_kubeconfig_that_appears_late_is_waited_for() {
    let world = World::new("remote-late").await;
    world.seed(&["198.51.100.1"]).await;
    let remote = Remote::start(&["198.51.100.3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let late = dir.path().join("remote.yaml");
    let sources = vec![
        Source::Service(world.source().parse().unwrap()),
        Source::Remote(RemoteSource {
            kubeconfig: late.clone(),
            service: "app/db".parse().unwrap(),
        }),
    ];
    let daemon = Daemon::start(config_with(&world, "node-1", sources));
    target_holds(&world, &["198.51.100.1"]).await;
    std::fs::copy(&remote.kubeconfig, &late).unwrap();
    target_holds(&world, &["198.51.100.1", "198.51.100.3"]).await;
    daemon.stop().await;
}

#[tokio::test]
async fn static_addresses_follow_kubelet_readiness_under_a_tcp_probe() {
    let Some(ns) =
        netns::enter("sources::static_addresses_follow_kubelet_readiness_under_a_tcp_probe")
    else {
        return;
    };
    const A: &str = "203.0.113.31";
    const B: &str = "203.0.113.32";
    const C: &str = "2001:db8::33";
    let world = World::new("static").await;
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv4", "IPv6"]),
    )
    .await;
    let a = ns.listener(A.parse().unwrap(), 6443, None).await;
    let b = ns.listener(B.parse().unwrap(), 6443, None).await;
    let c = ns.listener(C.parse().unwrap(), 6443, None).await;
    b.set_mode(Mode::Refuse);
    let mut config = config_with(&world, "node-1", vec![fixed(&[A, B, C])]);
    config.pairs[0].probe = spec::from_annotation("{ tcp = 6443 }").unwrap();
    let daemon = Daemon::start(config);
    // B never answered: kubelet's readiness starts at failure, so it is written not ready.
    target_holds(&world, &[C, A]).await;
    let slices = slices_of(&world.client, &world.ns, "vip").await;
    let listed: Vec<&str> = slices
        .values()
        .flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0].as_str()))
        .collect();
    assert!(
        listed.contains(&B),
        "kept in the slice, not ready: {listed:?}"
    );
    b.set_mode(Mode::Ok);
    target_holds(&world, &[C, A, B]).await;
    a.set_mode(Mode::Refuse);
    target_holds(&world, &[C, B]).await;
    drop(c);
    daemon.stop().await;
}

/// Runs the binary's `command` with one drop-in `50-db.toml` holding `text`: its exit code and
/// stderr.
fn with_drop_in(command: &str, text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("50-db.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_endpoint-copier"))
        .args(["--config-dir", dir.path().to_str().unwrap(), command])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn a_bad_source_exits_78_naming_file_line_and_column() {
    let (code, stderr) = with_drop_in(
        "run",
        "[[pair]]\ntarget = \"app/db\"\nsources = [\n  { service = \"app/db-primary\" },\n  { addresses = [\"db.example.com\"] },\n]\n",
    );
    assert_eq!(code, Some(78));
    assert!(stderr.contains("50-db.toml:5:"), "{stderr}");
    assert!(
        stderr.contains("pair[0].sources[1].addresses[0]") && stderr.contains("is a host name"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_source_key_exits_78() {
    let (code, stderr) = with_drop_in(
        "check",
        "[[pair]]\ntarget = \"app/db\"\nsources = [{ service = \"app/a\", cluster = \"b\" }]\n",
    );
    assert_eq!(code, Some(78));
    assert!(stderr.contains("50-db.toml:3:"), "{stderr}");
    assert!(
        stderr.contains("unknown key 'pair[0].sources[0].cluster'"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_reaches_every_remote_and_names_a_missing_service() {
    let world = World::new("remote-check").await;
    world.seed(&["198.51.100.1"]).await;
    let remote = Remote::start(&["198.51.100.3"]).await;
    let missing = Source::Remote(RemoteSource {
        kubeconfig: remote.kubeconfig.clone(),
        service: "app/gone".parse().unwrap(),
    });
    let config = config_with(
        &world,
        "node-1",
        vec![
            Source::Service(world.source().parse().unwrap()),
            remote.source(),
            missing,
        ],
    );
    let report = endpoint_copier::inspect::check_report(&config)
        .await
        .unwrap();
    assert_eq!(
        report.remotes.len(),
        1,
        "one kubeconfig: {:?}",
        report.remotes
    );
    let reach = &report.remotes[0];
    assert!(reach.server.is_some(), "{reach:?}");
    let ready: Vec<(String, Option<usize>)> = reach
        .sources
        .iter()
        .map(|s| (s.source.service.to_string(), s.ready_endpoints))
        .collect();
    assert!(ready.contains(&("app/db".to_owned(), Some(1))), "{ready:?}");
    assert!(
        report.problems.iter().any(|p| p.contains("app/gone")),
        "{:?}",
        report.problems
    );
    let text = endpoint_copier::inspect::render(&report);
    assert!(text.contains("  app/db: 1 ready endpoint\n"), "{text}");
}
