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
    assert_eq!(f.drain_duration, None);
    assert!(!f.control_plane);
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

/// One reading at wall-clock `wall` and monotonic `mono`, with `seen` as this copy's memory.
fn at<'a>(wall: &str, mono: Instant, seen: Option<&'a DrainClock>) -> At<'a> {
    At {
        wall: ts(wall),
        mono,
        seen,
    }
}

#[tokio::test(start_paused = true)]
async fn a_drain_counts_until_its_expiry_and_a_bad_value_is_ignored() {
    let mono = Instant::now();
    let now = at("2025-01-01T00:00:00Z", mono, None);
    let f = |a: &[(&str, &str)]| NodeFacts::from_node(&node("n", &[], a)).unwrap();
    assert_eq!(f(&[]).drain(now), Drain::None);
    assert_eq!(
        f(&[(ANNOTATION_DRAIN, "true")]).drain(now),
        Drain::Active { until: None }
    );
    // An expiry written as an instant alone (by hand, or an older version): this copy's wall
    // clock judges it.
    assert_eq!(
        f(&[
            (ANNOTATION_DRAIN, "true"),
            (ANNOTATION_DRAIN_EXPIRES, "2025-01-01T00:05:00Z")
        ])
        .drain(now),
        Drain::Active {
            until: Some(mono + Duration::from_secs(300))
        }
    );
    assert_eq!(
        f(&[
            (ANNOTATION_DRAIN, "true"),
            (ANNOTATION_DRAIN_EXPIRES, "2024-12-31T23:59:59Z")
        ])
        .drain(now),
        Drain::Expired
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
    assert!(matches!(
        f(&[
            (ANNOTATION_DRAIN, "true"),
            (ANNOTATION_DRAIN_DURATION, "15m")
        ])
        .drain(now),
        Drain::Invalid(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_timed_drain_lasts_its_duration_from_when_this_copy_first_saw_it_whatever_the_clocks_say()
{
    // `drain` ran on a host whose wall clock is an hour behind: its expiry instant is already
    // past by ours. The duration decides, from when we first saw the drain.
    let drained = NodeFacts::from_node(&node(
        "cp-1",
        &[("InternalIP", "198.51.100.1")],
        &[
            (ANNOTATION_DRAIN, "true"),
            (ANNOTATION_DRAIN_EXPIRES, "2025-01-01T00:15:00Z"),
            (ANNOTATION_DRAIN_DURATION, "900"),
        ],
    ))
    .unwrap();
    let index = NodeIndex::new([drained.clone()]);
    let mut clock = DrainClock::default();
    let t0 = Instant::now();
    clock.observe(&index, t0);
    let wall = "2025-01-01T01:00:00Z";
    assert_eq!(
        drained.drain(at(wall, t0, Some(&clock))),
        Drain::Active {
            until: Some(t0 + Duration::from_secs(900))
        }
    );
    // Later observations keep the first sighting; a wall clock jumping back and forth changes
    // nothing.
    let t1 = t0 + Duration::from_secs(899);
    clock.observe(&index, t1);
    assert!(matches!(
        drained.drain(at("2024-06-01T00:00:00Z", t1, Some(&clock))),
        Drain::Active { .. }
    ));
    assert_eq!(index.drained(at(wall, t1, Some(&clock))).len(), 1);
    assert_eq!(
        index.next_expiry(at(wall, t1, Some(&clock))),
        Some(t0 + Duration::from_secs(900))
    );
    let t2 = t0 + Duration::from_secs(900);
    assert_eq!(drained.drain(at(wall, t2, Some(&clock))), Drain::Expired);
    assert!(index.drained(at(wall, t2, Some(&clock))).is_empty());
    // `drain` run again writes a new expiry: a new drain, counted from now.
    let mut again = drained.clone();
    again.drain_expires = Some("2025-01-01T00:30:00Z".into());
    let index = NodeIndex::new([again.clone()]);
    clock.observe(&index, t2);
    assert_eq!(
        again.drain(at(wall, t2, Some(&clock))),
        Drain::Active {
            until: Some(t2 + Duration::from_secs(900))
        }
    );
    // A Node whose drain went is forgotten.
    clock.observe(&NodeIndex::default(), t2);
    assert_eq!(clock, DrainClock::default());
}

#[tokio::test(start_paused = true)]
async fn a_copy_that_sees_a_drain_later_counts_its_duration_from_then() {
    let drained = NodeFacts::from_node(&node(
        "cp-1",
        &[],
        &[
            (ANNOTATION_DRAIN, "true"),
            (ANNOTATION_DRAIN_DURATION, "60"),
        ],
    ))
    .unwrap();
    // A one-shot reading (`check`) counts it as seen now.
    let t = Instant::now();
    assert_eq!(
        drained.drain(at("2025-01-01T00:00:00Z", t, None)),
        Drain::Active {
            until: Some(t + Duration::from_secs(60))
        }
    );
    // A new leader that first sees it 50 s after it was written keeps it 60 s from then: a
    // drain may last longer after a leader change, never shorter.
    let mut clock = DrainClock::default();
    let late = t + Duration::from_secs(50);
    clock.observe(&NodeIndex::new([drained.clone()]), late);
    assert!(matches!(
        drained.drain(at(
            "2025-01-01T00:00:00Z",
            late + Duration::from_secs(59),
            Some(&clock)
        )),
        Drain::Active { .. }
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

#[tokio::test(start_paused = true)]
async fn drained_nodes_and_the_next_expiry_is_the_earliest() {
    let mono = Instant::now();
    let now = at("2025-01-01T00:00:00Z", mono, None);
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
    assert_eq!(
        index.next_expiry(now),
        Some(mono + Duration::from_secs(300))
    );
    let later = at("2025-01-01T00:06:00Z", mono, None);
    assert_eq!(index.drained(later), ["a".to_owned()].into());
    assert_eq!(
        index.next_expiry(later),
        Some(mono + Duration::from_secs(240))
    );
}

#[test]
fn only_nodes_the_control_plane_vouches_for_claim_an_address_while_any_is() {
    let vouched = |name: &str, ip: &str| {
        let mut n = node(name, &[("InternalIP", ip)], &[]);
        n.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(crate::names::CONTROL_PLANE_LABEL.into(), String::new());
        NodeFacts::from_node(&n).unwrap()
    };
    let worker = |name: &str, ip: &str| {
        NodeFacts::from_node(&node(name, &[("InternalIP", ip)], &[])).unwrap()
    };
    let apiserver: IpAddr = "198.51.100.1".parse().unwrap();
    let elsewhere: IpAddr = "198.51.100.7".parse().unwrap();
    // `selector = ""`: a worker's kubelet lists an apiserver's address (and one no control-plane
    // Node holds). Neither makes the address its own, nor ambiguous.
    let index = NodeIndex::new([
        vouched("cp-1", "198.51.100.1"),
        worker("worker-1", "198.51.100.1"),
        worker("worker-2", "198.51.100.7"),
    ]);
    assert_eq!(
        index.node_of(apiserver).map(|n| n.name.as_str()),
        Some("cp-1")
    );
    assert_eq!(index.node_of(elsewhere), None);
    // Without any labelled Node (a cluster without role labels), every claim counts.
    let plain = NodeIndex::new([worker("a", "198.51.100.1"), worker("b", "198.51.100.7")]);
    assert_eq!(plain.node_of(elsewhere).map(|n| n.name.as_str()), Some("b"));
    // The count follows removals: once the last labelled Node goes, claims count again.
    let mut index = index;
    index.remove("cp-1");
    assert_eq!(
        index.lookup(apiserver),
        Lookup::One(&worker("worker-1", "198.51.100.1"))
    );
}

#[test]
fn a_drain_without_expiry_lasts_and_every_drain_annotation_counts_for_resume() {
    let facts = |annotations: &[(&str, &str)]| {
        let mut n = k8s_openapi::api::core::v1::Node::default();
        n.metadata.name = Some("cp-1".into());
        n.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        NodeFacts::from_node(&n).unwrap()
    };
    let lasting = facts(&[(ANNOTATION_DRAIN, "true")]);
    assert!(lasting.has_lasting_drain() && lasting.has_drain_annotations());
    let timed = facts(&[
        (ANNOTATION_DRAIN, "true"),
        (ANNOTATION_DRAIN_EXPIRES, "2025-01-31T12:15:00Z"),
    ]);
    assert!(!timed.has_lasting_drain() && timed.has_drain_annotations());
    let off = facts(&[(ANNOTATION_DRAIN, "false")]);
    assert!(!off.has_lasting_drain() && off.has_drain_annotations());
    let stray = facts(&[(ANNOTATION_DRAIN_DURATION, "600")]);
    assert!(!stray.has_lasting_drain() && stray.has_drain_annotations());
    assert!(!facts(&[]).has_drain_annotations());
}
