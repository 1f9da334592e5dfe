//! The rights `check` asks for: exactly the requests the daemon makes, grouped by the feature
//! that makes them, so that a missing right of an optional feature is a warning naming what it
//! disables, and only a missing right of a required one is a problem.
//!
//! [`wanted`] is pure (config and pairs in, requests out); [`ask`] puts each to the API as a
//! SelfSubjectAccessReview (which every authenticated user may create, and which the API
//! evaluates without storing); [`findings`] turns the answers into report lines. The RBAC we
//! ship for a dedicated identity (`packaging/rbac/`) grants exactly what [`wanted`] asks for
//! the default config, no more: a test (`tests/it/rbac.rs`) evaluates the manifests with
//! Kubernetes' RBAC rules, resource names included, against this list.
//!
//! Requests on one named object carry its name, as the API's authorizer sees it: a get, update
//! or delete names it in the path, and a list or watch with the field selector
//! `metadata.name=<name>` names it too (apiserver `RequestInfoFactory`). A create never does
//! (the name is in the body), which is why RBAC cannot narrow a create by name.

use std::collections::BTreeSet;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use serde::Serialize;

use super::Error;
use super::report::Permission;
use crate::group::Group;
use crate::names::ServiceRef;

/// A feature of the daemon, by the rights it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    /// Leader election, the Service watch, the per-namespace slice watches and the writes of the
    /// target slices and their Events. Required.
    Mirroring,
    /// The member watch (`group::live::watch`): without it the leader never learns which pairs
    /// other copies configure. Required for safe deletes.
    Members,
    /// Annotated pairs in any namespace; asked only while `annotations.enabled`. Required then.
    Annotations,
    /// The removal of endpoint-copier-operator's leftover core/v1 Endpoints. Optional.
    LegacyCleanup,
    /// The cluster-wide list of this group's slices that finds pairs removed while no copy
    /// led. Optional.
    OrphanScan,
    /// The Node watch (`watch::nodes`): nodeName and zone, derived families, drains. Optional.
    Nodes,
    /// Creating the election Lease when it does not exist. The shipped RBAC creates the Lease
    /// instead and does not grant it (a create cannot be narrowed to one name): a missing right
    /// is no report line of its own; `check` makes it a problem only while the Lease is
    /// missing.
    LeaseCreation,
}

impl Feature {
    /// Its name in report lines.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Mirroring => "mirroring",
            Feature::Members => "members",
            Feature::Annotations => "annotated pairs",
            Feature::LegacyCleanup => "legacy clean-up",
            Feature::OrphanScan => "orphan scan",
            Feature::Nodes => "node facts",
            Feature::LeaseCreation => "election Lease creation",
        }
    }

    /// Whether the daemon cannot do its job safely without it: a missing right is then a
    /// problem, else a warning.
    pub fn is_required(self) -> bool {
        matches!(
            self,
            Feature::Mirroring | Feature::Members | Feature::Annotations
        )
    }

    /// What a missing right costs, completing "missing permission: … ".
    pub fn without(self) -> &'static str {
        match self {
            Feature::Mirroring => {
                "the daemon cannot elect a leader, watch its pairs or write their EndpointSlices"
            }
            Feature::Members => {
                "the leader cannot see which pairs the other copies configure, so it never deletes the slices of a removed pair"
            }
            Feature::Annotations => {
                "annotated pairs (annotations.enabled) cannot be mirrored in every namespace"
            }
            Feature::LegacyCleanup => {
                "disables the removal of endpoint-copier-operator's leftover Endpoints"
            }
            Feature::OrphanScan => {
                "disables the orphan scan: slices of pairs removed while the daemon was down are not found, and member Leases of replaced hosts stay"
            }
            Feature::Nodes => {
                "disables node facts: nodeName and zone are not filled, no address family is derived from Nodes (a dual-stack VIP gets no IPv6 backends) and drains (endpoint-copier/drain) are ignored"
            }
            Feature::LeaseCreation => {
                "means the election Lease must exist already (packaging/rbac/10-mirroring.yaml creates it)"
            }
        }
    }
}

/// One request the daemon makes, to be asked of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Kubernetes verb.
    pub verb: &'static str,
    /// API group ("" for core).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Namespace, or `None` for a cluster-wide request.
    pub namespace: Option<String>,
    /// The one object it is made on, when the authorizer sees its name; `None`: any.
    pub name: Option<String>,
    /// The features that make it, sorted.
    pub features: Vec<Feature>,
}

const SLICES: (&str, &str) = ("discovery.k8s.io", "endpointslices");
const EVENTS: (&str, &str) = ("events.k8s.io", "events");
const LEASES: (&str, &str) = ("coordination.k8s.io", "leases");
const SERVICES: (&str, &str) = ("", "services");
const ENDPOINTS: (&str, &str) = ("", "endpoints");
const NODES: (&str, &str) = ("", "nodes");

/// The requests the daemon makes for `pairs` (every active pair, configured or annotated, as
/// `(source, target)`), electing with the Lease of `group` and publishing its members in the
/// group's member namespace, and reading annotated pairs when `annotations` is true. Each
/// request once, in a stable order.
pub fn wanted(pairs: &[(ServiceRef, ServiceRef)], group: &Group, annotations: bool) -> Vec<Wanted> {
    let mut requests = Requests::default();
    // The Service watch is cluster-wide (annotated Services can be anywhere, and one watch is
    // cheaper than one per namespace); `get` is the fresh read before a pair's slices are cleared.
    requests.add(Feature::Mirroring, SERVICES, &["list", "watch"], None, None);
    // The election Lease, by name: a watch (list + watch with the field selector
    // metadata.name), get and update (every write carries the resourceVersion it read). A
    // create, only while it does not exist, cannot be narrowed to its name.
    let (lease_namespace, lease_name) = (group.lease_namespace(), group.lease_name());
    requests.add(
        Feature::LeaseCreation,
        LEASES,
        &["create"],
        Some(lease_namespace),
        None,
    );
    requests.add(
        Feature::Mirroring,
        LEASES,
        &["get", "list", "watch", "update"],
        Some(lease_namespace),
        Some(lease_name),
    );
    // This copy's member Lease (read, created, updated) and the member watch (every member
    // Lease of the group, by label), in the member namespace: any name there.
    let members_namespace = group.members_namespace();
    requests.add(
        Feature::Members,
        LEASES,
        &["get", "list", "watch", "create", "update"],
        Some(members_namespace),
        None,
    );
    // Not asked: the read-only watch of the members of older versions where they kept them
    // (`group.legacy_members_namespace()`). It matters only during an upgrade, while the RBAC
    // of the older version still grants it; once narrowed, the daemon reads that place as
    // empty (`group::merge`), and asking would leave a warning behind for good.
    // The slice watches run per namespace of every source and target (`watch::SliceWatches`).
    let watched: BTreeSet<&str> = pairs
        .iter()
        .flat_map(|(s, t)| [s.namespace.as_str(), t.namespace.as_str()])
        .collect();
    let targets: BTreeSet<&str> = pairs.iter().map(|(_, t)| t.namespace.as_str()).collect();
    for ns in &watched {
        requests.add(
            Feature::Mirroring,
            SLICES,
            &["list", "watch"],
            Some(ns),
            None,
        );
    }
    for ns in &targets {
        // `apply` creates, replaces (PUT: update) and deletes; Events are created, and patched
        // when kube's recorder folds a repeat into a series.
        requests.add(
            Feature::Mirroring,
            SLICES,
            &["create", "update", "delete"],
            Some(ns),
            None,
        );
        requests.add(
            Feature::Mirroring,
            EVENTS,
            &["create", "patch"],
            Some(ns),
            None,
        );
        requests.add(Feature::Mirroring, SERVICES, &["get"], Some(ns), None);
    }
    if annotations {
        // An annotated pair may appear in any namespace at any time: only a cluster-wide grant
        // covers the ones that do not exist yet.
        requests.add(
            Feature::Annotations,
            SLICES,
            &["list", "watch", "create", "update", "delete"],
            None,
            None,
        );
        requests.add(
            Feature::Annotations,
            EVENTS,
            &["create", "patch"],
            None,
            None,
        );
        requests.add(Feature::Annotations, SERVICES, &["get"], None, None);
    }
    for ns in &targets {
        requests.add(
            Feature::LegacyCleanup,
            ENDPOINTS,
            &["get", "delete"],
            Some(ns),
            None,
        );
    }
    if annotations {
        requests.add(
            Feature::LegacyCleanup,
            ENDPOINTS,
            &["get", "delete"],
            None,
            None,
        );
    }
    // `daemon::jobs::scan`: one cluster-wide metadata list per group selector, after removing
    // the member Leases of copies gone for good (a delete with preconditions).
    requests.add(Feature::OrphanScan, SLICES, &["list"], None, None);
    requests.add(
        Feature::OrphanScan,
        LEASES,
        &["delete"],
        Some(members_namespace),
        None,
    );
    // The Node watch (cluster-scoped, read-only): node facts and drains.
    requests.add(Feature::Nodes, NODES, &["list", "watch"], None, None);
    requests.0
}

/// The requests asked so far, each once.
#[derive(Default)]
struct Requests(Vec<Wanted>);

impl Requests {
    /// Adds `verbs` on `resource` in `namespace` (on the object `name`, if given) for
    /// `feature`: a request already there gets the feature added to its list.
    fn add(
        &mut self,
        feature: Feature,
        (api_group, resource): (&'static str, &'static str),
        verbs: &[&'static str],
        namespace: Option<&str>,
        name: Option<&str>,
    ) {
        for &verb in verbs {
            let namespace = namespace.map(str::to_owned);
            let name = name.map(str::to_owned);
            match self.0.iter_mut().find(|w| {
                w.verb == verb
                    && w.group == api_group
                    && w.resource == resource
                    && w.namespace == namespace
                    && w.name == name
            }) {
                Some(w) => {
                    if !w.features.contains(&feature) {
                        w.features.push(feature);
                        w.features.sort();
                    }
                }
                None => self.0.push(Wanted {
                    verb,
                    group: api_group,
                    resource,
                    namespace,
                    name,
                    features: vec![feature],
                }),
            }
        }
    }
}

/// Asks the API, one SelfSubjectAccessReview per request, whether we may make each of `wanted`.
///
/// # Errors
/// [`Error::Api`] when a review cannot be created.
pub async fn ask(client: &Client, wanted: Vec<Wanted>) -> Result<Vec<Permission>, Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(w.verb.into()),
                    group: Some(w.group.into()),
                    resource: Some(w.resource.into()),
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| Error::Api {
                what: format!("ask whether we may {} {}", w.verb, w.resource),
                source,
            })?;
        out.push(Permission {
            verb: w.verb,
            group: w.group,
            resource: w.resource,
            namespace: w.namespace,
            name: w.name,
            features: w.features,
            allowed: answer.status.is_some_and(|s| s.allowed),
        });
    }
    Ok(out)
}

/// The report lines for the denied `permissions`: `(problems, warnings)`, one line per denied
/// verb and resource (its namespaces and features merged, so one missing grant is one line). A
/// right any required feature needs is a problem; one only optional features need is a warning
/// saying what they lose.
pub fn findings(permissions: &[Permission]) -> (Vec<String>, Vec<String>) {
    // (verb, group, resource, name) -> where and for whom, in first-asked order.
    let mut denied: Vec<(DeniedKey<'_>, Denied<'_>)> = Vec::new();
    // The right to create the election Lease is not granted by the shipped RBAC (it creates
    // the Lease): `check` reads the Lease and reports a problem only if it is missing.
    let lines = permissions
        .iter()
        .filter(|p| !p.allowed && p.features != [Feature::LeaseCreation]);
    for p in lines {
        let key = (p.verb, p.group, p.resource, p.name.as_deref());
        let at = match denied.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                denied.push((key, Denied::default()));
                denied.len() - 1
            }
        };
        let entry = &mut denied[at].1;
        match &p.namespace {
            Some(ns) => entry.namespaces.push(ns),
            None => entry.cluster = true,
        }
        entry.features.extend(p.features.iter().copied());
    }
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for ((verb, group, resource, name), d) in denied {
        let Denied {
            namespaces,
            cluster,
            features,
        } = d;
        let group = if group.is_empty() {
            String::new()
        } else {
            format!(".{group}")
        };
        let mut places: Vec<&str> = namespaces;
        if cluster {
            places.push("all namespaces");
        }
        let named = name.map_or_else(String::new, |n| format!(" named {n}"));
        let what = format!(
            "missing permission: {verb} {resource}{group}{named} in {}",
            and_list(&places)
        );
        let required: Vec<Feature> = features
            .iter()
            .copied()
            .filter(|f| f.is_required())
            .collect();
        if let Some(first) = required.first() {
            let names: Vec<&str> = required.iter().map(|f| f.name()).collect();
            problems.push(format!(
                "{what}, needed by {}: {}",
                and_list(&names),
                first.without()
            ));
        } else {
            let costs: Vec<&str> = features.iter().map(|f| f.without()).collect();
            warnings.push(format!("{what} {}", costs.join("; ")));
        }
    }
    (problems, warnings)
}

/// One denied verb on one resource (and object): `(verb, group, resource, name)`.
type DeniedKey<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

/// Where one verb on one resource was denied, and which features need it.
#[derive(Default)]
struct Denied<'a> {
    /// Namespaces denied, in the order asked.
    namespaces: Vec<&'a str>,
    /// Whether the cluster-wide request was denied.
    cluster: bool,
    /// Every feature that needs one of them.
    features: BTreeSet<Feature>,
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [head @ .., last] => format!("{} and {last}", head.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    fn find<'a>(
        w: &'a [Wanted],
        verb: &str,
        resource: &str,
        ns: Option<&str>,
    ) -> Option<&'a Wanted> {
        w.iter()
            .find(|x| x.verb == verb && x.resource == resource && x.namespace.as_deref() == ns)
    }

    #[test]
    fn slices_are_watched_in_source_and_target_namespaces_and_written_in_target_ones() {
        let w = wanted(
            &[(r("src/api"), r("dst/vip"))],
            &Group::default_group(),
            false,
        );
        for ns in ["src", "dst"] {
            assert!(
                find(&w, "watch", "endpointslices", Some(ns)).is_some(),
                "{ns}"
            );
            assert!(
                find(&w, "list", "endpointslices", Some(ns)).is_some(),
                "{ns}"
            );
        }
        assert!(find(&w, "update", "endpointslices", Some("dst")).is_some());
        assert!(find(&w, "update", "endpointslices", Some("src")).is_none());
        assert!(
            find(&w, "update", "endpointslices", None).is_none(),
            "no annotations"
        );
        let scan = find(&w, "list", "endpointslices", None).unwrap();
        assert_eq!(scan.features, vec![Feature::OrphanScan]);
    }

    #[test]
    fn a_request_two_features_make_is_asked_once_and_names_both() {
        let w = wanted(
            &[(r("default/kubernetes"), r("default/kubernetes-vip"))],
            &Group::default_group(),
            true,
        );
        let cluster_list = find(&w, "list", "endpointslices", None).unwrap();
        assert_eq!(
            cluster_list.features,
            vec![Feature::Annotations, Feature::OrphanScan]
        );
        // The figure in docs/usage/rbac.md's example.
        assert_eq!(w.len(), 35);
        let mut keys: Vec<_> = w
            .iter()
            .map(|x| (x.verb, x.resource, x.namespace.clone(), x.name.clone()))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn a_missing_optional_right_is_a_warning_and_a_required_one_a_problem() {
        let perm = |verb, resource, features: Vec<Feature>| Permission {
            verb,
            group: "",
            resource,
            namespace: Some("default".into()),
            name: None,
            features,
            allowed: false,
        };
        let (problems, warnings) = findings(&[
            perm("get", "endpoints", vec![Feature::LegacyCleanup]),
            perm("list", "leases", vec![Feature::Mirroring, Feature::Members]),
        ]);
        assert_eq!(
            warnings,
            vec!["missing permission: get endpoints in default disables the removal of endpoint-copier-operator's leftover Endpoints".to_owned()]
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(and_list(&["a", "b", "c"]), "a, b and c");
        assert!(
            problems[0].starts_with(
                "missing permission: list leases in default, needed by mirroring and members: "
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn the_election_lease_is_asked_for_by_name_and_the_members_in_their_own_namespace() {
        let w = wanted(&[], &Group::default_group(), false);
        type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [Feature]);
        let leases: Vec<Row<'_>> = w
            .iter()
            .filter(|x| x.resource == "leases")
            .map(|x| {
                (
                    x.verb,
                    x.namespace.as_deref(),
                    x.name.as_deref(),
                    x.features.as_slice(),
                )
            })
            .collect();
        let (ks, ec, lease) = (
            Some("kube-system"),
            Some("endpoint-copier"),
            Some("endpoint-copier"),
        );
        assert_eq!(
            leases,
            vec![
                ("create", ks, None, &[Feature::LeaseCreation][..]),
                ("get", ks, lease, &[Feature::Mirroring][..]),
                ("list", ks, lease, &[Feature::Mirroring][..]),
                ("watch", ks, lease, &[Feature::Mirroring][..]),
                ("update", ks, lease, &[Feature::Mirroring][..]),
                ("get", ec, None, &[Feature::Members][..]),
                ("list", ec, None, &[Feature::Members][..]),
                ("watch", ec, None, &[Feature::Members][..]),
                ("create", ec, None, &[Feature::Members][..]),
                ("update", ec, None, &[Feature::Members][..]),
                ("delete", ec, None, &[Feature::OrphanScan][..]),
            ]
        );
        // Denied, the creation alone is no report line: `check` reads the Lease instead.
        let create = w
            .iter()
            .find(|x| x.verb == "create" && x.namespace.as_deref() == ks)
            .unwrap();
        let (problems, warnings) = findings(&[Permission {
            verb: create.verb,
            group: create.group,
            resource: create.resource,
            namespace: create.namespace.clone(),
            name: None,
            features: create.features.clone(),
            allowed: false,
        }]);
        assert!(problems.is_empty() && warnings.is_empty());
    }

    #[test]
    fn a_denied_named_request_names_its_object() {
        let (_, warnings) = findings(&[Permission {
            verb: "update",
            group: "coordination.k8s.io",
            resource: "leases",
            namespace: Some("kube-system".into()),
            name: Some("endpoint-copier".into()),
            features: vec![Feature::OrphanScan],
            allowed: false,
        }]);
        assert!(
            warnings[0].starts_with(
                "missing permission: update leases.coordination.k8s.io named endpoint-copier in kube-system "
            ),
            "{warnings:?}"
        );
    }
}
