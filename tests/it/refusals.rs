//! Invalid inputs, from the cluster and from the config: each is refused with a reason that
//! names the culprit, and nothing is written for it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use crate::common::*;
use endpoint_copier::names;
use k8s_openapi::api::events::v1::Event;
use kube::Api;

const SEEN: Duration = Duration::from_secs(10);

/// Starts a daemon with no config pairs (or `pairs`), waits for a `Refused` Event on `target`
/// whose note contains `expect`, checks no EndpointSlice exists for `target`, and stops.
async fn assert_refused(world: &World, pairs: &[(&str, &str)], target: &str, expect: &str) {
    let mut config = world.config("node-1");
    config.pairs = pairs
        .iter()
        .map(|(s, t)| {
            endpoint_copier::config::PairConfig::new(s.parse().unwrap(), t.parse().unwrap())
        })
        .collect();
    let daemon = Daemon::start(config);
    let events: Api<Event> = Api::namespaced(world.client.clone(), &world.ns);
    let note = eventually(
        &format!("a Refused Event on {target} mentioning {expect:?}"),
        SEEN,
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let about = e.regarding.as_ref().and_then(|r| r.name.clone());
                (e.reason.as_deref() == Some("Refused") && about.as_deref() == Some(target))
                    .then(|| e.note.unwrap_or_default())
            })
        },
    )
    .await;
    assert!(note.contains(expect), "the Event names the problem: {note}");
    // Give a wrongly accepted pair every chance to write before checking nothing was written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Only our slices count: on a real cluster (and on the test bed, which runs the same
    // controllers) a target with a selector also gets the endpointslice controller's slice.
    let ours: Vec<String> = slices_of(&world.client, &world.ns, target)
        .await
        .into_iter()
        .filter(|(_, s)| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::MANAGED_BY_LABEL))
                .is_some_and(|m| m == names::MANAGED_BY)
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        ours.is_empty(),
        "nothing was written for {target}: {ours:?}"
    );
    daemon.stop().await;
}

async fn world_with_source(prefix: &str) -> World {
    let world = World::new(prefix).await;
    world.seed_source(&["198.51.100.1"]).await;
    world
}

#[tokio::test]
async fn a_configured_target_with_a_selector_is_refused() {
    let world = world_with_source("refuse-selector").await;
    let mut svc = vip_service(&world.ns, "vip", &["IPv4"]);
    svc.spec.as_mut().unwrap().selector = Some([("app".to_owned(), "web".to_owned())].into());
    create(&world.client, &world.ns, &svc).await;
    assert_refused(
        &world,
        &[(&world.source(), &world.target())],
        "vip",
        "selector",
    )
    .await;
}

#[tokio::test]
async fn an_annotated_service_copying_itself_is_refused() {
    let world = world_with_source("refuse-self").await;
    world
        .create_annotated(
            "vip",
            &[
                (names::ANNOTATION_ENABLED, "true"),
                (names::ANNOTATION_SOURCE_NAME, "vip"),
            ],
        )
        .await;
    assert_refused(&world, &[], "vip", "same Service").await;
}

#[tokio::test]
async fn two_annotated_services_reading_each_other_are_refused() {
    let world = world_with_source("refuse-cycle").await;
    world
        .create_annotated(
            "vip",
            &[
                (names::ANNOTATION_ENABLED, "true"),
                (names::ANNOTATION_SOURCE_NAME, "vip2"),
            ],
        )
        .await;
    world
        .create_annotated(
            "vip2",
            &[
                (names::ANNOTATION_ENABLED, "true"),
                (names::ANNOTATION_SOURCE_NAME, "vip"),
            ],
        )
        .await;
    assert_refused(&world, &[], "vip", "cycle").await;
    assert!(slices_of(&world.client, &world.ns, "vip2").await.is_empty());
}

#[tokio::test]
async fn an_invalid_source_name_annotation_is_refused() {
    let world = world_with_source("refuse-name").await;
    world
        .create_annotated(
            "vip",
            &[
                (names::ANNOTATION_ENABLED, "true"),
                (names::ANNOTATION_SOURCE_NAME, "Not_A_Name"),
            ],
        )
        .await;
    assert_refused(&world, &[], "vip", "Not_A_Name").await;
}

#[tokio::test]
async fn an_invalid_source_namespace_annotation_is_refused() {
    let world = world_with_source("refuse-ns").await;
    world
        .create_annotated(
            "vip",
            &[
                (names::ANNOTATION_ENABLED, "true"),
                (names::ANNOTATION_SOURCE_NAME, "apiserver"),
                (names::ANNOTATION_SOURCE_NAMESPACE, "UPPER"),
            ],
        )
        .await;
    assert_refused(&world, &[], "vip", "UPPER").await;
}

#[tokio::test]
async fn a_missing_source_name_annotation_is_refused() {
    let world = world_with_source("refuse-missing").await;
    world
        .create_annotated("vip", &[(names::ANNOTATION_ENABLED, "true")])
        .await;
    assert_refused(&world, &[], "vip", names::ANNOTATION_SOURCE_NAME).await;
}

#[tokio::test]
async fn a_cross_namespace_source_not_in_allowed_sources_is_refused() {
    let world = world_with_source("refuse-xns").await;
    let other = world.cluster.unique_namespace("refuse-xns-src").await;
    create(&world.client, &other, &source_service(&other, "secret-db")).await;
    create(
        &world.client,
        &other,
        &source_slice(&other, "secret-db", "secret-db", "IPv4", &["203.0.113.5"]),
    )
    .await;
    world
        .create_annotated(
            "vip",
            &[
                (names::ANNOTATION_ENABLED, "true"),
                (names::ANNOTATION_SOURCE_NAME, "secret-db"),
                (names::ANNOTATION_SOURCE_NAMESPACE, &other),
            ],
        )
        .await;
    assert_refused(&world, &[], "vip", "allowed_sources").await;
}

#[tokio::test]
async fn annotations_on_a_configured_target_are_ignored_in_favour_of_the_config() {
    let world = world_with_source("refuse-claimed").await;
    create(
        &world.client,
        &world.ns,
        &source_service(&world.ns, "other"),
    )
    .await;
    world
        .create_annotated(
            "vip",
            &[
                (names::ANNOTATION_ENABLED, "true"),
                (names::ANNOTATION_SOURCE_NAME, "other"),
            ],
        )
        .await;
    let mut config = world.config("node-1");
    config.pairs = vec![endpoint_copier::config::PairConfig::new(
        world.source().parse().unwrap(),
        world.target().parse().unwrap(),
    )];
    let daemon = Daemon::start(config);
    // The config's source wins: the target mirrors `apiserver`, not `other`.
    wait_for_target(&world.client, &world.ns, "vip", &["198.51.100.1"], SEEN).await;
    let events: Api<Event> = Api::namespaced(world.client.clone(), &world.ns);
    eventually(
        "a Refused Event about the ignored annotations",
        SEEN,
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("Refused")
                        && e.note.as_deref().is_some_and(|n| n.contains("config"))
                })
                .then_some(())
        },
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn an_annotation_enabled_value_other_than_true_is_not_a_pair() {
    let world = world_with_source("refuse-enabled").await;
    world
        .create_annotated(
            "vip",
            &[
                (names::ANNOTATION_ENABLED, "yes"),
                (names::ANNOTATION_SOURCE_NAME, "apiserver"),
            ],
        )
        .await;
    let mut config = world.config("node-1");
    config.pairs.clear();
    let daemon = Daemon::start(config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        slices_of(&world.client, &world.ns, "vip").await.is_empty(),
        "only \"true\" enables a pair, as in ECO"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_kubeconfig_that_skips_tls_verification_stops_the_daemon_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rke2.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n\
         contexts:\n- name: default\n  context:\n    cluster: default\n    user: default\ncurrent-context: default\nusers:\n- name: default\n  user:\n    token: abc\n",
    )
    .unwrap();
    let config = config(
        &path,
        "node-1",
        &[("default/kubernetes", "default/kubernetes-vip")],
    );
    let err = endpoint_copier::daemon::run(config, endpoint_copier::shutdown::Shutdown::new())
        .await
        .unwrap_err();
    // A refused kubeconfig is the variant main maps to exit 78 (EX_CONFIG).
    assert!(
        matches!(err, endpoint_copier::daemon::Error::Kubeconfig(_)),
        "{err:?}"
    );
    assert!(
        endpoint_copier::error::chain(&err).contains("insecure-skip-tls-verify"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_file_and_exit_78() {
    use endpoint_copier::config::{Overrides, load_from};
    let cases = [
        (
            "unknown key",
            "[lease]\nduraton_secs = 20\n",
            "duraton_secs",
        ),
        (
            "source equals target",
            "[[pair]]\nsource = \"default/a\"\ntarget = \"default/a\"\n",
            "default/a",
        ),
        (
            "renew deadline not below the duration",
            "[lease]\nduration_secs = 10\nrenew_deadline_secs = 10\n",
            "renew_deadline",
        ),
        (
            "bad Service reference",
            "[[pair]]\nsource = \"kubernetes\"\ntarget = \"default/kubernetes-vip\"\n",
            "kubernetes",
        ),
        (
            "metrics on a public address",
            "[metrics]\nlisten = \"0.0.0.0:9402\"\n",
            "listen",
        ),
    ];
    for (what, toml, culprit) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("50-site.toml");
        std::fs::write(&file, toml).unwrap();
        let err = load_from(
            &[dir.path().to_owned()],
            Vec::<(String, String)>::new(),
            &Overrides::default(),
        )
        .err()
        .unwrap_or_else(|| panic!("{what}: accepted"));
        let msg = err.to_string();
        assert!(
            msg.contains("50-site.toml"),
            "{what}: the error names the file: {msg}"
        );
        assert!(
            msg.contains(culprit),
            "{what}: the error names {culprit:?}: {msg}"
        );
    }
}
