//! The Node projection, the address index and drain expiry.

use k8s_openapi::api::core::v1::{NodeAddress as K8sAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

pub(crate) fn node(name: &str, addresses: &[(&str, &str)], annotations: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(ZONE_LABEL.to_owned(), format!("zone-{name}"))].into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(t, a)| K8sAddress {
                        type_: (*t).into(),
                        address: (*a).into(),
                    })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn the_projection_keeps_ip_addresses_zone_and_drain_annotations_only() {
    let n = node(
        "cp-1",
        &[
            ("Hostname", "cp-1"),
            ("InternalIP", "198.51.100.1"),
            ("ExternalIP", "2001:db8::1"),
            ("InternalDNS", "cp-1.example"),
        ],
        &[(ANNOTATION_DRAIN, "true"), ("other", "x")],
    );
    let f = NodeFacts::from_node(&n).unwrap();
    assert_eq!(f.name, "cp-1");
    assert_eq!(f.addresses.len(), 2);
    assert_eq!(f.zone.as_deref(), Some("zone-cp-1"));
    assert_eq!(f.drain.as_deref(), Some("true"));
    assert_eq!(f.drain_expires, None);
}

#[test]
fn the_address_of_a_family_is_the_first_internal_ip_then_the_first_external_ip() {
    let f = NodeFacts::from_node(&node(
        "cp-1",
        &[
            ("ExternalIP", "2001:db8::e"),
            ("InternalIP", "198.51.100.1"),
            ("InternalIP", "2001:db8::1"),
            ("InternalIP", "2001:db8::2"),
        ],
        &[],
    ))
    .unwrap();
    assert_eq!(
        f.address_of_family("IPv6"),
        Some("2001:db8::1".parse().unwrap())
    );
    let g = NodeFacts::from_node(&node(
        "cp-2",
        &[
            ("InternalIP", "198.51.100.2"),
            ("ExternalIP", "2001:db8::e"),
        ],
        &[],
    ))
    .unwrap();
    assert_eq!(
        g.address_of_family("IPv6"),
        Some("2001:db8::e".parse().unwrap())
    );
    assert_eq!(
        g.address_of_family("IPv4"),
        Some("198.51.100.2".parse().unwrap())
    );
}

#[test]
fn a_drain_counts_until_its_expiry_and_a_bad_value_is_ignored() {
    let now = ts("2025-01-01T00:00:00Z");
    let f = |a: &[(&str, &str)]| NodeFacts::from_node(&node("n", &[], a)).unwrap();
    assert_eq!(f(&[]).drain(now), Drain::None);
    assert_eq!(
        f(&[(ANNOTATION_DRAIN, "true")]).drain(now),
        Drain::Active { until: None }
    );
    assert_eq!(
        f(&[
            (ANNOTATION_DRAIN, "true"),
            (ANNOTATION_DRAIN_EXPIRES, "2025-01-01T00:05:00Z")
        ])
        .drain(now),
        Drain::Active {
            until: Some(ts("2025-01-01T00:05:00Z"))
        }
    );
    assert_eq!(
        f(&[
            (ANNOTATION_DRAIN, "true"),
            (ANNOTATION_DRAIN_EXPIRES, "2024-12-31T23:59:59Z")
        ])
        .drain(now),
        Drain::Expired(ts("2024-12-31T23:59:59Z"))
    );
    assert!(matches!(
        f(&[(ANNOTATION_DRAIN, "yes")]).drain(now),
        Drain::Invalid(_)
    ));
    assert!(matches!(
        f(&[
            (ANNOTATION_DRAIN, "true"),
            (ANNOTATION_DRAIN_EXPIRES, "soon")
        ])
        .drain(now),
        Drain::Invalid(_)
    ));
}

#[test]
fn an_address_two_nodes_claim_is_never_guessed() {
    let a = NodeFacts::from_node(&node("a", &[("InternalIP", "198.51.100.1")], &[])).unwrap();
    let b = NodeFacts::from_node(&node("b", &[("InternalIP", "198.51.100.1")], &[])).unwrap();
    let mut index = NodeIndex::new([a.clone()]);
    let ip: IpAddr = "198.51.100.1".parse().unwrap();
    assert_eq!(index.node_of(ip).map(|n| n.name.as_str()), Some("a"));
    index.insert(b);
    assert_eq!(index.lookup(ip), Lookup::Ambiguous(vec!["a", "b"]));
    assert_eq!(index.node_of(ip), None);
    index.remove("b");
    assert_eq!(index.node_of(ip), Some(&a));
}

#[test]
fn inserting_the_same_projection_again_is_no_change() {
    let a = NodeFacts::from_node(&node("a", &[("InternalIP", "198.51.100.1")], &[])).unwrap();
    let mut index = NodeIndex::default();
    assert!(index.insert(a.clone()));
    assert!(!index.insert(a));
}

#[test]
fn drained_addresses_cover_both_families_and_the_next_expiry_is_the_earliest() {
    let now = ts("2025-01-01T00:00:00Z");
    let index = NodeIndex::new([
        NodeFacts::from_node(&node(
            "a",
            &[
                ("InternalIP", "198.51.100.1"),
                ("InternalIP", "2001:db8::1"),
            ],
            &[
                (ANNOTATION_DRAIN, "true"),
                (ANNOTATION_DRAIN_EXPIRES, "2025-01-01T00:10:00Z"),
            ],
        ))
        .unwrap(),
        NodeFacts::from_node(&node(
            "b",
            &[("InternalIP", "198.51.100.2")],
            &[
                (ANNOTATION_DRAIN, "true"),
                (ANNOTATION_DRAIN_EXPIRES, "2025-01-01T00:05:00Z"),
            ],
        ))
        .unwrap(),
        NodeFacts::from_node(&node("c", &[("InternalIP", "198.51.100.3")], &[])).unwrap(),
    ]);
    assert_eq!(index.drained(now), ["a".to_owned(), "b".to_owned()].into());
    assert_eq!(index.drained_addresses(now).len(), 3);
    assert_eq!(index.next_expiry(now), Some(ts("2025-01-01T00:05:00Z")));
    let later = ts("2025-01-01T00:06:00Z");
    assert_eq!(index.drained(later), ["a".to_owned()].into());
    assert_eq!(index.next_expiry(later), Some(ts("2025-01-01T00:10:00Z")));
}

#[test]
fn ready_on_and_ready_elsewhere_tell_whether_a_drain_took_effect_or_would_empty_a_target() {
    use k8s_openapi::api::discovery::v1::EndpointConditions;
    let a = NodeFacts::from_node(&node("a", &[("InternalIP", "198.51.100.1")], &[])).unwrap();
    let ep = |addr: &str, node: Option<&str>, ready: Option<bool>| Endpoint {
        addresses: vec![addr.into()],
        node_name: node.map(Into::into),
        conditions: Some(EndpointConditions {
            ready,
            ..EndpointConditions::default()
        }),
        ..Endpoint::default()
    };
    let slice = |endpoints| EndpointSlice {
        metadata: ObjectMeta::default(),
        address_type: "IPv4".into(),
        endpoints,
        ports: None,
    };
    let before = [slice(vec![
        ep("198.51.100.1", None, None),
        ep("198.51.100.2", Some("b"), Some(true)),
    ])];
    assert_eq!(ready_on(&a, &before), vec!["198.51.100.1".to_owned()]);
    assert_eq!(ready_elsewhere(&a, &before), 1);
    let after = [slice(vec![
        ep("198.51.100.1", Some("a"), Some(false)),
        ep("2001:db8::1", Some("a"), Some(false)),
        ep("198.51.100.2", Some("b"), Some(true)),
    ])];
    assert!(ready_on(&a, &after).is_empty());
    let alone = [slice(vec![ep("198.51.100.1", Some("a"), None)])];
    assert_eq!(ready_elsewhere(&a, &alone), 0);
}
