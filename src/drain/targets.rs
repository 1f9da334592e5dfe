//! The pure half of `drain` and `resume` (what a Node's annotations say is `nodes::NodeFacts`'s,
//! one model for the daemon and the CLI): the annotations to write ([`annotation_patch`], [`expiry`]), which Node is this host's
//! ([`node_of_host`]), which targets can hold its endpoints ([`targets_of`]), and what those
//! targets show of it ([`views`], [`still_ready`], [`would_empty`]). No API, no clock: `mod.rs`
//! reads, passes the objects and the time, and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::Config;
use crate::names::{self, ServiceRef};

/// A timed drain to write: its expiry for people to read ([`expiry`]) and its length, which
/// the leader counts from when it first sees the drain, by its own clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    /// [`names::ANNOTATION_DRAIN_EXPIRES`]: RFC 3339, by this host's clock.
    pub expires: String,
    /// [`names::ANNOTATION_DRAIN_DURATION`]: whole seconds.
    pub secs: u64,
}

/// A target and some of its endpoint addresses (which ones depends on the context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The target Service.
    pub target: ServiceRef,
    /// The addresses, sorted.
    pub addresses: Vec<IpAddr>,
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        write!(f, "{} ({})", self.target, addresses.join(", "))
    }
}

/// `a (x), b (y)` for an error message.
pub(super) fn list(held: &[Held]) -> String {
    held.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The merge patch: the three annotations set (a timed drain), or all three `null` (removed).
pub fn annotation_patch(timed: Option<&Timed>) -> serde_json::Value {
    let (drain, until, secs) = match timed {
        Some(t) => (
            serde_json::json!("true"),
            serde_json::json!(t.expires),
            serde_json::json!(t.secs.to_string()),
        ),
        None => (
            serde_json::Value::Null,
            serde_json::Value::Null,
            serde_json::Value::Null,
        ),
    };
    serde_json::json!({
        "metadata": {
            "annotations": {
                names::ANNOTATION_DRAIN: drain,
                names::ANNOTATION_DRAIN_EXPIRES: until,
                names::ANNOTATION_DRAIN_DURATION: secs,
            }
        }
    })
}

/// The value of [`names::ANNOTATION_DRAIN_EXPIRES`] for a drain starting at `now` and lasting
/// `expires`: RFC 3339 in UTC, whole seconds (`2025-01-31T12:00:00Z`).
pub fn expiry(now: Timestamp, expires: Duration) -> String {
    let secs = i64::try_from(expires.as_secs()).unwrap_or(i64::MAX);
    let at = now
        .as_second()
        .saturating_add(secs)
        .min(Timestamp::MAX.as_second());
    Timestamp::from_second(at)
        .unwrap_or(Timestamp::MAX)
        .to_string()
}

/// Reads a [`names::ANNOTATION_DRAIN_EXPIRES`] value (RFC 3339, any offset); `None` when it is
/// not a timestamp.
pub fn parse_expiry(value: &str) -> Option<Timestamp> {
    value.trim().parse().ok()
}

/// The Node's IP addresses (`status.addresses` of every type that holds an IP: InternalIP,
/// ExternalIP).
pub fn node_addresses(node: &Node) -> BTreeSet<IpAddr> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// The addresses of Node `name` that a drain of it takes out, as the leader decides: those
/// that, among the Nodes the daemon watches (`watched`, the `[nodes] selector`'s), are this
/// Node's by [`crate::nodes::NodeIndex::node_of`] — not an address another Node claims too, nor
/// one only a Node the control plane does not vouch for claims. Empty when the daemon does not
/// watch the Node at all.
pub fn drained_addresses(watched: &[Node], name: &str) -> BTreeSet<IpAddr> {
    let index = crate::nodes::NodeIndex::new(
        watched
            .iter()
            .filter_map(crate::nodes::NodeFacts::from_node),
    );
    let Some(node) = index.get(name) else {
        return BTreeSet::new();
    };
    node.addresses
        .iter()
        .map(|a| a.ip)
        .filter(|ip| index.node_of(*ip).is_some_and(|n| n.name == name))
        .collect()
}

/// Among `nodes`, the one this host (named `host`) runs: its `Hostname` address equals the host
/// name, or its name equals the host name in lower case or without its domain.
pub fn node_of_host<'a>(nodes: &'a [Node], host: &str) -> Option<&'a Node> {
    let lower = host.to_ascii_lowercase();
    let short = lower.split('.').next().unwrap_or(&lower).to_owned();
    let by_address = nodes.iter().find(|n| {
        n.status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .any(|a| a.type_ == "Hostname" && a.address.eq_ignore_ascii_case(host))
    });
    by_address.or_else(|| {
        nodes.iter().find(|n| {
            n.metadata
                .name
                .as_deref()
                .is_some_and(|name| name == lower || name == short)
        })
    })
}

/// The targets of the pairs `config` and the annotated `services` give (refused pairs left out).
pub fn targets_of(config: &Config, services: &[Service]) -> BTreeSet<ServiceRef> {
    let rules = crate::pairs::Rules::of(config);
    let known: BTreeMap<ServiceRef, Service> = services
        .iter()
        .filter_map(|svc| Some((crate::watch::service_ref(svc)?, svc.clone())))
        .filter(|(r, svc)| rules.concerns(r, svc))
        .collect();
    rules
        .resolve(&known)
        .pairs
        .into_iter()
        .map(|p| p.target)
        .collect()
}

/// One target as seen from one Node: which of the Node's addresses it shows ready or not, and
/// which other addresses it shows ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    /// The target Service.
    pub target: ServiceRef,
    /// The Node's addresses that some slice of the target shows ready (or with no readiness,
    /// which consumers take as ready).
    pub node_ready: BTreeSet<IpAddr>,
    /// The Node's addresses that the target holds, not ready in every slice.
    pub node_not_ready: BTreeSet<IpAddr>,
    /// Ready addresses of the target that are not the Node's.
    pub others_ready: BTreeSet<IpAddr>,
}

/// Per target in `targets` that holds at least one of the Node's `addresses`, what its
/// endpoint-copier-managed `slices` show (slices of other managers, or of Services that are not
/// targets, are ignored). Sorted by target.
pub fn views(
    targets: &BTreeSet<ServiceRef>,
    slices: &[EndpointSlice],
    addresses: &BTreeSet<IpAddr>,
) -> Vec<TargetView> {
    let mut by_target: BTreeMap<ServiceRef, TargetView> = BTreeMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        if label(names::MANAGED_BY_LABEL) != Some(names::MANAGED_BY) {
            continue;
        }
        let (Some(ns), Some(svc)) = (
            slice.metadata.namespace.as_deref(),
            label(names::SERVICE_NAME_LABEL),
        ) else {
            continue;
        };
        let Ok(target) = ServiceRef::new(ns, svc) else {
            continue;
        };
        if !targets.contains(&target) {
            continue;
        }
        // Another cluster's endpoints: a local drain never takes them out, whatever their
        // address; they count as the target's other endpoints.
        let remote = crate::desired::union::is_remote(slice);
        let view = by_target
            .entry(target.clone())
            .or_insert_with(|| TargetView {
                target,
                node_ready: BTreeSet::new(),
                node_not_ready: BTreeSet::new(),
                others_ready: BTreeSet::new(),
            });
        for endpoint in &slice.endpoints {
            // An absent `ready` means ready to every consumer (kube-proxy, MetalLB).
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            for address in endpoint.addresses.iter().filter_map(|a| a.parse().ok()) {
                match (!remote && addresses.contains(&address), ready) {
                    (true, true) => {
                        view.node_ready.insert(address);
                    }
                    (true, false) => {
                        view.node_not_ready.insert(address);
                    }
                    (false, true) => {
                        view.others_ready.insert(address);
                    }
                    (false, false) => {}
                }
            }
        }
    }
    by_target
        .into_values()
        .map(|mut v| {
            // Ready in one slice wins: the VIP may still send traffic there.
            v.node_not_ready = &v.node_not_ready - &v.node_ready;
            v
        })
        .filter(|v| !v.node_ready.is_empty() || !v.node_not_ready.is_empty())
        .collect()
}

/// The targets that still show one of the Node's addresses ready, with those addresses: what
/// `drain` waits to see empty.
pub fn still_ready(views: &[TargetView]) -> Vec<Held> {
    views
        .iter()
        .filter(|v| !v.node_ready.is_empty())
        .map(|v| Held {
            target: v.target.clone(),
            addresses: v.node_ready.iter().copied().collect(),
        })
        .collect()
}

/// The targets of which draining the Node would leave a family without a ready endpoint, with
/// the Node's ready addresses of those families: `drain` refuses when there is any. Per family,
/// as the daemon judges it: it keeps one ready endpoint in each family a target serves (a
/// dual-stack VIP whose every IPv6 endpoint is on this Node keeps it ready, so the drain could
/// never complete).
pub fn would_empty(views: &[TargetView]) -> Vec<Held> {
    views
        .iter()
        .filter_map(|v| {
            let addresses: Vec<IpAddr> = v
                .node_ready
                .iter()
                .filter(|a| !v.others_ready.iter().any(|o| o.is_ipv4() == a.is_ipv4()))
                .copied()
                .collect();
            (!addresses.is_empty()).then(|| Held {
                target: v.target.clone(),
                addresses,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::Error;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| ip(a)).collect()
    }

    fn target(s: &str) -> ServiceRef {
        s.parse().unwrap()
    }

    fn slice(
        ns: &str,
        service: &str,
        manager: &str,
        endpoints: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{service}-x")),
                labels: Some(
                    [
                        (names::SERVICE_NAME_LABEL.to_owned(), service.to_owned()),
                        (names::MANAGED_BY_LABEL.to_owned(), manager.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![(*a).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const US: &str = names::MANAGED_BY;

    #[test]
    fn a_target_showing_the_nodes_address_ready_is_still_ready() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(true)), ("198.51.100.2", Some(true))],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(
            still_ready(&v),
            vec![Held {
                target: target("default/kubernetes-vip"),
                addresses: vec![ip("198.51.100.1")]
            }]
        );
        assert!(would_empty(&v).is_empty());
    }

    #[test]
    fn a_target_showing_the_nodes_address_not_ready_is_done() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(false)), ("198.51.100.2", Some(true))],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(v.len(), 1);
        assert!(still_ready(&v).is_empty());
        assert_eq!(v[0].node_not_ready, set(&["198.51.100.1"]));
    }

    #[test]
    fn an_absent_ready_condition_counts_as_ready() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", None)],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(still_ready(&v).len(), 1);
    }

    #[test]
    fn ready_in_one_slice_wins_over_not_ready_in_another() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [
            slice(
                "default",
                "kubernetes-vip",
                US,
                &[("198.51.100.1", Some(false))],
            ),
            slice(
                "default",
                "kubernetes-vip",
                US,
                &[("198.51.100.1", Some(true))],
            ),
        ];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(v[0].node_ready, set(&["198.51.100.1"]));
        assert!(v[0].node_not_ready.is_empty());
    }

    #[test]
    fn slices_of_other_managers_and_of_services_that_are_not_targets_are_ignored() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [
            slice(
                "default",
                "kubernetes-vip",
                "endpointslice-controller.k8s.io",
                &[("198.51.100.1", Some(true))],
            ),
            slice("default", "other", US, &[("198.51.100.1", Some(true))]),
            slice(
                "other",
                "kubernetes-vip",
                US,
                &[("198.51.100.1", Some(true))],
            ),
        ];
        assert!(views(&targets, &slices, &set(&["198.51.100.1"])).is_empty());
    }

    #[test]
    fn a_target_without_the_nodes_addresses_has_no_view() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.2", Some(true))],
        )];
        assert!(views(&targets, &slices, &set(&["198.51.100.1"])).is_empty());
    }

    #[test]
    fn draining_the_only_ready_endpoint_would_empty_the_target() {
        let targets = BTreeSet::from([target("default/kubernetes-vip"), target("ns/db")]);
        let slices = [
            slice(
                "default",
                "kubernetes-vip",
                US,
                &[("198.51.100.1", Some(true)), ("198.51.100.2", Some(false))],
            ),
            slice(
                "ns",
                "db",
                US,
                &[("198.51.100.1", Some(true)), ("198.51.100.3", Some(true))],
            ),
        ];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert_eq!(
            would_empty(&v),
            vec![Held {
                target: target("default/kubernetes-vip"),
                addresses: vec![ip("198.51.100.1")]
            }]
        );
    }

    #[test]
    fn a_node_with_two_addresses_in_one_target_would_empty_it_alone() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(true)), ("2001:db8::1", Some(true))],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1", "2001:db8::1"]));
        assert_eq!(would_empty(&v)[0].addresses.len(), 2);
    }

    #[test]
    fn a_drain_that_would_empty_one_family_of_a_dual_stack_target_is_refused() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[
                ("198.51.100.1", Some(true)),
                ("198.51.100.2", Some(true)),
                ("2001:db8::1", Some(true)),
            ],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1", "2001:db8::1"]));
        assert_eq!(
            would_empty(&v),
            vec![Held {
                target: target("default/kubernetes-vip"),
                addresses: vec![ip("2001:db8::1")]
            }]
        );
    }

    #[test]
    fn an_already_drained_node_never_counts_as_emptying_a_target() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(false)), ("198.51.100.2", Some(false))],
        )];
        let v = views(&targets, &slices, &set(&["198.51.100.1"]));
        assert!(would_empty(&v).is_empty());
    }

    #[test]
    fn ipv6_addresses_compare_by_value_not_by_spelling() {
        let targets = BTreeSet::from([target("default/kubernetes-vip")]);
        let slices = [slice(
            "default",
            "kubernetes-vip",
            US,
            &[("2001:db8:0:0::1", Some(true))],
        )];
        let v = views(&targets, &slices, &set(&["2001:db8::1"]));
        assert_eq!(still_ready(&v).len(), 1);
    }

    #[test]
    fn expiry_is_rfc3339_utc_in_whole_seconds_and_parses_back() {
        let now: Timestamp = "2025-01-31T12:00:00.750Z".parse().unwrap();
        let s = expiry(now, Duration::from_secs(15 * 60));
        assert_eq!(s, "2025-01-31T12:15:00Z");
        assert_eq!(
            parse_expiry(&s),
            Some("2025-01-31T12:15:00Z".parse().unwrap())
        );
    }

    #[test]
    fn parse_expiry_accepts_offsets_and_refuses_what_is_not_a_timestamp() {
        assert_eq!(
            parse_expiry("2025-01-31T13:15:00+01:00"),
            Some("2025-01-31T12:15:00Z".parse().unwrap())
        );
        assert_eq!(parse_expiry("soon"), None);
        assert_eq!(parse_expiry(""), None);
    }

    #[test]
    fn a_huge_expiry_saturates_instead_of_failing() {
        let s = expiry(Timestamp::now(), Duration::from_secs(u64::MAX));
        assert!(parse_expiry(&s).is_some(), "{s}");
    }

    #[test]
    fn the_patch_sets_or_removes_exactly_the_three_annotations() {
        let set = annotation_patch(Some(&Timed {
            expires: "2025-01-31T12:15:00Z".into(),
            secs: 900,
        }));
        assert_eq!(
            set,
            serde_json::json!({"metadata": {"annotations": {
                "endpoint-copier/drain": "true",
                "endpoint-copier/drain-expires": "2025-01-31T12:15:00Z",
                "endpoint-copier/drain-duration-secs": "900"
            }}})
        );
        let removed = annotation_patch(None);
        assert_eq!(
            removed,
            serde_json::json!({"metadata": {"annotations": {
                "endpoint-copier/drain": null,
                "endpoint-copier/drain-expires": null,
                "endpoint-copier/drain-duration-secs": null
            }}})
        );
    }

    #[test]
    fn a_drain_takes_out_only_the_addresses_the_leader_gives_the_node() {
        let labelled = |mut n: Node| {
            n.metadata.labels =
                Some([(names::CONTROL_PLANE_LABEL.to_owned(), String::new())].into());
            n
        };
        let watched = [
            labelled(node(
                "cp-1",
                &[
                    ("InternalIP", "198.51.100.1"),
                    ("InternalIP", "198.51.100.9"),
                ],
            )),
            // A stale Node that still claims .9 (a reused address): .9 is nobody's.
            labelled(node("cp-old", &[("InternalIP", "198.51.100.9")])),
            // A worker's kubelet claiming .1 counts for nothing.
            node("worker-1", &[("InternalIP", "198.51.100.1")]),
        ];
        assert_eq!(drained_addresses(&watched, "cp-1"), set(&["198.51.100.1"]));
        assert!(drained_addresses(&watched, "cp-9").is_empty());
    }

    #[test]
    fn a_remote_sources_slice_never_holds_the_nodes_endpoints() {
        let targets: BTreeSet<ServiceRef> = [target("default/kubernetes-vip")].into();
        let mut remote = slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.1", Some(true))],
        );
        remote
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(names::SOURCE_ID_LABEL.into(), "remote-0badcafe".into());
        let local = slice(
            "default",
            "kubernetes-vip",
            US,
            &[("198.51.100.2", Some(true))],
        );
        let v = views(
            &targets,
            &[remote, local],
            &set(&["198.51.100.1", "198.51.100.2"]),
        );
        assert_eq!(v[0].node_ready, set(&["198.51.100.2"]));
        assert_eq!(v[0].others_ready, set(&["198.51.100.1"]));
    }

    #[test]
    fn node_addresses_are_its_ips_of_every_type() {
        let n = node(
            "cp-1",
            &[
                ("InternalIP", "198.51.100.1"),
                ("ExternalIP", "203.0.113.1"),
                ("InternalIP", "2001:db8::1"),
                ("Hostname", "cp-1"),
            ],
        );
        assert_eq!(
            node_addresses(&n),
            set(&["198.51.100.1", "203.0.113.1", "2001:db8::1"])
        );
    }

    #[test]
    fn the_hosts_node_is_found_by_its_hostname_address_then_by_a_lower_or_short_name() {
        let nodes = [
            node("a", &[("Hostname", "CP-9.example.com")]),
            node("cp-1", &[("Hostname", "cp-1")]),
        ];
        assert_eq!(
            node_of_host(&nodes, "cp-9.example.com").and_then(|n| n.metadata.name.as_deref()),
            Some("a")
        );
        assert_eq!(
            node_of_host(&nodes, "CP-1.edge.example.com").and_then(|n| n.metadata.name.as_deref()),
            Some("cp-1")
        );
        assert!(node_of_host(&nodes, "cp-2").is_none());
    }

    #[test]
    fn messages_name_the_node_and_the_targets() {
        let held = vec![Held {
            target: target("default/kubernetes-vip"),
            addresses: vec![ip("198.51.100.1")],
        }];
        let refused = Error::LastReady {
            node: "cp-1".into(),
            targets: held.clone(),
        }
        .to_string();
        assert!(
            refused.contains("'cp-1'")
                && refused.contains("default/kubernetes-vip (198.51.100.1)")
                && refused.contains("not annotated"),
            "{refused}"
        );
        let late = Error::StillReady {
            node: "cp-1".into(),
            secs: 10,
            still: held,
        }
        .to_string();
        assert!(
            late.contains("'cp-1'")
                && late.contains("10 s")
                && late.contains("default/kubernetes-vip (198.51.100.1)"),
            "{late}"
        );
    }
}
