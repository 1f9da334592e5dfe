//! The shipped RBAC (`packaging/rbac/`) against what the daemon does: it grants exactly the rights
//! `check` asks for with the default config and no more — evaluated with Kubernetes' RBAC rules,
//! resource names included (`endpoint_copier_testbed::rbac`) — and, applied to the test bed,
//! which then enforces it, it refuses a copier identity every Lease but the copier's own, while
//! the daemon under that identity elects, publishes its member Lease and mirrors.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use endpoint_copier::group::Group;
use endpoint_copier::inspect::permissions::{self, Wanted};
use endpoint_copier::inspect::{Feature, check_report};
use endpoint_copier::names;
use endpoint_copier_testbed::TestBed;
use endpoint_copier_testbed::rbac::{Attributes, Policy, Rule, UserInfo};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

use crate::common::*;

/// The group the shipped certificates carry (O=endpoint-copier), with a per-host CN.
const COPIER_GROUP: &str = "endpoint-copier";
const COPIER: &str = "endpoint-copier-node-1";

/// The manifests of packaging/rbac/, concatenated, without the file `skip` if given.
fn manifests(skip: Option<&str>) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/rbac");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files.retain(|f| skip.is_none_or(|s| !f.ends_with(s)));
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn attributes(w: &Wanted) -> Attributes<'_> {
    Attributes {
        verb: w.verb,
        api_group: w.group,
        resource: w.resource,
        subresource: None,
        namespace: w.namespace.as_deref(),
        name: w.name.as_deref(),
    }
}

/// Least privilege: every (verb, resource, namespace, name) a rule reachable by `user` grants
/// is one the daemon uses.
fn no_right_unused(rules: &[(Option<String>, Rule)], used: &[Wanted]) {
    for (ns, rule) in rules {
        let names: Vec<Option<&str>> = if rule.resource_names.is_empty() {
            vec![None]
        } else {
            rule.resource_names
                .iter()
                .map(|n| Some(n.as_str()))
                .collect()
        };
        for verb in &rule.verbs {
            for resource in &rule.resources {
                for group in &rule.api_groups {
                    for name in &names {
                        let known = used.iter().any(|w| {
                            w.verb == verb
                                && w.resource == resource
                                && w.group == group
                                && w.namespace == *ns
                                && w.name.as_deref() == *name
                                && !w.features.contains(&Feature::LeaseCreation)
                        });
                        assert!(
                            known,
                            "granted but never used: {verb} {resource}.{group} {name:?} in {ns:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_shipped_rbac_grants_every_right_check_asks_for_the_default_config_and_no_more() {
    let default_pair = [(
        "default/kubernetes".parse().unwrap(),
        "default/kubernetes-vip".parse().unwrap(),
    )];
    let groups = vec![COPIER_GROUP.to_owned()];
    // The single shared identity, and one certificate per host in the shared group.
    let users = [
        UserInfo {
            name: "endpoint-copier",
            groups: &[],
        },
        UserInfo {
            name: COPIER,
            groups: &groups,
        },
    ];
    // The whole directory for the default config; without 30-annotations.yaml for
    // `[annotations] enabled = false`, as docs/usage/rbac.md says.
    for (annotations, skip) in [(true, None), (false, Some("30-annotations.yaml"))] {
        let mut policy = Policy::default();
        let others = policy.load_yaml(&manifests(skip)).unwrap();
        let used = permissions::wanted(&default_pair, &Group::default_group(), annotations);
        for user in users {
            for w in &used {
                let allowed = policy.allows(user, &attributes(w));
                if w.features == [Feature::LeaseCreation] {
                    // A create cannot be narrowed to a name: not granted, the Lease is shipped.
                    assert!(!allowed, "{} may create any Lease: {w:?}", user.name);
                } else {
                    assert!(
                        allowed,
                        "not granted to {} (annotations {annotations}): {w:?}",
                        user.name
                    );
                }
            }
            no_right_unused(&policy.rules_for(user), &used);
        }
        // What the manifests create besides RBAC: the election Lease and the member namespace.
        let mut created: Vec<String> = others
            .iter()
            .map(|o| {
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["namespace"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        created.sort();
        assert_eq!(
            created,
            vec![
                format!("Lease {}/{}", names::LEASE_NAMESPACE, names::LEASE_NAME),
                format!("Namespace /{}", names::MEMBERS_NAMESPACE),
            ]
        );
    }
}

/// The test bed with every shipped manifest applied (RBAC enforced for everyone outside
/// system:masters), and a client for the copier identity.
async fn bed_with_shipped_rbac() -> (TestBed, Client, Client) {
    let bed = TestBed::start().await;
    bed.apply_rbac(&manifests(None));
    let admin = client_for(bed.kubeconfig()).await;
    let copier = client_for(&bed.kubeconfig_for_user(COPIER, &[COPIER_GROUP])).await;
    (bed, admin, copier)
}

fn lease(namespace: &str, name: &str, holder: &str) -> Lease {
    Lease {
        metadata: meta(namespace, name),
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    }
}

fn code<T>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("not an API answer: {e}"),
    }
}

#[tokio::test]
async fn the_shipped_rbac_refuses_a_copier_identity_any_lease_but_its_own() {
    let (_bed, admin, copier) = bed_with_shipped_rbac().await;
    let system = "kube-system";
    let pp = PostParams::default();
    Api::<Lease>::namespaced(admin.clone(), system)
        .create(&pp, &lease(system, "kube-scheduler", "node-1_4b1f"))
        .await
        .unwrap();
    let leases = Api::<Lease>::namespaced(copier.clone(), system);
    // Another component's Lease: not readable, not writable, not deletable.
    assert_eq!(code(leases.get("kube-scheduler").await), 403);
    let mut taken = lease(system, "kube-scheduler", "attacker");
    taken.metadata.resource_version = Api::<Lease>::namespaced(admin.clone(), system)
        .get("kube-scheduler")
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert_eq!(
        code(leases.replace("kube-scheduler", &pp, &taken).await),
        403
    );
    assert_eq!(
        code(
            leases
                .delete("kube-scheduler", &DeleteParams::default())
                .await
        ),
        403
    );
    // Nor may it create one (a component that has not run yet), list them, or write elsewhere.
    assert_eq!(
        code(
            leases
                .create(&pp, &lease(system, "cloud-controller-manager", "attacker"))
                .await
        ),
        403
    );
    assert_eq!(code(leases.list(&ListParams::default()).await), 403);
    assert_eq!(
        code(
            Api::<Lease>::namespaced(copier.clone(), "default")
                .create(&pp, &lease("default", "x", "attacker"))
                .await
        ),
        403
    );
    // Its own: the election Lease by name (the manifests created it), member Leases in theirs.
    let own = leases.get(names::LEASE_NAME).await.unwrap();
    assert_eq!(
        code(leases.replace(names::LEASE_NAME, &pp, &own).await),
        200
    );
    assert_eq!(
        code(
            leases
                .list(
                    &ListParams::default().fields(&format!("metadata.name={}", names::LEASE_NAME))
                )
                .await
        ),
        200
    );
    let members = Api::<Lease>::namespaced(copier, names::MEMBERS_NAMESPACE);
    assert_eq!(
        code(
            members
                .create(
                    &pp,
                    &lease(names::MEMBERS_NAMESPACE, "endpoint-copier.node-1", "node-1")
                )
                .await
        ),
        200
    );
}

#[tokio::test]
async fn the_daemon_under_the_shipped_rbac_elects_publishes_and_mirrors_and_check_is_clean() {
    let (bed, admin, _) = bed_with_shipped_rbac().await;
    create(
        &admin,
        "default",
        &source_slice(
            "default",
            "kubernetes",
            "kubernetes",
            "IPv4",
            &["198.51.100.1"],
        ),
    )
    .await;
    create(
        &admin,
        "default",
        &vip_service("default", "kubernetes-vip", &["IPv4"]),
    )
    .await;
    // The default config, under the copier identity.
    let mut config = config(
        &bed.kubeconfig_for_user(COPIER, &[COPIER_GROUP]),
        "node-1",
        &[("default/kubernetes", "default/kubernetes-vip")],
    );
    config.lease.namespace = names::LEASE_NAMESPACE.to_owned();
    // No probes: a test daemon dials nothing outside a network namespace of its own.
    config.pairs[0].probe = None;
    let daemon = Daemon::start(config.clone());
    wait_for_target(
        &admin,
        "default",
        "kubernetes-vip",
        &["198.51.100.1"],
        Duration::from_secs(15),
    )
    .await;
    let group = Group::configured(&config);
    eventually(
        "the member Lease in its namespace",
        Duration::from_secs(10),
        || async {
            Api::<Lease>::namespaced(admin.clone(), group.members_namespace())
                .get_opt(&endpoint_copier::group::member::member_name(
                    &group, "node-1",
                ))
                .await
                .unwrap()
        },
    )
    .await;
    let report = check_report(&config).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let denied: Vec<_> = report.permissions.iter().filter(|p| !p.allowed).collect();
    assert!(
        denied
            .iter()
            .all(|p| p.features == [Feature::LeaseCreation]),
        "{denied:?}"
    );
    daemon.stop().await;
    // Deleted, the election Lease cannot come back under this identity: check says so.
    Api::<Lease>::namespaced(admin, names::LEASE_NAMESPACE)
        .delete(names::LEASE_NAME, &DeleteParams::default())
        .await
        .unwrap();
    let report = check_report(&config).await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("the election Lease kube-system/endpoint-copier does not exist and this identity may not create it")),
        "{:?}",
        report.problems
    );
}
