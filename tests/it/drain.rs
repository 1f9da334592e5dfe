//! `endpoint-copier drain` and `resume` against the test bed: the drain annotates the Node with an
//! expiry and returns once the target shows the Node's endpoints not ready; it times out naming
//! what is still ready; it refuses to drain the last ready endpoint and writes nothing; `resume`
//! removes the annotations (and `--timed-only` keeps a drain set by hand); the binary finds the
//! Node by `--node` or by the host name.
//!
//! The daemon's side of a drain (the leader marking a drained Node's endpoints not ready) is built
//! on another branch: these tests play the leader themselves, writing the target slice with the
//! managed-by label as the daemon would, so they show exactly what the command waits for.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use endpoint_copier::config::Config;
use endpoint_copier::drain::{self, DrainOptions, ResumeOptions};
use endpoint_copier::names;
use endpoint_copier_testbed::require_testbed;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use kube::Api;
use kube::api::{DeleteParams, PostParams};

const BIN: &str = env!("CARGO_BIN_EXE_endpoint-copier");

/// The label each test puts on its Nodes, valued with its namespace; its config watches only
/// those (`[nodes] selector`), as the daemon would.
const WORLD_LABEL: &str = "it.endpoint-copier/world";

/// The `[nodes] selector` of `world`'s config.
fn selector(world: &World) -> String {
    format!("{WORLD_LABEL}={}", world.ns)
}

/// A Node holding `addrs` as InternalIPs. Nodes are cluster-scoped: the name carries the test's
/// namespace so parallel tests never meet, and the label makes it one of the Nodes `world`'s
/// config watches.
async fn create_node(world: &World, name: &str, addrs: &[&str]) -> Node {
    let node = Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([(WORLD_LABEL.to_owned(), world.ns.clone())].into()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(
                addrs
                    .iter()
                    .map(|a| NodeAddress {
                        type_: "InternalIP".into(),
                        address: (*a).into(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Node>::all(world.client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap()
}

async fn delete_node(world: &World, name: &str) {
    let _ = Api::<Node>::all(world.client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

async fn annotations(world: &World, name: &str) -> BTreeMap<String, String> {
    Api::<Node>::all(world.client.clone())
        .get(name)
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
}

/// The target slice as the leader would write it: labelled for `vip` and managed by us.
fn target_slice(ns: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
    let mut m = meta(ns, "vip");
    m.labels = Some(
        [
            (names::SERVICE_NAME_LABEL.to_owned(), "vip".to_owned()),
            (
                names::MANAGED_BY_LABEL.to_owned(),
                names::MANAGED_BY.to_owned(),
            ),
        ]
        .into(),
    );
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: endpoints.iter().map(|(a, r)| endpoint(a, *r)).collect(),
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            port: Some(6443),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

/// Plays the leader: replaces the target slice with `endpoints`.
async fn set_target(world: &World, endpoints: &[(&str, bool)]) {
    let api: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &world.ns);
    let mut slice = target_slice(&world.ns, endpoints);
    slice.metadata.resource_version = api.get("vip").await.unwrap().metadata.resource_version;
    api.replace("vip", &PostParams::default(), &slice)
        .await
        .unwrap();
}

/// The world's target Service with one managed slice holding `endpoints`.
async fn seed_target(world: &World, endpoints: &[(&str, bool)]) {
    create(
        &world.client,
        &world.ns,
        &vip_service(&world.ns, "vip", &["IPv4"]),
    )
    .await;
    create(
        &world.client,
        &world.ns,
        &target_slice(&world.ns, endpoints),
    )
    .await;
}

/// A config whose only target is this world's: annotated Services of other tests (which may hold
/// the same documentation addresses) are left out.
fn config_of(world: &World) -> Config {
    let mut c = world.config("node-1");
    c.annotations.enabled = false;
    c.nodes.selector = Some(selector(world));
    c
}

fn drain_options(node: &str, timeout: Duration) -> DrainOptions {
    DrainOptions {
        node: Some(node.to_owned()),
        timeout,
        expires: drain::DEFAULT_EXPIRES,
    }
}

#[tokio::test]
async fn drain_annotates_with_an_expiry_and_returns_once_the_target_shows_the_node_not_ready() {
    let world = World::new("drain-ok").await;
    let node = format!("{}-cp-1", world.ns);
    create_node(&world, &node, &["203.0.113.11"]).await;
    seed_target(&world, &[("203.0.113.11", true), ("203.0.113.12", true)]).await;
    let config = config_of(&world);
    let options = drain_options(&node, Duration::from_secs(10));
    let started = jiff::Timestamp::now();
    let running = tokio::spawn(async move { drain::drain(&config, &options).await });

    // The leader acts on the annotation: here, the test does.
    let expires = eventually("the drain annotation", Duration::from_secs(5), || async {
        let a = annotations(&world, &node).await;
        (a.get(names::ANNOTATION_DRAIN).map(String::as_str) == Some("true"))
            .then(|| a.get(names::ANNOTATION_DRAIN_EXPIRES).cloned())
            .flatten()
    })
    .await;
    assert!(
        !running.is_finished(),
        "drain returned before the target followed"
    );
    set_target(&world, &[("203.0.113.11", false), ("203.0.113.12", true)]).await;

    let drained = running.await.unwrap().unwrap();
    assert_eq!(drained.node, node);
    assert_eq!(drained.targets, vec![world.target().parse().unwrap()]);
    assert_eq!(drained.expires.as_deref(), Some(expires.as_str()));
    let at = drain::parse_expiry(&expires).unwrap();
    let ahead = (at - started).get_seconds();
    assert!((895..=905).contains(&ahead), "expires {ahead} s ahead");
    // The length too: the leader counts it from when it first sees the drain, by its own
    // clock, never by this host's.
    assert_eq!(
        annotations(&world, &node)
            .await
            .get(names::ANNOTATION_DRAIN_DURATION)
            .map(String::as_str),
        Some("900")
    );
    assert!(drained.to_string().contains(&world.target()), "{drained}");
    delete_node(&world, &node).await;
}

#[tokio::test]
async fn drain_refuses_a_node_the_daemon_does_not_watch_and_writes_nothing() {
    let world = World::new("drain-unwatched").await;
    let node = format!("{}-cp-1", world.ns);
    create_node(&world, &node, &["203.0.113.15"]).await;
    seed_target(&world, &[("203.0.113.15", true), ("203.0.113.16", true)]).await;
    let mut config = config_of(&world);
    config.nodes.selector = Some(format!("{WORLD_LABEL}=elsewhere"));
    let err = drain::drain(&config, &drain_options(&node, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, drain::Error::NotWatched { .. }) && err.to_string().contains("selector"),
        "{err}"
    );
    assert!(
        !annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN)
    );
    delete_node(&world, &node).await;
}

#[tokio::test]
async fn drain_times_out_naming_the_targets_that_still_show_the_node_ready() {
    let world = World::new("drain-late").await;
    let node = format!("{}-cp-1", world.ns);
    create_node(&world, &node, &["203.0.113.21"]).await;
    seed_target(&world, &[("203.0.113.21", true), ("203.0.113.22", true)]).await;
    let before = std::time::Instant::now();
    let err = drain::drain(
        &config_of(&world),
        &drain_options(&node, Duration::from_secs(1)),
    )
    .await
    .unwrap_err();
    assert!(
        before.elapsed() < Duration::from_secs(3),
        "{:?}",
        before.elapsed()
    );
    let msg = err.to_string();
    assert!(
        matches!(err, drain::Error::StillReady { .. })
            && msg.contains(&format!("'{node}'"))
            && msg.contains(&format!("{} (203.0.113.21)", world.target())),
        "{msg}"
    );
    // The annotation stays: the drain completes whenever the leader acts.
    assert_eq!(
        annotations(&world, &node)
            .await
            .get(names::ANNOTATION_DRAIN)
            .map(String::as_str),
        Some("true")
    );
    delete_node(&world, &node).await;
}

#[tokio::test]
async fn drain_refuses_the_last_ready_endpoint_and_writes_no_annotation() {
    let world = World::new("drain-last").await;
    let node = format!("{}-cp-1", world.ns);
    create_node(&world, &node, &["203.0.113.31"]).await;
    seed_target(&world, &[("203.0.113.31", true), ("203.0.113.32", false)]).await;
    let err = drain::drain(
        &config_of(&world),
        &drain_options(&node, Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, drain::Error::LastReady { .. })
            && msg.contains(&format!("'{node}'"))
            && msg.contains(&format!("{} (203.0.113.31)", world.target())),
        "{msg}"
    );
    let a = annotations(&world, &node).await;
    assert!(!a.contains_key(names::ANNOTATION_DRAIN), "{a:?}");
    assert!(!a.contains_key(names::ANNOTATION_DRAIN_EXPIRES), "{a:?}");
    delete_node(&world, &node).await;
}

#[tokio::test]
async fn resume_removes_both_annotations_and_succeeds_when_there_is_nothing_to_remove() {
    let world = World::new("drain-resume").await;
    let node = format!("{}-cp-1", world.ns);
    create_node(&world, &node, &["203.0.113.41"]).await;
    // No target holds the Node's address: drain annotates and has nothing to wait for.
    seed_target(&world, &[("203.0.113.42", true)]).await;
    let config = config_of(&world);
    let drained = drain::drain(&config, &drain_options(&node, Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(drained.targets.is_empty());
    assert!(
        annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN_EXPIRES)
    );

    let options = ResumeOptions {
        node: Some(node.clone()),
        timeout: Duration::from_secs(5),
        timed_only: true,
    };
    let resumed = drain::resume(&config, &options).await.unwrap();
    assert!(resumed.removed && !resumed.kept, "{resumed:?}");
    let a = annotations(&world, &node).await;
    assert!(!a.contains_key(names::ANNOTATION_DRAIN), "{a:?}");
    assert!(!a.contains_key(names::ANNOTATION_DRAIN_EXPIRES), "{a:?}");
    let again = drain::resume(&config, &options).await.unwrap();
    assert!(!again.removed, "{again:?}");
    delete_node(&world, &node).await;
}

#[tokio::test]
async fn a_drain_set_by_hand_without_expiry_survives_the_hooks_and_yields_to_a_plain_resume() {
    let world = World::new("drain-manual").await;
    let node = format!("{}-cp-1", world.ns);
    create_node(&world, &node, &["203.0.113.51"]).await;
    seed_target(&world, &[("203.0.113.51", false), ("203.0.113.52", true)]).await;
    let api: Api<Node> = Api::all(world.client.clone());
    api.patch(
        &node,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({
            "metadata": {"annotations": {names::ANNOTATION_DRAIN: "true"}}
        })),
    )
    .await
    .unwrap();
    let config = config_of(&world);

    // The ExecStop= hook: already drained, kept without expiry.
    let drained = drain::drain(&config, &drain_options(&node, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(drained.expires, None);
    assert!(
        !annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN_EXPIRES)
    );
    // The ExecStartPost= hook keeps it...
    let hook = ResumeOptions {
        node: Some(node.clone()),
        timeout: Duration::from_secs(5),
        timed_only: true,
    };
    let kept = drain::resume(&config, &hook).await.unwrap();
    assert!(kept.kept && !kept.removed, "{kept:?}");
    assert!(
        annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN)
    );
    // ...an operator's resume ends it.
    let by_hand = ResumeOptions {
        timed_only: false,
        ..hook
    };
    assert!(drain::resume(&config, &by_hand).await.unwrap().removed);
    assert!(
        !annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN)
    );
    delete_node(&world, &node).await;
}

#[tokio::test]
async fn an_unknown_node_is_named_in_the_error() {
    let world = World::new("drain-nonode").await;
    seed_target(&world, &[("203.0.113.62", true)]).await;
    let node = format!("{}-absent", world.ns);
    let err = drain::drain(
        &config_of(&world),
        &drain_options(&node, Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, drain::Error::NodeNotFound { .. }) && err.to_string().contains(&node),
        "{err}"
    );
}

/// A config drop-in for the binary: this world's kubeconfig and pair, annotations off.
fn drop_in(dir: &Path, kubeconfig: &Path, world: &World) {
    std::fs::write(
        dir.join("50-test.toml"),
        format!(
            "kubeconfig = \"{}\"\n\n[[pair]]\nsource = \"{}\"\ntarget = \"{}\"\n\n[annotations]\nenabled = false\n\n[nodes]\nselector = \"{}\"\n",
            kubeconfig.display(),
            world.source(),
            world.target(),
            selector(world),
        ),
    )
    .unwrap();
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--config-dir", dir.to_str().unwrap()])
        .args(args)
        .env_remove("ENDPOINT_COPIER_LOG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_drains_the_node_given_with_node_and_exits_1_naming_what_is_still_ready() {
    let world = World::new("drain-bin").await;
    let tb = require_testbed!(world.cluster);
    let node = format!("{}-cp-1", world.ns);
    create_node(&world, &node, &["203.0.113.71"]).await;
    seed_target(&world, &[("203.0.113.71", true), ("203.0.113.72", true)]).await;
    let conf = tempfile::tempdir().unwrap();
    drop_in(conf.path(), &tb.kubeconfig_for("node-1"), &world);
    let dir = conf.path().to_owned();
    let n = node.clone();
    let out =
        tokio::task::spawn_blocking(move || run(&dir, &["drain", "--node", &n, "--timeout", "1"]))
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("'{node}'")) && stderr.contains(&world.target()),
        "{stderr}"
    );
    assert!(
        annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN)
    );

    let dir = conf.path().to_owned();
    let n = node.clone();
    let out =
        tokio::task::spawn_blocking(move || run(&dir, &["resume", "--node", &n, "--timed-only"]))
            .await
            .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("Node {node} resumed")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN)
    );
    delete_node(&world, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_node_the_binary_drains_and_resumes_the_node_named_like_this_host() {
    let world = World::new("drain-host").await;
    let tb = require_testbed!(world.cluster);
    let host = endpoint_copier::host::hostname().unwrap();
    // Only on the test bed (above): on a real cluster a Node named like this host may be a real
    // one. A host name that is no valid Node name cannot be a Node's anyway.
    let node = host.to_ascii_lowercase();
    if node.len() > 253
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        eprintln!("skipped: host name {host:?} is not a valid Node name");
        return;
    }
    create_node(&world, &node, &["203.0.113.81"]).await;
    seed_target(&world, &[("203.0.113.81", false), ("203.0.113.82", true)]).await;
    let conf = tempfile::tempdir().unwrap();
    drop_in(conf.path(), &tb.kubeconfig_for("node-1"), &world);

    let dir = conf.path().to_owned();
    let out = tokio::task::spawn_blocking(move || run(&dir, &["drain", "--timeout", "5"]))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("Node {node} drained")), "{stdout}");
    assert!(
        annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN_EXPIRES)
    );

    let dir = conf.path().to_owned();
    let out = tokio::task::spawn_blocking(move || run(&dir, &["resume"]))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !annotations(&world, &node)
            .await
            .contains_key(names::ANNOTATION_DRAIN)
    );
    delete_node(&world, &node).await;
}
