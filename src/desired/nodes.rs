//! Node facts applied to a pair, pure: the source slices with `nodeName` and zone filled from
//! the Nodes and, for a family the target serves but the source lacks, slices derived from the
//! same Nodes' addresses ([`with_nodes`]); then, on the desired target slices, drained and
//! probe-evicted endpoints marked not ready without ever emptying a family ([`withhold`]).
//!
//! [`with_nodes`] works on the *source* side on purpose: the derived slices then go through
//! [`super::desired`] like any source slice (names, labels, ports, collisions), and through
//! [`super::probed_endpoints`] (so the probes cover the derived addresses too).

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::{IPV4, IPV6, belongs_to, is_ready, served_families, sort_endpoints};
use crate::names::ServiceRef;
use crate::nodes::{NodeFacts, NodeIndex};

/// A source endpoint whose endpoint of another family could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gap {
    /// The family that has no endpoint for it (`IPv4` or `IPv6`).
    pub family: String,
    /// The Node it stands on, when one was found (then that Node has no address of `family`).
    pub node: Option<String>,
    /// The source endpoint's address.
    pub address: String,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(node) => write!(
                f,
                "Node {node} (endpoint {}) has no {} InternalIP or ExternalIP, so the {} EndpointSlice has no endpoint for it",
                self.address, self.family, self.family
            ),
            None => write!(
                f,
                "no Node holds endpoint {} in its status.addresses, so the {} EndpointSlice has no endpoint for it",
                self.address, self.family
            ),
        }
    }
}

/// The source slices with node facts applied, and what could not be derived.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WithNodes {
    /// The source slices, `nodeName`/zone filled, followed by the derived slices (sorted by name).
    pub slices: Vec<EndpointSlice>,
    /// Endpoints of the source that have no endpoint in a derived family, sorted.
    pub gaps: Vec<Gap>,
}

/// The Node an endpoint stands on: the one Node whose `status.addresses` holds its first
/// address, else the Node its `nodeName` names. An address two Nodes claim is never guessed.
fn node_for<'a>(endpoint: &Endpoint, nodes: &'a NodeIndex) -> Option<&'a NodeFacts> {
    let by_address = endpoint
        .addresses
        .first()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .and_then(|ip| nodes.node_of(ip));
    match (by_address, endpoint.node_name.as_deref()) {
        // A source that names another Node knows better than our address match.
        (Some(n), Some(name)) if n.name != name => nodes.get(name),
        (Some(n), _) => Some(n),
        (None, Some(name)) => nodes.get(name),
        (None, None) => None,
    }
}

/// Fills `nodeName` and `zone` of `endpoint` from its Node when they are not set; a value the
/// source set is never overwritten.
pub fn fill(endpoint: &mut Endpoint, nodes: &NodeIndex) {
    let Some(node) = node_for(endpoint, nodes) else {
        return;
    };
    if endpoint.node_name.is_none() {
        endpoint.node_name = Some(node.name.clone());
    }
    if endpoint.zone.is_none() {
        endpoint.zone.clone_from(&node.zone);
    }
}

/// The source slices of pair `source` → `target` with node facts: every endpoint of the
/// source's slices gets `nodeName` and zone from its Node when it has none ([`fill`]); and when
/// `derive` is set, each family the target serves (`spec.ipFamilies`) and no source slice has
/// gets, per source slice of the other family, a derived slice named `<source slice>-ipv6` (or
/// `-ipv4`; `-2`, `-3`… appended while a source slice has that name): one endpoint per source
/// endpoint whose Node has an address of that family (the first InternalIP, else the first
/// ExternalIP), with the source endpoint's conditions, `nodeName` and zone, the source slice's
/// ports and labels. [`super::desired`] then names its target slice `<target>-ipv6` for the
/// default pair. A derived slice without any endpoint is left out.
///
/// The output does not depend on the order of `source_slices`, of their endpoints, or of the
/// Nodes.
pub fn with_nodes(
    source: &ServiceRef,
    target: &Service,
    source_slices: &[EndpointSlice],
    nodes: &NodeIndex,
    derive: bool,
) -> WithNodes {
    let mut slices: Vec<EndpointSlice> = source_slices.to_vec();
    for slice in slices.iter_mut().filter(|s| belongs_to(s, source)) {
        for endpoint in &mut slice.endpoints {
            fill(endpoint, nodes);
        }
    }
    let mut gaps = BTreeSet::new();
    if !derive || nodes.is_empty() {
        return WithNodes {
            slices,
            gaps: Vec::new(),
        };
    }
    let present: BTreeSet<&str> = slices
        .iter()
        .filter(|s| belongs_to(s, source))
        .map(|s| s.address_type.as_str())
        .collect();
    let missing: Vec<String> = served_families(target)
        .into_iter()
        .filter(|f| (f == IPV4 || f == IPV6) && !present.contains(f.as_str()))
        .collect();
    let mut names: BTreeSet<String> = slices
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let mut bases: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| belongs_to(s, source) && (s.address_type == IPV4 || s.address_type == IPV6))
        .collect();
    bases.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    bases.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    let mut derived = Vec::new();
    for family in &missing {
        for base in &bases {
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for e in &base.endpoints {
                let address = e.addresses.first().cloned().unwrap_or_default();
                let Some(node) = node_for(e, nodes) else {
                    gaps.insert(Gap {
                        family: family.clone(),
                        node: None,
                        address,
                    });
                    continue;
                };
                let Some(ip) = node.address_of_family(family) else {
                    gaps.insert(Gap {
                        family: family.clone(),
                        node: Some(node.name.clone()),
                        address,
                    });
                    continue;
                };
                endpoints.push(Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: e.conditions.clone(),
                    node_name: Some(node.name.clone()),
                    zone: e.zone.clone().or_else(|| node.zone.clone()),
                    ..Endpoint::default()
                });
            }
            if endpoints.is_empty() {
                continue;
            }
            // Two source endpoints on one Node would derive one address twice: keep one
            // (the canonical order makes which one independent of the input order).
            sort_endpoints(&mut endpoints);
            endpoints.dedup_by(|a, b| a.addresses == b.addresses);
            let stem = format!(
                "{}-{}",
                base.metadata.name.as_deref().unwrap_or_default(),
                family.to_ascii_lowercase()
            );
            let mut name = stem.clone();
            let mut n = 1;
            while names.contains(&name) {
                n += 1;
                name = format!("{stem}-{n}");
            }
            names.insert(name.clone());
            let mut slice = (*base).clone();
            slice.metadata.name = Some(name);
            slice.metadata.resource_version = None;
            slice.metadata.uid = None;
            slice.address_type = family.clone();
            slice.endpoints = endpoints;
            derived.push(slice);
        }
    }
    derived.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    slices.extend(derived);
    WithNodes {
        slices,
        gaps: gaps.into_iter().collect(),
    }
}

/// What [`withhold`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Withheld {
    /// Addresses marked not ready because their Node is drained.
    pub drained: BTreeSet<IpAddr>,
    /// Addresses drained or evicted but kept ready, one per family at most, because otherwise
    /// that family of the target would have no ready endpoint.
    pub kept: BTreeSet<IpAddr>,
}

/// Which endpoints of this cluster's sources stand on drained Nodes.
#[derive(Debug, Clone, Copy)]
pub enum Drains<'a> {
    /// By Node identity, from the Node view.
    Nodes {
        /// The known Nodes: which one an endpoint stands on, by the rule of `nodeName`
        /// ([`fill`]).
        index: &'a NodeIndex,
        /// The Nodes drained now, by name ([`NodeIndex::drained`]).
        nodes: &'a BTreeSet<String>,
    },
    /// Without a Node view (the watch fails, or lists no Node): the addresses the last plan
    /// wrote drained stay drained. A missing view is never "no drains".
    AsWritten(&'a BTreeSet<IpAddr>),
}

impl Drains<'_> {
    /// Whether `endpoint`, of a target slice that is this cluster's (`remote` false), stands on
    /// a drained Node: its Node by the same rule as `nodeName` — the one Node the control plane
    /// vouches for that claims its address (an address two Nodes claim drains nothing), unless
    /// the source names another Node. A remote source's endpoints are another cluster's: a
    /// local drain never touches them, whatever their `nodeName` says.
    fn takes(&self, remote: bool, endpoint: &Endpoint) -> bool {
        if remote {
            return false;
        }
        match self {
            Drains::Nodes { index, nodes } => {
                node_for(endpoint, index).is_some_and(|node| nodes.contains(&node.name))
            }
            Drains::AsWritten(addresses) => endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| addresses.contains(&a)),
        }
    }
}

/// How fresh the sources of a union's slices are, by `endpoint-copier/source-id`
/// ([`super::union::source_id`]): a pair of one Service of this cluster has none of either.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ages {
    /// Sources whose endpoints in the target are not read now: kept as they are (the source has
    /// nothing to give) or last known (a remote source in trouble). They are written as they
    /// are, but never alone keep a family ready: when every other endpoint of a family goes,
    /// one of those stays ready instead.
    pub stale: BTreeSet<String>,
    /// Of those, the sources whose endpoints go (`ready: false, serving: false`): a remote
    /// source in trouble for longer than `[sync] keep_last_known_secs`, in a pair that does not
    /// probe. Never the last ready endpoint of a family.
    pub expired: BTreeSet<String>,
}

impl Ages {
    /// (stale, expired) for an endpoint of `slice`.
    fn of(&self, slice: &EndpointSlice) -> (bool, bool) {
        let id = super::label(&slice.metadata, crate::names::SOURCE_ID_LABEL);
        (
            id.is_some_and(|id| self.stale.contains(id)),
            id.is_some_and(|id| self.expired.contains(id)),
        )
    }
}

/// Marks the endpoints of the desired target `slices` that are probe-`evicted` (by first
/// address), stand on a drained Node ([`Drains`]: this cluster's endpoints only, by Node
/// identity) or come from an expired source ([`Ages::expired`]) as `ready: false, serving:
/// false`; `terminating` is kept.
///
/// Never empties a family, and stale endpoints ([`Ages::stale`]) never count for that: when
/// every fresh ready endpoint of an `addressType` would go, one stays ready — a drained
/// endpoint that the probes do not evict (alive, under maintenance), then an expired one (not
/// known to be down), then a probe-evicted one; among equals the lowest `nodeName`, then
/// address, so that both families keep the same Node. The result does not depend on the order
/// of `slices` or their endpoints.
pub fn withhold(
    slices: &mut [EndpointSlice],
    evicted: &BTreeSet<IpAddr>,
    drains: Option<Drains<'_>>,
    ages: &Ages,
) -> Withheld {
    let first = |e: &Endpoint| e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok());
    let is_drained =
        |remote: bool, e: &Endpoint| drains.as_ref().is_some_and(|d| d.takes(remote, e));
    let is_evicted = |e: &Endpoint| first(e).is_some_and(|a| evicted.contains(&a));
    let mut out = Withheld::default();
    let families: BTreeSet<String> = slices.iter().map(|s| s.address_type.clone()).collect();
    for family in families {
        // (prefer-key, nodeName, address) of every ready endpoint of the family that goes.
        let mut going: Vec<((bool, bool), String, IpAddr)> = Vec::new();
        let mut stays = false;
        for (remote, (stale, expired), e) in slices
            .iter()
            .filter(|s| s.address_type == family)
            .flat_map(|s| {
                let (remote, age) = (super::union::is_remote(s), ages.of(s));
                s.endpoints.iter().map(move |e| (remote, age, e))
            })
            .filter(|(_, _, e)| is_ready(e))
        {
            let Some(address) = first(e) else {
                stays |= !stale;
                continue;
            };
            let (drained, evicted) = (is_drained(remote, e), is_evicted(e));
            if drained || evicted || expired {
                // `false` sorts first: a drained endpoint the probes see alive is preferred,
                // then one of an expired source (not known to be down), then an evicted one.
                going.push((
                    (evicted, expired),
                    e.node_name.clone().unwrap_or_default(),
                    address,
                ));
            } else {
                stays |= !stale;
            }
        }
        let keeper = if stays {
            None
        } else {
            going.iter().min().map(|(_, _, a)| *a)
        };
        if let Some(k) = keeper {
            out.kept.insert(k);
        }
        for slice in slices.iter_mut().filter(|s| s.address_type == family) {
            let (remote, (_, expired)) = (super::union::is_remote(slice), ages.of(slice));
            for e in &mut slice.endpoints {
                let Some(address) = first(e) else { continue };
                if Some(address) == keeper || !is_ready(e) {
                    continue;
                }
                let drained = is_drained(remote, e);
                if drained || expired || is_evicted(e) {
                    let c = e.conditions.get_or_insert_with(Default::default);
                    c.ready = Some(false);
                    c.serving = Some(false);
                    if drained {
                        out.drained.insert(address);
                    }
                }
            }
        }
    }
    for slice in slices.iter_mut() {
        sort_endpoints(&mut slice.endpoints);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;

    use super::*;
    use crate::desired::{Owner, desired};
    use crate::names::SERVICE_NAME_LABEL;

    fn owner() -> Owner {
        Owner {
            group: "kube-system.endpoint-copier".into(),
            adopts_unlabelled: true,
        }
    }

    fn r(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    /// EIB's `kubernetes-vip`, dual-stack when `families` says so.
    fn vip(families: &[&str]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("kubernetes-vip".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                ip_families: Some(families.iter().map(|f| (*f).to_owned()).collect()),
                ports: Some(vec![ServicePort {
                    name: Some("k8s-api".into()),
                    port: 6443,
                    target_port: Some(IntOrString::Int(6443)),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn ep(addr: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![addr.to_owned()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating: Some(false),
            }),
            ..Endpoint::default()
        }
    }

    fn kubernetes(endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("kubernetes".into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.into(),
                    "kubernetes".into(),
                )])),
                ..ObjectMeta::default()
            },
            address_type: IPV4.into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: Some(6443),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }
    }

    fn facts(name: &str, addresses: &[&str], zone: Option<&str>) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            addresses: addresses
                .iter()
                .map(|a| crate::nodes::NodeAddress {
                    kind: crate::nodes::INTERNAL_IP.into(),
                    ip: a.parse().unwrap(),
                })
                .collect(),
            zone: zone.map(Into::into),
            control_plane: true,
            drain: None,
            drain_expires: None,
            drain_duration: None,
        }
    }

    fn three_nodes() -> NodeIndex {
        NodeIndex::new([
            facts("cp-1", &["198.51.100.1", "2001:db8::1"], Some("z1")),
            facts("cp-2", &["198.51.100.2", "2001:db8::2"], Some("z2")),
            facts("cp-3", &["198.51.100.3"], None),
        ])
    }

    #[test]
    fn node_name_and_zone_are_filled_from_the_node_that_holds_the_address() {
        let source = [kubernetes(vec![
            ep("198.51.100.1", Some(true)),
            ep("198.51.100.9", Some(true)),
        ])];
        let with = with_nodes(
            &r("default/kubernetes"),
            &vip(&[IPV4]),
            &source,
            &three_nodes(),
            true,
        );
        let e = &with.slices[0].endpoints;
        assert_eq!(e[0].node_name.as_deref(), Some("cp-1"));
        assert_eq!(e[0].zone.as_deref(), Some("z1"));
        // No Node holds it: copied as it is.
        assert_eq!(e[1].node_name, None);
        assert_eq!(e[1].zone, None);
        assert!(with.gaps.is_empty(), "single-stack target: nothing derived");
    }

    #[test]
    fn a_dual_stack_target_gets_an_ipv6_slice_from_the_nodes_of_a_single_stack_source() {
        let source = [kubernetes(vec![
            ep("198.51.100.1", Some(true)),
            ep("198.51.100.2", Some(false)),
            ep("198.51.100.3", Some(true)),
        ])];
        let target = vip(&[IPV4, IPV6]);
        let with = with_nodes(
            &r("default/kubernetes"),
            &target,
            &source,
            &three_nodes(),
            true,
        );
        let want = desired(
            &r("default/kubernetes"),
            &r("default/kubernetes-vip"),
            &target,
            &with.slices,
            &owner(),
        )
        .unwrap();
        let names: Vec<&str> = want
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(names, ["kubernetes-vip", "kubernetes-vip-ipv6"]);
        let v6 = &want[1];
        assert_eq!(v6.address_type, IPV6);
        let got: Vec<(&str, Option<bool>, Option<&str>)> = v6
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].as_str(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                    e.node_name.as_deref(),
                )
            })
            .collect();
        // The readiness of the source endpoint each stands for.
        assert_eq!(
            got,
            [
                ("2001:db8::1", Some(true), Some("cp-1")),
                ("2001:db8::2", Some(false), Some("cp-2"))
            ]
        );
        assert_eq!(v6.ports, want[0].ports, "ports as for the source family");
        // cp-3 has no IPv6 address: reported.
        assert_eq!(
            with.gaps,
            [Gap {
                family: IPV6.into(),
                node: Some("cp-3".into()),
                address: "198.51.100.3".into()
            }]
        );
        assert!(with.gaps[0].to_string().contains("Node cp-3"));
        // The probes cover the derived addresses too.
        let probed =
            crate::desired::probed_endpoints(&r("default/kubernetes"), &target, &with.slices);
        assert!(probed.contains(&("2001:db8::1".parse().unwrap(), Some(6443))));
    }

    #[test]
    fn nothing_is_derived_when_the_pair_does_not_derive() {
        let source = [kubernetes(vec![ep("198.51.100.1", Some(true))])];
        let with = with_nodes(
            &r("default/kubernetes"),
            &vip(&[IPV4, IPV6]),
            &source,
            &three_nodes(),
            false,
        );
        assert_eq!(with.slices.len(), 1);
        assert_eq!(
            with.slices[0].endpoints[0].node_name.as_deref(),
            Some("cp-1")
        );
    }

    #[test]
    fn a_derived_name_a_source_slice_already_has_gets_a_number() {
        let mut other = kubernetes(vec![]);
        other.metadata.name = Some("kubernetes-ipv6".into());
        let source = [kubernetes(vec![ep("198.51.100.1", Some(true))]), other];
        let with = with_nodes(
            &r("default/kubernetes"),
            &vip(&[IPV4, IPV6]),
            &source,
            &three_nodes(),
            true,
        );
        let names: Vec<&str> = with
            .slices
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            ["kubernetes", "kubernetes-ipv6", "kubernetes-ipv6-2"]
        );
    }

    fn ready_of(slices: &[EndpointSlice]) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| (e.addresses[0].clone(), is_ready(e)))
            .collect();
        v.sort();
        v
    }

    fn named(addr: &str, node: &str) -> Endpoint {
        Endpoint {
            node_name: Some(node.into()),
            ..ep(addr, Some(true))
        }
    }

    /// cp-1 and cp-2 at .1 and .2.
    fn two_nodes() -> NodeIndex {
        NodeIndex::new([
            facts("cp-1", &["198.51.100.1"], None),
            facts("cp-2", &["198.51.100.2"], None),
        ])
    }

    /// `withhold` with the Nodes of `index` named in `drained` drained.
    fn withhold_with(
        slices: &mut [EndpointSlice],
        evicted: &[&str],
        index: &NodeIndex,
        drained: &[&str],
    ) -> Withheld {
        let evicted: BTreeSet<IpAddr> = evicted.iter().map(|a| a.parse().unwrap()).collect();
        let nodes: BTreeSet<String> = drained.iter().map(|n| (*n).to_owned()).collect();
        withhold(
            slices,
            &evicted,
            Some(Drains::Nodes {
                index,
                nodes: &nodes,
            }),
            &Ages::default(),
        )
    }

    /// A target slice written from a remote source (labelled with a remote source id).
    fn remote_slice(endpoints: Vec<Endpoint>) -> EndpointSlice {
        let mut s = kubernetes(endpoints);
        s.metadata.name = Some("kubernetes-vip-r2k9x".into());
        s.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(
                crate::names::SOURCE_ID_LABEL.into(),
                "remote-0badcafe".into(),
            );
        s
    }

    /// Ages with the remote slice's source (`remote_slice`) stale, and expired when told.
    fn remote_ages(expired: bool) -> Ages {
        let id: BTreeSet<String> = ["remote-0badcafe".to_owned()].into();
        Ages {
            stale: id.clone(),
            expired: if expired { id } else { BTreeSet::new() },
        }
    }

    #[test]
    fn kept_endpoints_never_alone_keep_a_family_ready() {
        // cp-1 is drained and the only endpoint this cluster has; the remote's endpoint is only
        // its last known (the remote cannot be read). cp-1 stays ready: a stale endpoint is no
        // proof the family has another one.
        let mut slices = [
            kubernetes(vec![named("198.51.100.1", "cp-1")]),
            remote_slice(vec![ep("203.0.113.1", Some(true))]),
        ];
        let w = withhold(
            &mut slices,
            &BTreeSet::new(),
            Some(Drains::Nodes {
                index: &two_nodes(),
                nodes: &["cp-1".to_owned()].into(),
            }),
            &remote_ages(false),
        );
        assert_eq!(w.kept, ["198.51.100.1".parse().unwrap()].into());
        assert!(ready_of(&slices).iter().all(|(_, r)| *r), "{slices:?}");
        // A fresh remote endpoint is another ready one: the drain goes through.
        let mut slices = [
            kubernetes(vec![named("198.51.100.1", "cp-1")]),
            remote_slice(vec![ep("203.0.113.1", Some(true))]),
        ];
        withhold_with(&mut slices, &[], &two_nodes(), &["cp-1"]);
        assert_eq!(
            ready_of(&slices),
            [
                ("198.51.100.1".to_owned(), false),
                ("203.0.113.1".to_owned(), true)
            ]
        );
    }

    #[test]
    fn an_expired_sources_endpoints_go_but_never_the_last_one() {
        let mut slices = [
            kubernetes(vec![named("198.51.100.1", "cp-1")]),
            remote_slice(vec![
                ep("203.0.113.1", Some(true)),
                ep("203.0.113.2", Some(true)),
            ]),
        ];
        let w = withhold(&mut slices, &BTreeSet::new(), None, &remote_ages(true));
        assert!(w.kept.is_empty());
        assert_eq!(
            ready_of(&slices),
            [
                ("198.51.100.1".to_owned(), true),
                ("203.0.113.1".to_owned(), false),
                ("203.0.113.2".to_owned(), false)
            ]
        );
        // Alone in the target: the lowest stays ready.
        let mut alone = [remote_slice(vec![
            ep("203.0.113.1", Some(true)),
            ep("203.0.113.2", Some(true)),
        ])];
        let w = withhold(&mut alone, &BTreeSet::new(), None, &remote_ages(true));
        assert_eq!(w.kept, ["203.0.113.1".parse().unwrap()].into());
        assert_eq!(
            ready_of(&alone),
            [
                ("203.0.113.1".to_owned(), true),
                ("203.0.113.2".to_owned(), false)
            ]
        );
    }

    #[test]
    fn a_remote_cp_1_survives_a_local_drain_of_cp_1() {
        // The other cluster has a Node named cp-1 too, and its slice says so.
        let mut slices = [
            kubernetes(vec![
                named("198.51.100.1", "cp-1"),
                named("198.51.100.2", "cp-2"),
            ]),
            remote_slice(vec![named("203.0.113.1", "cp-1")]),
        ];
        let w = withhold_with(&mut slices, &[], &two_nodes(), &["cp-1"]);
        assert_eq!(w.drained, ["198.51.100.1".parse().unwrap()].into());
        assert_eq!(
            ready_of(&slices),
            [
                ("198.51.100.1".to_owned(), false),
                ("198.51.100.2".to_owned(), true),
                ("203.0.113.1".to_owned(), true),
            ]
        );
    }

    #[test]
    fn an_address_a_stale_node_still_claims_drains_nothing() {
        // cp-old was drained and left; its Node object still claims .9, now cp-new's address.
        let index = NodeIndex::new([
            facts("cp-old", &["198.51.100.9"], None),
            facts("cp-new", &["198.51.100.9"], None),
            facts("cp-2", &["198.51.100.2"], None),
        ]);
        let mut slices = [kubernetes(vec![
            ep("198.51.100.9", Some(true)),
            ep("198.51.100.2", Some(true)),
        ])];
        let w = withhold_with(&mut slices, &[], &index, &["cp-old"]);
        assert!(w.drained.is_empty(), "{w:?}");
        assert!(ready_of(&slices).iter().all(|(_, r)| *r));
        // Its own, unclaimed address would be drained by identity: the address alone is enough.
        let index = NodeIndex::new([
            facts("cp-old", &["198.51.100.9"], None),
            facts("cp-2", &["198.51.100.2"], None),
        ]);
        let w = withhold_with(&mut slices, &[], &index, &["cp-old"]);
        assert_eq!(w.drained, ["198.51.100.9".parse().unwrap()].into());
    }

    #[test]
    fn drained_endpoints_are_not_ready_and_come_back_when_the_drain_goes() {
        let mut slices = [kubernetes(vec![
            named("198.51.100.1", "cp-1"),
            named("198.51.100.2", "cp-2"),
        ])];
        let w = withhold_with(&mut slices, &[], &two_nodes(), &["cp-1"]);
        assert_eq!(w.drained, ["198.51.100.1".parse().unwrap()].into());
        assert!(w.kept.is_empty());
        let c = slices[0].endpoints[0].conditions.as_ref().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(false), Some(false))
        );
        let mut again = [kubernetes(vec![
            named("198.51.100.1", "cp-1"),
            named("198.51.100.2", "cp-2"),
        ])];
        let w = withhold_with(&mut again, &[], &two_nodes(), &[]);
        assert_eq!(w, Withheld::default());
        assert!(ready_of(&again).iter().all(|(_, r)| *r));
    }

    #[test]
    fn the_last_ready_endpoint_is_never_drained_and_a_drained_one_is_kept_before_an_evicted_one() {
        // One endpoint, drained: it stays ready.
        let mut alone = [kubernetes(vec![named("198.51.100.1", "cp-1")])];
        let w = withhold_with(&mut alone, &[], &two_nodes(), &["cp-1"]);
        assert_eq!(w.kept, ["198.51.100.1".parse().unwrap()].into());
        assert!(w.drained.is_empty());
        assert_eq!(ready_of(&alone), [("198.51.100.1".to_owned(), true)]);
        // cp-1 probe-evicted, cp-2 drained: cp-2 (alive, under maintenance) stays ready.
        let mut two = [kubernetes(vec![
            named("198.51.100.1", "cp-1"),
            named("198.51.100.2", "cp-2"),
        ])];
        let w = withhold_with(&mut two, &["198.51.100.1"], &two_nodes(), &["cp-2"]);
        assert_eq!(w.kept, ["198.51.100.2".parse().unwrap()].into());
        assert_eq!(
            ready_of(&two),
            [
                ("198.51.100.1".to_owned(), false),
                ("198.51.100.2".to_owned(), true)
            ]
        );
    }

    fn arb_endpoints() -> impl Strategy<Value = Vec<Endpoint>> {
        prop::collection::vec(
            (
                1u8..8,
                prop::option::of(prop::sample::select(vec!["cp-1", "cp-9"])),
                prop::option::of(prop::sample::select(vec!["z-src"])),
                prop::option::of(any::<bool>()),
            ),
            0..6,
        )
        .prop_map(|v| {
            let mut seen = BTreeSet::new();
            v.into_iter()
                .filter(|(last, _, _, _)| seen.insert(*last))
                .map(|(last, node, zone, ready)| Endpoint {
                    node_name: node.map(Into::into),
                    zone: zone.map(Into::into),
                    ..ep(&format!("198.51.100.{last}"), ready)
                })
                .collect()
        })
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeFacts>> {
        prop::collection::vec((1u8..8, prop::option::of(1u8..8), any::<bool>()), 0..6).prop_map(
            |v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (a, b, v6))| {
                        let mut addrs = vec![format!("198.51.100.{a}")];
                        if let Some(b) = b {
                            addrs.push(format!("198.51.100.{b}"));
                        }
                        if v6 {
                            addrs.push(format!("2001:db8::{a}"));
                        }
                        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
                        facts(&format!("n{i}"), &refs, Some("z-node"))
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn filling_never_overwrites_a_value_the_source_set(endpoints in arb_endpoints(), nodes in arb_nodes()) {
            let source = [kubernetes(endpoints.clone())];
            let with = with_nodes(&r("default/kubernetes"), &vip(&[IPV4]), &source, &NodeIndex::new(nodes), true);
            for (before, after) in endpoints.iter().zip(&with.slices[0].endpoints) {
                if before.node_name.is_some() {
                    prop_assert_eq!(&before.node_name, &after.node_name);
                }
                if before.zone.is_some() {
                    prop_assert_eq!(&before.zone, &after.zone);
                }
                prop_assert_eq!(&before.addresses, &after.addresses);
                prop_assert_eq!(&before.conditions, &after.conditions);
            }
        }

        #[test]
        fn the_result_does_not_depend_on_the_order_of_endpoints_or_nodes(
            endpoints in arb_endpoints(),
            nodes in arb_nodes(),
            seed in any::<u64>(),
        ) {
            let target = vip(&[IPV4, IPV6]);
            let run = |endpoints: Vec<Endpoint>, nodes: Vec<NodeFacts>| {
                let with = with_nodes(&r("default/kubernetes"), &target, &[kubernetes(endpoints)], &NodeIndex::new(nodes), true);
                (desired(&r("default/kubernetes"), &r("default/kubernetes-vip"), &target, &with.slices, &owner()), with.gaps)
            };
            let mut shuffled_endpoints = endpoints.clone();
            let mut shuffled_nodes = nodes.clone();
            let n = shuffled_endpoints.len().max(1);
            shuffled_endpoints.rotate_left((seed as usize) % n);
            shuffled_endpoints.reverse();
            shuffled_nodes.reverse();
            prop_assert_eq!(run(endpoints, nodes), run(shuffled_endpoints, shuffled_nodes));
        }

        #[test]
        fn an_address_on_two_nodes_is_never_guessed(last in 1u8..8) {
            let addr = format!("198.51.100.{last}");
            let index = NodeIndex::new([
                facts("a", &[&addr, "2001:db8::a"], Some("za")),
                facts("b", &[&addr, "2001:db8::b"], Some("zb")),
            ]);
            let with = with_nodes(&r("default/kubernetes"), &vip(&[IPV4, IPV6]), &[kubernetes(vec![ep(&addr, Some(true))])], &index, true);
            prop_assert_eq!(&with.slices[0].endpoints[0].node_name, &None);
            prop_assert_eq!(&with.slices[0].endpoints[0].zone, &None);
            prop_assert_eq!(with.slices.len(), 1, "nothing derived from a guess");
            prop_assert_eq!(with.gaps.len(), 1);
        }

        #[test]
        fn stale_endpoints_never_alone_keep_a_family_ready(
            fresh in arb_endpoints(),
            stale in arb_endpoints(),
            evicted in prop::collection::btree_set(1u8..8, 0..8),
            expired in any::<bool>(),
        ) {
            let stale: Vec<Endpoint> = stale
                .into_iter()
                .map(|mut e| {
                    e.addresses = vec![e.addresses[0].replace("198.51.100.", "203.0.113.")];
                    e
                })
                .collect();
            let mut slices = [kubernetes(fresh), remote_slice(stale)];
            let had = slices[0].endpoints.iter().any(is_ready);
            let ip = |l: &u8| format!("198.51.100.{l}").parse::<IpAddr>().unwrap();
            let evicted: BTreeSet<IpAddr> = evicted.iter().map(ip).collect();
            withhold(&mut slices, &evicted, None, &remote_ages(expired));
            let fresh_ready = slices[0].endpoints.iter().any(is_ready);
            let stale_ready = slices[1].endpoints.iter().filter(|e| is_ready(e)).count();
            if had && !expired {
                // The stale ones stay as they are, and one of this cluster's stays ready too.
                prop_assert!(fresh_ready);
            }
            if had && expired {
                // The expired ones go, but the family keeps one ready endpoint: a fresh one,
                // or at most one expired one kept in its place.
                prop_assert!(fresh_ready || stale_ready == 1);
                prop_assert!(stale_ready <= 1);
            }
        }

        #[test]
        fn withholding_never_empties_a_family_that_had_a_ready_endpoint(
            endpoints in arb_endpoints(),
            evicted in prop::collection::btree_set(1u8..8, 0..8),
            drained in prop::collection::btree_set(1u8..8, 0..8),
        ) {
            let mut slices = [kubernetes(endpoints)];
            let had = slices[0].endpoints.iter().any(is_ready);
            let ip = |l: &u8| format!("198.51.100.{l}").parse::<IpAddr>().unwrap();
            let evicted: BTreeSet<IpAddr> = evicted.iter().map(ip).collect();
            // One Node per address, n<l> at .<l>; the drained ones by name.
            let index = NodeIndex::new((1u8..8).map(|l| facts(&format!("n{l}"), &[&ip(&l).to_string()], None)));
            let nodes: BTreeSet<String> = drained.iter().map(|l| format!("n{l}")).collect();
            let drains = Drains::Nodes { index: &index, nodes: &nodes };
            let w = withhold(&mut slices, &evicted, Some(drains), &Ages::default());
            let has = slices[0].endpoints.iter().any(is_ready);
            prop_assert_eq!(had, has);
            prop_assert!(w.kept.len() <= 1);
            let drained: BTreeSet<IpAddr> = drained.iter().map(ip).collect();
            // An endpoint whose source names another Node (cp-1, cp-9: not known) is that
            // Node's: never drained by its address.
            prop_assert!(w.drained.is_subset(&drained));
            for e in &slices[0].endpoints {
                let a = e.addresses[0].parse::<IpAddr>().unwrap();
                if w.drained.contains(&a) {
                    prop_assert!(e.node_name.is_none());
                }
            }
        }
    }
}
